"""Offline evaluation in the manner of lmms-eval: multiple choice by option letter, open answers
by exact match.

An item of the JSON list:

    {"id": "q1", "video": "clips/v1.mp4", "question": "What is the man doing?",
     "options": ["A. walking", "B. running", ...], "answer": "B"}       # multiple choice
    {"id": "q2", "video": "clips/v2.mp4", "question": "...", "answer": "walks left"}   # open

Frames: `clip_length` uniformly sampled (16 as VideoMME / MLVU are run). Multiple-choice prompts end
with "Answer with the option's letter from the given choices directly." Decoding is greedy, at
most 16 new tokens. The letter is read off the reply by `option_letter`; an open answer is right
when it equals the reference after `normalise`.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from streamformer.video import VideoReadError, load_clip

from .model import StreamFormerForVideoQA, expand_placeholder

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# Phrases models put before the letter; removed before the letter is looked for.
ANSWER_PREFIXES = (
    "The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
    "The correct option is", "Best answer:", "Best option:", "Answer:", "Option:", "The correct answer",
    "The correct option",
)  # fmt: skip


def option_letter(reply: str, letters: str = "ABCD") -> str:
    """The option letter of a multiple-choice reply, or "" when there is none: the answer phrases
    of `ANSWER_PREFIXES` are removed, then the first option letter (a capital) is the answer. As in
    lmms-eval, a capital anywhere counts ("Because..." reads as B): models answer with the letter."""
    text = reply.strip()
    for prefix in ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    found = re.search(f"[{letters}]", text)
    return found.group(0) if found else ""


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: how open answers are compared."""
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def question_text(item: dict[str, Any]) -> str:
    if "options" not in item:
        return item["question"]
    return "\n".join([item["question"], *item["options"], MC_INSTRUCTION])


def is_right(item: dict[str, Any], reply: str) -> bool:
    if "options" in item:
        letters = string.ascii_uppercase[: len(item["options"])]
        return option_letter(reply, letters) == item["answer"].strip()
    return normalise(reply) == normalise(item["answer"])


@torch.no_grad()
def answer_items(
    model: StreamFormerForVideoQA,
    tokenizer,
    items: list[dict[str, Any]],
    media_root: str | os.PathLike,
    clip_length: int = 16,
    max_new_tokens: int = 16,
    features: Mapping[str, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Each item with its "reply" and whether it is "right". With `features`
    (`data.precompute_features` of these videos at `clip_length`), the tower is not run again."""
    model.eval()
    video_token = tokenizer.convert_ids_to_tokens(model.config.video_token_id)
    size = model.config.vision_config.image_size
    results = []
    for item in tqdm(items, desc="answer", unit="item", disable=None):
        content = f"{video_token}\n{question_text(item)}" if "video" in item else question_text(item)
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        visual = {}
        if "video" in item:  # without one, the question alone (the text-only baseline)
            ids = expand_placeholder(ids, model.config.video_token_id, clip_length * model.config.tokens_per_frame)
            try:
                visual = (
                    {"vision_features": features[item["video"]][None].to(model.device)}
                    if features is not None and item["video"] in features
                    else {"pixel_values": load_clip(Path(media_root) / item["video"], clip_length, size)[None]}
                )
            except VideoReadError as error:  # counted as a wrong answer and named, never a crash
                results.append({**item, "reply": None, "right": False, "error": str(error)})
                continue
        visual = {key: value.to(model.device, model.dtype) for key, value in visual.items()}
        new = model.generate(
            torch.tensor([ids], device=model.device), **visual, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        reply = tokenizer.decode(new[0], skip_special_tokens=True)
        results.append({**item, "reply": reply, "right": is_right(item, reply)})
    return results


def accuracy_table(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{kind: {"accuracy", "items", "unreadable", "chance"}} for "multiple choice" and "open" items
    (an unreadable video counts as a wrong answer; chance: the mean of 1 / options over the
    multiple-choice items, none for open answers)."""
    table = {}
    for kind, chosen in (
        ("multiple choice", [r for r in results if "options" in r]),
        ("open", [r for r in results if "options" not in r]),
    ):
        if chosen:
            table[kind] = {"accuracy": sum(r["right"] for r in chosen) / len(chosen), "items": len(chosen)}
            table[kind]["unreadable"] = sum("error" in r for r in chosen)
            if kind == "multiple choice":
                table[kind]["chance"] = sum(1 / len(r["options"]) for r in chosen) / len(chosen)
    return table


def write_results(results: list[dict[str, Any]], output: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Per-item replies to `<output>.jsonl` and the accuracy table to `<output>.json`."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    table = accuracy_table(results)
    output.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    return table
