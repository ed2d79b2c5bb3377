"""LLaVA-style conversation data: reading, prompts, label masking, batching.

An item of the JSON list:

    {"id": "v0001", "video": "clips/v0001.mp4",          # or "image": "..." or neither
     "conversations": [{"from": "human", "value": "<video>\\nWhat is the man doing?"},
                       {"from": "gpt", "value": "He walks left."}, ...]}

Turns alternate human / gpt, starting with a human one; the media placeholder (`<video>` or
`<image>`) appears exactly once, in the first human turn, when the item has media, and never
otherwise. Two prompt styles:

* "plain" (stage 1, captions): the placeholder, then the answer and the tokenizer's end token;
  the human text besides the placeholder is dropped, as LLaVA's `plain` template does.
* "chat": the tokenizer's chat template over the whole conversation.

Labels are -100 everywhere but the answers (each gpt turn as the template renders it, end token
included). The placeholder becomes one token per visual token (`expand_placeholder`), so a batch's
lengths are final here: an item longer than `max_length` is skipped and counted, never cut.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from streamformer.video import VideoReadError, load_clip

from .model import StreamFormerForVideoQA, expand_placeholder

logger = logging.getLogger(__name__)

PromptStyle = Literal["plain", "chat"]
PLACEHOLDERS = ("<video>", "<image>")
IGNORE = -100
ROLES = {"human": "user", "gpt": "assistant"}


def check_item(item: Any) -> str | None:
    """Why `item` is not a usable conversation, or None."""
    if not isinstance(item, dict) or "conversations" not in item:
        return "no 'conversations'"
    turns = item["conversations"]
    if not turns or len(turns) % 2:
        return f"{len(turns)} turns: a conversation is pairs of human and gpt turns"
    for i, turn in enumerate(turns):
        if turn.get("from") != ("human", "gpt")[i % 2]:
            return f"turn {i} is from {turn.get('from')!r}, expected {('human', 'gpt')[i % 2]!r}"
        if not isinstance(turn.get("value"), str) or (turn["from"] == "gpt" and not turn["value"].strip()):
            return f"turn {i} has an empty or missing value"
    media = [key for key in ("video", "image") if key in item]
    if len(media) > 1:
        return "both a video and an image"
    counts = [sum(turn["value"].count(p) for p in PLACEHOLDERS) for turn in turns]
    expected = [1 if media and i == 0 else 0 for i in range(len(turns))]
    if counts != expected:
        where = "once, in the first human turn" if media else "nowhere (the item has no media)"
        return f"placeholders per turn {counts}: expected {where}"
    return None


def read_items(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON list at `path`, every item checked; a broken one stops here, named by id."""
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    problems = [
        (item.get("id", f"#{i}") if isinstance(item, dict) else f"#{i}", check_item(item)) for i, item in enumerate(items)
    ]
    problems = [(name, why) for name, why in problems if why]
    if problems:
        shown = "; ".join(f"{name}: {why}" for name, why in problems[:5])
        raise ValueError(f"{path}: {len(problems)} of {len(items)} items are not usable conversations ({shown})")
    return items


