"""`recent`: only the last N frames (and the round being asked); every older frame and every
answered round leave the LM cache. The training-free baseline that recent work reports to match
most memory systems, so every table carries it."""

from __future__ import annotations

from collections.abc import Sequence

from .base import MemoryPolicy, Span, last_flags


class RecentFrames(MemoryPolicy):
    """Args:
    frames: frames kept (4 by default).
    """

    name = "recent"

    def __init__(self, frames: int = 4) -> None:
        if frames < 1:
            raise ValueError(f"recent needs frames >= 1, got {frames}")
        self.frames = frames

    def keep(self, spans: Sequence[Span]) -> list[bool]:
        flags = last_flags(spans, "frame", self.frames)
        return [flag and span.kind != "round" for flag, span in zip(flags, spans, strict=True)]

    def token_budget(self, tokens_per_frame: int) -> int:
        return self.frames * tokens_per_frame
