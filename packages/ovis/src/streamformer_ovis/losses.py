"""Training losses: Mask2Former's set loss on every frame and CTVIS's contrastive ReID loss across
the frames of a clip.

The set loss is transformers' (`Mask2FormerLoss`: Hungarian matching on sampled points, cross
entropy with a down-weighted no-object class, sigmoid BCE and dice on importance-sampled points),
run per frame with the weights applied here (transformers returns them unweighted) and the number
of masks averaged over DDP processes here (transformers only does that under accelerate).

The ReID loss contrasts each matched query with the same instance's embedding in earlier frames
(the positive) and every other query of the previous frame (the negatives), so that one
instance's queries stay close across frames and apart from everything else: what the tracker
matches at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from .head import HeadOutput
from .tracker import fuse_embedding


@dataclass
class ClipTargets:
    """The instances of one training clip. An instance is present in a frame where its mask is not
    empty; its index is its identity across the clip's frames."""

    classes: Tensor  # [N] long, 0-based
    masks: Tensor  # [N, T, H, W] bool, at the frames' resolution

    def __post_init__(self) -> None:
        if self.masks.ndim != 4 or self.masks.shape[0] != self.classes.shape[0]:
            raise ValueError(f"masks must be [N, T, H, W] for N = {self.classes.shape[0]} classes, got {tuple(self.masks.shape)}")

    @property
    def frames(self) -> int:
        return self.masks.shape[1]


class CTVISCriterion(nn.Module):
    """Weighted set loss (final prediction and every auxiliary one) + contrastive ReID loss."""

    def __init__(
        self, config: Mask2FormerConfig, reid_weight: float = 2.0, aux_reid_weight: float = 3.0, momentum_embed: bool = True
    ) -> None:
        super().__init__()
        self.set_loss = Mask2FormerLoss(config, weight_dict={})
        self.weights = {
            "loss_cross_entropy": config.class_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
        }
        self.reid_weight, self.aux_reid_weight = reid_weight, aux_reid_weight
        self.momentum_embed = momentum_embed

    def forward(self, output: HeadOutput, targets: list[ClipTargets]) -> dict[str, Tensor]:
        """Losses of B clips whose T frames each are the rows of `output` (clip-major). Returns each
        weighted term and their sum under "loss"."""
        lengths = {clip.frames for clip in targets}
        frames = targets[0].frames if targets else 0
        if len(lengths) != 1 or len(targets) * frames != output.logits.shape[0]:
            raise ValueError(
                f"{len(targets)} clips of {sorted(lengths)} frames do not match {output.logits.shape[0]} predicted frames"
            )
        classes, masks, ids = frame_targets(targets)
        num_masks = self.num_masks(classes, output.logits.device)
        losses: dict[str, Tensor] = {}
        predictions = [*output.aux, (output.logits, output.masks)]
        for layer, (logits, mask_logits) in enumerate(predictions):
            indices = self.set_loss.matcher(mask_logits, logits, masks, classes)
            parts = {
                **self.set_loss.loss_labels(logits, classes, indices),
                **self.set_loss.loss_masks(mask_logits, masks, indices, num_masks),
            }
            suffix = "" if layer == len(predictions) - 1 else f"_{layer}"
            losses.update({f"{name}{suffix}": self.weights[name] * value for name, value in parts.items()})
        reid, aux_reid = contrastive_reid_loss(output.embeds, indices, ids, frames, self.momentum_embed)
        losses["loss_reid"] = self.reid_weight * reid
        losses["loss_aux_reid"] = self.aux_reid_weight * aux_reid
        losses["loss"] = sum(losses.values())
        return losses

    @staticmethod
    def num_masks(classes: list[Tensor], device: torch.device) -> Tensor:
        """Masks per process, averaged over DDP processes (at least 1), to normalise the mask losses."""
        count = torch.tensor(float(sum(len(c) for c in classes)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1)


def frame_targets(targets: list[ClipTargets]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per frame (clip-major): the classes, float masks and identities of the instances present."""
    classes, masks, ids = [], [], []
    for clip in targets:
        present = clip.masks.flatten(2).any(-1)  # [N, T]
        for t in range(clip.frames):
            keep = present[:, t].nonzero().squeeze(1)
            classes.append(clip.classes[keep])
            masks.append(clip.masks[keep, t].float())
            ids.append(keep)
    return classes, masks, ids


def contrastive_reid_loss(
    embeds: Tensor, indices: list[tuple], ids: list[Tensor], frames: int, momentum_embed: bool = True
) -> tuple[Tensor, Tensor]:
    """CTVIS's contrastive ReID loss over clips of `frames` frames (rows of `embeds` [B*T, Q, E]).

    For every instance matched to a query (the anchor) in a frame t >= 1: the positive is, with
    probability 0.5 when `momentum_embed`, the similarity-guided fusion of its earlier embeddings,
    otherwise its most recent earlier embedding (or its next later one when it has none earlier);
    the negatives are every other query of frame t - 1. Per item, with dot-product similarities s:
    `log(1 + sum_neg exp(s_neg - s_pos))`, and an auxiliary `mean((cos - label)^2)` (label 1 for
    the positive, 0 for the negatives). Both are averaged over items; zero when there is none.
    """
    num_queries = embeds.shape[1]
    reid, aux = [], []
    for start in range(0, embeds.shape[0], frames):
        # query[t][instance]: the query matched to the instance in frame t of this clip
        query = [
            dict(zip(ids[start + t][torch.as_tensor(target)].tolist(), torch.as_tensor(pred).tolist(), strict=True))
            for t, (pred, target) in enumerate(indices[start : start + frames])
        ]
        clip = embeds[start : start + frames]
        for t in range(1, frames):
            for instance, anchor_query in query[t].items():
                seen = [s for s in range(t) if instance in query[s]]
                later = [s for s in range(t + 1, frames) if instance in query[s]]
                if not seen and not later:
                    continue
                if seen and momentum_embed and torch.rand(()) < 0.5:
                    positive = fused_embedding(torch.stack([clip[s, query[s][instance]] for s in seen]))
                else:
                    s = seen[-1] if seen else later[0]
                    positive = clip[s, query[s][instance]]
                previous = query[t - 1].get(instance)
                negatives = clip[t - 1, [q for q in range(num_queries) if q != previous]]
                anchor = clip[t, anchor_query]
                candidates = torch.cat([positive[None], negatives])
                similarity = candidates @ anchor
                reid.append(torch.logsumexp(F.pad(similarity[1:] - similarity[0], (0, 1)), dim=0))
                cosine = F.cosine_similarity(candidates, anchor[None], dim=-1)
                labels = torch.zeros_like(cosine)
                labels[0] = 1
                aux.append(((cosine - labels) ** 2).mean())
    if not reid:
        zero = embeds.sum() * 0  # keeps the graph, so DDP sees every parameter used
        return zero, zero
    return torch.stack(reid).mean(), torch.stack(aux).mean()


def fused_embedding(history: Tensor) -> Tensor:
    """The similarity-guided fusion of embeddings [S, E] seen in order (the tracker's rule)."""
    fused = history[0]
    for s in range(1, history.shape[0]):
        fused = fuse_embedding(fused, history[:s], history[s])
    return fused
