"""Sample size, power and minimum detectable effect against statsmodels NormalIndPower."""
import math

import pytest
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from posttrain.ab.power import (
    cohens_h,
    detectable_effect_size,
    minimum_detectable_effect,
    power,
    required_nobs,
    required_sample_size,
)

CASES = [(0.10, 0.12, 0.05, 0.8, 1.0), (0.5, 0.55, 0.05, 0.9, 1.0), (0.30, 0.25, 0.01, 0.8, 2.0),
         (0.02, 0.03, 0.05, 0.8, 0.5), (0.6, 0.7, 0.1, 0.95, 1.0)]


def test_cohens_h_matches_statsmodels():
    assert cohens_h(0.1, 0.12) == pytest.approx(proportion_effectsize(0.12, 0.1), rel=1e-12)


@pytest.mark.parametrize("p1,p2,alpha,target,ratio", CASES)
def test_required_sample_size_matches_statsmodels(p1, p2, alpha, target, ratio):
    expected = NormalIndPower().solve_power(effect_size=proportion_effectsize(p2, p1), alpha=alpha, power=target,
                                            ratio=ratio)
    assert required_sample_size(p1, p2, alpha, target, ratio) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alternative", ["two-sided", "larger", "smaller"])
@pytest.mark.parametrize("h,n,ratio", [(0.1, 500, 1.0), (-0.2, 120, 3.0), (0.05, 2000, 0.0)])
def test_power_matches_statsmodels(h, n, ratio, alternative):
    expected = NormalIndPower().power(h, n, 0.05, ratio=ratio, alternative=alternative)
    assert power(h, n, 0.05, ratio, alternative) == pytest.approx(expected, rel=1e-10)


def test_one_sample_and_one_sided_sizes():
    expected = NormalIndPower().solve_power(effect_size=0.15, alpha=0.05, power=0.8, ratio=0)
    assert required_nobs(0.15, 0.05, 0.8, ratio=0) == pytest.approx(expected, rel=1e-6)
    expected = NormalIndPower().solve_power(effect_size=0.15, alpha=0.05, power=0.8, alternative="larger")
    assert required_nobs(0.15, 0.05, 0.8, alternative="larger") == pytest.approx(expected, rel=1e-6)
    assert required_nobs(-0.15, alternative="larger") == math.inf
    assert required_nobs(0.0) == math.inf


@pytest.mark.parametrize("n,alpha,target,ratio", [(1000, 0.05, 0.8, 1.0), (250, 0.01, 0.9, 2.0), (80, 0.05, 0.8, 0.0)])
def test_detectable_effect_matches_statsmodels(n, alpha, target, ratio):
    expected = NormalIndPower().solve_power(effect_size=None, nobs1=n, alpha=alpha, power=target, ratio=ratio)
    ours = detectable_effect_size(n, alpha, target, ratio)
    # statsmodels' own root finder stops a little earlier than ours (about 1e-6 relative) ...
    assert ours == pytest.approx(abs(expected), rel=1e-5)
    # ... and statsmodels' power function confirms ours hits the target exactly
    assert NormalIndPower().power(ours, n, alpha, ratio=ratio) == pytest.approx(target, abs=1e-10)


def test_minimum_detectable_effect_round_trips():
    mde = minimum_detectable_effect(4000, 0.2)
    # the sample size needed for exactly that effect is the n we started from
    assert required_sample_size(0.2, 0.2 + mde) == pytest.approx(4000, rel=1e-6)
    assert minimum_detectable_effect(3, 0.99) == math.inf
