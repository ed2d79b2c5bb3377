"""`streamformer-videoqa`: build a model from its parts, train a stage, export it.

streamformer-videoqa build --vision TOWER --language_model LM --output DIR [--tokenizer TOK]
streamformer-videoqa fit --config configs/videoqa/llava-next-7b.yaml
streamformer-videoqa export CHECKPOINT.ckpt OUTPUT_DIR
streamformer-videoqa evaluate --model DIR --items ITEMS.json --media_root DIR --output runs/videoqa/eval
streamformer-videoqa stream VIDEO --model DIR --questions Q.json --policy recent --output answers.json
streamformer-videoqa synthetic --world runs/world --backbone runs/pretrain-tiny/backbone --output runs/videoqa-tiny
streamformer-videoqa demo      # the synthetic comparison behind `make videoqa-demo`
streamformer-videoqa align --model DIR --world runs/world --output runs/videoqa-aligned   # trained on `recent`'s contexts
streamformer-videoqa bench-memory --config configs/videoqa/memory-synthetic.yaml   # every memory policy, timed
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

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


def stream(
    video: str,
    model: str,
    questions: str,
    policy: str = "recent",
    budgets: dict[str, Any] | None = None,
    fps: float | None = 2.0,
    vision_window: int | None = 256,
    max_new_tokens: int = 16,
    instruction: str | None = None,
    output: str | None = None,
    device: str | None = None,
) -> list[dict]:
    """Stream a video through the model frame by frame and answer each question at its time, from
    the frames up to it; print each answer with its time and the per-frame latency.

    Args:
        video: a video file, or a folder of frames (images in name order, shot at `fps`).
        model: a model folder (`build` / `export`), its tokenizer inside.
        questions: JSON list of `{"id", "time_s" (or OVO-Bench's "realtime"), "question",
            ["options"]}`.
        policy: the LM's memory: full, recent, streamingvlm or streamforest
            (`streamformer_videoqa.memory`).
        budgets: the policy's budgets, e.g. `{"frames": 8}` for recent.
        fps: frames per second taken from the video (None: every frame).
        vision_window: frames the backbone's temporal attention sees (None: all).
        max_new_tokens: longest answer.
        instruction: text pinned at the start of the LM's context.
        output: a JSON file for the answers, the latencies and what the caches held.
        device: where the model runs (default: CUDA when available).
    """
    import json

    from transformers import AutoTokenizer

    from streamformer.checkpoints import default_device

    from .memory import build_policy
    from .model import StreamFormerForVideoQA
    from .session import StreamingSession, answers_json, folder_frames, run_stream, video_frames

    net = StreamFormerForVideoQA.from_pretrained(model).to(default_device(device))
    items = json.loads(Path(questions).read_text())
    for i, item in enumerate(items):
        if "time_s" not in item and "realtime" not in item:
            raise ValueError(f"{questions}: item {item.get('id', i)} has no time ('time_s' or 'realtime')")
        item.setdefault("time_s", float(item.get("realtime", 0.0)))
    session = StreamingSession(
        net, AutoTokenizer.from_pretrained(model), build_policy(policy, **(budgets or {})), vision_window,
        max_new_tokens, instruction,
    )  # fmt: skip
    if Path(video).is_dir():
        frames = folder_frames(video, fps or 1.0)
    else:
        frames = video_frames(video, fps, net.config.vision_config.image_size)
    answers, latencies = run_stream(session, frames, items)
    for answer in answers:
        said = answer.reply if answer.error is None else f"(not answered: {answer.error})"
        print(f"[{answer.time_s:8.2f} s, {answer.frames_seen} frames] {answer.id}: {said}")
    per_frame = sorted(latencies) or [0.0]
    summary = {"mean": sum(per_frame) / len(per_frame), "p95": per_frame[int(0.95 * (len(per_frame) - 1))]}
    print(f"{len(latencies)} frames, {1000 * summary['mean']:.2f} ms per frame (p95 {1000 * summary['p95']:.2f} ms)")
    result = {"policy": policy, "budgets": budgets or {}, "answers": answers_json(answers), "frame_latency_s": summary,
              "frame_latencies_s": latencies, "stats": session.stats()}  # fmt: skip
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=1))
    return result["answers"]


class VideoQACLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.model")  # the data reads the model's tokenizer and token budget


def lightning_cli(args: list[str] | None = None, run: bool = True) -> VideoQACLI:
    return VideoQACLI(VideoQATraining, VideoQADataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


FUNCTION_COMMANDS = ("build", "export", "evaluate", "stream", "synthetic", "demo", "bench-memory", "align")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in FUNCTION_COMMANDS:
        from jsonargparse import CLI

        from .aligned import train_aligned
        from .bench import bench_memory
        from .demo import run_seeds
        from .synthetic import write_synthetic

        if argv[0] == "stream" and len(argv) > 1 and not argv[1].startswith("-"):
            argv = ["stream", "--video", *argv[1:]]  # `stream VIDEO ...`: the video may come first, unnamed
        commands = {
            "build": build, "export": export, "evaluate": evaluate, "stream": stream, "synthetic": write_synthetic,
            "demo": run_seeds, "bench-memory": bench_memory, "align": train_aligned,
        }  # fmt: skip
        CLI(commands, args=argv, as_positional=False)
        return
    lightning_cli(argv)


if __name__ == "__main__":
    main()
