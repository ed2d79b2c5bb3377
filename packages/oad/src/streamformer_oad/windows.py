"""Frame-index arithmetic of MAT samples: windows, long-memory samplers, future targets.

Pure numpy over the frame indices of one session of `frame_count` feature/target rows. A sample is a
work window of `work_length` observed frames [work_start, work_end), `anticipation_length` frames
after it to anticipate, a long memory of `num_samples` earlier frames (index 0 pads the history
before the video start) and `future_length` future target rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowLengths:
    """Sample lengths in feature frames; the defaults are THUMOS' at 4 fps."""

    work: int = 32
    anticipation: int = 8
    future: int = 48
    memory_samples: int = 256
    memory_rate: int = 4  # test-time sampler stride

    @property
    def memory_length(self) -> int:
        """Frames of history the long memory covers (1024 for THUMOS)."""
        return self.memory_samples * self.memory_rate


def window_starts(frame_count: int, work_length: int, anticipation_length: int, seed: int) -> list[int]:
    """Starts of the non-overlapping train/test windows: `seed + (work + anticipation)·k`.

    A window is kept while `work_start + work_length < frame_count - anticipation_length` (strict, as the
    original: a window whose anticipated rows end exactly at the last frame is dropped too); the tail
    that does not fit is not used.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    stride = work_length + anticipation_length
    return list(range(seed, frame_count - anticipation_length - work_length, stride))


def memory_padding_mask(indices: np.ndarray) -> np.ndarray:
    """(S,) bool, True = masked: the leading index-0 samples except the last one.

    `indices` is sorted; index 0 stands for "before the video start", but exactly one index-0 sample
    stays visible so that attention never sees an all-masked memory (MAT's
    `bisect_right(indices, 0) - 1`, masking nothing when that is <= 0).
    """
    num_masked = max(int(np.searchsorted(indices, 0, side="right")) - 1, 0)
    mask = np.zeros(len(indices), dtype=bool)
    mask[:num_masked] = True
    return mask


def _check_work_start(work_start: int) -> None:
    if work_start < 0:
        raise ValueError(f"work_start must be >= 0, got {work_start}")


def stretched_memory_indices(work_start: int, num_samples: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Train-time long memory ("segment sampler"): the available history stretched to `num_samples`.

    `linspace(max(0, work_start - length), work_start - 1, num_samples)` truncated to int and clipped at
    0 (duplicates allowed); for work_start 0 every index is 0. Returns ((S,) int64 indices, (S,) bool
    padding mask).
    """
    _check_work_start(work_start)
    indices = np.linspace(max(0, work_start - length), work_start - 1, num_samples).astype(np.int64).clip(0)
    indices = np.sort(indices)  # linspace descends only for work_start 0, where every index is 0 anyway
    return indices, memory_padding_mask(indices)


def uniform_memory_indices(work_start: int, num_samples: int, length: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Test-time long memory: every `rate`-th frame of the last `length` frames, left-padded with index 0.

    `arange(max(0, work_start - length), work_start)[::rate]` (the stride starts at the oldest frame, so
    the newest frames may fall between samples), then zeros in front up to `num_samples`. Returns
    ((S,) int64 indices, (S,) bool padding mask).
    """
    _check_work_start(work_start)
    history = np.arange(max(0, work_start - length), work_start)[::rate]
    if len(history) > num_samples:
        raise ValueError(f"{length} frames at rate {rate} give {len(history)} samples, more than num_samples={num_samples}")
    indices = np.concatenate([np.zeros(num_samples - len(history), dtype=np.int64), history])
    return indices, memory_padding_mask(indices)


def future_indices(work_end: int, frame_count: int, future_length: int) -> np.ndarray:
    """(future_length,) rows of the future target: from work_end + 1 (not work_end, unlike the
    anticipation rows), clamped to the last frame, right-padded by repeating the last index."""
    last = frame_count - 1
    indices = np.arange(min(work_end + 1, last), min(work_end + future_length, last) + 1)
    return np.concatenate([indices, np.full(future_length - len(indices), indices[-1])])


def online_indices(
    t: int, work_length: int, num_samples: int, length: int, rate: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample that scores frame t from the past only: its work window ends at frame t.

    Work indices `clip(arange(t - work_length + 1, t + 1), 0)`: for t < work_length - 1 the window is
    left-padded by repeating frame 0. Our deviation from MAT's batch mode, whose first window scores
    frames 0..work_length-2 with a window that also holds later frames (not online). The long memory
    is `uniform_memory_indices` for work_start = t - work_length + 1; for work_start <= 0 it is all
    index 0 with one visible sample. No index exceeds t.

    Returns ((S,) memory indices, (S,) bool memory mask, (work_length,) work indices).
    """
    work_start = t - work_length + 1
    work_indices = np.arange(work_start, t + 1).clip(0)
    memory_indices, memory_mask = uniform_memory_indices(max(work_start, 0), num_samples, length, rate)
    return memory_indices, memory_mask, work_indices
