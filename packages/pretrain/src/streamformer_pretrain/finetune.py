"""Action-recognition fine-tuning of a StreamFormer backbone (Kinetics-400, SSv2, the synthetic world).

The original fine-tuned on AR with a UMT/VideoMAE script (`downstream/AR` of the StreamFormer
repository); this module is that recipe as a LightningModule and a LightningDataModule:

* `ARFinetuning`: the backbone (`StreamFormerVisionModel.from_pretrained`), a pooled feature per
  clip and a LayerNorm -> dropout -> linear head; mixup/cutmix with soft targets and label
  smoothing; AdamW with layer-wise learning-rate decay and a per-step cosine schedule after a
  linear warm-up; top-1 and top-5 accuracy, averaged over the views of a video at test time.
* `ARDataModule`: the readers' `ActionRecognitionDataset` (CSV `relative_path,class_name`,
  `label2id.json`) with the fine-tuning transforms: random-resized crop and `RandAugment` at
  train time, the short side resized and a centre crop for validation, and `test_clips` x
  `test_crops` views per video for testing.
* `finetune_cli`: the LightningCLI (`streamformer-pretrain finetune fit|validate|test --config
  configs/ar/...`), `num_classes` linked from the data's `label2id.json`.

Tensors are in the backbone's layout: frames [T, 3, H, W] in [-1, 1], clips [B, T, 3, H, W],
and the test loader's videos [B, V, T, 3, H, W] (V views).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics.classification import MulticlassAccuracy

from streamformer import StreamFormerVisionModel
from streamformer.schedule import warmup_cosine_factor
from streamformer.video import normalise, resize_short_side

from .data import collate
from .readers import ActionRecognitionDataset as _ReaderDataset
from .readers import BrokenSample, ClipOptions, SkipRateExceeded, open_clip_video
from .sampling import derive_seed
from .transforms import _randint, _uniform, random_resized_crop

Mode = Literal["full", "spatial_lora", "lora", "linear"]
Pooling = Literal["global", "mean"]


# ---------------------------------------------------------------------------------------------
# RandAugment on float frames


def _blend(image: Tensor, degenerate: Tensor, factor: float) -> Tensor:
    """PIL's ImageEnhance: `degenerate + factor * (image - degenerate)`, in [0, 1]."""
    return (degenerate + factor * (image - degenerate)).clamp(0.0, 1.0)


def _grey(image: Tensor) -> Tensor:
    """Luma [T, 1, H, W] of RGB [T, 3, H, W] (ITU-R 601, as PIL's "L")."""
    r, g, b = image.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _sharpness(image: Tensor, factor: float) -> Tensor:
    """PIL's sharpness: blend with the 3x3 smoothed image (border pixels kept)."""
    if image.shape[-1] < 3 or image.shape[-2] < 3:
        return image
    kernel = image.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    smooth = F.conv2d(image.flatten(0, 1)[:, None], kernel[None, None]).view(*image.shape[:2], *(s - 2 for s in image.shape[2:]))
    degenerate = image.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(image, degenerate, factor)


def _affine(frames: Tensor, matrix: Sequence[Sequence[float]], shift: Sequence[float] = (0.0, 0.0)) -> Tensor:
    """Resample frames [T, 3, H, W] in [-1, 1]: output pixel p (centred pixel coordinates) reads
    input pixel `matrix @ p + shift`; outside the frame is 0, SigLIP's grey."""
    _, _, h, w = frames.shape
    (a, b), (c, d) = matrix
    # affine_grid works in coordinates normalised by half the width and height: S A S^-1, S b.
    theta = frames.new_tensor([[a, b * h / w, 2 * shift[0] / w], [c * w / h, d, 2 * shift[1] / h]])
    grid = F.affine_grid(theta.expand(len(frames), 2, 3), list(frames.shape), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _posterize(image: Tensor, bits: int) -> Tensor:
    step = 2 ** (8 - bits)
    return torch.floor(torch.round(image * 255.0) / step) * step / 255.0


def _solarize(image: Tensor, level: float) -> Tensor:
    """Invert the pixels at or above 256 (1 - level) of 255 (none at level 0, as PIL's)."""
    return torch.where(image * 255.0 >= 256.0 * (1.0 - level), 1.0 - image, image)


def _autocontrast(image: Tensor) -> Tensor:
    """Stretch each frame's channels to [0, 1] (a flat channel is left as it is)."""
    low = image.amin(dim=(-2, -1), keepdim=True)
    high = image.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    return torch.where(span > 0, (image - low) / span.clamp_min(1e-8), image)


# Colour ops act on [0, 1] pixels, geometric ones on [-1, 1] (grey fill = 0). `level` is the
# signed magnitude / 10 (timm's scale), in [-1, 1].
_COLOUR_OPS = {
    "identity": lambda x, level: x,
    "brightness": lambda x, level: _blend(x, torch.zeros_like(x), 1.0 + 0.9 * level),
    "color": lambda x, level: _blend(x, _grey(x).expand_as(x), 1.0 + 0.9 * level),
    "contrast": lambda x, level: _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True).expand_as(x), 1.0 + 0.9 * level),
    "sharpness": lambda x, level: _sharpness(x, 1.0 + 0.9 * level),
    "posterize": lambda x, level: _posterize(x, 8 - round(4 * abs(level))),
    "solarize": lambda x, level: _solarize(x, abs(level)),
    "autocontrast": lambda x, level: _autocontrast(x),
}


