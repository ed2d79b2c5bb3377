"""`generate_world`: the synthetic data set on disk, deterministic in its seed."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .world import ACTIONS, COLOURS, DATASET, SHAPES, WorldConfig, sample_scene, words
from .writers import SplitWriter, write_shared_files

SPLITS = ("train", "val")


@dataclass(frozen=True)
class WorldSummary:
    """What `generate_world` wrote: the video ids of each split and the records in each annotation file."""

    root: Path
    seed: int
    config: WorldConfig
    train_ids: list[str]
    val_ids: list[str]
    records: dict[str, int]  # relative path -> rows / annotations / items


def generate_world(
    root: str | Path,
    num_train: int = 800,
    num_val: int = 200,
    seed: int = 0,
    config: WorldConfig | None = None,
    progress: bool = True,
) -> WorldSummary:
    """Sample and write a world of `num_train` + `num_val` videos under `root` (see the package docstring).

    Video i of a split depends only on (seed, split, i): worlds of different sizes share their first
    videos. Train videos are named v000000..., val videos continue the numbering.
    """
    root, config = Path(root), config or WorldConfig()
    counts = {"train": num_train, "val": num_val}
    anno_ids = itertools.count()
    writers = {split: SplitWriter(root, split, anno_ids) for split in SPLITS}
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    for number, (split, index) in enumerate(tqdm(jobs, desc="synthetic world", unit="video", disable=not progress)):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        writers[split].add(f"v{number:06d}", sample_scene(rng, config), rng)
    records = {path: n for writer in writers.values() for path, n in writer.close().items()}
    write_shared_files(root, writers["train"].video_ids, writers["val"].video_ids)
    vocabulary = words(text for writer in writers.values() for text in writer.texts())
    world = {
        "dataset": DATASET,
        "seed": seed,
        "config": asdict(config),
        "splits": counts,
        "vocabulary": {"shapes": list(SHAPES), "colours": list(COLOURS), "actions": list(ACTIONS), "words": vocabulary},
    }
    (root / "world.json").write_text(json.dumps(world, indent=1))
    return WorldSummary(root, seed, config, writers["train"].video_ids, writers["val"].video_ids, records)
