"""The training job end to end on tiny files: MAT learns held-out per-frame detection well above
chance, the online evaluation equals the step-by-step runner, checkpoints hold the EMA weights."""

import json

import numpy as np
import pytest
import torch

from streamformer_oad.cli import cli
from streamformer_oad.demo import plot
from streamformer_oad.metrics import perframe_average_precision
from streamformer_oad.module import OnlineActionDetection
from streamformer_oad.online import score_video

CLASSES = ["Background", "a", "b", "c", "Ambiguous"]
FRAMES, DIM = 24, 16


def write_data(root, num_train=24, num_test=8, seed=0):
    """Sessions of 24 frames with two action runs each; an action shows in the features only as a
    direction of change (feature[t] - feature[t-1]), so one frame alone cannot tell it."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(CLASSES), DIM)).astype(np.float32)
    sessions = {"train": [f"train{i}" for i in range(num_train)], "test": [f"test{i}" for i in range(num_test)]}
    for name in ("features", "target_perframe"):
        (root / name).mkdir(parents=True)
    for session in sessions["train"] + sessions["test"]:
        labels = np.zeros(FRAMES, dtype=int)
        for start in (2, 13):
            labels[start : start + rng.integers(5, 9)] = rng.integers(1, 4)
        steps = directions[labels] * 0.5 + rng.normal(scale=0.1, size=(FRAMES, DIM))
        features = np.cumsum(steps, axis=0).astype(np.float32) + rng.normal(size=DIM).astype(np.float32)
        target = np.eye(len(CLASSES), dtype=np.float32)[labels]
        np.save(root / "features" / f"{session}.npy", features)
        np.save(root / "target_perframe" / f"{session}.npy", target)
    info = {
        "class_names": CLASSES,
        "num_classes": len(CLASSES),
        "ignore_index": len(CLASSES) - 1,
        "metrics": "AP",
        "fps": 4,
        "train_session_set": sessions["train"],
        "test_session_set": sessions["test"],
    }
    (root / "data_info.json").write_text(json.dumps({"Toy": info}))


def arguments(root, epochs=25):
    return [
        f"--data.root={root}",
        "--data.dataset=Toy",
        "--data.visual_feature=features",
        "--data.long_memory_rate=1",
        "--data.evaluation=online",
        "--data.batch_size=8",
        "--model.config.visual_size=16",
        "--model.config.motion_size=null",
        "--model.config.d_model=32",
        "--model.config.num_heads=2",
        "--model.config.dim_feedforward=64",
        "--model.config.long_memory_num_samples=4",
        "--model.config.work_memory_length=4",
        "--model.config.anticipation_length=2",
        "--model.config.future_length=4",
        "--model.config.groups=2",
        "--model.config.enc_queries=4",
        "--model.config.gen_queries=4",
        f"--model.config.num_classes={len(CLASSES)}",
        "--model.lr=3e-3",
        "--model.warmup_epochs=1",
        "--seed_everything=0",
        f"--trainer.max_epochs={epochs}",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={root}/run",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.reload_dataloaders_every_n_epochs=1",
        "--trainer.check_val_every_n_epoch=100",
        '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}},'
        '{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]',
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("oad")
    write_data(root)
    run = cli(arguments(root), run=False)
    run.trainer.fit(run.model, run.datamodule)
    return root, run


def test_learns_held_out_detection_above_chance(trained):
    _, run = trained
    result = run.trainer.test(run.model, run.datamodule, verbose=False)[0]
    targets = np.concatenate([session.target for session in run.datamodule.eval_set.sessions])
    assert result["test/chance"] == pytest.approx(targets[:, 1:4].mean(0).mean(), abs=1e-6)  # positive rate
    assert result["test/mAP"] > 3 * result["test/chance"]


def test_online_evaluation_equals_the_runner(trained):
    _, run = trained
    data = run.datamodule
    result = run.trainer.test(run.model, data, verbose=False)[0]
    scores, targets = [], []
    for session in data.eval_set.sessions:
        scores.append(score_video(run.model.model.eval(), torch.from_numpy(session.visual), long_memory_rate=1))
        targets.append(torch.from_numpy(session.target))
    expected = perframe_average_precision(torch.cat(targets), torch.cat(scores), CLASSES, len(CLASSES) - 1)
    assert result["test/mAP"] == pytest.approx(expected["mean_AP"], abs=1e-6)


def test_window_evaluation_scores_every_window_row(trained):
    _, run = trained
    data = run.datamodule.with_evaluation("windows")
    result = run.trainer.test(run.model, data, verbose=False)[0]
    rows = sum(len(batch["target"].flatten(0, 1)) for batch in data.test_dataloader())
    assert rows == 8 * 3 * 6  # 8 sessions x windows at 0, 6, 12 (18 + 4 reaches 24 - 2) x (4 work + 2 anticipated)
    assert 0 < result["test/mAP"] <= 1


def test_checkpoint_holds_ema_weights_and_plots(trained, tmp_path):
    _, run = trained
    checkpoint = run.trainer.checkpoint_callback.last_model_path
    restored = OnlineActionDetection.load_from_checkpoint(checkpoint, map_location="cpu")
    for name, value in run.model.state_dict().items():  # after fit the module holds the EMA average
        torch.testing.assert_close(restored.state_dict()[name], value)
    assert plot(checkpoint, output=str(tmp_path / "scores.png")).stat().st_size > 10_000


def test_mismatched_config_is_a_clear_error(trained):
    root, _ = trained
    run = cli([*arguments(root, epochs=1), "--model.config.num_classes=7"], run=False)
    with pytest.raises(ValueError, match="5 classes"):
        run.trainer.fit(run.model, run.datamodule)
