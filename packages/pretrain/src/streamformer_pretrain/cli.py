"""`streamformer-pretrain`: LightningCLI for training (fit), plus evaluate, export and the AR
read-outs (zero-shot, linear probe; `ar.py`).

streamformer-pretrain fit --config configs/pretrain/synthetic-tiny.yaml
streamformer-pretrain evaluate CHECKPOINT.ckpt [--root runs/world | --task_files val.yaml] [--device cuda]
streamformer-pretrain export CHECKPOINT.ckpt OUTPUT_DIR
streamformer-pretrain zero-shot --checkpoint CKPT --csv val.csv --video_root DIR --label2id label2id.json [--output r.json]
streamformer-pretrain linear-probe --checkpoint CKPT --train_csv train.csv --val_csv val.csv --video_root DIR \
    --label2id label2id.json --cache DIR [--feature global|mean] [--seeds [0,1,2]] [--output r.json]
streamformer-pretrain ar-curves --checkpoint CKPT --root runs/world --output docs/pretrain/ar-streaming.md
streamformer-pretrain ar-demo   # `make ar-demo`: zero-shot, probe and LoRA fine-tuning of three backbones over seeds
streamformer-pretrain finetune fit --config configs/ar/k400-finetune.yaml   # full / LoRA / linear AR fine-tuning
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Literal

from lightning.pytorch.cli import LightningCLI

from .module import MultiTaskDataModule, StreamFormerPretraining

# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def export(checkpoint: str, output: str) -> None:
    """Write the trained backbone of a Lightning checkpoint with `save_pretrained`.

    Args:
        checkpoint: a `.ckpt` written by `streamformer-pretrain fit`.
        output: directory; load it with `StreamFormerVisionModel.from_pretrained(output)`.
    """
    import torch
    import transformers

    from streamformer import StreamFormerConfig, StreamFormerVisionModel

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    prefix = "model.timesformer."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    model = StreamFormerVisionModel(StreamFormerConfig.from_dict(state["streamformer_config"]))
    model.load_state_dict(weights)
    transformers.utils.logging.disable_progress_bar()  # one small file: a bar adds nothing
    model.save_pretrained(output)
    print(f"wrote the backbone of {checkpoint} to {output}")


def evaluate(
    checkpoint: str,
    root: str | None = "runs/world",
    task_files: str | None = None,
    output: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> dict:
    """Evaluate a checkpoint on held-out data; print the table with chance levels.

    The model is rebuilt as it was trained (the checkpoint's data settings: tasks, class names,
    tokenizer), so its training annotation files must be readable where they were.

    Args:
        checkpoint: a `.ckpt` written by `streamformer-pretrain fit`.
        root: a synthetic world: its `val` split is evaluated (and, for a model trained on a
            world, its `train` split rebuilds the class names and word tokenizer).
        task_files: a YAML file of held-out real data sets instead: per task, reader arguments
            as in the fit config's `data.task_files`.
        output: also write the table here (Markdown) and the numbers beside it (.json).
        device: where the model runs (default: CUDA when available).
    """
    import yaml

    from streamformer.checkpoints import default_device

    from .ar import checkpoint_datamodule
    from .evaluate import evaluate as run_evaluation
    from .evaluate import format_table, held_out_datasets, load_checkpoint, save_results
    from .readers import ClipOptions

    datamodule = checkpoint_datamodule(checkpoint, root)  # a world-trained model: its world may have moved
    device = default_device(device)
    module = load_checkpoint(checkpoint, datamodule).to(device)
    files = yaml.safe_load(Path(task_files).read_text()) if task_files else None
    options = ClipOptions(datamodule.hparams.clip_length, datamodule.hparams.image_size, train=False, cache_videos=files is None)
    datasets = held_out_datasets(options, datamodule.tasks, root=root, task_files=files)
    results = run_evaluation(module, datasets, batch_size)
    print(format_table(results))
    if output:
        where = task_files or f"{root} (val)"
        save_results(results, output, f"Held-out evaluation of {checkpoint} on {where}")
    return results


def _loaded(checkpoint: str, root: str | None, device: str | None, disable_temporal: bool):
    """The checkpoint's module (gates off if asked), its clip length and image size."""
    from .ar import load_module

    module, datamodule = load_module(checkpoint, root, device)
    if disable_temporal:
        module.model.timesformer.disable_temporal()
    return module, datamodule.hparams.clip_length, datamodule.hparams.image_size


def _write_json(results: dict, output: str) -> None:
    import json

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


def zero_shot(
    checkpoint: str,
    csv: str,
    video_root: str,
    label2id: str,
    dataset: str | None = None,
    root: str | None = None,
    clip_length: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    disable_temporal: bool = False,
    num_workers: int = 0,
    output: str | None = None,
    plot: str | None = None,
) -> dict:
    """Zero-shot action recognition of an AR CSV through the text tower; print top-1 / top-5
    with chance and the top-1 by frames seen.

    Args:
        checkpoint: a `.ckpt` written by `streamformer-pretrain fit`.
        csv: `relative_video_path,class_name` rows, no header.
        video_root: the folder the CSV's paths are relative to.
        label2id: {class name: id} of the CSV's classes (any classes, not only the trained ones).
        dataset: the data set's name (default: the CSV's stem).
        root: where the world of a world-trained model is now (default: where it was trained).
        clip_length: frames per clip (default: the training clip length).
        device: where the model runs (default: CUDA when available).
        disable_temporal: zero every temporal gate first (the "no temporal attention" read-out).
        num_workers: processes decoding videos.
        output: also write the results here (JSON).
        plot: also plot top-1 against frames seen here (PNG).
    """
    from .ar import plot_curve, zero_shot_table
    from .ar import zero_shot as run_zero_shot

    module, length, size = _loaded(checkpoint, root, device, disable_temporal)
    results = run_zero_shot(
        None, csv, video_root, label2id, dataset, clip_length or length, batch_size,
        module=module, image_size=size, num_workers=num_workers,
    )  # fmt: skip
    print(f"zero-shot on {csv}: {results['num_videos']} videos ({results['skipped']} skipped), "
          f"{results['num_classes']} classes, {results['clip_length']} frames per clip")  # fmt: skip
    print(zero_shot_table(results))
    if output:
        _write_json(results, output)
    if plot:
        name = "gates off" if disable_temporal else Path(checkpoint).stem
        print(f"plot: {plot_curve({name: results['curve']}, results['chance_top1'], plot, title=Path(csv).name)}")
    return results


