"""OAD data layer on tiny files written to tmp_path."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from streamformer_oad.data import DataInfo, OnlineFrameDataset, WindowDataset, load_session, load_sessions
from streamformer_oad.windows import WindowLengths

CLASSES = ["Background", "left", "right", "Ambiguous"]
LENGTHS = WindowLengths(work=8, anticipation=2, future=4, memory_samples=16, memory_rate=1)
FRAMES = {"a": 24, "b": 30}


def write_session(root, name, num_frames, visual_dim=6, motion_dim=5, target_frames=None):
    for directory, array in {
        "visual": np.full((num_frames, visual_dim), 1.0) * np.arange(num_frames)[:, None],  # row t holds t
        "motion": np.full((num_frames, motion_dim), 2.0) * np.arange(num_frames)[:, None],
        "target_perframe": np.eye(len(CLASSES))[np.arange(target_frames or num_frames) % len(CLASSES)],
    }.items():
        (root / directory).mkdir(exist_ok=True)
        np.save(root / directory / f"{name}.npy", array.astype(np.float32))


@pytest.fixture
def root(tmp_path):
    for name, num_frames in FRAMES.items():
        write_session(tmp_path, name, num_frames)
    return tmp_path


def test_data_info(tmp_path):
    entry = {
        "class_names": CLASSES,
        "num_classes": 4,
        "ignore_index": 3,
        "metrics": "AP",
        "fps": 4,
        "train_session_set": ["a"],
        "test_session_set": ["b"],
    }
    path = tmp_path / "data_info.json"
    path.write_text(json.dumps({"Synthetic": entry}))
    info = DataInfo.load(path, "Synthetic")
    assert info.class_names == tuple(CLASSES) and info.num_classes == 4 and info.ignore_index == 3
    assert info.metrics == "AP" and info.fps == 4.0
    assert info.sessions("train") == ("a",) and info.sessions("test") == ("b",)
    with pytest.raises(KeyError, match="THUMOS"):
        DataInfo.load(path, "THUMOS")
    path.write_text(json.dumps({"Synthetic": {**entry, "num_classes": 5}}))
    with pytest.raises(ValueError, match="num_classes"):
        DataInfo.load(path, "Synthetic")


def test_load_session(root):
    session = load_session(root, "a", "visual", num_classes=4)
    assert session.visual.shape == (24, 6) and session.target.shape == (24, 4) and session.motion is None
    session = load_session(root, "a", "visual", motion_feature="motion")
    assert session.motion.shape == (24, 5) and session.visual.dtype == np.float32


def test_load_session_errors(root):
    write_session(root, "short", 20, target_frames=24)
    with pytest.raises(ValueError, match=r"visual/short\.npy has 20 frames but .*target_perframe/short\.npy has 24"):
        load_session(root, "short", "visual")
    with pytest.raises(FileNotFoundError, match=r"flow/a\.npy"):
        load_session(root, "a", "visual", motion_feature="flow")
    with pytest.raises(ValueError, match="expected num_classes 22"):
        load_session(root, "a", "visual", num_classes=22)


def test_train_windows(root):
    dataset = WindowDataset(load_sessions(root, ["a", "b"], "visual"), LENGTHS, phase="train", seed=0)
    for position in (0, 1):
        starts = [start for p, start in dataset.windows if p == position]
        assert 0 <= starts[0] < LENGTHS.work and np.all(np.diff(starts) == 10)  # offset in [0, work), stride 10
    sample = dataset[len(dataset) - 1]
    work_start = sample["work_start"]
    assert sample["visual"].shape == (16 + 8, 6) and sample["visual"].dtype == torch.float32
    assert "motion" not in sample
    assert sample["memory_mask"].shape == (16,) and sample["memory_mask"].dtype == torch.bool
    assert sample["target"].shape == (10, 4) and sample["future"].shape == (4, 4)
    assert sample["visual"][16:, 0].tolist() == list(range(work_start, work_start + 8))  # work rows last
    assert sample["visual"][:16, 0].max() < work_start  # memory from the past
    session = dataset.sessions[dataset.windows[-1][0]]
    assert torch.equal(sample["target"], torch.from_numpy(session.target[work_start : work_start + 10]))


def test_reshuffle_is_reproducible(root):
    dataset = WindowDataset(load_sessions(root, ["a", "b"], "visual"), LENGTHS, phase="train", seed=3)
    windows = list(dataset.windows)
    offsets = set()
    for epoch in range(20):
        dataset.reshuffle(epoch)
        offsets.add(dataset.windows[0][1])
    dataset.reshuffle(3)
    assert dataset.windows == windows
    assert len(offsets) > 1 and offsets <= set(range(LENGTHS.work))


def test_test_windows(root):
    dataset = WindowDataset(load_sessions(root, ["a", "b"], "visual", motion_feature="motion"), LENGTHS, phase="test")
    assert dataset.windows == [(0, 0), (0, 10), (1, 0), (1, 10)]  # 30 frames: 20 + 8 < 28 fails
    sample = dataset[1]
    assert sample["motion"].shape == (16 + 8, 5)
    assert torch.equal(sample["motion"], 2 * sample["visual"][:, :5])  # same rows in both streams
    # uniform sampler at work_start 10, 16 samples at rate 1: 6 pads then frames 0..9
    assert sample["visual"][:16, 0].tolist() == [0.0] * 6 + list(range(10))
    assert sample["memory_mask"].tolist() == [True] * 6 + [False] * 10
    assert sample["session"] == "a" and sample["work_start"] == 10


def test_online_frames(root):
    dataset = OnlineFrameDataset(load_sessions(root, ["a", "b"], "visual", motion_feature="motion"), LENGTHS)
    assert len(dataset) == sum(FRAMES.values())
    seen = [(dataset[i]["session"], dataset[i]["frame"]) for i in range(len(dataset))]
    assert seen == [(name, t) for name, num_frames in FRAMES.items() for t in range(num_frames)]
    sample = dataset[24 + 12]  # session b, frame 12
    assert sample["visual"].shape == (16 + 8, 6) and sample["motion"].shape == (16 + 8, 5)
    assert sample["target"].shape == (4,) and sample["target"].argmax() == 12 % 4
    assert sample["visual"][16:, 0].tolist() == list(range(5, 13)) and sample["visual"][:, 0].max() == 12
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_default_collate(root):
    sessions = load_sessions(root, ["a", "b"], "visual", motion_feature="motion")
    batch = default_collate([WindowDataset(sessions, LENGTHS, phase="test")[i] for i in range(3)])
    assert batch["visual"].shape == (3, 24, 6) and batch["motion"].shape == (3, 24, 5)
    assert batch["memory_mask"].shape == (3, 16) and batch["memory_mask"].dtype == torch.bool
    assert batch["target"].shape == (3, 10, 4) and batch["future"].shape == (3, 4, 4)
    assert batch["session"] == ["a", "a", "b"] and batch["work_start"].tolist() == [0, 10, 0]
    batch = default_collate([OnlineFrameDataset(sessions, LENGTHS)[i] for i in (0, 30)])
    assert batch["target"].shape == (2, 4) and batch["session"] == ["a", "b"] and batch["frame"].tolist() == [0, 6]
