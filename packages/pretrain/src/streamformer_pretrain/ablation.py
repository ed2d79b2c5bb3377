"""Ablations in the direction of the paper's Tables 5 and 6, on the synthetic world.

    python -m streamformer_pretrain.ablation temporal --output docs/pretrain/ablation-temporal.md
    python -m streamformer_pretrain.ablation tasks --output docs/pretrain/ablation-tasks.md

`temporal`: the same six-task training with no temporal attention (gates fixed at 0), causal
(StreamFormer) and bidirectional temporal attention. `tasks`: training on the global (AR,
retrieval), temporal (localization, grounding), spatial (VIS, RVOS) task sets and on all six;
every run keeps all six heads, so all metrics are measured (a head whose task was not trained
keeps its initial scale, bias and projection).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import evaluate
from .cli import main as cli_main
from .evaluate import blind_grounding_line

TASK_SETS = {
    "global": ["ar", "retrieval"],
    "temporal": ["grounding", "localization"],
    "spatial": ["vis", "rvos"],
    "all": ["ar", "retrieval", "grounding", "localization", "vis", "rvos"],
}
TEMPORAL_MODES = ["none", "causal", "bidirectional"]


def run(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    out = Path(args.workdir) / name
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": f"{out}/checkpoints", "save_last": True, "enable_version_counter": False}}  # fmt: skip
    cli_main(
        ["fit", "--config", args.config, "--data.root", args.root, "--trainer.max_epochs", str(args.epochs),
         "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks", json.dumps([checkpoint]), *overrides]
    )  # fmt: skip
    return evaluate(str(out / "checkpoints" / "last.ckpt"), root=args.root)


def table(rows: dict[str, dict], title: str, note: str) -> str:
    metrics = list(next(iter(rows.values())))
    lines = [f"# {title}", "", note, "", "| run | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, result in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{result[m]['value']:.3f}" for m in metrics) + " |")
    chance = next(iter(rows.values()))
    lines.append("| chance | " + " | ".join(f"{chance[m]['chance']:.3f}" for m in metrics) + " |")
    if "grounding mIoU" in chance:
        lines += ["", blind_grounding_line(chance["grounding mIoU"]["blind"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["temporal", "tasks"])
    parser.add_argument("--config", default="configs/pretrain/synthetic-tiny.yaml")
    parser.add_argument("--root", default="runs/world")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workdir", default="runs/ablation")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    rows = {}
    if args.study == "temporal":
        for mode in TEMPORAL_MODES:
            rows[mode] = run(f"temporal-{mode}", ["--model.temporal", mode], args)
        text = table(rows, "Ablation: temporal attention (paper Table 6 direction)",
                     f"Six-task pretraining of the tiny model for {args.epochs} epochs, held-out synthetic metrics.")  # fmt: skip
    else:
        for name, tasks in TASK_SETS.items():
            rows[name] = run(f"tasks-{name}", ["--data.train_tasks", str(tasks)], args)
        text = table(rows, "Ablation: pretraining task sets (paper Table 5 direction)",
                     f"Tiny model, {args.epochs} epochs per run (equal epochs: a run on fewer tasks takes fewer steps), held-out synthetic metrics; all heads exist in every run.")  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
