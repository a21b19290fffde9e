"""A/B tests against scipy and statsmodels reference implementations."""
import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest

from posttrain.ab.stats import chi_square_test, mann_whitney_u, proportions_table, sign_test, two_proportion_ztest


@pytest.mark.parametrize("xa,na,xb,nb", [(40, 100, 55, 100), (120, 400, 100, 410), (3, 17, 9, 21), (0, 30, 2, 30)])
def test_ztest_matches_statsmodels(xa, na, xb, nb):
    z_ref, p_ref = proportions_ztest([xb, xa], [nb, na])
    z, p = two_proportion_ztest(xa, na, xb, nb)
    assert z == pytest.approx(z_ref, rel=1e-12)
    assert p == pytest.approx(p_ref, rel=1e-10)
    for ours, theirs in (("larger", "larger"), ("smaller", "smaller")):
        _, p_one = proportions_ztest([xb, xa], [nb, na], alternative=theirs)
        assert two_proportion_ztest(xa, na, xb, nb, alternative=ours)[1] == pytest.approx(p_one, rel=1e-10)


def test_ztest_without_information():
    assert two_proportion_ztest(10, 10, 20, 20) == (0.0, 1.0)


@pytest.mark.parametrize("correction", [True, False])
@pytest.mark.parametrize("table", [[[40, 60], [55, 45]], [[3, 14], [9, 12]], [[120, 280], [100, 310]]])
def test_chi_square_matches_scipy(table, correction):
    ref = stats.chi2_contingency(np.array(table), correction=correction)
    statistic, p, dof = chi_square_test(table, correction=correction)
    assert statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)
    assert dof == ref.dof


def test_chi_square_larger_table_and_relation_to_z():
    table = [[10, 20, 30], [25, 15, 12], [8, 9, 30]]
    ref = stats.chi2_contingency(np.array(table))
    assert chi_square_test(table)[:2] == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)
    # uncorrected 2x2 chi-square is the square of the pooled z statistic
    z, _ = two_proportion_ztest(40, 100, 55, 100)
    assert chi_square_test(proportions_table(40, 100, 55, 100), correction=False)[0] == pytest.approx(z * z)


def test_chi_square_rejects_empty_margins():
    with pytest.raises(ValueError):
        chi_square_test([[0, 5], [0, 7]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mann_whitney_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 6, size=57)
    b = np.clip(rng.integers(1, 6, size=64) + rng.integers(0, 2, size=64), 1, 5)
    ref = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    u, p = mann_whitney_u(a, b)
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)
    # "larger" = b tends to be larger than a = scipy's mannwhitneyu(b, a, "greater")
    ref_larger = stats.mannwhitneyu(b, a, alternative="greater", method="asymptotic")
    assert mann_whitney_u(a, b, alternative="larger")[1] == pytest.approx(ref_larger.pvalue, rel=1e-10)
    ref_smaller = stats.mannwhitneyu(b, a, alternative="less", method="asymptotic")
    assert mann_whitney_u(a, b, alternative="smaller")[1] == pytest.approx(ref_smaller.pvalue, rel=1e-10)


def test_mann_whitney_without_continuity_and_all_tied():
    a, b = [1.0, 2.5, 3.1, 4.0, 7.2, 0.3], [2.2, 5.5, 6.1, 8.0, 9.9, 4.4, 3.3]
    ref = stats.mannwhitneyu(a, b, method="asymptotic", use_continuity=False)
    assert mann_whitney_u(a, b, use_continuity=False)[1] == pytest.approx(ref.pvalue, rel=1e-10)
    assert mann_whitney_u([3, 3, 3], [3, 3])[1] == 1.0


@pytest.mark.parametrize("wins,losses", [(0, 0), (5, 5), (12, 4), (3, 20), (60, 41), (1, 0)])
def test_sign_test_matches_binomtest(wins, losses):
    expected = 1.0 if wins + losses == 0 else stats.binomtest(wins, wins + losses, 0.5).pvalue
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-10)
