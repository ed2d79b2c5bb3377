"""The readers of the original formats, on a synthetic world whose ground truth is known."""

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streamformer.synthetic import ACTIONS, DATASET, sample_scene
from streamformer_pretrain import MultiTaskDataModule, readers
from streamformer_pretrain.data import MultiTaskDataset, collate, synthetic_task_datasets
from streamformer_pretrain.readers import SKIP_RATE_MIN_TRIED, ClipOptions, GroundingDataset, RetrievalDataset, VisDataset
from streamformer_pretrain.sampling import sampled_indices

OPTIONS = ClipOptions(clip_length=8, image_size=32, train=True)


def test_every_task_reads_with_the_right_shapes(world):
    datasets = synthetic_task_datasets(world.root, "train", OPTIONS)
    expected_keys = {
        "ar": {"video", "label", "dataset"},
        "retrieval": {"video", "caption"},
        "grounding": {"video", "caption", "frame_labels"},
        "localization": {"video", "frame_labels", "dataset"},
        "vis": {"video", "mask", "dataset"},
        "rvos": {"video", "caption", "mask"},
    }
    for task, dataset in datasets.items():
        assert len(dataset) > 0, task
        item = dataset.get(0, seed=0)
        assert item is not None, task
        assert set(item) - {"task"} == expected_keys[task], task
        assert item["video"].shape == (8, 3, 32, 32) and -1 <= item["video"].min() <= item["video"].max() <= 1
        if "mask" in item:
            assert item["mask"].shape == (8, 32, 32) and item["mask"].any()


def test_labels_follow_the_scene_ground_truth(world):
    """AR labels and localization frame labels agree with the generator's own timeline."""
    datasets = synthetic_task_datasets(
        world.root, "train", ClipOptions(clip_length=24, image_size=32, train=False), ("ar", "localization")
    )
    label2id = json.loads((world.root / "ar/label2id.json").read_text())
    assert sorted(label2id, key=label2id.get) == list(ACTIONS)
    loc = datasets["localization"]
    for index in range(len(loc)):
        sample = loc.samples[index]
        position = world.train_ids.index(sample["video_id"])
        scene = sample_scene(np.random.default_rng([0, 0, position]), world.config)
        item = loc.get(index, seed=0)  # 24 of 24 frames: every frame, in order
        truth = torch.as_tensor(scene.frame_labels())
        # frame labels are class ids of the world's action names; background -1
        assert torch.equal(item["frame_labels"], truth), sample["video_id"]
    ar = datasets["ar"]
    for index, (path, _) in enumerate(ar.samples):
        position = world.train_ids.index(Path(path).stem)
        scene = sample_scene(np.random.default_rng([0, 0, position]), world.config)
        assert ar.get(index, seed=0)["label"] == ACTIONS.index(scene.main_segment.action), path  # the clip's action


def world_with_broken_clips(world, tmp_path, count: int | None) -> Path:
    """A copy of the world whose first `count` AR clips (all with None) are not videos."""
    root = tmp_path / "copy"
    shutil.copytree(world.root, root)
    for line in (root / "ar/train.csv").read_text().splitlines()[:count]:
        (root / line.split(",")[0]).write_bytes(b"not a video")
    return root


def test_broken_video_is_skipped_named_and_counted(world, tmp_path, caplog):
    root = world_with_broken_clips(world, tmp_path, 1)
    first = (root / "ar/train.csv").read_text().splitlines()[0].split(",")[0]
    ar = synthetic_task_datasets(root, "train", OPTIONS, ("ar",))["ar"]
    dataset = MultiTaskDataset({"ar": ar})
    batch = collate([dataset[("ar", i, i)] for i in range(4)])
    assert batch["skipped"] == 1 and len(batch["video"]) == 3
    assert (ar.skipped, ar.tried) == (1, 4)
    assert first.split("/")[-1].removesuffix(".mp4") in caplog.text


def test_one_broken_file_stays_skipped_past_the_skip_rate_minimum(world, tmp_path):
    """1 of the world's 24 AR clips (4.2 %, under the default 5 %): skipped every epoch, never fatal."""
    root = world_with_broken_clips(world, tmp_path, 1)
    ar = synthetic_task_datasets(root, "train", dataclasses.replace(OPTIONS, cache_videos=True), ("ar",))["ar"]
    epochs = SKIP_RATE_MIN_TRIED // len(ar) + 1
    for epoch in range(epochs):
        assert [ar.get(i, seed=epoch) is None for i in range(len(ar))] == [True] + [False] * (len(ar) - 1)
    assert (ar.skipped, ar.tried) == (epochs, epochs * len(ar)) and ar.tried > SKIP_RATE_MIN_TRIED


def test_a_data_set_whose_samples_all_fail_to_decode_stops_the_run(world, tmp_path):
    root = world_with_broken_clips(world, tmp_path, None)
    ar = synthetic_task_datasets(root, "train", OPTIONS, ("ar",))["ar"]
    for attempt in range(SKIP_RATE_MIN_TRIED - 1):  # too few tried to judge: skipped and counted
        assert ar.get(attempt % len(ar), seed=attempt) is None
    message = (
        rf"ActionRecognitionDataset '{DATASET}' \(.*ar/train.csv\): {SKIP_RATE_MIN_TRIED} of the {SKIP_RATE_MIN_TRIED} samples"
    )
    stop = ar.get(0, seed=0)  # returned, to travel in the batch to every rank's training step
    assert stop["task"] == "ar" and re.match(message + ".*max_skip_rate=0.05", stop["error"])
    assert collate([None, stop, None]) == {"skipped": 0, "task": None, "error": stop["error"]}