def _rotate(x: Tensor, level: float) -> Tensor:
    angle = math.radians(30.0 * level)
    return _affine(x, ((math.cos(angle), -math.sin(angle)), (math.sin(angle), math.cos(angle))))


_GEOMETRIC_OPS = {
    "rotate": _rotate,
    "shear_x": lambda x, level: _affine(x, ((1.0, 0.3 * level), (0.0, 1.0))),
    "shear_y": lambda x, level: _affine(x, ((1.0, 0.0), (0.3 * level, 1.0))),
    "translate_x": lambda x, level: _affine(x, ((1.0, 0.0), (0.0, 1.0)), (0.45 * level * x.shape[-1], 0.0)),
    "translate_y": lambda x, level: _affine(x, ((1.0, 0.0), (0.0, 1.0)), (0.0, 0.45 * level * x.shape[-2])),
}
_SIGNED_OPS = ("brightness", "color", "contrast", "sharpness", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")


class RandAugment:
    """RandAugment on float frames [T, 3, H, W] in [-1, 1], one draw of ops for the whole clip.

    Each call draws `num_ops` ops (with replacement) from `ops`; each is applied with probability
    `prob`, at magnitude `magnitude` (+ N(0, `magnitude_std`)), clipped to [0, 10], the sign of
    signed ops drawn at random. Every frame of the clip gets the same ops at the same magnitudes,
    so the motion between frames is kept.

    Magnitudes are on timm's scale (as `transforms.rand_augment` and the original's
    `rand-m7-n4-mstd0.5-inc1`): at 10, brightness/colour/contrast/sharpness factors 1 +- 0.9,
    rotation 30 degrees, shear 0.3, translation 45% of the side, posterize to 4 bits, solarize
    every pixel. torchvision's `RandAugment(magnitude=9)` (of 31 bins) is about 3 here. Equalize
    is left out (it needs per-frame histograms); autocontrast stretches each frame's channels.
    """

    OPS: tuple[str, ...] = (*_COLOUR_OPS, *_GEOMETRIC_OPS)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.0,
        prob: float = 1.0,
        ops: Sequence[str] | None = None,
    ) -> None:
        self.ops = tuple(ops) if ops is not None else self.OPS
        unknown = sorted(set(self.ops) - set(self.OPS))
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; choose from {self.OPS}")
        if not 0.0 <= magnitude <= 10.0:
            raise ValueError(f"magnitude is on a 0-10 scale, got {magnitude}")
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, magnitude_std={self.magnitude_std}, prob={self.prob})"

    def draw(self, generator: torch.Generator | None = None) -> list[tuple[str, float]]:
        """The ops of one clip and their signed levels in [-1, 1]."""
        generator = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        chosen = []
        for _ in range(self.num_ops):
            op = self.ops[_randint(generator, 0, len(self.ops) - 1)]
            if _uniform(generator) >= self.prob:
                continue
            noise = self.magnitude_std * torch.randn((), generator=generator).item() if self.magnitude_std > 0 else 0.0
            level = min(max(self.magnitude + noise, 0.0), 10.0) / 10.0
            if op in _SIGNED_OPS and _uniform(generator) < 0.5:
                level = -level
            chosen.append((op, level))
        return chosen

    @staticmethod
    def apply(frames: Tensor, op: str, level: float) -> Tensor:
        """One op at a signed `level` on frames [T, 3, H, W] in [-1, 1]."""
        if op in _GEOMETRIC_OPS:
            return _GEOMETRIC_OPS[op](frames, level).clamp(-1.0, 1.0)
        return _COLOUR_OPS[op]((frames + 1.0) / 2.0, level) * 2.0 - 1.0

    def __call__(self, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"RandAugment takes frames [T, 3, H, W], got {tuple(frames.shape)}")
        for op, level in self.draw(generator):
            frames = self.apply(frames, op, level)
        return frames


