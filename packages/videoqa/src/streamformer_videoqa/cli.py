"""`streamformer-videoqa`: build a model from its parts, train a stage, export it.

streamformer-videoqa build --vision TOWER --language_model LM --output DIR [--tokenizer TOK]
streamformer-videoqa fit --config configs/videoqa/llava-next-7b.yaml
streamformer-videoqa export CHECKPOINT.ckpt OUTPUT_DIR
"""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from .module import VideoQADataModule, VideoQATraining

# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def build(vision: str, language_model: str, output: str, tokenizer: str | None = None, video_token: str = "<video>") -> None:
    """A new model folder: a StreamFormer tower, a causal LM and its tokenizer (with the video
    token added), and a random projector that stage 1 trains.

    Args:
        vision: StreamFormer checkpoint folder (ours or the original layout).
        language_model: a transformers causal LM folder.
        output: the folder to write (model and tokenizer, for `fit` and `from_pretrained`).
        tokenizer: the LM's tokenizer folder (default: the LM's own folder).
        video_token: the placeholder token, added to the vocabulary when missing.
    """
    from transformers import AutoTokenizer

    from .model import StreamFormerForVideoQA

    words = AutoTokenizer.from_pretrained(tokenizer or language_model)
    model = StreamFormerForVideoQA.from_parts(vision, language_model, words, video_token=video_token)
    model.save_pretrained(output)
    words.save_pretrained(output)
    print(
        f"wrote {output}: {model.config.tokens_per_frame} visual tokens per frame, video token id {model.config.video_token_id}"
    )


def export(checkpoint: str, output: str) -> None:
    """Write the model of a `fit` checkpoint as one folder (LoRA merged), with its tokenizer.

    Args:
        checkpoint: a `.ckpt` written by `streamformer-videoqa fit`.
        output: the folder for `StreamFormerForVideoQA.from_pretrained`.
    """
    from transformers import AutoTokenizer

    module = VideoQATraining.load_from_checkpoint(checkpoint, map_location="cpu")
    module.export(output)
    AutoTokenizer.from_pretrained(module.hparams.model).save_pretrained(output)
    print(f"wrote {output}")


class VideoQACLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.model")  # the data reads the model's tokenizer and token budget


def lightning_cli(args: list[str] | None = None, run: bool = True) -> VideoQACLI:
    return VideoQACLI(VideoQATraining, VideoQADataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["build"], ["export"]):
        from jsonargparse import CLI

        CLI({"build": build, "export": export}, args=argv, as_positional=False)
        return
    lightning_cli(argv)


if __name__ == "__main__":
    main()
