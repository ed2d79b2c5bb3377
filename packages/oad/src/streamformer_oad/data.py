"""OAD data: `data_info.json`, per-session feature/target files, train/test windows and per-frame samples.

Layout (THUMOS / TVSeries features as MAT reads them), one (T, D) array per session and stream,
with T equal across the files of a session:

    <root>/<visual_feature>/<session>.npy    (T, Dv) features, one per 0.25 s
    <root>/<motion_feature>/<session>.npy    (T, Dm) optional second stream (optical flow)
    <root>/<target_dir>/<session>.npy        (T, C) one-hot (or multi-hot) targets

Sessions are small: they are read once into memory and samples are indexed lazily. A sample is a dict
of tensors that `torch.utils.data.default_collate` batches (strings become lists, ints tensors):

    visual       (S + W, Dv) float32   long-memory rows first, then the work rows
    motion       (S + W, Dm) float32   same rows, only when the sessions have a motion stream
    memory_mask  (S,) bool             True = masked (padding before the video start)
    target       (W + A, C) float32    window samples; (C,) for the frame t of a per-frame sample
    future       (F, C) float32        window samples only
    session      str
    work_start   int                   window samples; `frame` (int) for per-frame samples

with S = memory samples, W = work, A = anticipation, F = future lengths (`WindowLengths`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from streamformer_oad.windows import (
    WindowLengths,
    future_indices,
    online_indices,
    stretched_memory_indices,
    uniform_memory_indices,
    window_starts,
)

Phase = Literal["train", "test"]


@dataclass(frozen=True)
class DataInfo:
    """One dataset entry of `data_info.json`."""

    dataset: str
    class_names: tuple[str, ...]
    num_classes: int
    ignore_index: int  # Ambiguous column (THUMOS 21); negative: nothing ignored (TVSeries -100)
    metrics: str  # "AP" (THUMOS) or "cAP" (TVSeries)
    fps: float
    train_session_set: tuple[str, ...]
    test_session_set: tuple[str, ...]

    @classmethod
    def load(cls, path: str | os.PathLike, dataset: str) -> DataInfo:
        with open(path) as f:
            entries = json.load(f)
        if dataset not in entries:
            raise KeyError(f"{path}: no dataset {dataset!r}, it has {sorted(entries)}")
        entry = entries[dataset]
        try:
            info = cls(
                dataset=dataset,
                class_names=tuple(entry["class_names"]),
                num_classes=int(entry["num_classes"]),
                ignore_index=int(entry["ignore_index"]),
                metrics=str(entry["metrics"]),
                fps=float(entry["fps"]),
                train_session_set=tuple(entry["train_session_set"]),
                test_session_set=tuple(entry["test_session_set"]),
            )
        except KeyError as error:
            raise KeyError(f"{path}: dataset {dataset!r} lacks the key {error}") from None
        if len(info.class_names) != info.num_classes:
            raise ValueError(
                f"{path}: dataset {dataset!r} has {len(info.class_names)} class names but num_classes {info.num_classes}"
            )
        return info

    def sessions(self, phase: Phase) -> tuple[str, ...]:
        return self.train_session_set if phase == "train" else self.test_session_set


@dataclass
class Session:
    """The arrays of one video: visual (T, Dv), optional motion (T, Dm), target (T, C), all float32."""

    name: str
    visual: np.ndarray
    target: np.ndarray
    motion: np.ndarray | None = None

    @property
    def frame_count(self) -> int:
        return len(self.target)


def _load_2d(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    array = np.load(path)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D (frames, dims) array, got shape {array.shape}")
    return array.astype(np.float32, copy=False)


def load_session(
    root: str | os.PathLike,
    session: str,
    visual_feature: str,
    target_dir: str = "target_perframe",
    motion_feature: str | None = None,
    num_classes: int | None = None,
) -> Session:
    """Read one session's arrays; the motion stream only when `motion_feature` is given.

    Raises FileNotFoundError naming a missing file, ValueError naming the files when the feature and
    target lengths differ (the original indexes features with target rows: a shorter feature file
    crashed, a longer one was silently truncated) or when the target width is not `num_classes`.
    """
    root = Path(root)
    target_path = root / target_dir / f"{session}.npy"
    target = _load_2d(target_path)
    if num_classes is not None and target.shape[1] != num_classes:
        raise ValueError(f"{target_path}: {target.shape[1]} target columns, expected num_classes {num_classes}")

    def load_feature(feature: str) -> np.ndarray:
        path = root / feature / f"{session}.npy"
        array = _load_2d(path)
        if len(array) != len(target):
            raise ValueError(f"session {session}: {path} has {len(array)} frames but {target_path} has {len(target)}")
        return array

    motion = load_feature(motion_feature) if motion_feature is not None else None
    return Session(name=session, visual=load_feature(visual_feature), target=target, motion=motion)


def load_sessions(
    root: str | os.PathLike,
    sessions: Sequence[str],
    visual_feature: str,
    target_dir: str = "target_perframe",
    motion_feature: str | None = None,
    num_classes: int | None = None,
) -> list[Session]:
    return [load_session(root, name, visual_feature, target_dir, motion_feature, num_classes) for name in sessions]


def _check_sessions(sessions: Sequence[Session]) -> None:
    if not sessions:
        raise ValueError("no sessions")
    has_motion = {s.motion is not None for s in sessions}
    if len(has_motion) > 1:
        raise ValueError("either every session has a motion stream or none does")


def _feature_rows(session: Session, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The visual (and motion) rows of one sample: (len(rows), D) float32 tensors."""
    features = {"visual": torch.from_numpy(session.visual[rows])}
    if session.motion is not None:
        features["motion"] = torch.from_numpy(session.motion[rows])
    return features


