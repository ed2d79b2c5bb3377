"""`streamingvlm`: an attention sink of text, a window of recent vision and a window of recent
rounds, with contiguous positions after eviction (StreamingVLM's KV policy).

The sink is the prompt: the chat opening and the instruction the session pins there, so the task
is never evicted (StreamingVLM drops its initial query with the first user round after 16 s). The
vision window keeps the last `vision_frames` frames; the text window the last `text_rounds`
rounds whose tokens fit `text_window`. Spans stay in stream order; the session re-rotates the kept
keys so positions stay 0..length-1.

Defaults scaled from StreamingVLM's: its 16 s of vision at 2 fps are 32 frames (49 tokens each
here: 1,568 tokens); 16 rounds and a 512-token text window as there. Its relocation of old
commentary into a long text block is left out: rounds here are answers to questions, each read
only with its own question.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import MemoryPolicy, Span, last_flags


class StreamingVLMMemory(MemoryPolicy):
    """Args:
    vision_frames: frames kept (the vision window).
    text_rounds: most question/answer rounds kept.
    text_window: most tokens of the rounds kept (the newest rounds that fit).
    """

    name = "streamingvlm"

    def __init__(self, vision_frames: int = 32, text_rounds: int = 16, text_window: int = 512) -> None:
        if vision_frames < 1 or text_rounds < 0 or text_window < 0:
            raise ValueError(
                f"streamingvlm needs vision_frames >= 1 and non-negative text budgets, got "
                f"{vision_frames}, {text_rounds}, {text_window}"
            )
        self.vision_frames, self.text_rounds, self.text_window = vision_frames, text_rounds, text_window

    def keep(self, spans: Sequence[Span]) -> list[bool]:
        flags = last_flags(spans, "frame", self.vision_frames)
        rounds = tokens = 0
        for i in range(len(spans) - 1, -1, -1):
            if spans[i].kind == "round":
                rounds += 1
                tokens += spans[i].length
                flags[i] = rounds <= self.text_rounds and tokens <= self.text_window
        return flags

    def token_budget(self, tokens_per_frame: int) -> int:
        return self.vision_frames * tokens_per_frame + self.text_window
