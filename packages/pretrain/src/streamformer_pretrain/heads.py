"""The six task losses of multitask pretraining, as the original defines them.

Every loss compares L2-normalised video and text embeddings through
`logits = cos * exp(logit_scale) + logit_bias`, with a scale/bias pair per task, and SigLIP's
sigmoid loss `-logsigmoid(y * logits)` with y in {+1, -1}. The two segmentation losses can also
run as the original implements them: softmax cross-entropy over classes (VIS) or over the
batch's expressions (RVOS), background ignored.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

SegmentationLoss = Literal["sigmoid", "softmax"]


def sigmoid_terms(logits: Tensor, positive: Tensor) -> Tensor:
    """SigLIP's pairwise loss per element, -logsigmoid(+-logits); `positive` is boolean like `logits`."""
    return -F.logsigmoid((positive.to(logits.dtype) * 2 - 1) * logits)


def sigmoid_loss(logits: Tensor, positive: Tensor) -> Tensor:
    """Sum of SigLIP's pairwise loss."""
    return sigmoid_terms(logits, positive).sum()


class TaskLogits(nn.Module):
    """A task's own learnable logit scale (log of the multiplier) and bias."""

    def __init__(self, scale: float = math.log(10.0), bias: float = -10.0) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, a: Tensor, b: Tensor, equation: str) -> Tensor:
        """Logits of normalised `a` and `b` combined by the einsum `equation`."""
        return self.of_cosine(torch.einsum(equation, F.normalize(a, dim=-1), F.normalize(b, dim=-1)))

    def of_cosine(self, cos: Tensor) -> Tensor:
        return cos * self.logit_scale.exp() + self.logit_bias


