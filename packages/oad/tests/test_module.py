"""The training job end to end on tiny files: MAT learns held-out per-frame detection well above
chance, the online evaluation equals the step-by-step runner, checkpoints hold the EMA weights."""

import matplotlib.image
import numpy as np
import pytest
import torch

from streamformer_oad.demo import plot
from streamformer_oad.metrics import perframe_average_precision
from streamformer_oad.module import OnlineActionDetection, lightning_cli
from streamformer_oad.online import score_video

NUM_CLASSES = 5  # the toy data set of conftest.py: background, 3 actions, ambiguous


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
        f"--model.config.num_classes={NUM_CLASSES}",
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
def trained(toy_data):
    root = toy_data
    run = lightning_cli(arguments(root), run=False)
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
    expected = perframe_average_precision(torch.cat(targets), torch.cat(scores), data.info.class_names, data.info.ignore_index)
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
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert raw["averaging_state"]["n_averaged"] == run.trainer.global_step  # the average took in every step
    image = matplotlib.image.imread(plot(checkpoint, output=str(tmp_path / "scores.png")))
    assert image.shape == (600, 1200, 4) and image[..., :3].std() > 0.05  # 10 x 5 in at 120 dpi, drawn on


def test_mismatched_config_is_a_clear_error(trained):
    root, _ = trained
    run = lightning_cli([*arguments(root, epochs=1), "--model.config.num_classes=7"], run=False)
    with pytest.raises(ValueError, match="5 classes"):
        run.trainer.fit(run.model, run.datamodule)
