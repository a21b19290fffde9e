"""Intervals against statsmodels, plus bootstrap determinism and (loose) coverage."""
import numpy as np
import pytest
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from posttrain.evaluate.intervals import (bootstrap_diff_interval, bootstrap_mean_interval, mover_diff_interval,
                                          newcombe_diff_interval, wald_diff_interval, wilson_interval)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (47, 120), (1, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(k, n, confidence):
    expected = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    assert wilson_interval(k, n, confidence) == pytest.approx(expected, abs=1e-12)


def test_wilson_fractional_count_and_empty():
    # ties counted as half: the formula is the same with a fractional count
    expected = proportion_confint(12.5, 30, method="wilson")
    assert wilson_interval(12.5, 30) == pytest.approx(expected, abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize("xa,na,xb,nb", [(30, 100, 45, 100), (0, 20, 5, 25), (99, 100, 100, 100), (7, 13, 2, 40)])
def test_difference_intervals_match_statsmodels(xa, na, xb, nb):
    # statsmodels reports p1 - p2 with group 1 first: pass b first to get b - a.
    newcombe = confint_proportions_2indep(xb, nb, xa, na, method="newcomb", compare="diff")
    assert newcombe_diff_interval(xa, na, xb, nb) == pytest.approx(newcombe, abs=1e-10)
    wald = confint_proportions_2indep(xb, nb, xa, na, method="wald", compare="diff")
    assert wald_diff_interval(xa, na, xb, nb) == pytest.approx(wald, abs=1e-10)


def test_mover_with_wilson_is_newcombe():
    a, b = wilson_interval(20, 50), wilson_interval(31, 60)
    assert mover_diff_interval(20 / 50, a, 31 / 60, b) == pytest.approx(newcombe_diff_interval(20, 50, 31, 60))


def test_bootstrap_is_deterministic_and_seed_dependent():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 40), rng.normal(0.5, 1, 50)
    assert bootstrap_diff_interval(a, b, seed=7) == bootstrap_diff_interval(a, b, seed=7)
    assert bootstrap_diff_interval(a, b, seed=7) != bootstrap_diff_interval(a, b, seed=8)
    assert bootstrap_mean_interval(a, seed=1) == bootstrap_mean_interval(a, seed=1)


def test_bootstrap_diff_coverage_is_roughly_nominal():
    # 300 experiments with a true difference of 0.3: a 90% interval should cover it
    # roughly 90% of the time (percentile bootstrap under-covers a little at n=40).
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(300):
        a, b = rng.normal(0.0, 1.0, 40), rng.normal(0.3, 1.0, 40)
        low, high = bootstrap_diff_interval(a, b, confidence=0.9, n_resamples=500, seed=trial)
        covered += low <= 0.3 <= high
    assert 0.82 <= covered / 300 <= 0.96


def test_paired_bootstrap_is_tighter_for_correlated_items():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 60)
    a, b = base + rng.normal(0, 0.1, 60), base + 0.2 + rng.normal(0, 0.1, 60)
    paired = bootstrap_diff_interval(a, b, paired=True)
    unpaired = bootstrap_diff_interval(a, b, paired=False)
    assert paired[1] - paired[0] < 0.3 * (unpaired[1] - unpaired[0])
    assert paired[0] > 0  # the paired interval sees the consistent +0.2 shift