def encode_conversation(
    turns: list[dict[str, str]], tokenizer, video_token: str, style: PromptStyle
) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 but on the answers) of one conversation; the media placeholder
    (either spelling) becomes `video_token`, still one token."""
    messages = [{"role": ROLES[t["from"]], "content": _with_token(t["value"], video_token)} for t in turns]
    if style == "plain":
        prompt = tokenizer(video_token if video_token in messages[0]["content"] else "", add_special_tokens=False)["input_ids"]
        answer = tokenizer(messages[1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return prompt + answer, [IGNORE] * len(prompt) + answer
    ids: list[int] = []
    labels: list[int] = []
    for end in range(2, len(messages) + 1, 2):
        before = _template(tokenizer, messages[: end - 1], generation_prompt=True)
        after = _template(tokenizer, messages[:end], generation_prompt=False)
        if before[: len(ids)] != ids or after[: len(before)] != before:
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
        labels += [IGNORE] * (len(before) - len(ids)) + after[len(before) :]
        ids = after
    return ids, labels


def _with_token(text: str, video_token: str) -> str:
    for placeholder in PLACEHOLDERS:
        text = text.replace(placeholder, video_token)
    return text


def _template(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class MediaOptions:
    clip_length: int = 16  # uniformly sampled frames of a video (an image is one frame)
    image_size: int = 224
    tokens_per_frame: int = 49


@torch.no_grad()
def precompute_features(
    model: StreamFormerForVideoQA,
    media: Iterable[str],
    media_root: str | os.PathLike,
    clip_length: int,
    batch_size: int = 16,
) -> dict[str, Tensor]:
    """The frozen tower's features [T, N, D] of every video in `media` (paths under `media_root`),
    on the CPU, keyed by path. For small data sets asked many questions per video (the tower is
    frozen, so a video's features never change): memory grows with the number of videos. A video
    that cannot be read is logged and left out (its items are then skipped and counted)."""
    size = model.config.vision_config.image_size
    features: dict[str, Tensor] = {}
    clips: list[tuple[str, Tensor]] = []

    def encode() -> None:
        frames = torch.stack([clip for _, clip in clips]).to(model.device, model.dtype)
        for (path, _), row in zip(clips, model.tower_features(frames).cpu(), strict=True):
            features[path] = row
        clips.clear()

    for path in tqdm(sorted(set(media)), desc="tower features", unit="video", disable=None):
        try:
            clips.append((path, load_clip(Path(media_root) / path, clip_length, size)))
        except VideoReadError as error:
            logger.warning("no features for %s: %s", path, error)
        if len(clips) == batch_size:
            encode()
    if clips:
        encode()
    return features


class ConversationDataset(Dataset):
    """Tokenised conversations with their frames: {"id", "input_ids", "labels", "pixel_values" | None},
    or with `features` (`precompute_features`) "vision_features" in place of the frames.

    Items whose video cannot be read (or has no features), or that come out longer than
    `max_length` tokens, give None: logged by id and counted in `skipped` (the collate drops them)."""

    def __init__(
        self,
        path: str | os.PathLike,
        media_root: str | os.PathLike,
        tokenizer,
        video_token: str = "<video>",
        style: PromptStyle = "chat",
        options: MediaOptions = MediaOptions(),
        max_length: int | None = None,
        features: Mapping[str, Tensor] | None = None,
    ) -> None:
        if style not in ("plain", "chat"):
            raise ValueError(f"style must be 'plain' or 'chat', got {style!r}")
        self.items = read_items(path)
        kinds = {"video" if "video" in item else "image" if "image" in item else "text" for item in self.items}
        if len(kinds) > 1:  # a batch stacks one frame count: found now rather than mid-epoch
            raise ValueError(f"{path} mixes {sorted(kinds)} items: give each kind its own file")
        self.media_root = Path(media_root)
        if not self.media_root.is_dir():
            raise FileNotFoundError(f"{path}: media folder not found: {self.media_root}")
        self.tokenizer, self.video_token, self.style, self.options = tokenizer, video_token, style, options
        self.features = features
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        self.max_length = max_length or tokenizer.model_max_length
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.items[index]
        name = item.get("id", f"#{index}")
        ids, labels = encode_conversation(item["conversations"], self.tokenizer, self.video_token, self.style)
        visual: dict[str, Tensor | None] = {"pixel_values": None}
        media = item.get("video") or item.get("image")
        if media is not None:
            frames = 1 if "image" in item else self.options.clip_length
            count = frames * self.options.tokens_per_frame
            at = ids.index(self.video_token_id)
            ids = expand_placeholder(ids, self.video_token_id, count)
            labels = [*labels[:at], *[IGNORE] * count, *labels[at + 1 :]]
            if self.features is not None:
                if media not in self.features:
                    return self._skip(name, f"no tower features for {media}")
                visual = {"vision_features": self.features[media]}
            else:
                try:
                    visual = {"pixel_values": load_clip(self.media_root / media, frames, self.options.image_size)}
                except VideoReadError as error:
                    return self._skip(name, str(error))
        if len(ids) > self.max_length:
            return self._skip(name, f"{len(ids)} tokens, more than max_length={self.max_length} (never cut)")
        return {"id": name, "input_ids": ids, "labels": labels, **visual}

    def _skip(self, name: str, why: str) -> None:
        self.skipped += 1
        logger.warning("skipping item %s: %s", name, why)
        return None


def collate_conversations(items: list[dict[str, Any] | None], pad_token_id: int) -> dict[str, Any]:
    """Right-padded ids, labels (-100 on padding) and attention mask; frames stacked [B, T, 3, S, S]
    (every item of a batch has the same number of frames, or none has frames), or the items'
    tower features [B, T, N, D]."""
    kept = [item for item in items if item is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(kept), "ids": [item["id"] for item in kept]}
    if not kept:
        return batch
    width = max(len(item["input_ids"]) for item in kept)
    ids = torch.full((len(kept), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(kept), width), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(kept), width, dtype=torch.long)
    for row, item in enumerate(kept):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(item["input_ids"]), torch.tensor(item["labels"]), 1
    batch.update(input_ids=ids, labels=labels, attention_mask=mask)
    key = "vision_features" if "vision_features" in kept[0] else "pixel_values"
    visual = [item.get(key) for item in kept]
    if any(v is not None for v in visual):
        shapes = {None if v is None else tuple(v.shape) for v in visual}
        if len(shapes) > 1:
            raise ValueError(f"a batch mixes frame shapes {sorted(map(str, shapes))}: batch videos, images and text apart")
        batch[key] = torch.stack(visual)
    return batch
