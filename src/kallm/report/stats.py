"""Statistics for the report: mean ± std over seeds, paired bootstrap confidence intervals.

The paired comparison matches two variants on (seed, task): for every seed both were trained
with and every task both were scored on, the difference of accuracies is one pair. A run
without a seed (the untouched baseline) is matched to every seed of the other side. The
interval is a percentile bootstrap over pairs: resample the pairs with replacement, take the
mean of each resample, report the 2.5th and 97.5th percentiles of those means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kallm.errors import KallmError

# (seed, task); seed is None for runs that have no seed (the baseline).
PairKey = tuple[int | None, str]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n); std is None below two values, mean None for none."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(vals))
    std = float(np.std(vals, ddof=1)) if n > 1 else None
    return mean, std, n


@dataclass(frozen=True)
class BootstrapCI:
    mean: float
    low: float
    high: float
    n: int
    n_resamples: int
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def bootstrap_mean_ci(values: Sequence[float], n_resamples: int = 10_000, confidence: float = 0.95,
                      seed: int = 0) -> BootstrapCI:
    """Percentile bootstrap CI of the mean of `values` (fixed rng seed: the report is reproducible)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise KallmError("bootstrap_mean_ci: no values to resample")
    if not 0 < confidence < 1:
        raise KallmError(f"bootstrap_mean_ci: confidence must be between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise KallmError(f"bootstrap_mean_ci: n_resamples must be positive, got {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_resamples, data.size))
    means = data[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = float(data.mean())
    # Percentiles of identical floats can differ from the plain mean in the last bit.
    return BootstrapCI(mean, min(float(low), mean), max(float(high), mean), int(data.size), n_resamples, confidence)


def paired_differences(scores: Mapping[PairKey, float], reference: Mapping[PairKey, float]) -> dict[PairKey, float]:
    """`scores - reference` for every (seed, task) both have; a None seed on one side matches every seed."""
    out: dict[PairKey, float] = {}
    for (seed, task), value in scores.items():
        if value is None:
            continue
        ref_seeds = [s for s, t in reference if t == task and (s == seed or s is None or seed is None)]
        for ref_seed in ref_seeds:
            ref = reference[(ref_seed, task)]
            if ref is None:
                continue
            key = (seed if seed is not None else ref_seed, task)
            out[key] = float(value) - float(ref)
    return out


@dataclass(frozen=True)
class PairedComparison:
    variant: str
    reference: str
    ci: BootstrapCI
    better: int
    worse: int
    tied: int


def compare(variant: str, scores: Mapping[PairKey, float], reference: str,
            reference_scores: Mapping[PairKey, float], **bootstrap: float) -> PairedComparison | None:
    """Paired comparison of two variants, or None when they share no (seed, task) pair."""
    diffs = paired_differences(scores, reference_scores)
    if not diffs:
        return None
    values = list(diffs.values())
    ci = bootstrap_mean_ci(values, **bootstrap)  # type: ignore[arg-type]
    better = sum(d > 0 for d in values)
    worse = sum(d < 0 for d in values)
    return PairedComparison(variant, reference, ci, better, worse, len(values) - better - worse)
