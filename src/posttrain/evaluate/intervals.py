"""Confidence intervals shared by evaluation, run comparison and A/B analysis.

All functions are pure and work on plain numbers or 1-D arrays.

- `wilson_interval`: a proportion's interval (Wilson 1927). Unlike the Wald
  interval p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and keeps its coverage
  near p = 0 or 1 and for small n, which is where refusal rates and win rates live.
- `newcombe_diff_interval` / `wald_diff_interval`: the difference of two
  independent proportions, p_b - p_a.
- `newcombe_paired_diff_interval` / `mcnemar_exact_pvalue`: the difference of two
  proportions measured on the same items (before/after on one test set), from the
  paired 2x2 table, and the exact McNemar test of "no difference".
- `bootstrap_mean_interval` / `bootstrap_diff_interval`: percentile bootstrap
  intervals, seeded, so the same inputs always give the same interval.

Convention: every difference in this package is "b minus a" (treatment minus
control, new run minus old run).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats

Interval = tuple[float, float]


def z_quantile(confidence: float) -> float:
    """The two-sided normal critical value: z with P(|Z| < z) = confidence."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion successes / n.

    centre = (p + z²/2n) / (1 + z²/n),
    half   = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²).

    `successes` may be fractional (ties counted as half a win). n = 0 gives (0, 1):
    no data, no information.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return (0.0, 1.0)
    z = z_quantile(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def wald_diff_interval(x_a: float, n_a: float, x_b: float, n_b: float, confidence: float = 0.95) -> Interval:
    """Wald interval for p_b - p_a: diff ± z·sqrt(p_a(1-p_a)/n_a + p_b(1-p_b)/n_b)."""
    _check_counts(x_a, n_a)
    _check_counts(x_b, n_b)
    p_a, p_b = x_a / n_a, x_b / n_b
    half = z_quantile(confidence) * math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return (p_b - p_a - half, p_b - p_a + half)


def newcombe_diff_interval(x_a: float, n_a: float, x_b: float, n_b: float, confidence: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval for p_b - p_a (Newcombe 1998, "Interval estimation
    for the difference between independent proportions", Stat Med 17:873, method 10).

    With Wilson intervals (l_a, u_a) and (l_b, u_b) for each proportion and d = p_b - p_a:
        lower = d - sqrt((p_b - l_b)² + (u_a - p_a)²)
        upper = d + sqrt((u_b - p_b)² + (p_a - l_a)²)
    Good coverage even for small samples and rates near 0 or 1, unlike Wald.
    """
    _check_counts(x_a, n_a)
    _check_counts(x_b, n_b)
    return mover_diff_interval(x_a / n_a, wilson_interval(x_a, n_a, confidence),
                               x_b / n_b, wilson_interval(x_b, n_b, confidence))


def newcombe_paired_diff_interval(both: int, a_only: int, b_only: int, neither: int,
                                  confidence: float = 0.95) -> Interval:
    """Newcombe's score interval for p_b - p_a on paired data (Newcombe 1998, "Improved
    confidence intervals for the difference between binomial proportions based on
    paired data", Stat Med 17:2635, method 10).

    The paired 2x2 table counts items by their two outcomes: `both` right in A and B,
    `a_only` right in A only, `b_only` right in B only, `neither`; n is their sum.
    p_a = (both + a_only)/n, p_b = (both + b_only)/n, d = p_b - p_a = (b_only - a_only)/n.
    With Wilson intervals (l_a, u_a), (l_b, u_b) for the two margins:

        lower = d - sqrt((p_b - l_b)² - 2φ(p_b - l_b)(u_a - p_a) + (u_a - p_a)²)
        upper = d + sqrt((u_b - p_b)² - 2φ(u_b - p_b)(p_a - l_a) + (p_a - l_a)²)

    This is the independent-samples hybrid interval with the covariance of the two
    margins put back through φ, the correlation of the outcomes. Newcombe's φ is
    corrected towards 0 so that concordant tables do not collapse to a zero-width
    interval: with D = both·neither - a_only·b_only and M the product of the four
    margins,  φ = (D - n/2)/sqrt(M) if D > n/2,  0 if 0 <= D <= n/2,  D/sqrt(M) if
    D < 0, and φ = 0 when any margin is empty. Reproduces the paper's worked
    examples to 4 decimals (tests/test_evaluate_intervals.py).
    """
    counts = (both, a_only, b_only, neither)
    if any(c < 0 for c in counts) or sum(counts) <= 0:
        raise ValueError(f"need non-negative counts with a positive total, got {counts}")
    n = sum(counts)
    p_a, p_b = (both + a_only) / n, (both + b_only) / n
    l_a, u_a = wilson_interval(both + a_only, n, confidence)
    l_b, u_b = wilson_interval(both + b_only, n, confidence)
    phi = _paired_phi(both, a_only, b_only, neither)
    d = p_b - p_a
    down_b, up_a = p_b - l_b, u_a - p_a
    up_b, down_a = u_b - p_b, p_a - l_a
    # max(0, .): the radicand is >= 0 in exact arithmetic (|φ| <= 1); guard rounding
    return (d - math.sqrt(max(0.0, down_b ** 2 - 2 * phi * down_b * up_a + up_a ** 2)),
            d + math.sqrt(max(0.0, up_b ** 2 - 2 * phi * up_b * down_a + down_a ** 2)))


def _paired_phi(both: int, a_only: int, b_only: int, neither: int) -> float:
    """Newcombe's corrected φ for the paired 2x2 table (see newcombe_paired_diff_interval)."""
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    if margins == 0:
        return 0.0
    n = both + a_only + b_only + neither
    cross = both * neither - a_only * b_only
    if cross > n / 2:
        cross -= n / 2
    elif cross >= 0:
        cross = 0.0
    return cross / math.sqrt(margins)


def mcnemar_exact_pvalue(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar test of p_a = p_b on paired data.

    Only discordant items carry information: under the null each of the
    m = a_only + b_only is equally likely to favour A or B, so
    p = min(1, 2·P(X <= min(a_only, b_only))) with X ~ Binomial(m, 1/2).
    No discordant items gives p = 1.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"need non-negative counts, got {a_only}, {b_only}")
    m = a_only + b_only
    if m == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(a_only, b_only), m, 0.5)))


