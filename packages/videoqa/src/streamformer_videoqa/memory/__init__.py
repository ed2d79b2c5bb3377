"""Memory policies for streaming video QA: what the LM keeps of a stream it cannot hold whole.

| policy | keeps | memory |
|---|---|---|
| `full` | everything | grows with the stream; refused at the LM's context |
| `recent` | the last N frames | N frames |
| `streamingvlm` | prompt (sink) + last frames + last rounds | window budgets |
| `streamforest` | events + short window + newest frame, re-read per question | token quota |
"""

from __future__ import annotations

from typing import Any

from .base import MemoryPolicy, Span
from .full import FullMemory
from .recent import RecentFrames
from .streamforest import StreamForestMemory, merge_tokens
from .streamingvlm import StreamingVLMMemory

POLICIES: dict[str, type[MemoryPolicy]] = {
    cls.name: cls for cls in (FullMemory, RecentFrames, StreamingVLMMemory, StreamForestMemory)
}


def build_policy(name: str, **budgets: Any) -> MemoryPolicy:
    """The policy `name` with its budgets (keyword arguments of its class)."""
    if name not in POLICIES:
        raise ValueError(f"unknown memory policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](**budgets)


__all__ = [
    "POLICIES",
    "FullMemory",
    "MemoryPolicy",
    "RecentFrames",
    "Span",
    "StreamForestMemory",
    "StreamingVLMMemory",
    "build_policy",
    "merge_tokens",
]
