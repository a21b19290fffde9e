"""Alpha spending for repeated looks: published boundaries and exact error control."""
import numpy as np
import pytest
from scipy import stats

from posttrain.ab.sequential import nominal_alpha, obrien_fleming_boundaries, obrien_fleming_spending


def test_five_equal_looks_match_published_boundaries():
    # Lan-DeMets O'Brien-Fleming, two-sided alpha 0.05, 5 equally spaced looks
    # (gsDesign / ldbounds tables): 4.877, 3.357, 2.680, 2.290, 2.031
    bounds = obrien_fleming_boundaries([0.2, 0.4, 0.6, 0.8, 1.0], 0.05)
    assert bounds == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=1.5e-3)


def _rejection_probability(fractions, bounds):
    """P(any |Z_k| >= c_k) under H0 from the exact multivariate normal of the Z_k."""
    t = np.asarray(fractions)
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    mvn = stats.multivariate_normal(np.zeros(len(t)), cov)
    return 1 - mvn.cdf(np.asarray(bounds), lower_limit=-np.asarray(bounds), rng=np.random.default_rng(0))


@pytest.mark.parametrize("fractions", [[0.5, 1.0], [0.3, 0.45, 1.0]])
def test_total_error_is_alpha_and_spending_is_followed(fractions):
    bounds = obrien_fleming_boundaries(fractions, 0.05)
    assert _rejection_probability(fractions, bounds) == pytest.approx(0.05, abs=2e-4)
    # the first look spends exactly alpha(t_1)
    assert 2 * stats.norm.sf(bounds[0]) == pytest.approx(obrien_fleming_spending(fractions[0], 0.05), rel=1e-9)


def test_nominal_alpha():
    assert nominal_alpha(1, 0.05) == 0.05
    assert nominal_alpha(4, 0.05, "bonferroni") == 0.0125
    final = nominal_alpha(5, 0.05)
    assert final == pytest.approx(2 * stats.norm.sf(2.031), rel=2e-3)
    assert 0.0125 < final < 0.05  # O'Brien-Fleming keeps most of alpha for the last look
    # a look taken before any data arrived spends nothing: the final test is at alpha
    assert nominal_alpha(2, 0.05, fractions=[1e-6]) == pytest.approx(0.05, rel=1e-6)
    with pytest.raises(ValueError):
        nominal_alpha(2, 0.05, "pocock")
