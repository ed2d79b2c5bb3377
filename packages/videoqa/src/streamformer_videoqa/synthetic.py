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

`initial_model` joins a pretrained backbone and a tiny LM over the world's words (a 2-layer Qwen2
from config); `streamformer-videoqa synthetic` writes the data files and that model's folder for
the `configs/videoqa/synthetic-tiny*.yaml` recipes.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import string
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from streamformer import StreamFormerVisionModel
from streamformer.synthetic.streams import EXTRA_WORDS as STREAM_WORDS

from .evaluate import MC_INSTRUCTION
from .model import StreamFormerForVideoQA

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
    # The streams' questions (now, first, yes / no) use a few words the world's captions lack.
    words = [word for word in (*vocabulary["words"], *STREAM_WORDS) for word in (word, word.capitalize())]
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


def tiny_language_model(vocab_size: int, seed: int):
    """A 2-layer Qwen2 (hidden 64) from config, random at `seed`; a 2,048-token context (a minute
    of streamed frames at 1 fps holds 960 visual tokens)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        pad_token_id=0, bos_token_id=None, eos_token_id=3, tie_word_embeddings=False,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def initial_model(
    world: str | os.PathLike, backbone: str | os.PathLike, seed: int = 0, gates_off: bool = False
) -> tuple[StreamFormerForVideoQA, PreTrainedTokenizerFast]:
    """The untrained video QA model of the world (its projector random) and the world tokenizer.

    `gates_off` sets every temporal gate of the backbone to 0 (each frame encoded alone)."""
    tokenizer = world_tokenizer(world)
    tower = StreamFormerVisionModel.from_pretrained(backbone)
    if gates_off:
        tower.disable_temporal()
    return StreamFormerForVideoQA.from_parts(tower, tiny_language_model(len(tokenizer), seed), tokenizer), tokenizer


def write_synthetic(world: str, backbone: str, output: str, seed: int = 0) -> None:
    """The synthetic world as video QA: the data files (`<output>/data/`) and the untrained model
    with its tokenizer (`<output>/init/`), for `configs/videoqa/synthetic-tiny*.yaml`.

    Args:
        world: the synthetic world (`streamformer synthetic`).
        backbone: the pretrained backbone folder (`make demo` exports runs/pretrain-tiny/backbone).
        output: the folder to write.
        seed: the LM's initialisation.
    """
    files = convert_world(world, Path(output) / "data")
    model, tokenizer = initial_model(world, backbone, seed)
    model.save_pretrained(Path(output) / "init")
    tokenizer.save_pretrained(Path(output) / "init")
    print(f"wrote {len(files)} data files to {Path(output) / 'data'} and the model to {Path(output) / 'init'}")
