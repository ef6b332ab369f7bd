"""Quantiles of Prometheus histograms, computed as PromQL's ``histogram_quantile`` does."""

from __future__ import annotations

import math
from collections.abc import Iterable


def bucket_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """Quantile ``q`` (0..1) of cumulative ``(le, count)`` buckets, None without observations.

    Linear within the bucket that holds it (the first bucket starts at 0); in the +Inf bucket it is
    the highest finite bound, as in PromQL. So ``<= x`` holds exactly when the bucket ending at a
    bound ``x`` holds the quantile.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is not within 0..1")
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0
    if total <= 0:
        return None
    lower, below = 0.0, 0.0
    for le, count in ordered:  # the last bucket holds them all, so the loop always breaks
        if count >= q * total:
            break
        lower, below = le, count
    if math.isinf(le):
        return lower
    return lower + (le - lower) * (q * total - below) / max(count - below, 1e-9)
