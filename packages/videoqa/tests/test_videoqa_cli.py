"""The command end to end on tiny parts: build a model folder, fit a stage through LightningCLI
on conversation files, export the checkpoint; and the shipped recipes take only real arguments."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from videoqa_helpers import tiny_lm

from streamformer.testing import tiny_model
from streamformer.video import write_video
from streamformer_videoqa import StreamFormerForVideoQA
from streamformer_videoqa.bench import bench_memory
from streamformer_videoqa.cli import main
from streamformer_videoqa.memory import POLICIES
from streamformer_videoqa.module import VideoQADataModule, VideoQATraining

CONFIGS = Path(__file__).parents[3] / "configs" / "videoqa"


def test_build_fit_export(tokenizer, tmp_path):
    tiny_model().save_pretrained(tmp_path / "tower")
    tiny_lm(len(tokenizer)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    main(
        [
            "build",
            "--vision",
            str(tmp_path / "tower"),
            "--language_model",
            str(tmp_path / "lm"),
            "--output",
            str(tmp_path / "init"),
        ]
    )

    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        write_video(tmp_path / f"v{i}.mp4", rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=4)
        items.append({"id": f"v{i}", "video": f"v{i}.mp4", "conversations": [
            {"from": "human", "value": "<video> what is the person doing"}, {"from": "gpt", "value": "a man walks left"}]})  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(items))
    main([
        "fit", "--model.model", str(tmp_path / "init"), "--model.stage", "lora", "--model.lr", "1e-3",
        "--data.train_file", str(tmp_path / "train.json"), "--data.media_root", str(tmp_path), "--data.clip_length", "2",
        "--data.batch_size", "3", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    (checkpoint,) = (tmp_path / "run").rglob("*.ckpt")
    main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "trained")])
    trained = StreamFormerForVideoQA.from_pretrained(tmp_path / "trained")
    initial = StreamFormerForVideoQA.from_pretrained(tmp_path / "init")
    assert not torch.equal(trained.projector.linear_1.weight, initial.projector.linear_1.weight)  # it trained
    assert not any(name.startswith("base_model") or "lora_" in name for name in trained.state_dict())  # merged
    assert (tmp_path / "trained" / "tokenizer.json").exists()


FIT_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if "trainer" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("name", FIT_CONFIGS)
def test_recipes_take_only_real_arguments(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert set(config["model"]) <= set(inspect.signature(VideoQATraining).parameters)
    assert set(config["data"]) <= set(inspect.signature(VideoQADataModule).parameters) - {"model"}  # linked from the model


def test_the_memory_benchmark_config_takes_only_real_arguments():
    config = yaml.safe_load((CONFIGS / "memory-synthetic.yaml").read_text())
    assert len(FIT_CONFIGS) == 4 and set(config) <= set(inspect.signature(bench_memory).parameters)
    assert set(config["policies"]) == set(POLICIES)
    rows = [(name, budgets) for name, budgets in config["policies"].items()]
    rows += [(row["policy"], row["budgets"]) for row in config["extra_rows"].values()]
    for name, budgets in rows:
        assert set(budgets) <= set(inspect.signature(POLICIES[name]).parameters)
