"""Bootstrap confidence intervals: of a mean, and of the difference between two systems measured
on the same prompts (paired: each resample draws prompts, and both systems' values for them).

Values are grouped by prompt (several samples of one prompt are one unit), so that an interval
reflects the variation between prompts, not only between samples of the same prompt.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


class Estimate(BaseModel):
    """A mean with its percentile-bootstrap interval; ``n`` counts the values it is made of."""

    mean: float | None = Field(description="The mean of the measured values; None when none was measured.")
    low: float | None = Field(None, description="Lower end of the 95% bootstrap confidence interval.")
    high: float | None = Field(None, description="Upper end of the 95% bootstrap confidence interval.")
    n: int = Field(0, description="How many values were measured (null values are not counted).")
    units: int = Field(0, description="How many prompts (resampling units) they came from.")


def _clean(groups: Mapping[str, Sequence[float | None]]) -> dict[str, list[float]]:
    return {k: [float(v) for v in vs if v is not None] for k, vs in groups.items()
            if any(v is not None for v in vs)}


def _unit_means(groups: dict[str, list[float]], keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    sums = np.array([sum(groups[k]) for k in keys])
    counts = np.array([len(groups[k]) for k in keys], dtype=float)
    return sums, counts


def bootstrap_mean(groups: Mapping[str, Sequence[float | None]], resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> Estimate:
    """The mean of every measured value, and its interval from resampling the groups (prompts) with
    replacement. ``None`` values are "not measured" and left out, never counted as 0."""
    clean = _clean(groups)
    keys = sorted(clean)
    if not keys:
        return Estimate(mean=None)
    sums, counts = _unit_means(clean, keys)
    mean = float(sums.sum() / counts.sum())
    if len(keys) < 2:
        return Estimate(mean=mean, low=mean, high=mean, n=int(counts.sum()), units=len(keys))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(resamples, len(keys)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    low, high = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(mean=mean, low=float(low), high=float(high), n=int(counts.sum()), units=len(keys))


def bootstrap_difference(a: Mapping[str, Sequence[float | None]], b: Mapping[str, Sequence[float | None]],
                         resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Estimate:
    """``mean(a) - mean(b)`` over the prompts both measured, with a paired bootstrap interval
    (each resample draws prompts, and takes both systems' values of those prompts)."""
    ca, cb = _clean(a), _clean(b)
    keys = sorted(set(ca) & set(cb))
    if not keys:
        return Estimate(mean=None)
    sa, na = _unit_means(ca, keys)
    sb, nb = _unit_means(cb, keys)
    diff = float(sa.sum() / na.sum() - sb.sum() / nb.sum())
    n = int(na.sum() + nb.sum())
    if len(keys) < 2:
        return Estimate(mean=diff, low=diff, high=diff, n=n, units=len(keys))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(resamples, len(keys)))
    diffs = sa[idx].sum(axis=1) / na[idx].sum(axis=1) - sb[idx].sum(axis=1) / nb[idx].sum(axis=1)
    low, high = np.quantile(diffs, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(mean=diff, low=float(low), high=float(high), n=n, units=len(keys))
