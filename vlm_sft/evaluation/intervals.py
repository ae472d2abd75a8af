"""Bootstrap 95 % intervals over eval examples: for a mean score, and for the difference of two paired scores.

A score on n held-out examples is itself uncertain: resampling the examples (with replacement) and
recomputing the mean shows how much it would move on another draw of the same size. Percentile intervals,
seeded, so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000


def bootstrap_interval(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """(low, high) percentile interval of the mean of `values` (per-example scores); (nan, nan) when empty."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(
    after: Sequence[float],
    before: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean of after - before, low, high): two models scored on the same examples, resampled together."""
    a, b = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need one value per example each; got {a.size} and {b.size}.")
    diff = a - b
    low, high = bootstrap_interval(diff, confidence=confidence, resamples=resamples, seed=seed)
    return float(diff.mean()) if diff.size else float("nan"), low, high
