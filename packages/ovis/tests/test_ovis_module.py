"""End to end on a small synthetic world: training, streamed validation, DDP, predict, evaluate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamformer_ovis.cli import evaluate, lightning_cli, predict
from streamformer_ovis.data import evaluation_frames, read_frames

HEAD = (
    "{num_queries: 6, feature_size: 32, mask_feature_size: 32, hidden_dim: 32, encoder_feedforward_dim: 64, "
    "encoder_layers: 1, decoder_layers: 3, num_attention_heads: 4, dim_feedforward: 64, train_num_points: 256}"
)


def args(root, *extra):
    vis = root / "world" / "vis"
    return [
        f"--model.backbone={root / 'backbone'}", f"--model.head={HEAD}", "--model.reid_dim=16", "--model.lr=1e-3",
        "--model.adapter={conv_inplane: 8, deform_num_heads: 4, temporal_window: 8}",
        f"--data.train=[{{json: {vis}/train_Synthetic.json, images: {vis}}}]",
        f"--data.val={{json: {vis}/val_Synthetic.json, images: {vis}}}",
        "--data.clip_length=4", "--data.size=64", "--data.test_size=64", "--data.batch_size=2", "--data.num_workers=0",
        "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(setup):
    """12 training steps, validated on the 3 held-out videos; the checkpoint and the stats."""
    cli = lightning_cli(args(setup, "--trainer.max_steps=12", f"--trainer.default_root_dir={setup / 'run'}",
                             f"--model.predictions={setup / 'run' / 'val.json'}"), run=False)  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(setup / "run" / "model.ckpt")
    return cli, setup / "run" / "model.ckpt"


def test_training_and_streamed_validation(trained):
    cli, _ = trained
    stats = cli.model.last_stats
    assert set(stats) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10"}
    assert all(0 <= stats[k] <= 1 for k in ("AP", "AR1", "AR10"))
    rows = json.loads(Path(cli.model.hparams.predictions).read_text())
    assert {r["video_id"] for r in rows} == {1, 2, 3}  # every held-out video has its top-K instances
    assert all(len(r["segmentations"]) == 16 for r in rows)  # one entry per frame of the 16-frame videos


def test_streaming_through_the_cache_equals_the_offline_clip(trained):
    """Frame by frame through the backbone's cache gives the offline clip's predictions (window 8 >= 6 frames)."""
    cli, _ = trained
    model = cli.model.model.eval()
    video = cli.datamodule.val_set.videos[0]
    frames, _ = evaluation_frames(read_frames(video.frames[:6]), 64)
    with torch.inference_mode():
        offline = model(frames[None])
        cache = model.adapter.new_cache(1)
        streamed = [model(frames[t][None, None], cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat([s.logits for s in streamed]), offline.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([s.embeds for s in streamed]), offline.embeds, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([s.masks for s in streamed]), offline.masks, atol=1e-3, rtol=1e-4)


def test_predict_writes_results_and_overlays_and_evaluate_reads_them(trained, setup, capsys):
    _, checkpoint = trained
    folder = setup / "world" / "vis" / "JPEGImages" / "v000006"  # the first held-out video
    results = predict(str(folder), str(checkpoint), str(setup / "predict"), strip_frames=4)
    out = setup / "predict"
    assert (out / "strip.png").stat().st_size > 0 and (out / "overlay.mp4").stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == len(results) and all(len(r["segmentations"]) == 16 for r in rows)
    # The prediction of one held-out video, scored against that video's annotations.
    gt = json.loads((setup / "world" / "vis" / "val_Synthetic.json").read_text())
    gt = {**gt, "videos": gt["videos"][:1], "annotations": [a for a in gt["annotations"] if a["video_id"] == 1]}
    (setup / "gt.json").write_text(json.dumps(gt))
    (setup / "rows.json").write_text(json.dumps([{**r, "video_id": 1} for r in rows]))
    stats = evaluate(str(setup / "gt.json"), str(setup / "rows.json"), str(setup / "stats.json"))
    assert json.loads((setup / "stats.json").read_text()) == stats
    assert "AP50" in capsys.readouterr().out


def test_ddp_on_two_cpu_processes_trains_and_gathers_every_video(setup):
    """Two gloo processes: training steps, then validation where each rank streams its share of the
    videos and every rank evaluates all of them (no rank waits alone)."""
    predictions = setup / "ddp" / "val.json"
    command = [sys.executable, "-m", "streamformer_ovis.cli", "fit", *args(setup, "--trainer.max_steps=2",
               "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null", "--trainer.devices=2", "--trainer.strategy=ddp",
               f"--trainer.default_root_dir={setup / 'ddp'}", f"--model.predictions={predictions}")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(predictions.read_text())
    assert {r["video_id"] for r in rows} == {1, 2, 3}  # both ranks' videos, written once
    assert len(rows) == len(
        {(r["video_id"], r["category_id"], r["score"]) for r in rows}
    )  # the sampler's padding video not twice