def test_the_data_module_gives_its_max_skip_rate_to_every_reader(world):
    data = MultiTaskDataModule(root=str(world.root), tasks=("ar", "vis"), clip_length=4, image_size=32, max_skip_rate=0.5)
    assert [dataset.options.max_skip_rate for dataset in data.train_sets.values()] == [0.5, 0.5]


def test_a_missing_file_or_folder_fails_when_the_reader_is_built(world, tmp_path):
    retrieval_csv = world.root / "retrieval/train.csv"
    with pytest.raises(
        FileNotFoundError, match=r"RetrievalDataset \(.*retrieval/train.csv\): video root .*nowhere does not exist"
    ):
        RetrievalDataset(retrieval_csv, tmp_path / "nowhere", options=OPTIONS)
    with pytest.raises(
        FileNotFoundError, match=r"RetrievalDataset \(.*missing.csv\): annotation file .*missing.csv does not exist"
    ):
        RetrievalDataset(tmp_path / "missing.csv", world.root / "videos", options=OPTIONS)
    with pytest.raises(FileNotFoundError, match=f"VisDataset '{DATASET}' .*: frame root .*nowhere does not exist"):
        VisDataset(world.root / f"vis/train_{DATASET}.json", tmp_path / "nowhere", world.root / "vis/label2id.json", DATASET)


def test_a_missing_column_or_key_fails_when_the_reader_is_built(world, tmp_path):
    with open(world.root / "grounding/train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "grounding.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in rows[0] if c != "relevant_windows"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=r"GroundingDataset \(.*grounding.csv\): .*has no column \['relevant_windows'\]"):
        GroundingDataset(tmp_path / "grounding.csv", world.root / "videos", options=OPTIONS)
    vis = json.loads((world.root / f"vis/train_{DATASET}.json").read_text())
    (tmp_path / "vis.json").write_text(json.dumps({"videos": vis["videos"]}))
    with pytest.raises(ValueError, match=r"VisDataset .*vis.json has no \['annotations'\]"):
        VisDataset(tmp_path / "vis.json", world.root / "vis", world.root / "vis/label2id.json", DATASET)


def test_plain_captions_stay_text(world, tmp_path):
    """A retrieval `text` cell is a list of captions or one caption as written, whatever it reads as."""
    texts = ["42", "None", "[laughs] a man talks", "['a red circle spins', 'a circle spins']"]
    with open(world.root / "retrieval/train.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: len(texts)]
    with open(tmp_path / "retrieval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "text": text} for row, text in zip(rows, texts, strict=True))
    retrieval = RetrievalDataset(
        tmp_path / "retrieval.csv", world.root / "videos", options=dataclasses.replace(OPTIONS, train=False)
    )
    captions = [retrieval.get(i, seed=0)["caption"] for i in range(len(texts))]
    assert captions == ["42", "None", "[laughs] a man talks", "a red circle spins"]


def test_sampling_is_a_function_of_the_seed(world):
    ar = synthetic_task_datasets(world.root, "train", OPTIONS, ("ar",))["ar"]
    assert torch.equal(ar.get(3, seed=7)["video"], ar.get(3, seed=7)["video"])
    assert not torch.equal(ar.get(3, seed=7)["video"], ar.get(3, seed=8)["video"])


def test_cached_videos_give_the_same_samples(world):
    tasks = ("ar", "grounding", "rvos")
    plain = synthetic_task_datasets(world.root, "train", OPTIONS, tasks)
    cached = synthetic_task_datasets(world.root, "train", dataclasses.replace(OPTIONS, cache_videos=True), tasks)
    for task in tasks:
        for index in range(3):
            expected, item = plain[task].get(index, seed=index), cached[task].get(index, seed=index)
            assert torch.equal(expected["video"], item["video"])
            assert all(torch.equal(expected[k], item[k]) for k in ("frame_labels", "mask") if k in item)


def test_short_videos_fill_the_clip_as_the_original(world, monkeypatch):
    """VIS repeats a short video's first frame before it, retrieval its last frame after it
    (as the original); other lengths keep one frame per segment."""
    assert sampled_indices(5, 8, None, "front") == [0, 0, 0, 0, 1, 2, 3, 4]
    assert sampled_indices(5, 8, torch.Generator(), "back") == [0, 1, 2, 3, 4, 4, 4, 4]
    assert sampled_indices(16, 8, None, "front") == sampled_indices(16, 8, None) == list(range(1, 16, 2))
    calls = []

    def spy(length, clip_length, generator, pad=None):
        calls.append(pad)
        return sampled_indices(length, clip_length, generator, pad)

    monkeypatch.setattr(readers, "sampled_indices", spy)
    long = ClipOptions(clip_length=28, image_size=32, train=True)  # the world's videos have 24 frames
    datasets = synthetic_task_datasets(world.root, "train", long, ("retrieval", "vis", "grounding"))
    for task, pad in (("vis", "front"), ("retrieval", "back"), ("grounding", None)):
        calls.clear()
        assert datasets[task].get(0, seed=0)["video"].shape[0] == 28 and calls == [pad], task
