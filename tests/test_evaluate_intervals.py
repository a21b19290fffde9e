"""Intervals against statsmodels, plus bootstrap determinism and (loose) coverage."""
import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from posttrain.evaluate.intervals import (
    bootstrap_diff_interval,
    bootstrap_mean_interval,
    mcnemar_exact_pvalue,
    mover_diff_interval,
    newcombe_diff_interval,
    newcombe_paired_diff_interval,
    wald_diff_interval,
    wilson_interval,
)


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


# Newcombe (1998, Stat Med 17:2635), worked examples for method 10: the paper's 2x2 tables
# (e, f, g, h) = (both +, first + only, second + only, both -), theta = (f - g)/n, with the
# published 95% limits to 4 decimals. Our difference is b - a, so b is the paper's "first".
NEWCOMBE_PAIRED_EXAMPLES = [
    (36, 12, 2, 0, 0.0569, 0.3404), (20, 12, 2, 16, 0.0562, 0.3292), (18, 12, 2, 18, 0.0562, 0.3290),
    (36, 14, 0, 0, 0.1528, 0.4167), (35, 14, 0, 1, 0.1461, 0.4175), (18, 14, 0, 18, 0.1441, 0.3963),
    (2, 97, 1, 0, 0.8721, 0.9854), (1, 97, 1, 1, 0.8736, 0.9850), (0, 29, 1, 0, 0.6666, 0.9882),
    (2, 98, 0, 0, 0.9178, 0.9945), (1, 98, 0, 1, 0.9171, 0.9916), (0, 30, 0, 0, 0.8395, 1.0),
    (54, 0, 0, 0, -0.0664, 0.0664), (53, 0, 0, 1, -0.0729, 0.0729), (30, 0, 0, 24, -0.0358, 0.0358),
    (29, 0, 0, 25, -0.0354, 0.0354), (28, 0, 0, 26, -0.0352, 0.0352), (27, 0, 0, 27, -0.0351, 0.0351),
]


@pytest.mark.parametrize("e,f,g,h,lower,upper", NEWCOMBE_PAIRED_EXAMPLES)
def test_paired_newcombe_reproduces_paper(e, f, g, h, lower, upper):
    low, high = newcombe_paired_diff_interval(both=e, a_only=g, b_only=f, neither=h)
    # 4-decimal rounding; (1, 97, 1, 1) computes 0.87367, printed as 0.8736 in the source table
    assert low == pytest.approx(lower, abs=1e-4) and high == pytest.approx(upper, abs=1e-4)
    # swapping the runs mirrors the interval
    assert newcombe_paired_diff_interval(e, f, g, h) == pytest.approx((-high, -low), abs=1e-12)


def test_paired_newcombe_hand_derived():
    """(both, a_only, b_only, neither) = (20, 2, 12, 16), n = 50, at 95%, worked step by step.

    p_b = 32/50 = 0.64, p_a = 22/50 = 0.44, d = 0.2. D = 20*16 - 2*12 = 296 > n/2 = 25, so
    φ = (296 - 25)/sqrt(32*18*22*28) = 271/sqrt(354816) = 0.454954.
    Wilson (z = 1.959964): p_b -> [0.501410, 0.758613]; p_a -> [0.311622, 0.576940].
    lower = 0.2 - sqrt(0.138590² - 2φ·0.138590·0.136940 + 0.136940²) = 0.2 - 0.143844 = 0.056156
    upper = 0.2 + sqrt(0.118613² - 2φ·0.118613·0.128378 + 0.128378²) = 0.2 + 0.129207 = 0.329207
    (The paper's example (20, 12, 2, 16) prints 0.0562 and 0.3292.)
    """
    assert wilson_interval(32, 50) == pytest.approx((0.501410, 0.758613), abs=1e-6)
    assert wilson_interval(22, 50) == pytest.approx((0.311622, 0.576940), abs=1e-6)
    low, high = newcombe_paired_diff_interval(20, 2, 12, 16)
    assert low == pytest.approx(0.056156, abs=2e-6) and high == pytest.approx(0.329207, abs=2e-6)


def test_paired_is_tighter_than_independent_when_outcomes_correlate():
    paired = newcombe_paired_diff_interval(both=40, a_only=2, b_only=10, neither=48)
    independent = newcombe_diff_interval(42, 100, 50, 100)
    assert paired[1] - paired[0] < independent[1] - independent[0]
    with pytest.raises(ValueError):
        newcombe_paired_diff_interval(0, 0, 0, 0)


@pytest.mark.parametrize("both,a_only,b_only,neither", [(36, 12, 2, 0), (20, 2, 12, 16), (5, 0, 0, 5), (0, 7, 3, 1),
                                                        (10, 1, 9, 10), (100, 30, 31, 40)])
def test_mcnemar_exact_matches_statsmodels(both, a_only, b_only, neither):
    expected = mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue
    assert mcnemar_exact_pvalue(a_only, b_only) == pytest.approx(expected, abs=1e-15)
    # hand value for one case: 2 + 12 discordant, p = 2 * P(X <= 2), X ~ Bin(14, 1/2) = 2 * 106 / 16384
    assert mcnemar_exact_pvalue(2, 12) == pytest.approx(2 * (1 + 14 + 91) / 2 ** 14)
