"""Shared fixtures of the OAD tests."""

import json

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    # Tiny tensors: intra-op threads cost more than they save, and thrash on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TOY_CLASSES = ["Background", "a", "b", "c", "Ambiguous"]
FRAMES, DIM = 24, 16


def write_toy_data(root, num_train=24, num_test=8, seed=0):
    """Sessions of 24 frames with two action runs each; an action shows in the features only as a
    direction of change (feature[t] - feature[t-1]), so one frame alone cannot tell it."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(TOY_CLASSES), DIM)).astype(np.float32)
    sessions = {"train": [f"train{i}" for i in range(num_train)], "test": [f"test{i}" for i in range(num_test)]}
    for name in ("features", "target_perframe"):
        (root / name).mkdir(parents=True)
    for session in sessions["train"] + sessions["test"]:
        labels = np.zeros(FRAMES, dtype=int)
        for start in (2, 13):
            labels[start : start + rng.integers(5, 9)] = rng.integers(1, 4)
        steps = directions[labels] * 0.5 + rng.normal(scale=0.1, size=(FRAMES, DIM))
        features = np.cumsum(steps, axis=0).astype(np.float32) + rng.normal(size=DIM).astype(np.float32)
        target = np.eye(len(TOY_CLASSES), dtype=np.float32)[labels]
        np.save(root / "features" / f"{session}.npy", features)
        np.save(root / "target_perframe" / f"{session}.npy", target)
    info = {
        "class_names": TOY_CLASSES,
        "num_classes": len(TOY_CLASSES),
        "ignore_index": len(TOY_CLASSES) - 1,
        "metrics": "AP",
        "fps": 4,
        "train_session_set": sessions["train"],
        "test_session_set": sessions["test"],
    }
    (root / "data_info.json").write_text(json.dumps({"Toy": info}))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A THUMOS-layout data set ("Toy" in its data_info.json) of `write_toy_data`."""
    root = tmp_path_factory.mktemp("toy-oad")
    write_toy_data(root)
    return root
