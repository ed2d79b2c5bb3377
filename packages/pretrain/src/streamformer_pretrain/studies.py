"""Pretraining studies over several seeds: the demo recipe and the ablations in the direction of
the paper's Tables 5 and 6, each reported as mean ± std on the synthetic world's held-out split.

    python -m streamformer_pretrain.studies demo --output docs/pretrain/seeds-demo.md
    python -m streamformer_pretrain.studies temporal --output docs/pretrain/ablation-temporal.md
    python -m streamformer_pretrain.studies tasks --output docs/pretrain/ablation-tasks.md

`demo`: the `make demo` recipe (the config's epochs). `temporal`: six-task training with no
temporal attention (gates fixed at 0), causal (StreamFormer) and bidirectional temporal
attention. `tasks`: training on the global (AR, retrieval), temporal (localization, grounding),
spatial (VIS, RVOS) task sets and on all six; every run keeps all six heads, so all metrics are
measured (a head whose task was not trained keeps its initial scale, bias and projection).

A seed sets both `seed_everything` (initialisation) and the data seed (clip sampling, task
order); the world itself is fixed. Runs are resumable: a finished run's `results.json` is reused,
an interrupted one continues from its `last.ckpt`. Runs with the same settings are shared
between studies (the six-task causal run of `temporal` is the `all` row of `tasks`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamformer.spread import exceeds_spread, format_spread, mean_std

from .cli import evaluate, export
from .cli import main as cli_main
from .evaluate import blind_grounding_line

ALL_TASKS = ["ar", "retrieval", "grounding", "localization", "vis", "rvos"]
TASK_SETS = {
    "global": ["ar", "retrieval"],
    "temporal": ["grounding", "localization"],
    "spatial": ["vis", "rvos"],
    "all": ALL_TASKS,
}
# study -> row name -> (run name, overrides); equal run names are the same training.
STUDIES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "demo": {"six tasks, causal": ("all-causal", [])},
    "temporal": {
        "none": ("all-none", ["--model.temporal", "none"]),
        "causal": ("all-causal", []),
        "bidirectional": ("all-bidirectional", ["--model.temporal", "bidirectional"]),
    },
    "tasks": {
        name: ("all-causal" if name == "all" else f"{name}-causal", ["--data.train_tasks", json.dumps(tasks)])
        for name, tasks in TASK_SETS.items()
    },
}
# Pairs whose differences the report states, each against the first row named.
COMPARISONS = {"temporal": [("causal", "none"), ("causal", "bidirectional")],
               "tasks": [("all", "global"), ("all", "temporal"), ("all", "spatial")]}  # fmt: skip
TITLES = {
    "demo": "Pretraining recipe of `make demo` over seeds",
    "temporal": "Ablation: temporal attention (paper Table 6 direction)",
    "tasks": "Ablation: pretraining task sets (paper Table 5 direction)",
}


def run(run_name: str, overrides: list[str], seed: int, args: argparse.Namespace) -> dict:
    """Train (or resume) one run and evaluate it; the results are kept beside its checkpoints."""
    epochs = f"{args.epochs}ep" if args.epochs else "config-epochs"
    out = Path(args.workdir) / f"{run_name}-{epochs}" / f"seed{seed}"
    results_file = out / "results.json"
    if results_file.is_file():
        print(f"{out}: done before, results reused", flush=True)
        return json.loads(results_file.read_text())
    last = out / "checkpoints" / "last.ckpt"
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": f"{out}/checkpoints", "save_last": True, "every_n_train_steps": 100,
                                "enable_version_counter": False}}  # fmt: skip
    print(f"{out}: training{' (resumed)' if last.is_file() else ''}", flush=True)
    cli_main(
        ["fit", "--config", args.config, "--data.root", args.root, "--seed_everything", str(seed), "--data.seed", str(seed),
         "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.callbacks", json.dumps([checkpoint]), *overrides,
         *(["--trainer.max_epochs", str(args.epochs)] if args.epochs else []),
         *(["--ckpt_path", str(last)] if last.is_file() else [])]
    )  # fmt: skip
    results = evaluate(str(last), root=args.root)
    export(str(last), str(out / "backbone"))  # for downstream studies over the same seeds (OAD)
    results_file.write_text(json.dumps(results, indent=1))
    return results


def report(study: str, rows: dict[str, list[dict]], seeds: list[int], epochs: str) -> str:
    """Markdown: mean ± std per row and metric, chance, per-seed values and the stated differences."""
    first = next(iter(rows.values()))[0]
    metrics = list(first)
    lines = [
        f"# {TITLES[study]}",
        "",
        f"Tiny model on the synthetic world, {epochs}, held-out metrics as mean ± std over seeds "
        f"{', '.join(map(str, seeds))} (`python -m streamformer_pretrain.studies {study}`; `make seeds` runs every study). "
        "Float results may differ between machines: compare rows, not single digits.",
        "",
        "| run | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for name, results in rows.items():
        lines.append(f"| {name} | " + " | ".join(format_spread([r[m]["value"] for r in results]) for m in metrics) + " |")
    lines.append("| chance | " + " | ".join(f"{first[m]['chance']:.3f}" for m in metrics) + " |")
    if "grounding mIoU" in first:
        lines += ["", blind_grounding_line(first["grounding mIoU"]["blind"])]
    if study == "demo":
        lines += ["", "Value / chance (mean ± std over seeds) and the lowest seed:", "",
                  "| metric | value / chance | lowest seed |", "|---|---:|---:|"]  # fmt: skip
        for m in metrics:
            ratios = [r[m]["value"] / r[m]["chance"] for r in next(iter(rows.values()))]
            lines.append(f"| {m} | {format_spread(ratios, 2)}x | {min(ratios):.2f}x |")
    lines += ["", "Per seed:", "", "| run | seed | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for name, results in rows.items():
        for seed, r in zip(seeds, results, strict=True):
            lines.append(f"| {name} | {seed} | " + " | ".join(f"{r[m]['value']:.3f}" for m in metrics) + " |")
    if study in COMPARISONS:
        lines += ["", "Differences of means, and whether each exceeds the spread (|difference| > std + std):", ""]
        for a, b in COMPARISONS[study]:
            parts = []
            for m in metrics:
                va, vb = [r[m]["value"] for r in rows[a]], [r[m]["value"] for r in rows[b]]
                diff = mean_std(va)[0] - mean_std(vb)[0]
                parts.append(f"{m} {diff:+.3f}{'' if exceeds_spread(va, vb) else ' (within spread)'}")
            lines.append(f"- {a} - {b}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=list(STUDIES))
    parser.add_argument("--config", default="configs/pretrain/synthetic-tiny.yaml")
    parser.add_argument("--root", default="runs/world")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per run (default: 2 for ablations, the config's for demo)"
    )
    parser.add_argument("--workdir", default="runs/studies")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    if args.epochs is None and args.study != "demo":
        args.epochs = 2
    rows = {
        name: [run(run_name, overrides, seed, args) for seed in args.seeds]
        for name, (run_name, overrides) in STUDIES[args.study].items()
    }
    epochs = f"{args.epochs} epochs per run" if args.epochs else "the config's epochs"
    text = report(args.study, rows, args.seeds, epochs)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
