"""Task losses on hand-computed cases."""

import math

import torch
import torch.nn.functional as F

from streamformer_pretrain.heads import (
    TaskLogits,
    classification_loss,
    grounding_loss,
    localization_loss,
    retrieval_loss,
    rvos_loss,
    vis_loss,
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
    shards = [retrieval_loss(logits, video[r * 2 : (r + 1) * 2], text, rank=r) for r in range(2)]
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
    # B=1, T=1, N=4 patches (2x2 grid), D=2; mask 2x2 so upsampling is the identity
    dense = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]]])
    return dense


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
    expected = (per_pixel[positive].mean() + per_pixel[~positive].mean()) / 2  # balanced
    torch.testing.assert_close(sig, expected)


def test_rvos_own_expression():
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # global batch of 2 expressions; local sample is rank 1's
    mask = torch.tensor([[[[0, 1], [0, 1]]]])
    sig = rvos_loss(unit_logits(), _dense_case(), captions, mask, "sigmoid", rank=1)
    own = torch.tensor([0.0, 1.0, 0.0, 0.0])  # cos with expression 1 per patch
    per_pixel = -F.logsigmoid((mask.flatten().float() * 2 - 1) * own)
    expected = (per_pixel[mask.flatten().bool()].mean() + per_pixel[~mask.flatten().bool()].mean()) / 2
    torch.testing.assert_close(sig, expected)
    ce = rvos_loss(unit_logits(), _dense_case(), captions, mask, "softmax", rank=1)
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    expected = F.cross_entropy(scores[[1, 3]], torch.tensor([1, 1]))
    torch.testing.assert_close(ce, expected)
