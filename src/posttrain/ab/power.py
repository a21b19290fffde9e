"""Power, required sample size and minimum detectable effect (normal approximation).

Effect sizes are standardised: for two proportions Cohen's h,

    h = 2·asin(sqrt(p2)) - 2·asin(sqrt(p1))

(statsmodels `proportion_effectsize(p2, p1)`); for means Cohen's d = Δ / σ. With
n1 in group 1 and n2 = ratio·n1 in group 2 the test statistic is roughly
N(h·sqrt(n_eff), 1) with n_eff = n1·n2 / (n1 + n2) (ratio = 0: a one-sample test,
n_eff = n1). Power of the two-sided test at level alpha, counting both tails:

    power = Φ(h·sqrt(n_eff) - z_{1-α/2}) + Φ(-h·sqrt(n_eff) - z_{1-α/2})

These are the formulas of statsmodels `NormalIndPower`; we solve them with a
closed-form start and a bracketing root finder, so results match its
`solve_power` to solver precision.
"""
from __future__ import annotations

import math

from scipy import optimize, stats


def cohens_h(p1: float, p2: float) -> float:
    """Effect size of moving a proportion from p1 to p2 (positive when p2 > p1)."""
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"proportions must be in [0, 1], got {p}")
    return 2.0 * math.asin(math.sqrt(p2)) - 2.0 * math.asin(math.sqrt(p1))


def _effective_n(nobs1: float, ratio: float) -> float:
    return nobs1 if ratio == 0 else nobs1 * ratio / (1.0 + ratio)


def _critical(alpha: float, alternative: str) -> float:
    if alternative == "two-sided":
        return float(stats.norm.isf(alpha / 2.0))
    if alternative in ("larger", "smaller"):
        return float(stats.norm.isf(alpha))
    raise ValueError(f"alternative must be two-sided, larger or smaller, got {alternative!r}")


def power(effect_size: float, nobs1: float, alpha: float = 0.05, ratio: float = 1.0,
          alternative: str = "two-sided") -> float:
    """Probability that the test rejects when the true standardised effect is `effect_size`."""
    shift = effect_size * math.sqrt(_effective_n(nobs1, ratio))
    crit = _critical(alpha, alternative)
    if alternative == "larger":
        return float(stats.norm.sf(crit - shift))
    if alternative == "smaller":
        return float(stats.norm.cdf(-crit - shift))
    return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))


def required_nobs(effect_size: float, alpha: float = 0.05, power_target: float = 0.8, ratio: float = 1.0,
                  alternative: str = "two-sided") -> float:
    """Observations in group 1 (unrounded) for the test to reach `power_target`.

    Start from the one-tail closed form n_eff = ((z_α + z_β) / h)², then solve the
    full power equation (both tails) on a bracket around it.
    """
    if effect_size == 0:
        return math.inf
    if not 0 < alpha < 1 or not 0 < power_target < 1:
        raise ValueError("alpha and power must be in (0, 1)")
    h = abs(effect_size) if alternative == "two-sided" else effect_size
    if (alternative == "larger" and h < 0) or (alternative == "smaller" and h > 0):
        return math.inf  # the test looks the other way
    guess_eff = ((_critical(alpha, alternative) + stats.norm.isf(1 - power_target)) / abs(h)) ** 2
    guess = guess_eff if ratio == 0 else guess_eff * (1.0 + ratio) / ratio

    def gap(n: float) -> float:
        return power(h, n, alpha, ratio, alternative) - power_target

    low, high = guess * 0.5, guess * 1.5
    while gap(low) > 0:
        low /= 2.0
    while gap(high) < 0:
        high *= 2.0
    return float(optimize.brentq(gap, low, high, xtol=1e-12, rtol=1e-14))


def required_sample_size(p1: float, p2: float, alpha: float = 0.05, power_target: float = 0.8,
                         ratio: float = 1.0, alternative: str = "two-sided") -> float:
    """Group-1 size (unrounded) to detect a change from p1 (control) to p2 (treatment).

    Equals statsmodels `NormalIndPower().solve_power(proportion_effectsize(p2, p1), ...)`;
    round up for planning. Group 2 needs `ratio` times as many.
    """
    return required_nobs(cohens_h(p1, p2), alpha, power_target, ratio, alternative)


def detectable_effect_size(nobs1: float, alpha: float = 0.05, power_target: float = 0.8, ratio: float = 1.0,
                           alternative: str = "two-sided") -> float:
    """The smallest standardised effect (|h| or |d|) the test detects with `power_target`."""
    if nobs1 <= 0:
        return math.inf
    sign = -1.0 if alternative == "smaller" else 1.0

    def gap(h: float) -> float:
        return power(sign * h, nobs1, alpha, ratio, alternative) - power_target

    high = 1.0
    while gap(high) < 0:
        high *= 2.0
        if high > 1e6:
            return math.inf
    return float(optimize.brentq(gap, 1e-12, high, xtol=1e-14, rtol=1e-14))


def minimum_detectable_effect(nobs1: float, p1: float, alpha: float = 0.05, power_target: float = 0.8,
                              ratio: float = 1.0) -> float:
    """Smallest increase p2 - p1 above the baseline p1 that a two-sided test detects.

    Converts the detectable Cohen's h back to a rate: p2 = sin²(asin(sqrt(p1)) + h/2),
    capped at 1 (then no increase is detectable and the result is inf).
    """
    h = detectable_effect_size(nobs1, alpha, power_target, ratio)
    angle = math.asin(math.sqrt(p1)) + h / 2.0
    if angle >= math.pi / 2:
        return math.inf
    return math.sin(angle) ** 2 - p1