class WindowDataset(Dataset):
    """MAT's train-time / test-time samples: non-overlapping windows of work + anticipation frames.

    Windows start at `offset + (work + anticipation)·k` in every session (`window_starts`). Phase
    "train": one random offset per session in [0, work) (MAT's `randint(work_length)`), re-drawn by
    `reshuffle`, and the stretched long-memory sampler. Phase "test": offset 0 and the uniform sampler.
    `reshuffle` changes the windows, and so the length: call it before the epoch's DataLoader iterator
    is created (not with persistent workers, which keep their own copy).
    """

    def __init__(self, sessions: Sequence[Session], lengths: WindowLengths, phase: Phase = "train", seed: int = 0) -> None:
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        _check_sessions(sessions)
        self.sessions = list(sessions)
        self.lengths = lengths
        self.phase = phase
        self.windows: list[tuple[int, int]] = []  # (session position, work_start)
        self.reshuffle(seed)

    def reshuffle(self, epoch_seed: int) -> None:
        """Rebuild the windows with offsets drawn from `epoch_seed` (train) or offset 0 (test)."""
        generator = torch.Generator().manual_seed(epoch_seed)
        work, anticipation = self.lengths.work, self.lengths.anticipation
        self.windows = []
        for position, session in enumerate(self.sessions):
            offset = int(torch.randint(work, (1,), generator=generator)) if self.phase == "train" else 0
            self.windows += [(position, start) for start in window_starts(session.frame_count, work, anticipation, offset)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        position, work_start = self.windows[index]
        session, lengths = self.sessions[position], self.lengths
        work_end = work_start + lengths.work
        if self.phase == "train":
            memory, memory_mask = stretched_memory_indices(work_start, lengths.memory_samples, lengths.memory_length)
        else:
            memory, memory_mask = uniform_memory_indices(
                work_start, lengths.memory_samples, lengths.memory_length, lengths.memory_rate
            )
        rows = np.concatenate([memory, np.arange(work_start, work_end)])
        return {
            **_feature_rows(session, rows),
            "memory_mask": torch.from_numpy(memory_mask),
            "target": torch.from_numpy(session.target[work_start : work_end + lengths.anticipation]),
            "future": torch.from_numpy(session.target[future_indices(work_end, session.frame_count, lengths.future)]),
            "session": session.name,
            "work_start": work_start,
        }


class OnlineFrameDataset(Dataset):
    """One sample per frame t of every session, built from frames <= t only (`online_indices`).

    The test-time uniform sampler for the long memory; `target` is the (C,) target of frame t.
    """

    def __init__(self, sessions: Sequence[Session], lengths: WindowLengths) -> None:
        _check_sessions(sessions)
        self.sessions = list(sessions)
        self.lengths = lengths
        # first global sample index of each session, and the total in the last entry
        self.offsets = np.cumsum([0] + [s.frame_count for s in self.sessions])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        position = int(np.searchsorted(self.offsets, index, side="right")) - 1
        session, lengths = self.sessions[position], self.lengths
        t = index - int(self.offsets[position])
        memory, memory_mask, work = online_indices(
            t, lengths.work, lengths.memory_samples, lengths.memory_length, lengths.memory_rate
        )
        return {
            **_feature_rows(session, np.concatenate([memory, work])),
            "memory_mask": torch.from_numpy(memory_mask),
            "target": torch.from_numpy(session.target[t]),
            "session": session.name,
            "frame": t,
        }
