"""`streamformer-pretrain`: LightningCLI for training (fit), plus evaluate and export.

streamformer-pretrain fit --config configs/pretrain/synthetic-tiny.yaml
streamformer-pretrain evaluate CHECKPOINT.ckpt [--root runs/world | --task_files val.yaml] [--device cuda]
streamformer-pretrain export CHECKPOINT.ckpt OUTPUT_DIR
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

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
    import inspect

    import torch
    import yaml

    from streamformer.checkpoints import default_device

    from .evaluate import evaluate as run_evaluation
    from .evaluate import format_table, held_out_datasets, load_checkpoint, save_results
    from .module import MultiTaskDataModule
    from .readers import ClipOptions

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    accepted = inspect.signature(MultiTaskDataModule.__init__).parameters  # LightningCLI adds `_instantiator`
    saved = dict(state.get("datamodule_hyper_parameters", {}))
    if "num_frames" in saved:  # checkpoints written before the clip length had its own name
        saved.setdefault("clip_length", saved.pop("num_frames"))
    data_args = {k: v for k, v in saved.items() if k in accepted}
    if not data_args.get("task_files"):
        data_args["root"] = root  # a world-trained model: its world may have moved
    datamodule = MultiTaskDataModule(**data_args)
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["export"], ["evaluate"]):
        from jsonargparse import CLI

        CLI({"export": export, "evaluate": evaluate}, args=argv, as_positional=True)
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
