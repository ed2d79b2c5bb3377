"""Learned figures as spreads over seeds: mean ± sample standard deviation, and the rule for
claiming a difference.

A single training run is one sample: another seed or another CPU moves the synthetic figures by a
few hundredths. Tables therefore report `mean ± std` over seeds, and a difference between two
settings is claimed only where it exceeds the spread (`exceeds_spread`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no values to summarise")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_spread(values: Sequence[float], digits: int = 3) -> str:
    """`mean ± std`, e.g. "0.500 ± 0.021"."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def exceeds_spread(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when the means of `a` and `b` differ by more than the sum of their standard deviations
    (a deliberately strict rule for three seeds: the intervals mean ± std do not overlap)."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    return abs(mean_a - mean_b) > std_a + std_b
