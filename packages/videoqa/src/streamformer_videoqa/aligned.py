"""Training on the contexts a memory policy leaves at inference (StreamingVLM's lesson).

A model trained on whole clips (8 frames sampled over 6 s) meets, when streaming under the
`recent` policy, a different context: the last N frames at the stream's rate, encoded by the
backbone with its temporal cache over everything before them. This stage trains on exactly that
context. Training streams are stitched from the world's train split
(`streamformer.synthetic.streams`); the backbone streams through them with its cache and window as
`StreamingSession` does, and at each question's time the features of the N frames the policy keeps
become one conversation:

    <user-open> [N frames' tokens] \\n question <close> answer <end>

the layout the session hands the LM after `recent` has evicted everything older (the chat
template's rendering of "<video>\\n question"). The tower stays frozen, so the features are computed
once; the projector and the LM learn (stage "full").
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .bench import questions_to_ask
from .benchmarks import TimedQuestion, read_ovo_bench
from .data import ConversationDataset, MediaOptions
from .evaluate import question_text
from .model import StreamFormerForVideoQA
from .session import video_frames


def replies(question: TimedQuestion) -> list[str]:
    """The right reply to each of the question's asks (`questions_to_ask`, in its order): the
    option letter, or each probe's yes / no."""
    return [question.answer] if question.probes is None else [probe.answer for probe in question.probes]


@torch.inference_mode()
def recent_contexts(
    model: StreamFormerForVideoQA,
    video: str | os.PathLike,
    questions: list[TimedQuestion],
    frames: int,
    fps: float,
    vision_window: int | None,
) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Conversations and tower features [frames, N, D] of every ask in `questions` on `video`, as
    the `recent` policy with `frames` frames leaves the context at the ask's time. Asks before the
    `frames`-th frame are left out (every context holds `frames` frames)."""
    tower = model.vision_tower
    cache = tower.new_cache(1, vision_window, dtype=tower.dtype, device=tower.device)
    asks = sorted(
        (
            (ask, reply)
            for question in questions
            for ask, reply in zip(questions_to_ask(question), replies(question), strict=True)
        ),
        key=lambda pair: pair[0]["time_s"],
    )
    kept: deque[Tensor] = deque(maxlen=frames)
    items, features = [], {}
    pending = iter(asks)
    current = next(pending, None)
    for time_s, frame in video_frames(video, fps, model.config.vision_config.image_size):
        while current is not None and current[0]["time_s"] < time_s:
            if len(kept) == frames:
                ask, reply = current
                key = f"{Path(video).stem}/{ask['id']}"
                features[key] = torch.stack(list(kept)).cpu()
                items.append({"id": key, "video": key, "conversations": [
                    {"from": "human", "value": f"<video>\n{question_text(ask)}"},
                    {"from": "gpt", "value": reply}]})  # fmt: skip
            current = next(pending, None)
        hidden = tower(frame[None, None].to(tower.device, tower.dtype), cache=cache).last_hidden_state
        kept.append(hidden[0, 0])
    return items, features


def train_aligned(
    model: str,
    world: str,
    output: str,
    frames: int = 4,
    fps: float = 1.0,
    vision_window: int | None = 256,
    minutes: list[float] = [10, 10, 10],  # noqa: B006 (jsonargparse reads the default)
    items_per_category: int = 150,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> Path:
    """Fine-tune `model` (projector and LM) on the contexts `recent` leaves, from training streams
    of the world's train split; write the model with its tokenizer to `<output>/model`.

    Args:
        model: a video QA model folder with its tokenizer (e.g. `make videoqa-demo`'s stage 3).
        world: the synthetic world (its train split makes the streams).
        output: the folder for the streams, the conversations and the model.
        frames: the `recent` policy's window.
        fps, vision_window: as the session streams them.
        minutes: the training streams' lengths (one stream each, seeds seed, seed + 1, ...).
        items_per_category: questions per category per stream.
        epochs, lr, batch_size: the fine-tuning.
    """
    import lightning as L
    from transformers import AutoTokenizer

    from streamformer.synthetic.streams import stream_items, write_stream

    from .demo import train_stage

    L.seed_everything(seed)
    out = Path(output)
    net = StreamFormerForVideoQA.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    vocabulary = json.loads((Path(world) / "world.json").read_text())["vocabulary"]["words"]
    items, features = [], {}
    for i, length in enumerate(minutes):
        record = write_stream(world, out / "streams", f"train_{i}", length, seed + i, split="train")
        stream = [
            {"id": f"{i}-{k}", **item} for k, item in enumerate(stream_items(record, vocabulary, items_per_category, seed + i))
        ]
        (out / "streams" / f"train_{i}.json").write_text(json.dumps(stream, indent=1))
        found = recent_contexts(net, out / "streams" / record["video"], read_ovo_bench(out / "streams" / f"train_{i}.json"),
                                frames, fps, vision_window)  # fmt: skip
        items += found[0]
        features.update(found[1])
    (out / "conversations.json").write_text(json.dumps(items, indent=1))
    options = MediaOptions(frames, net.config.vision_config.image_size, net.config.tokens_per_frame)
    data = ConversationDataset(out / "conversations.json", out, tokenizer, options=options, features=features)
    print(f"{len(data)} streaming contexts of {frames} frames from {len(minutes)} training streams")
    train_stage(Path(model), "full", data, epochs, lr, batch_size, out / "model")
    tokenizer.save_pretrained(out / "model")
    return out / "model"
