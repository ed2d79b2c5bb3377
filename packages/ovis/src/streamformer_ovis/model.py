"""The online VIS model: StreamFormer + ViT-Adapter -> per-frame Mask2Former head, and the online
loop that streams a video through the backbone's temporal KV cache and the tracker.

Training runs whole clips offline (the backbone's causal mask within the clip); inference runs a
video of any length frame by frame (or in chunks) through the cache, under the adapter's temporal
window, so temporal context is never reset (the original restarted it every 16 frames).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamformer.masks import compressed_rle

from .adapter import StreamFormerAdapter
from .head import CTVISHead, HeadOutput
from .tracker import OnlineTracker, TrackerConfig


class OnlineVISModel(nn.Module):
    """Frames [B, T, 3, H, W] in [-1, 1] -> per-frame predictions (rows: B*T, clip-major)."""

    def __init__(self, adapter: StreamFormerAdapter, head: CTVISHead) -> None:
        super().__init__()
        self.adapter, self.head = adapter, head

    def forward(self, pixel_values: Tensor, cache=None) -> HeadOutput:
        return self.head(self.adapter(pixel_values, cache=cache))

    @torch.inference_mode()
    def track(
        self, frames: Iterable[Tensor], tracker_config: TrackerConfig | None = None, chunk: int = 1, encode_mask=None
    ) -> tuple[list[dict[str, Any]], int]:
        """Stream frames (each [3, H, W], or chunks [t, 3, H, W]) through the cache and the tracker.

        Returns the tracker's video-level instances (`OnlineTracker.finish`; masks as
        `encode_mask` makes them, see `mask_encoder`) and the frame count."""
        tracker = OnlineTracker(tracker_config, encode_mask)
        cache = self.adapter.new_cache(1)
        device = next(self.parameters()).device
        count = 0
        for block in _chunks(frames, chunk):
            output = self(block.to(device)[None], cache=cache)
            for t in range(output.logits.shape[0]):
                tracker.step({"logits": output.logits[t], "masks": output.masks[t], "embeds": output.embeds[t]})
            count += output.logits.shape[0]
        return tracker.finish(), count


def _chunks(frames: Iterable[Tensor], size: int) -> Iterable[Tensor]:
    pending: list[Tensor] = []
    for frame in frames:
        pending += list(frame) if frame.ndim == 4 else [frame]
        while len(pending) >= size:
            yield torch.stack(pending[:size])
            pending = pending[size:]
    if pending:
        yield torch.stack(pending)


def mask_encoder(resized: tuple[int, int], original: tuple[int, int]):
    """Mask logits of one frame -> its YouTube-VIS segmentation (compressed RLE of the original
    frame, None when empty), made as the tracker receives each frame: a track then holds about a
    hundred bytes per frame, not the logits, however long the video."""

    def encode(logits: Tensor) -> dict[str, Any] | None:
        mask = upsample_mask(logits, resized, original)
        return compressed_rle(mask) if mask.any() else None

    return encode


def video_results(
    instances: list[dict[str, Any]], video_id: int, category_ids: tuple[int, ...] | list[int]
) -> list[dict[str, Any]]:
    """Tracker instances whose masks `mask_encoder` made -> YouTube-VIS result rows."""
    return [
        {
            "video_id": video_id,
            "score": float(instance["score"]),
            "category_id": int(category_ids[instance["category"]]),
            "segmentations": instance["masks"],
        }
        for instance in instances
    ]


def upsample_mask(logits: Tensor, resized: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """Mask logits at stride 4 of the padded frame -> a bool mask of the original frame: upsampled
    to the padded input, cropped to the resized frame (`resized`: its size before padding),
    resized to `original`, binarised at 0."""
    padded = (logits.shape[-2] * 4, logits.shape[-1] * 4)
    x = F.interpolate(logits[None, None].float(), size=padded, mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    x = F.interpolate(x, size=original, mode="bilinear", align_corners=False)
    return (x[0, 0] > 0).cpu().numpy()
