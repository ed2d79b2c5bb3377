"""Which frames and which samples: one frame per segment of a clip, the per-sample seeds, the
task-balanced batch sampler and the DataLoader that resumes mid-epoch.

Randomness (frame offsets, caption and prefix choice, crops, RandAugment, pseudo-video rotations,
flips) comes from a per-sample seed the sampler derives from (seed, epoch, position): a run's data
order and content are reproducible and resumable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Sampler

from streamformer.video import segment_indices


def sampled_indices(
    length: int, clip_length: int, generator: torch.Generator | None, pad: Literal["front", "back"] | None = None
) -> list[int]:
    """One frame per segment (`segment_indices`: random when a `generator` is given, else the
    middle). With `pad`, a video of fewer than `clip_length` frames instead takes each frame once
    and repeats its first frame before them ("front", the original's VIS) or its last after them
    ("back", its retrieval); without, its frames repeat throughout."""
    if pad is None or length >= clip_length:
        return segment_indices(length, clip_length, generator)
    if pad == "front":
        return [0] * (clip_length - length) + list(range(length))
    return list(range(length)) + [length - 1] * (clip_length - length)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of `parts` (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def small_task_repeats(task_sizes: dict[str, int], scale: float = 2.0) -> dict[str, int]:
    """The original's `balance_sample_num`: a task with fewer than max / `scale` samples recurs
    max // size times per epoch, every other task once."""
    largest = max(task_sizes.values())
    return {task: largest // n if n * scale < largest else 1 for task, n in task_sizes.items()}


class TaskBalancedBatchSampler(Sampler[list[tuple[str, int, int]]]):
    """Batches of one task each, tasks interleaved in proportion to their size.

    Per epoch every task's indices are shuffled with a generator seeded by (seed, epoch), the same
    on every rank, and cut into global batches of `batch_size * world_size` (a rank takes its
    slice). A task with k times as many batches as the smallest one emits k batches per round;
    rounds continue until every task has emitted all of its batches (a task that runs out just
    leaves the rotation, instead of indexing past its end as the original did).

    `repeats` (default 1) makes a task's samples recur that many times per epoch, each time in
    another place of the shuffled order (`small_task_repeats`). `start_batch` skips the batches a
    resumed run already trained on in its first epoch.
    """

    def __init__(
        self,
        task_sizes: dict[str, int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeats: dict[str, int] | None = None,
    ) -> None:
        empty = [task for task, n in task_sizes.items() if n < batch_size * world_size]
        if empty:
            raise ValueError(f"tasks with fewer samples than one global batch ({batch_size * world_size}): {empty}")
        repeats = repeats or {}
        self.task_sizes = {task: n * repeats.get(task, 1) for task, n in task_sizes.items()}  # samples per epoch
        self.dataset_sizes = dict(task_sizes)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[tuple[str, list[int]]]:
        per_task = {}
        size = self.batch_size * self.world_size
        for task, n in self.task_sizes.items():
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, task))
            order = (torch.randperm(n, generator=generator) % self.dataset_sizes[task]).tolist()
            per_task[task] = [order[i : i + size] for i in range(0, n - size + 1, size)]
        smallest = min(len(b) for b in per_task.values())
        scale = {task: len(b) // smallest for task, b in per_task.items()}
        batches, cursor = [], dict.fromkeys(per_task, 0)
        while any(cursor[t] < len(per_task[t]) for t in per_task):
            for task, task_batches in per_task.items():
                take = task_batches[cursor[task] : cursor[task] + scale[task]]
                batches += [(task, b) for b in take]
                cursor[task] += len(take)
        return batches

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        for position, (task, batch) in enumerate(self._global_batches()):
            if position < self.start_batch:
                continue
            local = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield [(task, index, derive_seed(self.seed, self.epoch, position, index)) for index in local]
        self.start_batch = 0

    def __len__(self) -> int:
        size = self.batch_size * self.world_size
        return sum(n // size for n in self.task_sizes.values())


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `TaskBalancedBatchSampler` that Lightning can checkpoint mid-epoch.

    Lightning stores `state_dict()` (batches handed out this epoch) in every checkpoint and gives
    it back through `load_state_dict()` on resume; the next iteration then starts at the following
    batch of the same epoch order instead of replaying the epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        self.batch_sampler.start_batch, self._resume_at = self._resume_at, 0
        self._served = self.batch_sampler.start_batch
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        finished = self._served >= len(self.batch_sampler)  # saved on an epoch's last batch: the next starts afresh
        return {"batches_served": 0 if finished else self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = state["batches_served"]
