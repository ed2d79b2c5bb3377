"""The readers of the original formats, on a synthetic world whose ground truth is known."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from streamformer.synthetic import ACTIONS, sample_scene
from streamformer_pretrain import data
from streamformer_pretrain.data import ClipOptions, MultiTaskDataset, collate, sampled_indices, synthetic_task_datasets

OPTIONS = ClipOptions(num_frames=8, image_size=32, train=True)


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
        world.root, "train", ClipOptions(num_frames=24, image_size=32, train=False), ("ar", "localization")
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


def test_broken_video_is_skipped_named_and_counted(world, tmp_path, caplog):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(world.root, root)
    first = (root / "ar/train.csv").read_text().splitlines()[0].split(",")[0]
    (root / first).write_bytes(b"not a video")
    ar = synthetic_task_datasets(root, "train", OPTIONS, ("ar",))["ar"]
    dataset = MultiTaskDataset({"ar": ar})
    batch = collate([dataset[("ar", i, i)] for i in range(4)])
    assert batch["skipped"] == 1 and len(batch["video"]) == 3
    assert first.split("/")[-1].removesuffix(".mp4") in caplog.text


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
    (reference section 7); other lengths keep one frame per segment."""
    assert sampled_indices(5, 8, None, "front") == [0, 0, 0, 0, 1, 2, 3, 4]
    assert sampled_indices(5, 8, torch.Generator(), "back") == [0, 1, 2, 3, 4, 4, 4, 4]
    assert sampled_indices(16, 8, None, "front") == sampled_indices(16, 8, None) == list(range(1, 16, 2))
    calls = []

    def spy(length, num_frames, generator, pad=None):
        calls.append(pad)
        return sampled_indices(length, num_frames, generator, pad)

    monkeypatch.setattr(data, "sampled_indices", spy)
    long = ClipOptions(num_frames=28, image_size=32, train=True)  # the world's videos have 24 frames
    datasets = synthetic_task_datasets(world.root, "train", long, ("retrieval", "vis", "grounding"))
    for task, pad in (("vis", "front"), ("retrieval", "back"), ("grounding", None)):
        calls.clear()
        assert datasets[task].get(0, seed=0)["video"].shape[0] == 28 and calls == [pad], task
