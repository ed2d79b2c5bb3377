"""What every memory policy shares: the spans of the LM's cache and the policy interface.

A streaming session holds the LM's KV cache as a row of spans: the prompt (chat opening and any
pinned instruction), one span per frame (its visual tokens), and question/answer rounds. A policy
decides which spans stay (`keep`), or, when it holds the video itself as a compact memory of
visual tokens re-read at every question (`frames_in_cache = False`), builds that memory from the
frames it observes (`observe`, `memory`). The session owns the caches and applies the decisions;
no policy touches a tensor of a cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

SpanKind = Literal["prompt", "frame", "round"]


@dataclass(frozen=True)
class Span:
    """A run of consecutive tokens of the LM cache: the prompt, one frame's visual tokens, or one
    question/answer round (question, answer, and the reopening of the next user turn)."""

    kind: SpanKind
    length: int
    time_s: float | None = None


class MemoryPolicy:
    """What the LM keeps of a stream it cannot hold whole.

    KV-level policies (`frames_in_cache = True`) leave each frame's tokens in the LM cache and drop
    whole spans from it (`keep`). Memory-level policies (`frames_in_cache = False`) keep the video
    as visual tokens of their own (`observe`, `memory`), prefilled anew with each question; between
    questions the LM cache holds only the prompt.
    """

    name: ClassVar[str]
    frames_in_cache: ClassVar[bool] = True

    def keep(self, spans: Sequence[Span]) -> list[bool]:
        """Which spans of the LM cache stay (one flag per span, oldest first)."""
        return [True] * len(spans)

    def observe(self, tokens: Tensor, summary: Tensor, time_s: float) -> None:
        """A new frame: its visual tokens [n, H] (LM space) and the backbone's pooled feature [D]."""

    def memory(self) -> Tensor | None:
        """The visual tokens [m, H] a question reads (memory-level policies), oldest first."""
        return None

    def token_budget(self, tokens_per_frame: int) -> int | None:
        """Most tokens the policy lets the cache hold besides the prompt and the round being
        asked (None: unbounded)."""
        return None

    def reset(self) -> None:
        """Forget the stream."""


def last_flags(spans: Sequence[Span], kind: SpanKind, count: int) -> list[bool]:
    """True for the last `count` spans of `kind`, False for the other spans of that kind, True
    for every other span."""
    flags = [True] * len(spans)
    seen = 0
    for i in range(len(spans) - 1, -1, -1):
        if spans[i].kind == kind:
            seen += 1
            flags[i] = seen <= count
    return flags
