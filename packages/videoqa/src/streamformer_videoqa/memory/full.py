"""`full`: nothing is evicted (the baseline). The session refuses a frame or a question that would
take the LM past its context."""

from __future__ import annotations

from .base import MemoryPolicy


class FullMemory(MemoryPolicy):
    name = "full"
