"""Task losses on hand-computed cases; the VIS loss against a dense reference, and its memory."""

import math
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from streamformer_pretrain.heads import (
    PixelDecoder,
    TaskLogits,
    classification_loss,
    grounding_loss,
    limit_classes,
    localization_loss,
    mask_scores,
    retrieval_loss,
    rvos_loss,
    vis_loss,
    vis_sigmoid_loss,
)


def sp(x: float) -> float:
    return math.log1p(math.exp(x))  # softplus: -logsigmoid(y * l) == softplus(-y * l)


def unit_logits() -> TaskLogits:
    return TaskLogits(scale=0.0, bias=0.0)  # logits == cosine


def test_classification_closed_form():
    video = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    loss = classification_loss(unit_logits(), video, classes, torch.tensor([0, 1]))
    # cosines [[1, 0, -1], [0, 1, 0]]; positives (0, 0) and (1, 1)
    expected = (sp(-1) + sp(0) + sp(-1) + sp(0) + sp(-1) + sp(0)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_scale_and_bias_enter_as_siglip():
    logits = TaskLogits(scale=math.log(10.0), bias=-2.0)
    out = logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 4.0], [4.0, -3.0]]), "bd,cd->bc")
    torch.testing.assert_close(out, torch.tensor([[10.0 - 2.0, -2.0]]))


def test_retrieval_shards_sum_to_the_global_loss():
    g = torch.Generator().manual_seed(0)
    video, text = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    logits = TaskLogits(scale=1.0, bias=-1.0)
    whole = retrieval_loss(logits, video, text)
    shards = [retrieval_loss(logits, video[r * 2 : (r + 1) * 2], text, offset=2 * r) for r in range(2)]
    torch.testing.assert_close(torch.stack(shards).mean(), whole)
    # And the global loss is SigLIP's: positives on the diagonal only.
    scores = F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t() * math.e - 1
    expected = -F.logsigmoid((2 * torch.eye(4) - 1) * scores).sum() / 4
    torch.testing.assert_close(whole, expected)


def test_grounding_closed_form():
    frames = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # B=1, T=3
    caption = torch.tensor([[1.0, 0.0]])
    loss = grounding_loss(unit_logits(), frames, caption, torch.tensor([[1, 0, 0]]))
    assert math.isclose(loss.item(), sp(-1) + sp(0) + sp(-1), rel_tol=1e-6)


def test_localization_background_is_negative_for_all_classes():
    frames = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # B=1, T=2
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = localization_loss(unit_logits(), frames, classes, torch.tensor([[0, -1]]))
    # frame 0: class 0 positive (cos 1), class 1 negative (cos 0); frame 1 background: both negative (0, 1)
    expected = (sp(-1) + sp(0) + sp(0) + sp(1)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def _dense_case():
    # B=1, T=1, a 2x2 grid, D=2; mask 2x2 so no upsampling
    return torch.tensor([[[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]]]])


def test_vis_softmax_ignores_background_and_sigmoid_does_not():
    classes = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])  # index 0 = background
    mask = torch.tensor([[[[1, 0], [1, 2]]]])
    ce = vis_loss(unit_logits(), _dense_case(), classes, mask, "softmax")
    cos = torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.0, -1.0, 1.0]])
    expected = F.cross_entropy(cos[[0, 2, 3]], torch.tensor([1, 1, 2]))
    torch.testing.assert_close(ce, expected)
    sig = vis_loss(unit_logits(), _dense_case(), classes, mask, "sigmoid")
    real = cos[:, 1:]  # classes 1 and 2
    positive = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 1]], dtype=torch.bool)
    per_pixel = -F.logsigmoid((positive.float() * 2 - 1) * real)
    on_object = torch.tensor([[1, 1], [0, 0], [1, 1], [1, 1]], dtype=torch.bool)
    # balanced: positives, other classes on object pixels, background pixels, a third each
    groups = (positive, ~positive & on_object, ~on_object)
    expected = sum(per_pixel[g].mean() for g in groups) / 3
    torch.testing.assert_close(sig, expected)


def test_rvos_own_expression():
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # global batch of 2 expressions; local sample is rank 1's
    mask = torch.tensor([[[[0, 1], [0, 1]]]])
    sig = rvos_loss(unit_logits(), _dense_case(), captions, mask, "sigmoid", offset=1)
    own = torch.tensor([0.0, 1.0, 0.0, 0.0])  # cos with expression 1 per patch
    per_pixel = -F.logsigmoid((mask.flatten().float() * 2 - 1) * own)
    expected = (per_pixel[mask.flatten().bool()].mean() + per_pixel[~mask.flatten().bool()].mean()) / 2
    torch.testing.assert_close(sig, expected)
    ce = rvos_loss(unit_logits(), _dense_case(), captions, mask, "softmax", offset=1)
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    expected = F.cross_entropy(scores[[1, 3]], torch.tensor([1, 1]))
    torch.testing.assert_close(ce, expected)


