"""The synthetic world (`streamformer synthetic`) as video QA data, and a tokenizer of its words.

`convert_world(root, out_dir)` writes, per split:

* `captions_<split>.json`: stage-1 conversations, the video then one of its captions (the
  retrieval captions), `plain` prompt;
* `qa_<split>.json`: stage-3 conversations, the world's multiple-choice questions with lettered
  options and the letter as the answer;
* `qa_<split>_text.json`: the same questions without the video (the text-only baseline: what
  the questions alone give away);
* `questions_<split>.json`: the questions for `evaluate` (options "A. ...", answer letter).

Videos are whole (6 s); the world's question times (for streaming QA) are kept in each item.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import string
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .evaluate import MC_INSTRUCTION

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<video>"]
# A minimal ChatML-like template: each turn is its role, its text and an end token.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def world_tokenizer(root: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's vocabulary (as written and capitalised), the option
    letters, punctuation and the prompt's words, with a chat template and the `<video>`
    placeholder. Case is kept: the option letter "A" is not the article "a"."""
    vocabulary = json.loads((Path(root) / "world.json").read_text())["vocabulary"]
    words = [word for word in vocabulary["words"] for word in (word, word.capitalize())]
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    prompt = [piece for piece, _ in split.pre_tokenize_str(MC_INSTRUCTION)]
    tokens = [*SPECIAL_TOKENS, *words, *string.ascii_uppercase[:8], *string.punctuation, "user", "assistant", *prompt]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = split
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<video>"], chat_template=CHAT_TEMPLATE, model_max_length=2048,
    )  # fmt: skip


def lettered(options: list[str]) -> list[str]:
    return [f"{letter}. {option}" for letter, option in zip(string.ascii_uppercase, options, strict=False)]


def world_items(root: str | os.PathLike, split: str) -> dict[str, list[dict[str, Any]]]:
    """The four item lists of the module doc for one split of the world at `root`."""
    root = Path(root)
    captions = []
    with open(root / f"retrieval/{split}.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            caption = ast.literal_eval(row["text"])[0]
            captions.append({"id": row["video_id"], "video": f"videos/{row['video_id']}.mp4", "conversations": [
                {"from": "human", "value": "<video>"}, {"from": "gpt", "value": caption}]})  # fmt: skip
    qa, text_only, questions = [], [], []
    for i, item in enumerate(json.loads((root / f"qa/{split}.json").read_text())):
        options = lettered(item["options"])
        letter = string.ascii_uppercase[item["options"].index(item["answer"])]
        prompt = "\n".join([item["question"], *options, MC_INSTRUCTION])
        name, video = f"{item['video_id']}-q{i}", f"videos/{item['video_id']}.mp4"
        answer = [{"from": "gpt", "value": letter}]
        qa.append({"id": name, "video": video, "time_s": item["time_s"],
                   "conversations": [{"from": "human", "value": f"<video>\n{prompt}"}, *answer]})  # fmt: skip
        text_only.append({"id": name, "conversations": [{"from": "human", "value": prompt}, *answer]})
        questions.append({"id": name, "video": video, "time_s": item["time_s"], "question": item["question"],
                          "options": options, "answer": letter})  # fmt: skip
    return {"captions": captions, "qa": qa, "qa_text": text_only, "questions": questions}


def convert_world(root: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the JSON files of the module doc for both splits; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in ("train", "val"):
        for kind, items in world_items(root, split).items():
            name = f"qa_{split}_text" if kind == "qa_text" else f"{kind}_{split}"
            written[name] = out / f"{name}.json"
            written[name].write_text(json.dumps(items, indent=1))
    return written
