"""Hypothesis tests for A/B analysis, each a small pure function.

Direction convention: "b minus a" (treatment minus control); a positive statistic
means b is higher. Rates and intervals come from `posttrain.evaluate.intervals`
(Wilson, Newcombe, bootstrap), re-exported here for convenience.

- `two_proportion_ztest`: pooled-variance z test for p_b - p_a
  (statsmodels `proportions_ztest` with `count=[x_b, x_a]`).
- `chi_square_test`: Pearson's chi-square test of independence on an r x c table,
  with Yates' continuity correction for 2 x 2 tables by default
  (scipy `chi2_contingency`). Without the correction, the 2 x 2 statistic is z².
- `mann_whitney_u`: rank-sum test for ratings, normal approximation with tie and
  continuity corrections (scipy `mannwhitneyu(..., method="asymptotic")`).
  Ratings on a 1-5 scale are full of ties, where the exact test does not apply.
- `sign_test`: exact two-sided binomial test of wins vs losses at p = 0.5, ties
  dropped (scipy `binomtest`), for pairwise preferences.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

from ..evaluate.intervals import (  # noqa: F401  (re-export)
    bootstrap_diff_interval,
    bootstrap_mean_interval,
    newcombe_diff_interval,
    wald_diff_interval,
    wilson_interval,
)

ALTERNATIVES = ("two-sided", "larger", "smaller")


def _p_from_z(z: float, alternative: str) -> float:
    """P-value of a standard-normal statistic; "larger" tests b > a."""
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * stats.norm.sf(abs(z))))
    if alternative == "larger":
        return float(stats.norm.sf(z))
    if alternative == "smaller":
        return float(stats.norm.cdf(z))
    raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def two_proportion_ztest(x_a: float, n_a: float, x_b: float, n_b: float,
                         alternative: str = "two-sided") -> tuple[float, float]:
    """(z, p) for H0: p_a = p_b, with the pooled rate in the standard error.

    z = (p_b - p_a) / sqrt(p̄ (1 - p̄) (1/n_a + 1/n_b)),  p̄ = (x_a + x_b) / (n_a + n_b).
    When both arms are all successes or all failures the test has no information:
    z = 0, p = 1.
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both groups need at least one observation")
    pooled = (x_a + x_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance == 0:
        return 0.0, 1.0
    z = (x_b / n_b - x_a / n_a) / math.sqrt(variance)
    return float(z), _p_from_z(z, alternative)


def chi_square_test(table: Sequence[Sequence[float]], correction: bool = True) -> tuple[float, float, int]:
    """(statistic, p, dof) of Pearson's test of independence on a contingency table.

    statistic = Σ (|O - E| - c)² / E with E = row total · column total / grand total;
    c = 0.5 (Yates) only when dof = 1 and `correction`, and never more than |O - E|.
    """
    observed = np.asarray(table, dtype=float)
    if observed.ndim != 2 or min(observed.shape) < 2:
        raise ValueError("need a table with at least 2 rows and 2 columns")
    expected = observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True) / observed.sum()
    if np.any(expected == 0):
        raise ValueError("a row or column of the table is all zeros")
    dof = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    deviation = np.abs(observed - expected)
    if correction and dof == 1:
        deviation = np.maximum(deviation - 0.5, 0.0)
    statistic = float(np.sum(deviation ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, dof)), dof


def proportions_table(x_a: float, n_a: float, x_b: float, n_b: float) -> list[list[float]]:
    """The 2 x 2 table [[successes, failures]] for groups a and b."""
    return [[x_a, n_a - x_a], [x_b, n_b - x_b]]


def mann_whitney_u(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided",
                   use_continuity: bool = True) -> tuple[float, float]:
    """(U_a, p): the U statistic of sample a and the normal-approximation p-value.

    U_a = R_a - n_a(n_a + 1)/2 with R_a the sum of a's mid-ranks in the pooled sample.
    Under H0, mean n_a n_b / 2 and variance
        n_a n_b / 12 · ((n + 1) - Σ_t (t³ - t) / (n (n - 1)))   (t: sizes of tied groups).
    "larger" tests whether b tends to be larger than a.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n_a, n_b = x.size, y.size
    if n_a == 0 or n_b == 0:
        raise ValueError("both samples need at least one value")
    n = n_a + n_b
    ranks = stats.rankdata(np.concatenate([x, y]))
    u_a = float(ranks[:n_a].sum() - n_a * (n_a + 1) / 2)
    _, tie_sizes = np.unique(np.concatenate([x, y]), return_counts=True)
    tie_term = float(np.sum(tie_sizes ** 3 - tie_sizes)) / (n * (n - 1)) if n > 1 else 0.0
    sigma = math.sqrt(n_a * n_b / 12.0 * ((n + 1) - tie_term))
    if sigma == 0:
        return u_a, 1.0  # every value tied: no evidence either way
    mean = n_a * n_b / 2.0
    c = 0.5 if use_continuity else 0.0
    u_b = n_a * n_b - u_a  # U of sample b; large when b ranks high
    if alternative == "two-sided":
        z = (max(u_a, u_b) - mean - c) / sigma
        return u_a, float(min(1.0, 2.0 * stats.norm.sf(z)))
    if alternative == "larger":
        return u_a, float(stats.norm.sf((u_b - mean - c) / sigma))
    if alternative == "smaller":
        return u_a, float(stats.norm.sf((u_a - mean - c) / sigma))
    raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided p-value that wins and losses are equally likely (ties dropped).

    With m = wins + losses and k = min(wins, losses): p = min(1, 2 · P(Binomial(m, ½) <= k)).
    """
    m = wins + losses
    if m == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(wins, losses), m, 0.5)))
