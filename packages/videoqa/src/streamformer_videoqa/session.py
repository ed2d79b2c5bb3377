"""Streaming video QA: frames in as they arrive, questions at times, answers from what was seen.

`StreamingSession` owns two caches and a memory policy:

* the backbone's temporal KV cache, under a window of `vision_window` frames (never reset, no
  16-frame cap): each frame costs one image forward plus attention to the cached frames;
* the LM's KV cache (`LMCache`), which keeps its tokens across frames and questions and takes
  only new tokens: each frame's visual tokens (KV-level policies), each question, each answer;
* a `memory.MemoryPolicy`, which decides what the LM keeps (see `streamformer_videoqa.memory`).

The LM's cache is a row of spans in stream order: the prompt (the chat opening of the user turn,
with a pinned instruction if given), the frames, and question/answer rounds:

    <user-open> [instruction] f0 f1 ... fk  \\n question <end><assistant-open> answer <end><user-open>  fk+1 ...

A question is answered from the frames seen up to then (the tokens after its time are not there
yet), greedily, its reply kept in the cache as a round (until the policy drops it). Positions stay
contiguous, 0..length-1, whatever is evicted.

`run_stream` drives a session over any iterable of `(time_s, frame)` (a file: `video_frames`; a
folder of images: `folder_frames`; a camera generator) and a list of timed questions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from streamformer.cache import DEFAULT_MAX_FRAMES
from streamformer.video import FrameSource, preprocess

from .evaluate import question_text
from .lm_cache import LMCache
from .memory import MemoryPolicy, Span
from .model import StreamFormerForVideoQA

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ContextFull(RuntimeError):
    """The LM's context cannot take what was asked of it (the `full` policy on a long stream, or
    an over-long question)."""


@dataclass
class Answer:
    """One question's outcome. `error` is set (and `reply` None) when it could not be answered."""

    id: str
    question: str
    time_s: float
    reply: str | None
    frames_seen: int
    prefill_s: float = 0.0  # the question's prefill: time to the first answer token
    answer_s: float = 0.0  # prefill and decoding
    after_end: bool = False  # asked after the stream's last frame
    error: str | None = None
    item: dict[str, Any] = field(default_factory=dict)


def chat_pieces(tokenizer) -> tuple[str, str, str]:
    """The tokenizer's chat template cut where the contents go: (the opening of a user turn, the
    close of a user turn with the opening of the assistant's, the text between an answer and the
    next user turn's content)."""
    q, a, q2 = "\x00Q\x00", "\x00A\x00", "\x00B\x00"
    ask = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    two = tokenizer.apply_chat_template(
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}, {"role": "user", "content": q2}],
        tokenize=False,
    )
    user_open, close = ask.split(q)
    between = two.split(a)[1].split(q2)[0]
    return user_open, close, between


