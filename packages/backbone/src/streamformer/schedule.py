"""The learning-rate schedule the training jobs share: linear warm-up, then a half cosine."""

from __future__ import annotations

import math


def warmup_cosine_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (for `LambdaLR`).

    Rises linearly over the first `warmup` steps to 1 ((step + 1) / warmup), then falls along a half
    cosine to `floor` at step `total`, and stays there."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