class DenseProjection(nn.Module):
    """Per-patch embeddings through the pooling head's value path, as if the probe attended to that
    one token: value projection -> output projection -> y + MLP(LayerNorm(y)). Initialised as a
    copy of the backbone head; trained on its own (the original meant to freeze the copy but did not)."""

    # Names these layers had in checkpoints written before they were named for what they hold.
    _FORMER_NAMES = {"w_v.": "value_proj.", "v_proj.": "out_proj."}

    def __init__(self, head: SiglipMultiheadAttentionPoolingHead) -> None:
        super().__init__()
        dim = head.probe.shape[-1]
        self.value_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        with torch.no_grad():
            self.value_proj.weight.copy_(head.attention.in_proj_weight[2 * dim :])
            self.value_proj.bias.copy_(head.attention.in_proj_bias[2 * dim :])
            self.out_proj.load_state_dict(head.attention.out_proj.state_dict())
        self.head_layernorm = copy.deepcopy(head.layernorm)
        self.head_mlp = copy.deepcopy(head.mlp)
        self._register_load_state_dict_pre_hook(self._rename_former_keys)

    def _rename_former_keys(self, state_dict: dict[str, Tensor], prefix: str, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            for former, name in self._FORMER_NAMES.items():
                if key.startswith(prefix + former):
                    state_dict[prefix + name + key[len(prefix + former) :]] = state_dict.pop(key)

    def forward(self, tokens: Tensor) -> Tensor:
        y = self.out_proj(self.value_proj(tokens))
        return y + self.head_mlp(self.head_layernorm(y))


def gather_across_ranks(x: Tensor, with_grad: bool) -> tuple[Tensor, int]:
    """Concatenate `x` [B, ...] of every rank in rank order -> ([sum of B, ...], offset of the local
    rows in it); identity and offset 0 without a process group. Ranks may hold different B (a
    batch that lost broken samples). With `with_grad`, gradients flow back to every rank's `x`;
    without, only to the local part (the other ranks' parts are constants)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(len(x), device=x.device))
    sizes = [int(size) for size in sizes]
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros(longest - len(x), *x.shape[1:])]).contiguous()  # all_gather needs equal shapes
    if with_grad:  # backward reduce-scatters: each rank's x gets the gradient of every rank's loss
        from torch.distributed._functional_collectives import all_gather_tensor_autograd

        parts = list(all_gather_tensor_autograd(padded, gather_dim=0, group=dist.group.WORLD).split(longest))
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach())
        parts[rank] = padded
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]), sum(sizes[:rank])


def classification_loss(logits: TaskLogits, video: Tensor, classes: Tensor, labels: Tensor) -> Tensor:
    """Action recognition: last-frame video embedding [B, D] vs class embeddings [C, D]."""
    scores = logits(video, classes, "bd,cd->bc")
    positive = F.one_hot(labels, classes.shape[0]).bool()
    return sigmoid_loss(scores, positive) / video.shape[0]


def retrieval_loss(logits: TaskLogits, video: Tensor, text: Tensor, offset: int = 0) -> Tensor:
    """Video [B, D] vs the captions of every rank [N, D] (`gather_across_ranks`, with gradients);
    the positive of local sample i is caption offset + i, all others are negatives. Divided by the
    local B, so with equal batches the mean over ranks equals the single-process loss on the global
    batch."""
    b = video.shape[0]
    scores = logits(video, text, "bd,nd->bn")
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(b), offset + torch.arange(b)] = True
    return sigmoid_loss(scores, positive) / b


def grounding_loss(logits: TaskLogits, frames: Tensor, caption: Tensor, frame_labels: Tensor) -> Tensor:
    """Per-frame embeddings [B, T, D] vs each clip's own caption [B, D]; frames in the moment are positive."""
    scores = logits(frames, caption, "btd,bd->bt")
    return sigmoid_loss(scores, frame_labels.bool()) / frames.shape[0]


def localization_loss(logits: TaskLogits, frames: Tensor, classes: Tensor, frame_labels: Tensor) -> Tensor:
    """Per-frame embeddings [B, T, D] vs class embeddings [C, D]; label -1 = background (all negative).
    Per sample the sum is divided by T, then samples are averaged."""
    scores = logits(frames, classes, "btd,cd->btc")
    positive = F.one_hot(frame_labels.clamp(min=0), classes.shape[0]).bool() & (frame_labels >= 0)[..., None]
    per_sample = sigmoid_terms(scores, positive).sum(dim=(1, 2)) / frames.shape[1]
    return per_sample.mean()


def balanced_sigmoid_loss(scores: Tensor, positive: Tensor) -> Tensor:
    """Per-pixel sigmoid loss with the positives and the negatives weighted equally per sample.

    Objects cover a few percent of a frame; an unweighted mean is minimised by calling every
    pixel background, which is what an unweighted loss learned on the synthetic world.
    """
    per_pixel = sigmoid_terms(scores, positive)
    dims = tuple(range(1, scores.ndim))
    means = [(per_pixel * g).sum(dims) / g.sum(dims).clamp(min=1) for g in (positive, ~positive)]
    return (sum(means) / len(means)).mean()


def vis_sigmoid_loss(scores: Tensor, mask: Tensor) -> Tensor:
    """VIS's balanced sigmoid loss of class scores [B, T, C, S, S] (class 0 = background, never
    scored) against class ids `mask` [B, T, S, S]. Per sample, three groups of terms weigh a third
    each: the positives (each object pixel's own class), the other classes on object pixels, and
    every class on background pixels. Without the second group's share, the other classes on an
    object would be a few percent of the negatives, and a circle called a square would cost
    almost nothing (see `balanced_sigmoid_loss` for why positives and negatives weigh equally).

    No one-hot of the mask: as int64 [B, T, C, S, S] it would take 10 GB at 16 clips of 16 frames
    of 224 px and 100 classes. A pixel's negatives are instead every real class as a negative,
    less its own class's term, which is gathered per pixel.
    """
    on_object = mask > 0
    dims = (1, 2, 3)
    every_class = -F.logsigmoid(-scores[:, :, 1:]).sum(2)  # [B, T, S, S]: each real class as a negative
    own = scores.gather(2, mask.unsqueeze(2)).squeeze(2)  # the pixel's class (background's at background pixels: unused)
    positives = torch.where(on_object, -F.logsigmoid(own), 0.0).sum(dims)
    others = torch.where(on_object, every_class + F.logsigmoid(-own), 0.0).sum(dims)
    background = torch.where(on_object, 0.0, every_class).sum(dims)
    objects, pixels, classes = on_object.sum(dims), mask[0].numel(), scores.shape[2] - 1
    counts = (objects, objects * (classes - 1), (pixels - objects) * classes)
    means = [total / count.clamp(min=1) for total, count in zip((positives, others, background), counts, strict=True)]
    return (sum(means) / len(means)).mean()


def patch_grid(tokens: Tensor) -> Tensor:
    """[B, T, N, D] patch tokens of a square grid -> [B, T, side, side, D]."""
    side = math.isqrt(tokens.shape[2])
    return tokens.unflatten(2, (side, side))


class PixelDecoder(nn.Module):
    """Mask embeddings at half the frame's resolution: the patch embeddings upsampled bilinearly,
    plus a small convolutional network of the frame itself (ViT-Adapter's spatial prior, in small).

    A patch grid (8 px in the tiny model) is coarser than the edges of small objects: with perfect
    patch scores, upsampling them gives 0.43 mask IoU on the synthetic world's referring objects.
    Dilated convolutions give the network a 29 px view, wider than the world's objects, so local
    shape (corners, arcs) reaches every pixel. The last layer starts at zero: training starts from
    the upsampled patch embeddings.
    """

    def __init__(self, dim: int, channels: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels // 2, 3, padding=1),  # full resolution: corners are a few pixels
            nn.GELU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=4, dilation=4),
            nn.GELU(),
            nn.Conv2d(channels, dim, 1),
        )
        nn.init.zeros_(self.stem[-1].weight)
        nn.init.zeros_(self.stem[-1].bias)

    def forward(self, patches: Tensor, video: Tensor) -> Tensor:
        """Patch grid [B, T, h, w, D] and frames [B, T, 3, S, S] -> [B, T, S/2, S/2, D]."""
        detail = self.stem(video.flatten(0, 1))  # [B*T, D, S/2, S/2]
        coarse = F.interpolate(
            patches.flatten(0, 1).permute(0, 3, 1, 2), size=detail.shape[-2:], mode="bilinear", align_corners=False
        )
        return (coarse + detail).permute(0, 2, 3, 1).unflatten(0, patches.shape[:2])