class StreamingSession:
    """One stream through a `StreamFormerForVideoQA` under a memory policy.

    Args:
        model: the video QA model (its tower must be causal).
        tokenizer: its tokenizer (chat template, end token).
        policy: what the LM keeps (`memory.build_policy`).
        vision_window: frames the backbone's temporal attention sees (its KV cache's window).
        max_new_tokens: longest reply.
        instruction: text pinned in the prompt, never evicted (e.g. the task of the stream).
    """

    def __init__(
        self,
        model: StreamFormerForVideoQA,
        tokenizer,
        policy: MemoryPolicy,
        vision_window: int | None = DEFAULT_MAX_FRAMES,
        max_new_tokens: int = 16,
        instruction: str | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end token to stop an answer at")
        self.model, self.tokenizer, self.policy = model.eval(), tokenizer, policy
        self.max_new_tokens = max_new_tokens
        self.vision_window = vision_window
        self.lm = LMCache(model.language_model)
        self.context = getattr(model.config.text_config, "max_position_embeddings", None)
        self.stop_ids = [tokenizer.eos_token_id]
        user_open, self._close, between = chat_pieces(tokenizer)
        # After an answer the end token is already there (generated): the rest reopens a user turn.
        eos = tokenizer.eos_token or ""
        reopen = between[len(eos) :] if eos and between.startswith(eos) else between
        self._reopen_ids = self._ids(reopen)  # after an answer that ended with the end token
        self._end_reopen_ids = self._ids(eos + reopen)  # after one cut at max_new_tokens
        self._prompt = user_open + (f"{instruction}\n" if instruction else "")
        self.reset()

    def reset(self) -> None:
        """Forget the stream: both caches, the policy's memory, the clock."""
        tower = self.model.vision_tower
        self.vision_cache = tower.new_cache(1, self.vision_window, dtype=tower.dtype, device=tower.device)
        self.lm.reset()
        self.policy.reset()
        self.spans: list[Span] = []
        self.frames_seen = 0
        self.last_time_s: float | None = None
        self._append_text(self._prompt, "prompt")

    # -- frames -----------------------------------------------------------------------------

    @torch.inference_mode()
    def add_frame(self, frame: Tensor | np.ndarray, time_s: float) -> float:
        """Take the next frame: uint8 [H, W, 3] (any size, resized as files are) or float
        [3, S, S] in [-1, 1]. Returns the seconds it took (tower, LM, eviction)."""
        if self.last_time_s is not None and time_s < self.last_time_s:
            raise ValueError(f"frames must come in time order: {time_s} s after {self.last_time_s} s")
        start = time.perf_counter()
        pixels = self._pixels(frame)
        out = self.model.vision_tower(pixels[None, None], cache=self.vision_cache)
        tokens = self.model.encode_video(vision_features=out.last_hidden_state)[0]  # [tokens_per_frame, H]
        if self.policy.frames_in_cache:
            self._check_room(len(tokens), f"frame {self.frames_seen} ({time_s:.2f} s)")
            self.lm.append(tokens[None].to(self.lm_dtype))
            self.spans.append(Span("frame", len(tokens), time_s))
            self._evict()
        else:
            self.policy.observe(tokens, out.pooler_output[0, 0], time_s)
        self.frames_seen += 1
        self.last_time_s = time_s
        return time.perf_counter() - start

    def _pixels(self, frame: Tensor | np.ndarray) -> Tensor:
        size = self.model.config.vision_config.image_size
        tower = self.model.vision_tower
        frame = torch.as_tensor(frame)
        if frame.dtype == torch.uint8:
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise ValueError(f"a uint8 frame must be [H, W, 3] RGB, got shape {tuple(frame.shape)}")
            frame = preprocess(frame[None], size)[0]
        elif tuple(frame.shape) != (3, size, size):
            raise ValueError(f"a float frame must be [3, {size}, {size}] in [-1, 1], got shape {tuple(frame.shape)}")
        return frame.to(tower.device, tower.dtype)

    # -- questions --------------------------------------------------------------------------

    @torch.inference_mode()
    def ask(self, question: str, time_s: float | None = None, id: str = "", after_end: bool = False) -> Answer:
        """Answer `question` from what the stream holds now. A question that cannot be answered
        (the LM's context is full) gives an Answer with its `error`, never an exception."""
        time_s = self.last_time_s if time_s is None else time_s
        answer = Answer(id, question, time_s if time_s is not None else 0.0, None, self.frames_seen, after_end=after_end)
        rollback = self.lm.length
        try:
            start = time.perf_counter()
            memory = None if self.policy.frames_in_cache else self.policy.memory()
            if memory is not None:
                self._check_room(len(memory), "the memory")
                self.lm.append(memory[None].to(self.lm_dtype))
            ids = self._ids(f"\n{question}{self._close}")
            # Room for the question, the longest answer and the reopening of the user turn after it.
            closing = len(self._end_reopen_ids) if self.policy.frames_in_cache else 0
            self._check_room(len(ids) + self.max_new_tokens + closing, f"question {id or question[:40]!r}")
            logits = self.lm.append(self._embed(ids))
            answer.prefill_s = time.perf_counter() - start
            reply = self.lm.generate(logits, self.max_new_tokens, self.stop_ids)
            answer.answer_s = time.perf_counter() - start
        except ContextFull as error:
            self.lm.keep(range(rollback))  # the stream goes on as before the question
            answer.error = str(error)
            return answer
        answer.reply = self.tokenizer.decode(reply, skip_special_tokens=True).strip()
        if self.policy.frames_in_cache:
            reopen = self._reopen_ids if reply[-1] in self.stop_ids else self._end_reopen_ids
            self.lm.append(self._embed(reopen))
            self.spans.append(Span("round", self.lm.length - rollback, time_s))
            self._evict()
        else:  # the memory is read anew with each question: back to the prompt
            self.lm.keep(range(rollback))
        return answer

    # -- the LM cache -----------------------------------------------------------------------

    @property
    def lm_dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def stats(self) -> dict[str, int]:
        """What the stream holds now: LM tokens, bytes of both caches, frames seen."""
        memory = None if self.policy.frames_in_cache else self.policy.memory()
        return {
            "frames_seen": self.frames_seen,
            "lm_tokens": self.lm.length,
            "lm_bytes": self.lm.nbytes(),
            "vision_bytes": self.vision_cache.nbytes(),
            "memory_tokens": 0 if memory is None else len(memory),
        }

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _embed(self, ids: Sequence[int]) -> Tensor:
        return self.model.get_input_embeddings()(torch.tensor([list(ids)], device=self.model.device))

    def _append_text(self, text: str, kind: str) -> None:
        ids = self._ids(text)
        if ids:
            self._check_room(len(ids), kind)
            self.lm.append(self._embed(ids))
            self.spans.append(Span(kind, len(ids)))

    def _check_room(self, tokens: int, what: str) -> None:
        if self.context is not None and self.lm.length + tokens > self.context:
            raise ContextFull(
                f"{what} needs {tokens} tokens but the LM's context of {self.context} holds {self.lm.length} already "
                f"(policy {self.policy.name!r}, {self.frames_seen} frames seen): choose a bounded policy"
            )

    def _evict(self) -> None:
        # The prompt is the sink, never evicted whatever a policy says.
        flags = [flag or span.kind == "prompt" for flag, span in zip(self.policy.keep(self.spans), self.spans, strict=True)]
        if all(flags):
            return
        starts = np.cumsum([0] + [span.length for span in self.spans])
        kept = [i for span, flag, s in zip(self.spans, flags, starts, strict=False) if flag for i in range(s, s + span.length)]
        self.lm.keep(kept)
        self.spans = [span for span, flag in zip(self.spans, flags, strict=True) if flag]


def video_frames(path: str | os.PathLike, fps: float | None, size: int) -> Iterator[tuple[float, Tensor]]:
    """(time_s, frame [3, size, size]) of a video file, decoded one frame at a time, resampled to
    `fps` (None: every frame)."""
    source = FrameSource(path, chunk_size=1, fps=fps, size=size)
    for frames, indices in source:
        yield indices[0] / source.source_fps, frames[0]


def folder_frames(folder: str | os.PathLike, fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """(time_s, uint8 frame) of a folder of images in name order, shot at `fps`."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            yield i / fps, np.asarray(image.convert("RGB"))


def run_stream(
    session: StreamingSession,
    frames: Iterable[tuple[float, Tensor | np.ndarray]],
    questions: Sequence[dict[str, Any]],
    on_frame: Callable[[StreamingSession], None] | None = None,
) -> tuple[list[Answer], list[float]]:
    """Feed `frames` and answer each question (`{"id", "time_s", "question", ["options"]}`) once the
    stream reaches its time, from the frames up to it; questions after the last frame are answered
    at the end (`after_end`). Returns the answers in question order and each frame's seconds.
    `on_frame(session)` is called after each frame (e.g. to track what the caches hold).

    When the LM's context fills (the `full` policy), the stream stops there: the questions left
    are answered with that error."""
    order = sorted(range(len(questions)), key=lambda i: float(questions[i]["time_s"]))
    answers: dict[int, Answer] = {}
    latencies: list[float] = []
    pending = iter(order)
    next_q = next(pending, None)
    stopped: str | None = None

    def answer(i: int, after_end: bool) -> Answer:
        item = questions[i]
        if stopped:
            return Answer(str(item.get("id", i)), item["question"], float(item["time_s"]), None, session.frames_seen,
                          after_end=after_end, error=stopped, item=item)  # fmt: skip
        result = session.ask(question_text(item), float(item["time_s"]), str(item.get("id", i)), after_end)
        result.item = item
        return result

    for time_s, frame in frames:
        while next_q is not None and float(questions[next_q]["time_s"]) < time_s:
            answers[next_q] = answer(next_q, False)
            next_q = next(pending, None)
        if stopped:
            break
        try:
            latencies.append(session.add_frame(frame, time_s))
        except ContextFull as error:
            stopped = str(error)
        if on_frame is not None:
            on_frame(session)
    while next_q is not None:  # asked after the last frame (or after the context filled)
        answers[next_q] = answer(next_q, after_end=stopped is None)
        next_q = next(pending, None)
    return [answers[i] for i in range(len(questions))], latencies


def answers_json(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    return [asdict(a) for a in answers]