def test_rvos_softmax_weighs_samples_not_pixels():
    g = torch.Generator().manual_seed(0)
    grid, captions = torch.randn(2, 1, 2, 2, 3, generator=g), torch.randn(2, 3, generator=g)
    mask = torch.tensor([[[[1, 0], [0, 0]]], [[[1, 1], [1, 0]]]])  # a 1-pixel and a 3-pixel object
    scores = F.normalize(grid, dim=-1) @ F.normalize(captions, dim=-1).t()  # [2, 1, 2, 2, K]
    per_sample = [F.cross_entropy(scores[i][mask[i].bool()], torch.full((int(mask[i].sum()),), i)) for i in range(2)]
    torch.testing.assert_close(rvos_loss(unit_logits(), grid, captions, mask, "softmax"), sum(per_sample) / 2)


def test_mask_scores_are_the_task_logits_of_each_position():
    g = torch.Generator().manual_seed(0)
    grid, texts = torch.randn(2, 3, 4, 4, 5, generator=g), torch.randn(6, 5, generator=g)
    logits = TaskLogits(scale=1.5, bias=-0.5)
    expected = logits(grid, texts, "bthwd,kd->btkhw")
    torch.testing.assert_close(mask_scores(logits, grid, texts, 4), expected)
    per_sample = torch.randn(2, 1, 5, generator=g)
    torch.testing.assert_close(mask_scores(logits, grid, per_sample, 4), logits(grid, per_sample, "bthwd,bkd->btkhw"))
    up = mask_scores(logits, grid, texts, 8)
    assert up.shape == (2, 3, 6, 8, 8)
    torch.testing.assert_close(up, F.interpolate(expected.flatten(0, 1), size=(8, 8), mode="bilinear").unflatten(0, (2, 3)))


