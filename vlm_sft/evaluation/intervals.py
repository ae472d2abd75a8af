"""95 % intervals for scores averaged over examples: percentile bootstrap, resampling the examples.

A score on 40 examples moves a lot when other 40 are drawn; the interval says by how much. A metric is a
weighted mean over examples (`values[i]` weighted by `weights[i]`; None where an example has no value, e.g.
the MAE of an answer without a number), so a ratio of sums such as JSON field accuracy (fields matched /
fields) is one too. The difference of two models is bootstrapped *paired*: both are recomputed on the same
resampled examples, which is what makes "+0.03 on 40 examples" visibly different from "+0.93".

    bootstrap_interval([1, 0, 1, 1])                     # (lo, hi) of the mean
    bootstrap_difference(tuned_values, base_values)     # (lo, hi) of mean(tuned) - mean(base)

Seeded, so a report is reproducible; numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


def _arrays(values: Sequence[float | None], weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(values with 0 where absent, weights with 0 where absent)."""
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=float)
    present = np.array([v is not None for v in values], dtype=bool)
    v = np.array([0.0 if v is None else float(v) for v in values])
    return v, np.where(present, w, 0.0)


def _resampled(v: np.ndarray, w: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The weighted mean on each resample (a row of `idx`); NaN where a resample holds no value."""
    num, den = (v * w)[idx].sum(axis=1), w[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float] | None:
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_interval(
    values: Sequence[float | None],
    weights: Sequence[float] | None = None,
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """(low, high) of the weighted mean of `values` at `level`; None when no example has a value."""
    v, w = _arrays(values, weights)
    if not len(v) or not w.sum():
        return None
    return _percentiles(_resampled(v, w, _indices(len(v), resamples, seed)), level)


def bootstrap_difference(
    values: Sequence[float | None],
    reference: Sequence[float | None],
    weights: Sequence[float] | None = None,
    reference_weights: Sequence[float] | None = None,
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """(low, high) of mean(values) - mean(reference), both on the same resampled examples (paired)."""
    if len(values) != len(reference):
        raise ValueError(
            f"{len(values)} values for {len(reference)} reference values; a paired difference needs one each."
        )
    a, wa = _arrays(values, weights)
    b, wb = _arrays(reference, reference_weights)
    if not len(a) or not wa.sum() or not wb.sum():
        return None
    idx = _indices(len(a), resamples, seed)
    return _percentiles(_resampled(a, wa, idx) - _resampled(b, wb, idx), level)


def paired_difference(
    after: Sequence[float],
    before: Sequence[float],
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """(mean of after - before, low, high): two models (or data sizes) scored on the same examples, resampled
    together; NaNs when there are no examples."""
    if len(after) != len(before):
        raise ValueError(f"paired scores need one value per example each; got {len(after)} and {len(before)}.")
    diff = [a - b for a, b in zip(after, before, strict=True)]
    bounds = bootstrap_interval(diff, level=level, resamples=resamples, seed=seed) or (float("nan"), float("nan"))
    return (sum(diff) / len(diff) if diff else float("nan")), *bounds
