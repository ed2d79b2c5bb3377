"""The synthetic online VIS demo (`make ovis-demo`): what training and the temporal branch add.

On the synthetic world, with the backbone `make demo` pretrains, three models are evaluated on the
held-out videos, each streamed frame by frame through the backbone's cache and the tracker:

* `untrained`: the model as initialised (adapter and head random): the floor;
* `trained`: the recipe of configs/ovis/synthetic-tiny.yaml;
* `trained, gates off`: the same with every temporal gate of the backbone at 0 (frames encoded
  alone, so only the tracker links them).

Over seeds (initialisation and data order) the table reports mean ± std of YouTube-VIS AP, AP50,
AR1 and AR10, and an overlay of seed 0's trained model on one held-out video goes to docs/ovis/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from streamformer.spread import exceeds_spread, format_spread

VARIANTS = ("untrained", "trained", "trained, gates off")
SHOWN = ("AP", "AP50", "AP75", "AR1", "AR10")


def run_variant(variant: str, config: str, seed: int, folder: Path, overrides: list[str]) -> dict[str, float]:
    """Train (unless `untrained`) and validate one variant; its stats are cached in `folder`."""
    done = folder / "stats.json"
    if done.exists():
        return json.loads(done.read_text())
    from .cli import lightning_cli

    args = ["--config", config, f"--seed_everything={seed}", f"--data.seed={seed}", f"--trainer.default_root_dir={folder}",
            "--trainer.logger=false", "--trainer.enable_model_summary=false", *overrides]  # fmt: skip
    if variant.endswith("gates off"):
        args.append("--model.gates_off=true")
    cli = lightning_cli(args, run=False)
    if variant != "untrained":
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        cli.trainer.save_checkpoint(folder / "model.ckpt")
    cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    stats = cli.model.last_stats
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(stats, indent=1))
    return stats


def run_demo(
    backbone: str = "runs/pretrain-tiny/backbone",
    world: str = "runs/world",
    config: str = "configs/ovis/synthetic-tiny.yaml",
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (jsonargparse reads the default)
    output: str = "runs/ovis",
    docs: str = "docs/ovis",
    video: str | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Every variant over `seeds`; the table to `docs`/synthetic.md, the overlay to `docs`/overlay.png
    (`make ovis-demo`: seed 0 into runs/ovis/demo; `make ovis-seeds`: seeds 0-2 into docs/ovis).

    Args:
        backbone: the pretrained backbone folder (`make demo`).
        world: the synthetic world (`streamformer synthetic`).
        config: the training recipe.
        seeds: seeds to run (finished runs under `output` are reused: the demo resumes).
        output: run folders.
        docs: where the table and the overlay go.
        video: the held-out video drawn (default: the last held-out video of the world).
        max_steps: training steps (default: the config's).
    """
    from .cli import predict

    root = Path(world)
    overrides = [f"--model.backbone={backbone}", f"--data.train=[{{json: {root}/vis/train_Synthetic.json, images: {root}/vis}}]",
                 f"--data.val={{json: {root}/vis/val_Synthetic.json, images: {root}/vis}}",
                 *([f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={max_steps}"] if max_steps else [])]  # fmt: skip
    stats = {
        variant: [run_variant(variant, config, seed, Path(output) / f"seed{seed}" / variant.replace(", ", "-"), overrides) for seed in seeds]
        for variant in VARIANTS
    }  # fmt: skip
    out = Path(docs)
    out.mkdir(parents=True, exist_ok=True)
    write_table(stats, seeds, out / "synthetic.md")
    held_out = video or str(sorted((root / "vis" / "JPEGImages").iterdir())[-1])
    drawn = Path(output) / f"seed{seeds[0]}" / "trained" / "overlay"
    predict(held_out, str(Path(output) / f"seed{seeds[0]}" / "trained" / "model.ckpt"), str(drawn), mp4=False)
    shutil.copyfile(drawn / "strip.png", out / "overlay.png")
    print((out / "synthetic.md").read_text())
    return stats


def write_table(stats: dict[str, list[dict[str, float]]], seeds: list[int], path: Path) -> None:
    lines = [
        "# Online VIS on the synthetic world",
        "",
        f"Produced by `streamformer-ovis demo` (`make ovis-demo`), seeds {', '.join(map(str, seeds))}: mean ± std of "
        "YouTube-VIS metrics on the held-out videos, each streamed through the backbone's cache (16 frames per "
        "forward: the same outputs as frame by frame) and the tracker frame by frame. The untrained model "
        "(adapter and head as initialised) is the floor.",
        "",
        "| model | " + " | ".join(SHOWN) + " |",
        "|---|" + "---|" * len(SHOWN),
    ]
    for variant, runs in stats.items():
        lines.append(f"| {variant} | " + " | ".join(format_spread([r[k] for r in runs]) for k in SHOWN) + " |")
    lines += ["", "Differences beyond the spread (the sum of the two standard deviations):", ""]
    for a, b in (("trained", "untrained"), ("trained", "trained, gates off")):
        for key in ("AP", "AR1"):
            x, y = [r[key] for r in stats[a]], [r[key] for r in stats[b]]
            verdict = "beyond the spread" if exceeds_spread(x, y) else "within the spread: no difference is claimed"
            lines.append(f"- {key}, {a} vs {b}: {sum(x) / len(x) - sum(y) / len(y):+.3f} ({verdict})")
    path.write_text("\n".join(lines) + "\n")
