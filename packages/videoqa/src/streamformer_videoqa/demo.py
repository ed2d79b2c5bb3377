"""The synthetic video QA demo (`make videoqa-demo`): what the video and the temporal branch add.

On the synthetic world, with the backbone `make demo` pretrains and a tiny word-level LM built
from the world's vocabulary (a 2-layer Qwen2 from config), three models are trained the same way
(stage 1: the projector on captions; stage 3: projector and LM on the multiple-choice questions)
and evaluated on the held-out videos' questions:

* `video`: the backbone as pretrained;
* `video, gates off`: the same backbone with every temporal gate at 0 (frames encoded alone);
* `text only`: the questions without the video (what the questions and options give away).

Chance is 1 / 4 (four options). Over seeds the table reports mean ± std. The tower is frozen, so
each tower variant encodes every video once (`precompute_features`) and all seeds train and
evaluate on those features.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader

from streamformer.spread import exceeds_spread, format_spread, mean_std

from .data import ConversationDataset, MediaOptions, collate_conversations, precompute_features
from .evaluate import answer_items, write_results
from .model import StreamFormerForVideoQA
from .module import VideoQATraining
from .synthetic import convert_world, initial_model

VARIANTS = ("video", "video, gates off", "text only")


def variant_folder(variant: str) -> str:
    """A variant's run folder name: "video, gates off" -> "video-gates-off"."""
    return variant.replace(", ", "-").replace(" ", "-")


def train_stage(folder: Path, stage: str, data: ConversationDataset, epochs: int, lr: float, batch_size: int, out: Path) -> None:
    """Fit one stage from the model `folder` on `data`; write the result to `out`."""
    module = VideoQATraining(str(folder), stage=stage, lr=lr, warmup_ratio=0.03)
    collate = functools.partial(collate_conversations, pad_token_id=data.tokenizer.pad_token_id)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate)
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=None)  # fmt: skip
    trainer.fit(module, loader)
    module.export(out)


def run_variant(
    variant: str, backbone: str, files: dict[str, Path], world: Path, output: Path, seed: int, clip_length: int,
    caption_epochs: int, qa_epochs: int, batch_size: int, features: dict[str, dict[str, Tensor]],
) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate one variant; `features` holds each tower variant's video features
    (computed here the first time a variant needs them)."""
    L.seed_everything(seed)
    model, tokenizer = initial_model(world, backbone, seed, gates_off=variant == "video, gates off")
    folder = output / variant_folder(variant)
    model.save_pretrained(folder / "init")
    if variant != "text only" and variant not in features:
        names = ("captions_train", "qa_train", "questions_val")
        videos = [item["video"] for name in names for item in json.loads(files[name].read_text())]
        features[variant] = precompute_features(model, videos, world, clip_length)
    options = MediaOptions(clip_length, model.config.vision_config.image_size, model.config.tokens_per_frame)
    dataset = functools.partial(
        ConversationDataset, media_root=world, tokenizer=tokenizer, options=options, features=features.get(variant)
    )
    start = folder / "init"
    if variant != "text only":
        train_stage(
            start,
            "projector",
            dataset(files["captions_train"], style="plain"),
            caption_epochs,
            1e-3,
            batch_size,
            folder / "stage1",
        )
        start = folder / "stage1"
    questions = "qa_train_text" if variant == "text only" else "qa_train"
    train_stage(start, "full", dataset(files[questions]), qa_epochs, 1e-3, batch_size, folder / "stage3")
    tokenizer.save_pretrained(folder / "stage3")  # a whole model folder (`stream`, `bench-memory` read it)
    items = json.loads(files["questions_val"].read_text())
    if variant == "text only":
        items = [{k: v for k, v in item.items() if k != "video"} for item in items]
    trained = StreamFormerForVideoQA.from_pretrained(folder / "stage3")
    answers = answer_items(trained, tokenizer, items, world, clip_length, max_new_tokens=2, features=features.get(variant))
    return write_results(answers, folder / "answers")


def accuracy_gap(a: list[float], b: list[float]) -> str:
    gap = mean_std(a)[0] - mean_std(b)[0]
    verdict = "exceeds the spread" if exceeds_spread(a, b) else "within the spread: no difference is claimed"
    return f"{gap:+.3f} ({verdict})"


def run_seeds(
    backbone: str = "runs/pretrain-tiny/backbone",
    world: str = "runs/world",
    output: str = "runs/videoqa",
    report: str = "docs/videoqa/synthetic.md",
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (jsonargparse reads the default)
    clip_length: int = 8,
    caption_epochs: int = 1,
    qa_epochs: int = 4,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """Train and evaluate the three variants for every seed; write the table (mean ± std).

    Args:
        backbone: the pretrained backbone folder (`make demo` exports it).
        world: the synthetic world.
        output: runs go to `<output>/seed<S>/<variant>/` (a seed already evaluated is reused).
        report: the Markdown table (and `.json` beside it).
        clip_length: uniformly sampled frames per video.
        caption_epochs, qa_epochs: epochs of stage 1 and stage 3.
    """
    world_path = Path(world)
    files = convert_world(world_path, Path(output) / "data")
    accuracy: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    features: dict[str, dict[str, Tensor]] = {}
    for seed in seeds:
        for variant in VARIANTS:
            done = Path(output) / f"seed{seed}" / variant_folder(variant) / "answers.json"
            table = json.loads(done.read_text()) if done.exists() else run_variant(
                variant, backbone, files, world_path, Path(output) / f"seed{seed}", seed, clip_length, caption_epochs,
                qa_epochs, batch_size, features,
            )  # fmt: skip
            accuracy[variant].append(table["multiple choice"]["accuracy"])
    summary = {variant: dict(zip(("mean", "std"), mean_std(values), strict=True)) for variant, values in accuracy.items()}
    lines = [
        "# Synthetic video QA: what the video and the temporal branch add",
        "",
        f"Produced by `make videoqa-demo` (`streamformer-videoqa demo`); seeds {seeds}, held-out questions of the",
        f"synthetic world's val videos (four options: chance 0.25), {clip_length} frames per video, stage 1 {caption_epochs}",
        f"epoch(s) on captions, stage 3 {qa_epochs} epochs on questions. Float results vary between machines.",
        "",
        "| model | accuracy (mean ± std) | per seed |",
        "|---|---|---|",
        *[
            f"| {variant} | {format_spread(accuracy[variant])} | {', '.join(f'{v:.3f}' for v in accuracy[variant])} |"
            for variant in VARIANTS
        ],
        "",
        *[
            f"- {a} vs {b}: {accuracy_gap(accuracy[a], accuracy[b])}"
            for a, b in (("video", "text only"), ("video", "video, gates off"))
        ],
    ]
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text("\n".join(lines) + "\n")
    Path(report).with_suffix(".json").write_text(json.dumps({"seeds": seeds, "accuracy": accuracy, "summary": summary}, indent=1))
    print("\n".join(lines))
    return summary