def mask_scores(logits: TaskLogits, grid: Tensor, texts: Tensor, size: int) -> Tensor:
    """Logits of grid embeddings [B, T, h, w, D] against texts, upsampled to [B, T, K, size, size]
    (bilinear, align_corners=False). Texts are [K, D] (shared) or [B, K, D] (per sample)."""
    equation = "bthwd,kd->btkhw" if texts.ndim == 2 else "bthwd,bkd->btkhw"
    # Dividing the K scores by the grid's norms is cheaper than normalising the D-dim grid.
    norms = grid.norm(dim=-1).clamp(min=1e-12).unsqueeze(2)
    scores = logits.of_cosine(torch.einsum(equation, grid, F.normalize(texts, dim=-1)) / norms)
    if scores.shape[-1] == size:
        return scores
    return F.interpolate(scores.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False).unflatten(
        0, scores.shape[:2]
    )


def masked_cross_entropy(scores: Tensor, target: Tensor) -> Tensor:
    """The original's segmentation loss: softmax cross-entropy over dim 2 of `scores`
    [B, T, K, S, S] at the pixels where `target` [B, T, S, S] is a class (-1: ignored), averaged
    over each sample's labelled pixels, then over the samples."""
    if not (target >= 0).any():
        return scores.sum() * 0.0
    per_pixel = F.cross_entropy(scores.flatten(0, 1), target.flatten(0, 1), ignore_index=-1, reduction="none")
    valid = target >= 0
    per_sample = (per_pixel.view_as(target) * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    return per_sample.mean()


def limit_classes(
    classes: Tensor, mask: Tensor, limit: int = 100, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """`limit` class embeddings for the VIS loss when there are more (LV-VIS has 1196; scoring them
    all at every pixel does not fit in memory): background (row 0), every class in `mask`
    [..., S, S] (all of them, even past `limit`) and random others, drawn with the CPU `generator`;
    returns them and `mask` renumbered to their order. One draw for the whole `mask` (a batch of
    one data set).

    The original draws per sample and may draw background as a negative class, which then
    supervises background pixels as that class; here background stays row 0, never a negative."""
    if classes.shape[0] <= limit:
        return classes, mask
    present = mask.unique()
    present = present[present > 0]
    others = torch.ones(classes.shape[0], dtype=torch.bool, device=mask.device)
    others[0] = False
    others[present] = False
    candidates = others.nonzero()[:, 0]
    draw = torch.randperm(len(candidates), generator=generator)[: max(0, limit - 1 - len(present))]
    extra = candidates[draw.to(mask.device)]
    keep = torch.cat([present.new_zeros(1), present, extra])
    renumber = torch.full((classes.shape[0],), -1, dtype=mask.dtype, device=mask.device)
    renumber[keep] = torch.arange(len(keep), dtype=mask.dtype, device=mask.device)
    return classes[keep], renumber[mask]


def vis_loss(logits: TaskLogits, grid: Tensor, classes: Tensor, mask: Tensor, mode: SegmentationLoss) -> Tensor:
    """Semantic video segmentation: mask embeddings [B, T, h, w, D] vs class embeddings [C, D]
    (index 0 = background), target mask [B, T, S, S] of class ids.

    softmax (original): cross-entropy over the C classes at every pixel, background pixels ignored.
    sigmoid (paper): every pixel is a positive for its class and a negative for the others;
    background pixels are negatives for every real class. Per sample, the positives, the other
    classes' scores on object pixels and the background pixels weigh a third each
    (`vis_sigmoid_loss`).
    """
    scores = mask_scores(logits, grid, classes, mask.shape[-1])  # [B, T, C, S, S]
    if mode == "softmax":
        return masked_cross_entropy(scores, torch.where(mask > 0, mask, torch.full_like(mask, -1)))
    return vis_sigmoid_loss(scores, mask)


def rvos_loss(
    logits: TaskLogits, grid: Tensor, captions: Tensor, mask: Tensor, mode: SegmentationLoss, offset: int = 0
) -> Tensor:
    """Referring segmentation: mask embeddings [B, T, h, w, D] vs the global batch's expressions
    [N, D] (`gather_across_ranks`); sample i's own expression is offset + i; mask [B, T, S, S] is its
    object.

    softmax (original): at foreground pixels, cross-entropy over all expressions (background
    ignored), averaged per sample as the original does (a mean over the batch's pixels would
    let large objects outweigh small ones).
    sigmoid (paper): the own expression's score is positive on the object and negative elsewhere
    (positives and negatives weighted equally).
    """
    b = grid.shape[0]
    own = offset + torch.arange(b, device=grid.device)
    if mode == "softmax":
        scores = mask_scores(logits, grid, captions, mask.shape[-1])  # [B, T, K, S, S]
        return masked_cross_entropy(scores, torch.where(mask.bool(), own[:, None, None, None].expand_as(mask), -1))
    scores = mask_scores(logits, grid, captions[own, None], mask.shape[-1])[:, :, 0]
    return balanced_sigmoid_loss(scores, mask.bool())
