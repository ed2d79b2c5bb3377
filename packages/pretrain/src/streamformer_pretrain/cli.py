"""`streamformer-pretrain`: LightningCLI for training (fit), plus export.

streamformer-pretrain fit --config configs/pretrain/synthetic-tiny.yaml
streamformer-pretrain export CHECKPOINT.ckpt OUTPUT_DIR
"""

from __future__ import annotations

import sys
import warnings

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


def evaluate(checkpoint: str, root: str = "runs/world", output: str | None = None, batch_size: int = 16) -> dict:
    """Evaluate a checkpoint on the world's held-out split; print the table with chance levels.

    Args:
        checkpoint: a `.ckpt` written by `streamformer-pretrain fit`.
        root: the world (its `val` split is used).
        output: also write the table here (Markdown) and the numbers beside it (.json).
    """
    import torch

    from .evaluate import evaluate as run_evaluation
    from .evaluate import format_table, load_checkpoint, save_results
    from .module import MultiTaskDataModule

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    data_args = {
        k: v for k, v in state.get("datamodule_hyper_parameters", {}).items() if k in ("tasks", "num_frames", "image_size")
    }
    datamodule = MultiTaskDataModule(root=root, **data_args)
    module = load_checkpoint(checkpoint, datamodule)
    results = run_evaluation(module, root, datamodule.hparams.num_frames, datamodule.hparams.image_size, batch_size)
    print(format_table(results))
    if output:
        save_results(results, output, f"Held-out synthetic evaluation of {checkpoint}")
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
