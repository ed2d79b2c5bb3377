"""Online inference: one score per frame from the frames up to it.

Frame t is scored by the sample of `windows.online_indices`: a work window ending at t and the
test-time long memory before it. Its score is the softmax over all logits of the last work
representation at row work_length - 1 (the last observed token), as the original evaluates;
the ambiguous logit is included.

`OnlineDetector` does this live, one feature vector per step, keeping only the frames a future
sample can still reach; `score_video` does it for a whole recorded video in batches (the
per-frame "batch mode"). Both use the per-sample grouped / un-grouped choice of the long-memory
compression (`MAT.forward`, grouping="sample"), so a frame's score depends on its own sample only,
never on the frames batched with it, and the two agree.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .model import MAT, MATOutput
from .windows import online_indices


def last_observed_scores(output: MATOutput, work_length: int) -> Tensor:
    """[B, C] softmax scores of the last observed work token of each sample."""
    return output.work_scores[-1][:, work_length - 1].softmax(dim=-1)


class OnlineDetector:
    """Runs MAT on a live stream: `step` takes the newest frame's features and returns its scores.

    The detector keeps a ring buffer of the last `long_memory_num_samples * long_memory_rate +
    work_memory_length` frames, the oldest frame the long memory and work window of any later
    sample can reach, so its memory is constant however long the stream runs. Each step runs the
    model on one sample. The model should be in eval mode.

    Args:
        model: a MAT.
        long_memory_rate: stride of the test-time long-memory sampler (4 for THUMOS: 256 samples
            cover 1024 frames).
    """

    def __init__(self, model: MAT, long_memory_rate: int = 4) -> None:
        if long_memory_rate < 1:
            raise ValueError(f"long_memory_rate must be >= 1, got {long_memory_rate}")
        config = model.config
        self.model = model
        self.long_memory_rate = long_memory_rate
        self.long_memory_length = config.long_memory_num_samples * long_memory_rate
        self.capacity = self.long_memory_length + config.work_memory_length
        self.reset()

    def reset(self) -> None:
        """Forget the stream; the next step is frame 0 of a new video."""
        self.frames_seen = 0
        self.visual_buffer: Tensor | None = None
        self.motion_buffer: Tensor | None = None

    @property
    def num_buffered(self) -> int:
        """Frames currently held (at most `capacity`)."""
        return min(self.frames_seen, self.capacity)

    @torch.no_grad()
    def step(self, visual_feature: Tensor, motion_feature: Tensor | None = None) -> Tensor:
        """Take frame t's features ([Dv], and [Dm] for a two-stream model) and return its scores [C]."""
        config = self.model.config
        parameter = next(self.model.parameters())
        visual_feature = torch.as_tensor(visual_feature, dtype=parameter.dtype, device=parameter.device)
        if visual_feature.shape != (config.visual_size,):
            raise ValueError(f"expected one visual feature of size {config.visual_size}, got shape {tuple(visual_feature.shape)}")
        if config.two_stream != (motion_feature is not None):
            raise ValueError(
                "a two-stream MAT needs motion features" if config.two_stream else "a visual-only MAT takes no motion"
            )
        if self.visual_buffer is None:
            self.visual_buffer = visual_feature.new_zeros(self.capacity, config.visual_size)
            if config.two_stream:
                self.motion_buffer = visual_feature.new_zeros(self.capacity, config.motion_size)

        t = self.frames_seen
        self.visual_buffer[t % self.capacity] = visual_feature
        if motion_feature is not None:
            self.motion_buffer[t % self.capacity] = torch.as_tensor(
                motion_feature, dtype=parameter.dtype, device=parameter.device
            )
        self.frames_seen += 1

        memory_indices, memory_mask, work_indices = online_indices(
            t, config.work_memory_length, config.long_memory_num_samples, self.long_memory_length, self.long_memory_rate
        )
        indices = np.concatenate([memory_indices, work_indices])
        # Frame i sits in slot i % capacity until frame i + capacity overwrites it.
        assert indices.min() > t - self.capacity, "a sample reaches past the buffer"
        slots = torch.as_tensor(indices % self.capacity, device=parameter.device)
        visual = self.visual_buffer[slots][None]
        motion = None if self.motion_buffer is None else self.motion_buffer[slots][None]
        mask = torch.as_tensor(memory_mask, device=parameter.device)[None]
        output = self.model(visual, motion, mask, grouping="sample")
        return last_observed_scores(output, config.work_memory_length)[0]


@torch.no_grad()
def score_video(
    model: MAT, visual: Tensor, motion: Tensor | None = None, long_memory_rate: int = 4, batch_size: int = 64
) -> Tensor:
    """Score every frame of a recorded video from its past only, in batches of frames.

    Args:
        model: a MAT, in eval mode.
        visual: [T, Dv] features of the whole video; motion: [T, Dm] for a two-stream model.
        long_memory_rate: stride of the test-time long-memory sampler.
        batch_size: frames (samples) per forward.
    Returns: [T, C] scores; row t equals `OnlineDetector.step` at frame t.
    """
    if len(visual) == 0:
        raise ValueError("the video has no frames")
    config = model.config
    parameter = next(model.parameters())
    visual = torch.as_tensor(visual, dtype=parameter.dtype, device=parameter.device)
    if motion is not None:
        motion = torch.as_tensor(motion, dtype=parameter.dtype, device=parameter.device)
    long_memory_length = config.long_memory_num_samples * long_memory_rate
    scores = []
    for start in range(0, len(visual), batch_size):
        samples = [
            online_indices(t, config.work_memory_length, config.long_memory_num_samples, long_memory_length, long_memory_rate)
            for t in range(start, min(start + batch_size, len(visual)))
        ]
        indices = torch.as_tensor(
            np.stack([np.concatenate([memory, work]) for memory, _, work in samples]), device=parameter.device
        )
        mask = torch.as_tensor(np.stack([mask for _, mask, _ in samples]), device=parameter.device)
        output = model(visual[indices], None if motion is None else motion[indices], mask, grouping="sample")
        scores.append(last_observed_scores(output, config.work_memory_length))
    return torch.cat(scores)