def test_pixel_decoder_starts_as_the_upsampled_patch_grid_and_learns_edges():
    g = torch.Generator().manual_seed(0)
    decoder = PixelDecoder(dim=8)
    patches, video = torch.randn(1, 2, 4, 4, 8, generator=g), torch.randn(1, 2, 3, 32, 32, generator=g)
    out = decoder(patches, video)
    assert out.shape == (1, 2, 16, 16, 8)
    coarse = F.interpolate(patches.flatten(0, 1).permute(0, 3, 1, 2), size=(16, 16), mode="bilinear")
    torch.testing.assert_close(out, coarse.permute(0, 2, 3, 1).unflatten(0, (1, 2)))
    # The stem sees the frame: once its last layer is trained, the output depends on the pixels.
    out.sum().backward()
    assert decoder.stem[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        decoder.stem[-1].weight.normal_(generator=g)
    assert not torch.allclose(decoder(patches, video), decoder(patches, video.flip(-1)))


def test_limit_classes_keeps_background_the_present_classes_and_random_others():
    classes = torch.randn(150, 4)
    mask = torch.zeros(2, 3, 8, 8, dtype=torch.long)
    mask[0, :, :2, :2], mask[1, 1, 4:, 4:] = 5, 120
    kept, renumbered = limit_classes(classes, mask, generator=torch.Generator().manual_seed(0))
    assert kept.shape == (100, 4) and torch.equal(kept[0], classes[0])
    assert torch.equal(kept[renumbered], classes[mask])  # every pixel still points at its own class
    assert (renumbered[mask == 0] == 0).all() and not (kept[1:] == classes[0]).all(-1).any()  # background is no negative
    # The draw is a function of the generator's seed (a resumed run draws the same negatives).
    assert torch.equal(kept, limit_classes(classes, mask, generator=torch.Generator().manual_seed(0))[0])
    assert not torch.equal(kept, limit_classes(classes, mask, generator=torch.Generator().manual_seed(1))[0])
    small, same = limit_classes(classes[:100], mask.clamp(max=99))
    assert small.shape == (100, 4) and torch.equal(same, mask.clamp(max=99))


def dense_vis_loss(scores: Tensor, mask: Tensor, mode: str) -> Tensor:
    """`vis_loss` from its scores [B, T, C, S, S] through a one-hot of the mask ([B, T, C, S, S]):
    the sigmoid mode as first written, the softmax mode as the cross-entropy it computes. The
    reference for the implementation without the one-hot."""
    one_hot = F.one_hot(mask, scores.shape[2]).permute(0, 1, 4, 2, 3).bool()
    on_object = (mask > 0).unsqueeze(2)
    dims = (1, 2, 3, 4)
    if mode == "softmax":  # cross-entropy at object pixels, averaged per sample, background ignored
        per_pixel = -(F.log_softmax(scores, dim=2) * one_hot).sum(2, keepdim=True)
        return ((per_pixel * on_object).sum(dims) / on_object.sum(dims).clamp(min=1)).mean()
    positive, real = one_hot[:, :, 1:], scores[:, :, 1:]
    per_pixel = -F.logsigmoid((positive.to(real.dtype) * 2 - 1) * real)
    groups = (positive, ~positive & on_object, ~positive & ~on_object)
    return (sum((per_pixel * g).sum(dims) / g.sum(dims).clamp(min=1) for g in groups) / 3).mean()


def random_vis_case(classes: int, dtype: torch.dtype, seed: int = 0):
    """Patch grid [3, 2, 4, 4, 6] scored at 8 x 8 px; sample 0 mixed, sample 1 all background,
    sample 2 all object."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(3, 2, 4, 4, 6, generator=g, dtype=dtype, requires_grad=True)
    texts = torch.randn(classes, 6, generator=g, dtype=dtype)
    mask = torch.randint(1, classes, (3, 2, 8, 8), generator=g)
    mask[0] *= torch.rand(2, 8, 8, generator=g) < 0.3
    mask[1] = 0
    return grid, texts, mask


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("classes", [2, 7], ids=["one-real-class", "six-real-classes"])
def test_vis_loss_equals_the_dense_reference(mode, dtype, classes):
    logits = TaskLogits(scale=2.0, bias=-3.0).to(dtype)  # logits over about [-10, 4]
    grid, texts, mask = random_vis_case(classes, dtype)
    loss = vis_loss(logits, grid, texts, mask, mode)
    expected = dense_vis_loss(mask_scores(logits, grid, texts, 8), mask, mode)
    torch.testing.assert_close(loss, expected)
    inputs = (grid, logits.logit_scale, logits.logit_bias)
    for got, want in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(expected, inputs), strict=True):
        torch.testing.assert_close(got, want)


class LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any operation makes (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        made = out if isinstance(out, tuple | list) else (out,)
        self.nbytes = max([self.nbytes] + [t.nbytes for t in made if isinstance(t, Tensor)])
        return out


def test_vis_sigmoid_loss_makes_no_tensor_larger_than_its_scores():
    """The one-hot of the mask is [B, T, C, S, S] in int64, twice the bytes of float32 scores
    (4 times fp16 ones): 10 GB at 16 clips of 16 frames of 224 px and 100 classes."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 10, 16, 16, generator=g, requires_grad=True)
    mask = torch.randint(0, 10, (2, 3, 16, 16), generator=g)
    for loss, fits in ((vis_sigmoid_loss, True), (lambda s, m: dense_vis_loss(s, m, "sigmoid"), False)):
        with LargestTensor() as largest:
            loss(scores, mask).backward()
        assert (largest.nbytes <= scores.nbytes) == fits, (loss, largest.nbytes)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _peak_growth(shape: tuple[int, ...]) -> tuple[float, float]:
    """In a fresh process: how far the peak resident memory rises over the memory in use, per byte
    of the scores, in a forward and backward of `vis_sigmoid_loss`, then of the dense reference.
    The peak is reset before each (`/proc/self/clear_refs`), so neither carries the other's or an
    earlier peak (an import's, say)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(shape, generator=g, requires_grad=True)
    pixels = (*shape[:2], *shape[3:])
    mask = torch.randint(0, shape[2], pixels, generator=g) * (torch.rand(pixels, generator=g) < 0.1)  # a tenth objects
    growth = []
    for loss in (vis_sigmoid_loss, lambda s, m: dense_vis_loss(s, m, "sigmoid")):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # the peak resident size restarts from the current one
        in_use = _status_bytes("VmRSS")
        loss(scores, mask).backward()
        scores.grad = None
        growth.append((_status_bytes("VmHWM") - in_use) / scores.nbytes)
    return tuple(growth)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="resets and reads the peak memory in /proc (Linux)")
def test_vis_sigmoid_loss_peaks_well_below_the_dense_version():
    """Measured on the CPU: about 4.2 times the scores' bytes, against 6.9 for the one-hot version.
    What remains is inherent to the loss: the scores' negation and log-sigmoid (and, on the CPU,
    log-sigmoid's saved buffer), and their gradient."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        new, dense = pool.submit(_peak_growth, (2, 4, 100, 128, 128)).result()
    assert new < 0.75 * dense, (new, dense)


def test_dense_projection_is_the_pooling_head_on_one_token():
    """Each patch's embedding is what the head pools from a frame of that one patch; checkpoints
    with the layers' former names (w_v, v_proj) still load."""
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    from streamformer_pretrain.heads import DenseProjection

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32)
    head = SiglipMultiheadAttentionPoolingHead(config)
    dense = DenseProjection(head)
    tokens = torch.randn(2, 5, 16)
    with torch.no_grad():
        alone = torch.stack([head(tokens[:, i : i + 1]) for i in range(5)], dim=1)
        torch.testing.assert_close(dense(tokens), alone, atol=1e-5, rtol=0)
    former = {k.replace("value_proj.", "w_v.").replace("out_proj.", "v_proj."): v for k, v in dense.state_dict().items()}
    assert "w_v.weight" in former and "v_proj.bias" in former
    fresh = DenseProjection(SiglipMultiheadAttentionPoolingHead(config))
    fresh.load_state_dict(former)
    torch.testing.assert_close(fresh.state_dict(), dense.state_dict())
