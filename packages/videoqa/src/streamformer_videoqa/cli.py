"""`streamformer-videoqa`: build a model from its parts, train a stage, export it.

streamformer-videoqa build --vision TOWER --language_model LM --output DIR [--tokenizer TOK]
streamformer-videoqa fit --config configs/videoqa/llava-next-7b.yaml
streamformer-videoqa export CHECKPOINT.ckpt OUTPUT_DIR
streamformer-videoqa evaluate --model DIR --items ITEMS.json --media_root DIR --output runs/videoqa/eval
streamformer-videoqa synthetic --world runs/world --backbone runs/pretrain-tiny/backbone --output runs/videoqa-tiny
streamformer-videoqa demo      # the synthetic comparison behind `make videoqa-demo`
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

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


def evaluate(model: str, items: str, media_root: str, output: str, clip_length: int = 16, device: str | None = None) -> dict:
    """Answer every item (multiple choice by option letter, open answers by exact match); write
    the replies (`<output>.jsonl`) and the accuracy table (`<output>.json`), and print the table.

    Args:
        model: a model folder (`build` / `export`), its tokenizer inside.
        items: JSON list of questions (see `streamformer_videoqa.evaluate`).
        media_root: the folder the items' video paths are relative to.
        output: path stem of the two result files.
        clip_length: uniformly sampled frames per video.
        device: where the model runs (default: CUDA when available).
    """
    import json

    from transformers import AutoTokenizer

    from streamformer.checkpoints import default_device

    from .evaluate import answer_items, write_results
    from .model import StreamFormerForVideoQA

    device = default_device(device)
    net = StreamFormerForVideoQA.from_pretrained(model).to(device)
    questions = json.loads(Path(items).read_text())
    table = write_results(answer_items(net, AutoTokenizer.from_pretrained(model), questions, media_root, clip_length), output)
    for kind, row in table.items():
        chance = f", chance {row['chance']:.3f}" if "chance" in row else ""
        print(f"{kind}: accuracy {row['accuracy']:.3f} over {row['items']} items{chance}")
    return table


class VideoQACLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.model")  # the data reads the model's tokenizer and token budget


def lightning_cli(args: list[str] | None = None, run: bool = True) -> VideoQACLI:
    return VideoQACLI(VideoQATraining, VideoQADataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["build"], ["export"], ["evaluate"], ["synthetic"], ["demo"]):
        from jsonargparse import CLI

        from .demo import run_seeds
        from .synthetic import write_synthetic

        commands = {"build": build, "export": export, "evaluate": evaluate, "synthetic": write_synthetic, "demo": run_seeds}
        CLI(commands, args=argv, as_positional=False)
        return
    lightning_cli(argv)


if __name__ == "__main__":
    main()