# ---------------------------------------------------------------------------------------------
# Mixup and CutMix on video batches


class MixedBatch(NamedTuple):
    video: Tensor  # [B, T, 3, H, W]
    targets: Tensor  # [B, C] soft targets, rows summing to 1
    weights: Tensor  # [B, 1, 1, H, W]: each pixel's share of the sample itself (the rest is its partner's)
    partner: Tensor  # [B]: the sample each one is mixed with (the batch reversed)


def smoothed_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B] -> [B, C]: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((len(labels), num_classes), off, dtype=dtype, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def mix_videos(
    video: Tensor,
    labels: Tensor,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    mix_prob: float = 1.0,
    switch_prob: float = 0.5,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> MixedBatch:
    """Mixup / CutMix per sample (timm's "elem" mode) on clips [B, T, 3, H, W].

    Sample i is mixed with sample B - 1 - i. With probability `mix_prob` it is mixed at all: by
    CutMix with probability `switch_prob` when both alphas are set (otherwise by whichever is),
    lambda ~ Beta(alpha, alpha). Mixup blends the two clips by lambda; CutMix pastes a box of
    area (1 - lambda) of the partner, lambda then being the area actually kept. One lambda and one
    box per sample, applied to every frame of it alike. The soft target is lambda times the
    sample's (smoothed) one-hot plus (1 - lambda) times its partner's.
    """
    b, _, _, h, w = video.shape
    seed = int(torch.randint(2**62, (), generator=generator)) if generator is not None else int(torch.randint(2**62, ()))
    rng = np.random.default_rng(seed)
    weights = torch.ones(b, 1, 1, h, w, dtype=video.dtype)
    for i in range(b):
        if rng.random() >= mix_prob or (mixup_alpha <= 0 and cutmix_alpha <= 0):
            continue
        cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
        lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if cutmix else rng.beta(mixup_alpha, mixup_alpha))
        if not cutmix:
            weights[i] = lam
            continue
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
        left, right = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
        weights[i, ..., top:bottom, left:right] = 0.0
    weights = weights.to(video.device)
    partner = torch.arange(b - 1, -1, -1, device=video.device)
    mixed = weights * video + (1.0 - weights) * video[partner]
    lam = weights.mean(dim=(1, 2, 3, 4))[:, None].float()
    one_hot = smoothed_one_hot(labels, num_classes, label_smoothing)
    targets = lam * one_hot + (1.0 - lam) * one_hot[partner]
    return MixedBatch(mixed, targets, weights, partner)


def average_views(logits: Tensor) -> Tensor:
    """Per-view logits [B, V, C] -> [B, C]: the mean over views of the softmax probabilities."""
    return logits.float().softmax(dim=-1).mean(dim=1)


# ---------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay


def layer_id(name: str, num_layers: int) -> int:
    """The depth of a parameter for layer-wise lr decay (as BEiT/VideoMAE): the embeddings 0,
    block i i + 1, everything after the blocks (post_layernorm, the pooling head, the classifier)
    num_layers + 1. `name` may carry the module's `backbone.` prefix."""
    name = name.removeprefix("backbone.")
    if name.startswith("embeddings."):
        return 0
    if name.startswith("encoder.layer."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


# Parameters without weight decay besides biases, norms and 0-d gates (every tensor of ndim <= 1):
# the position and time embedding tables and the pooling head's probe (as VideoMAE's
# `no_weight_decay`: position/time embeddings and tokens).
NO_DECAY_NAMES = ("position_embeddings", "time_embeddings", "probe")


# ---------------------------------------------------------------------------------------------
# The model


class ClassificationHead(nn.Module):
    """The original's head: LayerNorm (`fc_norm`) -> dropout -> linear classifier."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.fc_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.fc_norm(features)))


class ARFinetuning(L.LightningModule):
    """Action-recognition fine-tuning of a StreamFormer backbone.

    Args:
        backbone: a `StreamFormerVisionModel` directory (`from_pretrained`: our format, e.g.
            `streamformer-pretrain export`, or an original StreamFormer checkpoint).
        num_classes: classes of the head; the CLI links it from the data's `label2id.json`.
        mode: what trains.
            "full": the whole backbone (LoRA adapters, when it has them, train with their base
            weights: the original's Kinetics run).
            "spatial_lora": the spatial attention's base weights stay frozen, their LoRA adapters
            and everything else train (the original's SSv2 run, `--freeze_spatial`).
            "lora": only the LoRA adapters and the head.
            "linear": only the head (frozen backbone, kept in eval mode).
            The LoRA modes need a backbone built with LoRA (config `add_lora_spatial` with
            `lora_rank` > 0); they raise otherwise.
        pooling: the clip's feature. "global": the last frame's pooled feature, which by causality
            has seen the whole clip: the answer a stream gives at its latest frame. "mean": the
            mean over frames of the per-frame pooled features, the original's choice. The
            original reshaped the [B, N*T] token sequence, laid out patch-major with frames
            fastest, straight to [B*T, N] "frames" before pooling (and with the config's frame
            count, not the clip's), so each pooled "frame" mixed the tokens of several frames.
            Here each frame is pooled on its own in the frame-major layout ([B, T, N, D] ->
            `pooler_output` [B, T, D]) and then averaged over T.
        head_dropout: dropout before the classifier.
        label_smoothing: smoothing of the (mixed) targets.
        mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob: `mix_videos`; 0 alphas switch it off.
        lr: peak learning rate of the last layer (the head); layer l gets
            lr * layer_decay ** (L + 1 - l) (`layer_id`).
        min_lr: the cosine's floor (scaled per layer alike).
        warmup_epochs: linear warm-up, in epochs (fractions allowed), then a half cosine to the
            end of training, stepped per optimizer step.
        weight_decay: AdamW decay of weight matrices and kernels; biases, norms, gates,
            embedding tables and the probe get none (`NO_DECAY_NAMES`).
        drop_path_rate: stochastic depth of the backbone (None: its config's).
        gates_off: zero and freeze every temporal gate (`disable_temporal`): frames are encoded
            independently (the "no temporal attention" ablation).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        mode: Mode = "full",
        pooling: Pooling = "global",
        head_dropout: float = 0.0,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        mix_switch_prob: float = 0.5,
        lr: float = 1e-4,
        min_lr: float = 1e-6,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 0.0,
        drop_path_rate: float | None = None,
        gates_off: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if mode not in ("full", "spatial_lora", "lora", "linear"):
            raise ValueError(f"mode must be full, spatial_lora, lora or linear, got {mode!r}")
        if pooling not in ("global", "mean"):
            raise ValueError(f"pooling must be global or mean, got {pooling!r}")
        overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        self.backbone: StreamFormerVisionModel = StreamFormerVisionModel.from_pretrained(backbone, **overrides)
        config = self.backbone.config
        self.head = ClassificationHead(config.hidden_size, num_classes, head_dropout, config.layer_norm_eps)
        self._set_trainable()
        self.train()  # `from_pretrained` returns the backbone in eval mode, which Lightning would keep while training
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for stage in ("val", "test")
                for name, k in (("top1", 1), ("top5", top5))
            }
        )

    # -- trainable parameters ---------------------------------------------------------------

    def _set_trainable(self) -> None:
        mode, backbone = self.hparams.mode, self.backbone
        if mode in ("lora", "spatial_lora"):
            config = backbone.config
            if not any("lora_" in name for name, _ in backbone.named_parameters()):
                raise ValueError(
                    f"mode={mode!r} trains the backbone's LoRA adapters, but {self.hparams.backbone} has none"
                    f" (its config: add_lora_spatial={config.add_lora_spatial}, lora_rank={config.lora_rank}); use a"
                    " backbone saved with LoRA (add_lora_spatial and lora_rank > 0), or mode 'full' or 'linear'"
                )
        backbone.requires_grad_(mode in ("full", "spatial_lora"))
        if mode == "spatial_lora":
            for layer in backbone.encoder.layer:
                for linear in (layer.attention.attention.qkv, layer.attention.output.dense):
                    if hasattr(linear, "base_layer"):
                        linear.base_layer.requires_grad_(False)
        if mode == "lora":
            for name, param in backbone.named_parameters():
                param.requires_grad_("lora_" in name)
        if self.hparams.gates_off:
            backbone.disable_temporal()
        self.head.requires_grad_(True)

    def train(self, mode: bool = True) -> ARFinetuning:
        super().train(mode)
        if self.hparams.mode == "linear":
            self.backbone.eval()  # a frozen backbone keeps its eval behaviour (no dropout, no drop path)
        return self

    # -- forward ------------------------------------------------------------------------------

    def features(self, video: Tensor) -> Tensor:
        """Clips [B, T, 3, H, W] -> pooled features [B, D] (`pooling`)."""
        out = self.backbone(video)
        return out.global_output if self.hparams.pooling == "global" else out.pooler_output.mean(dim=1)

    def forward(self, video: Tensor) -> Tensor:
        """Clips [B, T, 3, H, W] -> logits [B, C]."""
        return self.head(self.features(video))

    def view_logits(self, video: Tensor) -> Tensor:
        """Videos [B, V, T, 3, H, W] (or clips [B, T, 3, H, W], one view) -> logits [B, V, C],
        one view at a time (memory stays that of a batch of clips)."""
        if video.ndim == 5:
            video = video[:, None]
        return torch.stack([self(video[:, v]) for v in range(video.shape[1])], dim=1)

    # -- steps --------------------------------------------------------------------------------

    def _decide(self, flag: bool, all_ranks: bool) -> bool:
        """`flag`, or with `all_ranks` (training) whether it holds on every rank."""
        if all_ranks and self._trainer is not None:
            return self.trainer.strategy.reduce_boolean_decision(flag, all=True)
        return flag

    def _has_samples(self, batch: dict[str, Any], all_ranks: bool) -> bool:
        """False for a batch whose samples were all broken (each skipped and logged by its
        reader); raises once a reader passed its skip rate. In training every rank decides alike."""
        if not self._decide("error" not in batch, all_ranks):
            raise SkipRateExceeded(batch.get("error", "a data set passed its max_skip_rate on another rank (see its log)"))
        if batch.get("skipped"):
            self.log("data/skipped", float(batch["skipped"]), reduce_fx="sum", on_step=True, on_epoch=False, batch_size=1)
        return self._decide(batch.get("task") is not None, all_ranks)

    def mixing(self) -> bool:
        h = self.hparams
        return (h.mixup_alpha > 0 or h.cutmix_alpha > 0) and h.mix_prob > 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if not self._has_samples(batch, all_ranks=True):
            # Zero times every trainable parameter: DDP's all-reduce still runs as in any step.
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        video, labels, h = batch["video"], batch["label"], self.hparams
        if self.mixing():
            generator = torch.Generator().manual_seed(derive_seed("mix", self.global_step, self.global_rank, batch_idx))
            mixed = mix_videos(
                video, labels, h.num_classes, h.mixup_alpha, h.cutmix_alpha, h.mix_prob, h.mix_switch_prob,
                h.label_smoothing, generator,
            )  # fmt: skip
            loss = F.cross_entropy(self(mixed.video).float(), mixed.targets)
        else:
            loss = F.cross_entropy(self(video).float(), labels, label_smoothing=h.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=len(video))
        return loss

    def _evaluation_step(self, batch: dict[str, Any], stage: str) -> None:
        if not self._has_samples(batch, all_ranks=False):
            return
        labels = batch["label"]
        probs = average_views(self.view_logits(batch["video"]))
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(labels), sync_dist=True)
        for name in ("top1", "top5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(probs, labels)
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "top1", batch_size=len(labels))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    # -- optimisation -------------------------------------------------------------------------

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups of the trainable parameters, one per (depth, decay or not): each with
        `lr` = lr * layer_decay ** (L + 1 - depth) (`layer_id`) and its `lr_scale`, `layer_id`."""
        h, num_layers = self.hparams, self.backbone.config.num_hidden_layers
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            depth = layer_id(name, num_layers)
            decay = param.ndim > 1 and not name.endswith(NO_DECAY_NAMES)
            scale = h.layer_decay ** (num_layers + 1 - depth)
            group = groups.setdefault(
                (depth, decay),
                {
                    "params": [],
                    "names": [],
                    "weight_decay": h.weight_decay if decay else 0.0,
                    "lr": h.lr * scale,
                    "lr_scale": scale,
                    "layer_id": depth,
                },
            )
            group["params"].append(param)
            group["names"].append(name)
        return [groups[key] for key in sorted(groups)]

    def configure_optimizers(self):
        h, trainer = self.hparams, self.trainer
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=h.lr, betas=tuple(h.betas))
        total = max(1, int(trainer.estimated_stepping_batches))  # loads the train loader: its length is known below
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        warmup = min(total, round(h.warmup_epochs * per_epoch))
        factor = functools.partial(warmup_cosine_factor, warmup=warmup, total=total, floor=h.min_lr / h.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# ---------------------------------------------------------------------------------------------
# Data


def spatial_crops(frames: Tensor, size: int, crops: int) -> list[Tensor]:
    """uint8 frames [T, H, W, 3] -> `crops` views [T, 3, size, size] in [-1, 1]: the short side
    resized to `size`, then windows evenly spaced along the long side (1: the centre; 3: left,
    centre, right, or top, centre, bottom for portrait video)."""
    x = resize_short_side(frames.permute(0, 3, 1, 2).float(), size)
    h, w = x.shape[-2:]
    views = []
    for k in range(crops):
        fraction = 0.5 if crops == 1 else k / (crops - 1)
        top, left = (round(fraction * (h - size)), (w - size) // 2) if h > w else ((h - size) // 2, round(fraction * (w - size)))
        views.append(normalise(x[..., top : top + size, left : left + size]))
    return views


def clip_indices(frame_count: int, clip_length: int, clip: int, clips: int) -> list[int]:
    """Frames of temporal view `clip` of `clips`: one per equal segment of the video (as training
    samples), at (clip + 0.5) / clips of each segment, so the views interleave evenly (one view:
    the segment middles, as validation)."""
    edges = torch.linspace(0, frame_count, clip_length + 1, dtype=torch.float64)
    start, length = edges[:-1], edges[1:] - edges[:-1]
    return (start + (clip + 0.5) / clips * length).floor().clamp(max=frame_count - 1).long().tolist()


class FinetuneARDataset(_ReaderDataset):
    """`readers.ActionRecognitionDataset` with the fine-tuning transforms.

    Training (`options.train` and `options.augment`): a random-resized crop (`crop_scale` of the
    frame), then `rand_augment` on the cropped float frames (both drawn once per clip); flips
    come from the reader (`get`). Evaluation: `clips` x `crops` views per video (`clip_indices`,
    `spatial_crops`), as `video` [V, T, 3, S, S]. Broken files and classes outside label2id are
    skipped and counted as the readers do.
    """

    def __init__(
        self,
        csv_path: str | Path,
        prefix: str | Path,
        label2id: str | Path,
        dataset: str = "Kinetics",
        flips: bool = True,
        options: ClipOptions | None = None,
        rand_augment: RandAugment | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        clips: int = 1,
        crops: int = 1,
    ) -> None:
        super().__init__(str(csv_path), str(prefix), str(label2id), dataset, flips, options or ClipOptions())
        self.rand_augment, self.crop_scale = rand_augment, tuple(crop_scale)
        self.clips, self.crops = clips, crops

    def transform(self, frames, generator, masks=None):
        if not (self.options.train and self.options.augment):
            return super().transform(frames, generator, masks)
        video = random_resized_crop(frames, self.options.image_size, generator, self.crop_scale)
        if self.rand_augment is not None:
            video = self.rand_augment(video, generator)
        return video, None

    def load(self, sample, generator):
        if self.options.train:
            return super().load(sample, generator)
        path, name = sample
        if name not in self.label2id:
            raise BrokenSample(f"class {name!r} is not in label2id")
        video = open_clip_video(self.prefix / path, self.options.cache_videos)
        views = []
        for clip in range(self.clips):
            frames = video.read(clip_indices(video.frame_count, self.options.clip_length, clip, self.clips))
            views += spatial_crops(frames, self.options.image_size, self.crops)
        return {"video": torch.stack(views), "label": self.label2id[name], "dataset": self.dataset}


class _Samples(Dataset):
    """A reader indexed by (index, seed) keys (training) or plain indices (evaluation, seed 0)."""

    def __init__(self, reader: FinetuneARDataset) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        return self.reader.get(index, seed)


class SeededSampler(DistributedSampler):
    """Shuffled, sharded by rank like `DistributedSampler` (so Lightning leaves it in place), and
    yields (index, seed): every random draw of a sample (frames, crop, RandAugment, flip) comes
    from derive_seed(seed, epoch, index), reproducible across runs and worker counts."""

    def __iter__(self):
        for index in super().__iter__():
            yield index, derive_seed(self.seed, self.epoch, index)


class ARDataModule(L.LightningDataModule):
    """Kinetics/SSv2-style AR data for fine-tuning (`FinetuneARDataset`).

    Args:
        train_csv, val_csv, test_csv: `relative_video_path,class_name` CSVs without header; the
            test split defaults to the validation CSV (as the original tested on K400's and
            SSv2's validation sets).
        video_root: the folder the CSV paths are relative to.
        label2id: `{class name: id}` JSON; `num_classes` is its size.
        dataset: the data set's name (carried in the batches).
        clip_length, size: frames per clip and their side.
        batch_size: per device, for training; `eval_batch_size` (default: the same) for
            validation and testing (a test video holds test_clips x test_crops clips).
        rand_augment: `RandAugment(rand_augment_ops, rand_augment_magnitude, rand_augment_std,
            rand_augment_prob)` after the random-resized crop at train time.
        crop_scale: the random-resized crop's area range.
        test_clips, test_crops: views per test video, temporal x spatial (`clip_indices`,
            `spatial_crops`); validation uses one centre view.
        flips: random horizontal flips at train time; off for data whose classes name
            directions (SSv2's "pushing something from left to right", the world's "moving left").
        cache_videos: keep decoded videos in memory (small data sets only).
        max_skip_rate: the readers' limit on broken samples (`ClipOptions`).
    """

    def __init__(
        self,
        train_csv: str,
        val_csv: str,
        video_root: str,
        label2id: str,
        test_csv: str | None = None,
        dataset: str = "Kinetics",
        clip_length: int = 16,
        size: int = 224,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        rand_augment: bool = True,
        rand_augment_ops: int = 2,
        rand_augment_magnitude: float = 9.0,
        rand_augment_std: float = 0.0,
        rand_augment_prob: float = 1.0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        test_clips: int = 1,
        test_crops: int = 1,
        flips: bool = True,
        cache_videos: bool = False,
        seed: int = 0,
        max_skip_rate: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.label2id: dict[str, int] = json.loads(Path(label2id).read_text())
        self._datasets: dict[str, FinetuneARDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.label2id)

    def dataset(self, split: Literal["train", "val", "test"]) -> FinetuneARDataset:
        """The reader of a split (built once)."""
        if split not in self._datasets:
            h = self.hparams
            train = split == "train"
            options = ClipOptions(
                h.clip_length, h.size, train=train, augment=train, hflip=h.flips, cache_videos=h.cache_videos,
                max_skip_rate=h.max_skip_rate,
            )  # fmt: skip
            augment = RandAugment(h.rand_augment_ops, h.rand_augment_magnitude, h.rand_augment_std, h.rand_augment_prob)
            csv = {"train": h.train_csv, "val": h.val_csv, "test": h.test_csv or h.val_csv}[split]
            views = (h.test_clips, h.test_crops) if split == "test" else (1, 1)
            self._datasets[split] = FinetuneARDataset(
                csv, h.video_root, h.label2id, h.dataset, h.flips, options,
                rand_augment=augment if train and h.rand_augment else None, crop_scale=tuple(h.crop_scale),
                clips=views[0], crops=views[1],
            )  # fmt: skip
        return self._datasets[split]

    def _loader(self, split: str, **kwargs: Any) -> DataLoader:
        h = self.hparams
        batch_size = h.batch_size if split == "train" else h.eval_batch_size or h.batch_size
        return DataLoader(
            _Samples(self.dataset(split)), batch_size=batch_size, num_workers=h.num_workers, collate_fn=collate,
            pin_memory=torch.cuda.is_available(), persistent_workers=h.num_workers > 0, **kwargs,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        samples = _Samples(self.dataset("train"))
        sampler = SeededSampler(samples, num_replicas=world, rank=rank, shuffle=True, seed=self.hparams.seed, drop_last=True)
        return self._loader("train", sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


# ---------------------------------------------------------------------------------------------
# CLI


class FinetuneCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def finetune_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """`streamformer-pretrain finetune fit|validate|test --config configs/ar/<recipe>.yaml`.

    `args`: the command line after `finetune` (None: sys.argv); `run=False` parses and builds
    the model, data and trainer without a subcommand (then call `cli.trainer.fit(cli.model,
    cli.datamodule)` yourself)."""
    return FinetuneCLI(
        ARFinetuning,
        ARDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