def _check_counts(x: float, n: float) -> None:
    if n <= 0 or x < 0 or x > n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {x} of {n}")


def _percentile_interval(samples: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return (float(low), float(high))


def bootstrap_mean_interval(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000,
                            seed: int = 0, statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> Interval:
    """Percentile bootstrap interval for the mean of `values` (or another statistic).

    `statistic` maps a (n_resamples, n) array of resampled values to (n_resamples,)
    statistics; it defaults to the row mean. Deterministic for a given seed.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("need a non-empty 1-D sequence of values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    resampled = x[idx]
    estimates = resampled.mean(axis=1) if statistic is None else statistic(resampled)
    return _percentile_interval(estimates, confidence)


def bootstrap_diff_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                            n_resamples: int = 2000, seed: int = 0, paired: bool = False) -> Interval:
    """Percentile bootstrap interval for mean(b) - mean(a).

    Independent samples resample a and b separately. `paired=True` (same items,
    same order, equal lengths) resamples item indices once and applies them to
    both, which keeps the per-item correlation and gives a tighter, correct interval
    when two runs were scored on the same test set.
    """
    x_a, x_b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x_a.size == 0 or x_b.size == 0:
        raise ValueError("need non-empty samples")
    rng = np.random.default_rng(seed)
    if paired:
        if x_a.shape != x_b.shape:
            raise ValueError("paired bootstrap needs equal-length samples")
        idx = rng.integers(0, x_a.size, size=(n_resamples, x_a.size))
        diffs = x_b[idx].mean(axis=1) - x_a[idx].mean(axis=1)
    else:
        idx_a = rng.integers(0, x_a.size, size=(n_resamples, x_a.size))
        idx_b = rng.integers(0, x_b.size, size=(n_resamples, x_b.size))
        diffs = x_b[idx_b].mean(axis=1) - x_a[idx_a].mean(axis=1)
    return _percentile_interval(diffs, confidence)


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) item indices drawn with replacement; shared so corpus-level
    metrics (BLEU from summed statistics) can be resampled the same way."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def mover_diff_interval(est_a: float, ci_a: Interval, est_b: float, ci_b: Interval) -> Interval:
    """Interval for est_b - est_a from two independent estimates' own intervals (MOVER).

    Zou & Donner (2008), "method of variance estimates recovery":
        lower = d - sqrt((est_b - l_b)² + (u_a - est_a)²)
        upper = d + sqrt((u_b - est_b)² + (est_a - l_a)²)
    It keeps each interval's asymmetry; with Wilson intervals it is exactly
    Newcombe's interval. Used when only the two intervals are known.
    """
    (l_a, u_a), (l_b, u_b) = ci_a, ci_b
    d = est_b - est_a
    return (d - math.sqrt((est_b - l_b) ** 2 + (u_a - est_a) ** 2),
            d + math.sqrt((u_b - est_b) ** 2 + (est_a - l_a) ** 2))
