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
import scipy.stats

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


# ---------------------------------------------------------------- held-out NLL: seeds x conversations


@dataclass(frozen=True)
class HeldoutRuns:
    """A variant's runs on one held-out set, aligned on conversations: NLL sums (runs, C), tokens (C,)."""

    sums: np.ndarray
    tokens: np.ndarray

    def __post_init__(self) -> None:
        if self.sums.ndim != 2 or self.sums.shape[1] != self.tokens.shape[0] or self.sums.shape[0] < 1:
            raise KallmError(f"held-out runs: sums {self.sums.shape} do not match tokens {self.tokens.shape}")

    @property
    def per_run_nll(self) -> np.ndarray:
        """Each run's mean NLL per token, pooled over conversations."""
        return self.sums.sum(axis=1) / self.tokens.sum()


@dataclass(frozen=True)
class DifferenceCI:
    """Mean NLL of A minus mean NLL of B (nats/token), with a hierarchical-bootstrap interval."""

    mean: float
    low: float
    high: float
    runs_a: int
    runs_b: int
    conversations: int
    n_resamples: int
    confidence: float
    dof: float  # Welch-Satterthwaite degrees of freedom of the t quantile

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0: the data tell A and B apart at this confidence."""
        return not self.contains(0.0)


def _conversation_variance(a: HeldoutRuns, b: HeldoutRuns, n_resamples: int, seed: int) -> float:
    """Bootstrap variance of the seed-averaged difference, resampling conversations in pairs (the same draw
    for A and B); each run's NLL is pooled over the drawn conversations' tokens."""
    rng = np.random.default_rng(seed)
    n_conv = a.tokens.shape[0]
    weights = rng.multinomial(n_conv, np.full(n_conv, 1.0 / n_conv), size=n_resamples).astype(np.float64)
    tokens = weights @ a.tokens
    means = [((weights @ side.sums.T) / tokens[:, None]).mean(axis=1) for side in (a, b)]
    return float(np.var(means[0] - means[1], ddof=1))


def nll_difference_ci(a: HeldoutRuns, b: HeldoutRuns, n_resamples: int = 10_000, confidence: float = 0.95,
                      seed: int = 0) -> DifferenceCI:
    """Interval for mean NLL(A) - mean NLL(B) over seeds and conversations.

    Two sources of uncertainty add up. Conversations: the same held-out conversations score every run,
    so they are resampled in pairs (a bootstrap over conversations, `_conversation_variance`). Seeds:
    each side's runs vary with their seed; two or three runs are too few to resample, so that spread
    enters as the runs' sample variance over their number, with S - 1 degrees of freedom. The interval
    is mean ± t * sqrt(sum of the variances), t with Welch-Satterthwaite degrees of freedom: with few
    seeds and a large seed spread it widens as it should.
    """
    if not np.array_equal(a.tokens, b.tokens):
        raise KallmError("the two variants were not scored on the same held-out conversations")
    if not 0 < confidence < 1 or n_resamples < 2:
        raise KallmError(f"confidence must be in (0, 1) and n_resamples >= 2, got {confidence}, {n_resamples}")
    n_conv = a.tokens.shape[0]
    terms = [(_conversation_variance(a, b, n_resamples, seed), n_conv - 1)]
    terms += [(side.per_run_nll.var(ddof=1) / len(side.sums), len(side.sums) - 1) for side in (a, b)
              if len(side.sums) > 1]
    total = sum(v for v, _ in terms)
    dof = total**2 / sum(v**2 / d for v, d in terms) if total > 0 else float(n_conv - 1)
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(total)
    mean = float(a.per_run_nll.mean() - b.per_run_nll.mean())
    return DifferenceCI(mean, mean - half, mean + half, len(a.sums), len(b.sums), n_conv, n_resamples,
                        confidence, dof)


# ---------------------------------------------------------------- BIG-Bench Hard against chance


@dataclass(frozen=True)
class ChanceTest:
    """A macro-averaged accuracy against the macro-averaged chance level of the same tasks."""

    accuracy: float
    chance: float
    z: float
    p_value: float  # two-sided, normal approximation of the macro average of independent guesses


def _macro_variance(per_task_p: Mapping[str, float], per_task_n: Mapping[str, int]) -> float:
    """Variance of a macro average of per-task accuracies, each Binomial(n_t, p_t) / n_t."""
    tasks = [t for t in per_task_p if per_task_n.get(t)]
    if not tasks:
        raise KallmError("no task with examples to test")
    return sum(per_task_p[t] * (1 - per_task_p[t]) / per_task_n[t] for t in tasks) / len(tasks) ** 2


def chance_test(accuracy: float, per_task_chance: Mapping[str, float], per_task_n: Mapping[str, int]) -> ChanceTest:
    """Is a macro accuracy distinguishable from guessing? (Tasks whose chance is 0 add no variance.)"""
    tasks = [t for t in per_task_chance if per_task_n.get(t)]
    chance = sum(per_task_chance[t] for t in tasks) / len(tasks)
    sd = math.sqrt(_macro_variance({t: per_task_chance[t] for t in tasks}, per_task_n))
    if sd == 0:  # only free-form tasks: any correct answer is beyond guessing
        return ChanceTest(accuracy, chance, 0.0 if accuracy == chance else math.inf, float(accuracy == chance))
    z = (accuracy - chance) / sd
    return ChanceTest(accuracy, chance, z, float(2 * scipy.stats.norm.sf(abs(z))))


def detectable_difference(per_task_n: Mapping[str, int], alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest difference in macro accuracy between two variants this many examples can detect
    (two-sided `alpha`, the given power), in the worst case p = 0.5 and with independent errors."""
    variance = _macro_variance({t: 0.5 for t in per_task_n}, per_task_n)
    z = scipy.stats.norm.ppf(1 - alpha / 2) + scipy.stats.norm.ppf(power)
    return float(z * math.sqrt(2 * variance))