def linear_probe(
    checkpoint: str,
    train_csv: str,
    val_csv: str,
    video_root: str,
    label2id: str,
    cache: str,
    feature: Literal["global", "mean"] = "global",
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (jsonargparse reads the default from the signature)
    dataset: str | None = None,
    root: str | None = None,
    clip_length: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    disable_temporal: bool = False,
    epochs: int = 1000,
    num_workers: int = 0,
    output: str | None = None,
) -> dict:
    """Linear probe of the backbone's features on an AR train / val pair; print top-1 / top-5 as
    mean ± std over seeds.

    Features are computed once per video into `cache` (resumable; `ar.extract_features`). Per
    seed, the probe's weight decay is chosen on a split of the training features drawn with that
    seed, never on the validation set (`ar.linear_probe`).

    Args:
        checkpoint: a `.ckpt` written by `streamformer-pretrain fit`.
        train_csv, val_csv: `relative_video_path,class_name` rows, no header.
        video_root: the folder the CSVs' paths are relative to.
        label2id: {class name: id} of the classes.
        cache: feature cache folder (`train/` and `val/` inside; refused if written by another model).
        feature: "global" (the last frame's pooled feature) or "mean" (of every frame's).
        seeds: one probe per seed.
        dataset: the data set's name (default: the CSV's stem).
        root: where the world of a world-trained model is now (default: where it was trained).
        clip_length: frames per clip (default: the training clip length).
        device: where the model runs (default: CUDA when available).
        disable_temporal: zero every temporal gate first.
        epochs: at most this many L-BFGS iterations per fit (full batch).
        num_workers: processes decoding videos.
        output: also write the results here (JSON).
    """
    from streamformer.spread import format_spread

    from .ar import ar_dataset, extract_features
    from .ar import linear_probe as run_probe

    module, length, size = _loaded(checkpoint, root, device, disable_temporal)
    vision, features = module.model.timesformer, {}
    for split, csv in (("train", train_csv), ("val", val_csv)):
        reader = ar_dataset(csv, video_root, label2id, clip_length or length, size, dataset)
        features[split] = extract_features(vision, reader, Path(cache) / split, feature, batch_size, num_workers=num_workers)
    num_classes = len(reader.label2id)
    train, val = features["train"], features["val"]
    print(f"linear probe, {feature} feature of {checkpoint}: {len(train.labels)} train / {len(val.labels)} val videos "
          f"({len(train.skipped)} / {len(val.skipped)} skipped), {num_classes} classes")  # fmt: skip
    runs = {}
    for seed in seeds:
        runs[seed] = run_probe(*train[:2], *val[:2], seed=seed, epochs=epochs, num_classes=num_classes)
        print(f"seed {seed}: top-1 {runs[seed]['top1']:.3f}  top-{runs[seed]['top5_k']} {runs[seed]['top5']:.3f}  "
              f"(weight decay {runs[seed]['weight_decay']:g}, chosen on a split of train)")  # fmt: skip
    k = min(5, num_classes)
    top1, top5 = [r["top1"] for r in runs.values()], [r["top5"] for r in runs.values()]
    print(f"top-1 {format_spread(top1)}  top-{k} {format_spread(top5)}  "
          f"(mean ± std over seeds {list(seeds)}; chance {1 / num_classes:.3f} / {k / num_classes:.3f})")  # fmt: skip
    results = {
        "feature": feature, "num_classes": num_classes, "num_train": len(train.labels), "num_val": len(val.labels),
        "top1": top1, "top5": top5, "top5_k": k, "chance_top1": 1 / num_classes, "chance_top5": k / num_classes,
        "seeds": {str(seed): r for seed, r in runs.items()},
    }  # fmt: skip
    if output:
        _write_json(results, output)
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["export"], ["evaluate"]):
        from jsonargparse import CLI

        CLI({"export": export, "evaluate": evaluate}, args=argv, as_positional=True)
        return
    if argv[:1] in (["zero-shot"], ["linear-probe"], ["ar-curves"], ["ar-demo"]):  # every argument by name
        from jsonargparse import CLI

        from .ar import streaming_curves
        from .ar_demo import run_ar_demo

        commands = {"zero-shot": zero_shot, "linear-probe": linear_probe, "ar-curves": streaming_curves, "ar-demo": run_ar_demo}
        CLI(commands, args=argv, as_positional=False)
        return
    if argv[:1] == ["finetune"]:  # AR fine-tuning: its own LightningCLI (fit / validate / test)
        from .finetune import finetune_cli

        finetune_cli(argv[1:])
        return
    LightningCLI(
        StreamFormerPretraining,
        MultiTaskDataModule,
        args=argv if argv != sys.argv[1:] else None,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
