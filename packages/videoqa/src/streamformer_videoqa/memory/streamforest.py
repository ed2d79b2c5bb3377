"""`streamforest`: a fine-grained window of recent frames and a persistent event memory
(StreamForest's FSTW + PEMF), prefilled anew with each question.

Three tiers, oldest first, make the visual tokens a question reads:

* long: events. Once the short window holds `short_frames + event_window` frames, the first
  `event_window` adjacent-frame similarities are read and the window is cut after the least
  similar pair (a relative boundary, no threshold); those frames are merged jointly (ToMe) into an
  event of `long_tokens_per_frame` tokens per frame slot. While the events hold more than
  `long_quota` tokens, the adjacent pair with the lowest
  `sim_weight * (1 - s) + time_weight * centre / T + merge_weight * merges / max merges` is merged
  into one event of half the slots (s: the mean ToMe match score of the pair's tokens; centre: the
  pair's mean frame index; T: frames seen): similar, old and little-merged events go first.
  Nothing is evicted; history only gets coarser.
* short: the previous frames, each merged alone to `short_tokens` tokens.
* now: the newest frame at its full `tokens_per_frame`.

Similarity between frames is the cosine of StreamFormer's per-frame pooled feature (the backbone
already summarises each frame causally), where StreamForest compares flattened patch features.
Tokens are merged in the LM space (after the projector) and keep their order; StreamForest's
sin-cos position embeddings before merging and its time prompt are left out.

Defaults scale StreamForest's 8k configuration (729 tokens a frame: 128 per short frame, 64 per
event slot, a 5,120-token quota = 80 slots) to 49 tokens a frame: 9 per short frame, 4 per slot,
80 slots = 320 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MemoryPolicy


def merge_tokens(x: Tensor, target: int, sizes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe bipartite soft matching of tokens [n, C] down to `target`: even tokens are matched to
    their most similar odd token (cosine), the best-matched at most half merge by size-weighted
    average, repeatedly. Returns (tokens [target, C] in their original order, their sizes, the
    match scores of every merge)."""
    sizes = torch.ones(len(x), dtype=x.dtype, device=x.device) if sizes is None else sizes
    order = torch.arange(len(x), device=x.device)  # a token's first position, to keep the sequence order
    scores = []
    while len(x) > max(target, 1):
        a, b = x[0::2], x[1::2]
        r = min(len(x) - target, len(a), len(b))
        if r == 0:
            break
        best, match = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).max(dim=-1)
        ranked = best.argsort(descending=True)
        merged, kept = ranked[:r], ranked[r:]
        size_a, size_b = sizes[0::2], sizes[1::2]
        total = (b * size_b[:, None]).index_add(0, match[merged], a[merged] * size_a[merged, None])
        size_b = size_b.index_add(0, match[merged], size_a[merged])
        x = torch.cat([a[kept], total / size_b[:, None]])
        sizes = torch.cat([size_a[kept], size_b])
        order = torch.cat([order[0::2][kept], order[1::2]])
        resort = order.argsort()
        x, sizes, order = x[resort], sizes[resort], order[resort]
        scores.append(best[merged])
    return x, sizes, torch.cat(scores) if scores else x.new_zeros(0)


@dataclass
class Event:
    tokens: Tensor  # [slots * long_tokens_per_frame, H]
    frames: int
    slots: int
    centre: float  # mean frame index
    merges: int


