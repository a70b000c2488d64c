"""The verdict's statistics: the held-out interval's coverage on simulated grids, and BBH against chance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kallm.errors import KallmError
from kallm.report.stats import HeldoutRuns, chance_test, detectable_difference, nll_difference_ci

# A simulated grid shaped like the demo's: 128 held-out conversations of 20-300 assistant tokens, two seeds of
# the retrofit against the one untouched model. Per-token NLL of conversation c: a difficulty shared by every
# model (sd 0.6 nats), plus for the retrofit a true shift `delta`, a conversation-specific effect of the
# retrofit (sd 0.3), a seed offset (sd 0.02) and per-(run, conversation) noise (sd 0.1).
N_CONV, N_SEEDS, N_EXPERIMENTS = 128, 2, 300


def simulate(rng: np.random.Generator, delta: float, sd_seed: float = 0.02) -> tuple[HeldoutRuns, HeldoutRuns]:
    tokens = rng.integers(20, 300, size=N_CONV).astype(np.float64)
    difficulty = rng.normal(2.0, 0.6, size=N_CONV)
    original = difficulty + rng.normal(0, 0.1, size=N_CONV)
    retrofit = (difficulty + delta + rng.normal(0, 0.3, size=N_CONV) + rng.normal(0, sd_seed, size=(N_SEEDS, 1))
                + rng.normal(0, 0.1, size=(N_SEEDS, N_CONV)))
    return HeldoutRuns(retrofit * tokens, tokens), HeldoutRuns((original * tokens)[None], tokens)


@pytest.mark.parametrize("delta", [0.25, 0.0])
def test_the_interval_covers_the_true_difference_95_percent_of_the_time(delta):
    rng = np.random.default_rng(2026)
    covered = sum(nll_difference_ci(*simulate(rng, delta), n_resamples=1000, seed=i).contains(delta)
                  for i in range(N_EXPERIMENTS))
    assert 0.93 <= covered / N_EXPERIMENTS <= 0.97


def test_a_large_seed_spread_widens_the_interval():
    retrofit, original = simulate(np.random.default_rng(7), 0.25, sd_seed=0.0)
    quiet = nll_difference_ci(retrofit, original, n_resamples=1000)
    offsets = np.array([[-0.15], [0.15]]) * retrofit.tokens  # the two seeds 0.3 nats apart
    noisy = nll_difference_ci(HeldoutRuns(retrofit.sums + offsets, retrofit.tokens), original, n_resamples=1000)
    assert noisy.mean == pytest.approx(quiet.mean)
    assert noisy.high - noisy.low > 5 * (quiet.high - quiet.low) and noisy.dof < 2 < quiet.dof


def test_point_estimate_by_hand_and_identical_models():
    tokens = np.array([10.0, 30.0, 60.0])
    a = HeldoutRuns(np.array([[20.0, 90.0, 60.0], [30.0, 60.0, 120.0]]), tokens)
    b = HeldoutRuns(np.array([[10.0, 30.0, 60.0]]), tokens)
    ci = nll_difference_ci(a, b, n_resamples=500)
    assert ci.mean == pytest.approx((170 / 100 + 210 / 100) / 2 - 100 / 100)
    assert (ci.runs_a, ci.runs_b, ci.conversations) == (2, 1, 3) and ci.low < ci.mean < ci.high
    same = nll_difference_ci(b, b, n_resamples=500)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and not same.distinguishable
    with pytest.raises(KallmError, match="not scored on the same held-out conversations"):
        nll_difference_ci(a, HeldoutRuns(np.array([[1.0, 2.0]]), np.array([1.0, 2.0])))


def test_bbh_against_chance_by_hand():
    n = {"a": 20, "b": 20, "c": 20}
    chance = {"a": 0.5, "b": 0.5, "c": 1 / 3}
    sd = math.sqrt((0.25 / 20 + 0.25 / 20 + (2 / 9) / 20) / 9)
    test = chance_test(0.6, chance, n)
    assert test.chance == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert test.z == pytest.approx((0.6 - test.chance) / sd)
    assert test.p_value == pytest.approx(math.erfc(abs(test.z) / math.sqrt(2)))
    assert chance_test(test.chance, chance, n).p_value == pytest.approx(1.0)
    # 120 examples over 6 tasks: two variants must differ by ~18 points to be told apart.
    assert detectable_difference({t: 20 for t in "abcdef"}) == pytest.approx(2.8016 * math.sqrt(2 * 0.25 / 120),
                                                                               rel=1e-3)
    assert chance_test(0.1, {"free": 0.0}, {"free": 10}).p_value == 0.0
