"""The tasks side by side: the dataset behind the batch sampler, several data sets read as one
task (`DatasetMixture`), `collate`, and the registry that builds the readers (`readers`) from a
DataModule's `task_files` or from a synthetic world.

A reader returns `None` for a sample whose file or annotation is broken; `collate` drops those
and counts them in the batch (`skipped`), so nothing is silently replaced. Every batch holds one
task.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from streamformer.synthetic import DATASET

from .readers import (
    ActionRecognitionDataset,
    ClipOptions,
    CocoPseudoVisDataset,
    GroundingDataset,
    LocalizationDataset,
    RefCocoPseudoDataset,
    ReferringDataset,
    ReferYoutubeVosDataset,
    RetrievalDataset,
    TaskDataset,
    VisDataset,
)

TASKS = ("ar", "retrieval", "grounding", "localization", "vis", "rvos")


class MultiTaskDataset(Dataset):
    """Task datasets side by side, indexed by (task, index, seed) keys from the batch sampler."""

    def __init__(self, datasets: dict[str, TaskDataset]) -> None:
        self.datasets = datasets

    def __getitem__(self, key: tuple[str, int, int]) -> dict[str, Any] | None:
        task, index, seed = key
        return self.datasets[task].get(index, seed)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack one task's items; broken ones (None) are dropped and counted in `skipped`. A data set
    past its skip rate (an item with an "error") makes the batch {"error": reason} alone."""
    stop = next((item["error"] for item in items if item is not None and "error" in item), None)
    if stop is not None:
        return {"skipped": 0, "task": None, "error": stop}
    kept = [item for item in items if item is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(kept), "task": kept[0]["task"] if kept else None}
    for key in kept[0] if kept else ():
        if key == "task":
            continue
        values = [item[key] for item in kept]
        batch[key] = (
            torch.stack(values)
            if isinstance(values[0], Tensor)
            else torch.tensor(values)
            if isinstance(values[0], int)
            else values
        )
    return batch


DEFAULT_READERS: dict[str, type[TaskDataset]] = {
    "ar": ActionRecognitionDataset,
    "retrieval": RetrievalDataset,
    "grounding": GroundingDataset,
    "localization": LocalizationDataset,
    "vis": VisDataset,
    "rvos": ReferringDataset,
}  # each task's default reader
READERS_BY_NAME: dict[str, type[TaskDataset]] = {
    cls.__name__: cls for cls in (*DEFAULT_READERS.values(), CocoPseudoVisDataset, RefCocoPseudoDataset, ReferYoutubeVosDataset)
}


class DatasetMixture(Dataset):
    """Several data sets of one task read as one (the original's mixtures: Kinetics-400 and SSv2;
    ActivityNet, HACS and FineAction; ...). Indices run through the readers in order; each
    sample keeps its data set's name, and so its class vocabulary."""

    def __init__(self, readers: Sequence[TaskDataset]) -> None:
        if len({reader.task for reader in readers}) != 1:
            raise ValueError(f"one task per DatasetMixture, got {sorted({reader.task for reader in readers})}")
        self.task, self.readers = readers[0].task, list(readers)
        self.starts = np.cumsum([0, *map(len, readers)]).tolist()
        self.samples = [sample for reader in readers for sample in reader.samples]
        self.vocabularies: dict[str, list[str]] = {}
        for reader in readers:
            for dataset, names in getattr(reader, "vocabularies", {}).items():
                if self.vocabularies.setdefault(dataset, names) != names:
                    raise ValueError(f"{self.task}: data set {dataset!r} is read twice with different classes; name each")

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, index: int) -> tuple[TaskDataset, int]:
        part = bisect.bisect_right(self.starts, index) - 1
        return self.readers[part], index - self.starts[part]

    def name(self, index: int) -> str:
        reader, local = self._locate(index)
        return reader.name(local)

    def get(self, index: int, seed: int) -> dict[str, Any] | None:
        """The sample of the reader holding `index`, which counts it towards its own skip rate."""
        reader, local = self._locate(index)
        return reader.get(local, seed)


def task_readers(
    task: str, files: dict[str, Any] | Sequence[dict[str, Any]], options: ClipOptions
) -> TaskDataset | DatasetMixture:
    """The reader of `task` from its `task_files` entry: the reader's arguments, or a list of them
    (several data sets read as one task). `reader: <class name>` picks a reader other than the
    task's default (`DEFAULT_READERS`)."""
    readers = []
    for entry in [files] if isinstance(files, dict) else files:
        arguments = dict(entry)
        name = arguments.pop("reader", DEFAULT_READERS[task].__name__)
        reader = READERS_BY_NAME.get(name)
        if reader is None or reader.task != task:
            known = sorted(cls.__name__ for cls in READERS_BY_NAME.values() if cls.task == task)
            raise ValueError(f"{task}: no reader {name!r}; the {task} readers are {known}")
        readers.append(reader(**arguments, options=options))
    if not readers:
        raise ValueError(f"{task}: task_files lists no data set")
    return readers[0] if len(readers) == 1 else DatasetMixture(readers)


def synthetic_task_datasets(
    root: str | Path, split: str, options: ClipOptions, tasks: tuple[str, ...] = TASKS
) -> dict[str, TaskDataset]:
    """The readers pointed at a synthetic world (`streamformer.synthetic.generate_world`)."""
    root = Path(root)
    builders = {
        "ar": lambda: ActionRecognitionDataset(
            root / f"ar/{split}.csv", root, root / "ar/label2id.json", dataset=DATASET, options=options
        ),
        "retrieval": lambda: RetrievalDataset(root / f"retrieval/{split}.csv", root / "videos", options=options),
        "grounding": lambda: GroundingDataset(root / f"grounding/{split}.csv", root / "videos", 6.0, options=options),
        "localization": lambda: LocalizationDataset(
            root / f"localization/{split}.csv", root / "videos", root / "localization/label2id.json", options=options
        ),
        "vis": lambda: VisDataset(
            root / f"vis/{split}_{DATASET}.json", root / "vis", root / "vis/label2id.json", DATASET, options=options
        ),
        "rvos": lambda: ReferringDataset(root / f"rvos/{split}_MEVIS.csv", root / "videos", root / "rvos/masks", options=options),
    }
    unknown = set(tasks) - set(builders)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    return {task: builders[task]() for task in tasks}
