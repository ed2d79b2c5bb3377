"""`streamformer-pretrain`: LightningCLI for training (fit), plus export.

streamformer-pretrain fit --config configs/pretrain/synthetic-tiny.yaml
streamformer-pretrain export CHECKPOINT.ckpt OUTPUT_DIR
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from .module import MultiTaskDataModule, StreamFormerPretraining


def export(checkpoint: str, output: str) -> None:
    """Write the trained backbone of a Lightning checkpoint with `save_pretrained`.

    Args:
        checkpoint: a `.ckpt` written by `streamformer-pretrain fit`.
        output: directory; load it with `StreamFormerVisionModel.from_pretrained(output)`.
    """
    import torch

    from streamformer import StreamFormerConfig, StreamFormerVisionModel

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    prefix = "model.timesformer."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    model = StreamFormerVisionModel(StreamFormerConfig.from_dict(state["streamformer_config"]))
    model.load_state_dict(weights)
    model.save_pretrained(output)
    print(f"wrote the backbone of {checkpoint} to {output}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from jsonargparse import CLI

        CLI(export, args=argv[1:], as_positional=True)
        return
    LightningCLI(
        StreamFormerPretraining,
        MultiTaskDataModule,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