class StreamForestMemory(MemoryPolicy):
    """Args:
    short_frames: frames the short window keeps at least (it holds up to
        `short_frames + event_window - 1`).
    short_tokens: tokens of each short-window frame.
    event_window: frames searched for an event boundary.
    long_tokens_per_frame: tokens of an event per frame slot.
    long_quota: most tokens of the event memory.
    sim_weight, time_weight, merge_weight: the consolidation score's terms.
    """

    name = "streamforest"
    frames_in_cache = False

    def __init__(
        self,
        short_frames: int = 18,
        short_tokens: int = 9,
        event_window: int = 8,
        long_tokens_per_frame: int = 4,
        long_quota: int = 320,
        sim_weight: float = 0.4,
        time_weight: float = 0.2,
        merge_weight: float = 0.4,
    ) -> None:
        if min(short_frames, short_tokens, event_window, long_tokens_per_frame) < 1 or long_quota < long_tokens_per_frame:
            raise ValueError("streamforest needs positive windows and token counts, and long_quota >= long_tokens_per_frame")
        self.short_frames, self.short_tokens, self.event_window = short_frames, short_tokens, event_window
        self.long_tokens_per_frame, self.long_quota = long_tokens_per_frame, long_quota
        self.weights = (sim_weight, time_weight, merge_weight)
        self.reset()

    def reset(self) -> None:
        self.now: Tensor | None = None
        self.now_summary: Tensor | None = None
        self.short: list[Tensor] = []
        self.short_summaries: list[Tensor] = []
        self.events: list[Event] = []
        self.frames_seen = 0

    def observe(self, tokens: Tensor, summary: Tensor, time_s: float) -> None:
        if self.now is not None:
            self.short.append(merge_tokens(self.now, self.short_tokens)[0])
            self.short_summaries.append(self.now_summary)
        self.now, self.now_summary = tokens, summary
        self.frames_seen += 1
        while len(self.short) >= self.short_frames + self.event_window:
            self._split_event()
        while sum(len(e.tokens) for e in self.events) > self.long_quota and len(self.events) > 1:
            self._consolidate()

    def memory(self) -> Tensor | None:
        parts = [e.tokens for e in self.events] + self.short + ([self.now] if self.now is not None else [])
        return torch.cat(parts) if parts else None

    def token_budget(self, tokens_per_frame: int) -> int:
        """The quota may be passed by one event (one merge leaves at least one), and the short
        window holds fewer than `short_frames + event_window` frames."""
        largest_event = self.event_window * self.long_tokens_per_frame
        short = (self.short_frames + self.event_window - 1) * self.short_tokens
        return self.long_quota + largest_event + short + tokens_per_frame

    def _split_event(self) -> None:
        summaries = F.normalize(torch.stack(self.short_summaries[: self.event_window + 1]), dim=-1)
        similarity = (summaries[:-1] * summaries[1:]).sum(-1)[: self.event_window]
        cut = int(similarity.argmin()) + 1
        frames = torch.cat(self.short[:cut])
        tokens = merge_tokens(frames, self.long_tokens_per_frame * cut)[0]
        first = self.frames_seen - 1 - len(self.short)  # frame index of short[0]
        self.events.append(Event(tokens, cut, cut, first + (cut - 1) / 2, 1))
        del self.short[:cut], self.short_summaries[:cut]

    def _consolidate(self) -> None:
        g, a, b = self.weights
        most_merges = max(e.merges for e in self.events)
        candidates = []  # (cost, the pair's index, the merged event): each pair merged once
        for i, (left, right) in enumerate(zip(self.events, self.events[1:], strict=False)):
            slots = math.ceil((left.slots + right.slots) / 2)
            frames = left.frames + right.frames
            tokens, _, scores = merge_tokens(torch.cat([left.tokens, right.tokens]), slots * self.long_tokens_per_frame)
            similarity = float(scores.mean()) if len(scores) else 1.0
            centre = (left.centre * left.frames + right.centre * right.frames) / frames
            merges = (left.merges + right.merges) / 2
            cost = g * (1 - similarity) + a * centre / self.frames_seen + b * merges / (most_merges + 1e-6)
            candidates.append((cost, i, Event(tokens, frames, slots, centre, left.merges + right.merges)))
        _, i, merged = min(candidates, key=lambda candidate: (candidate[0], candidate[1]))
        self.events[i : i + 2] = [merged]
