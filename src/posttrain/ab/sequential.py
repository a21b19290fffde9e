"""Peeking: keep the false-positive rate at alpha when results are looked at repeatedly.

Testing at level alpha after every batch of data and stopping at the first
"significant" result inflates the false-positive rate (five looks at 0.05 give
about 0.14). Two corrections, over K looks at information fractions
0 < t_1 < ... < t_K = 1 (t_k = share of the data seen at look k, this analysis
being the last look):

- Bonferroni: test at alpha / K at every look. Simple and valid, but conservative.
- O'Brien–Fleming-type alpha spending (Lan & DeMets 1983), symmetric two-sided
  as in gsDesign/ldbounds: each side spends the one-sided O'Brien–Fleming-type
  function at level α/2, so the cumulative two-sided error spent by time t is

      α(t) = 2 · [2 - 2·Φ(z_{1-α/4} / sqrt(t))]        (α(1) = α)

  Early looks spend almost nothing and the final look keeps nearly all of alpha
  (5 equally spaced looks at α = 0.05: |z| boundaries 4.877, 3.357, 2.680, 2.290, 2.031). Boundaries c_k are found one look at a time so that
  P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) = α(t_k) - α(t_{k-1}),
  with Z_k = B(t_k)/sqrt(t_k) for a Brownian motion B under H0. We compute these
  probabilities by numerical integration of B's density over the continuation
  region on a grid (the Armitage–McPherson–Rowe recursion).

The nominal alpha at the final look is 2·(1 - Φ(c_K)): compare the usual p-value
against it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import optimize, special, stats

CORRECTIONS = ("obrien-fleming", "bonferroni")
GRID_POINTS = 1001
BOUNDARY_CAP = 40.0  # |z| beyond this has probability ~0; stands in for "no rejection possible"


def obrien_fleming_spending(t: float, alpha: float) -> float:
    """Cumulative type-I error α(t) spent by information fraction t (two-sided)."""
    if t <= 0:
        return 0.0
    per_side = 2.0 * stats.norm.sf(stats.norm.isf(alpha / 4.0) / math.sqrt(min(t, 1.0)))
    return float(min(alpha, 2.0 * per_side))


def _clean_fractions(fractions: Sequence[float]) -> list[float]:
    """Strictly increasing fractions in (0, 1], ending at 1 (looks at no new data merge)."""
    out: list[float] = []
    for t in sorted(float(f) for f in fractions):
        if not 0 < t <= 1:
            raise ValueError(f"information fractions must be in (0, 1], got {t}")
        if not out or t > out[-1] + 1e-12:
            out.append(t)
    if out[-1] < 1.0:
        out.append(1.0)
    return out


def obrien_fleming_boundaries(fractions: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Two-sided z boundaries c_1..c_K for looks at `fractions` (Lan–DeMets O'Brien–Fleming)."""
    times = _clean_fractions(fractions)
    spent_before = 0.0
    boundaries: list[float] = []
    grid = density = None  # B(t_{k-1})'s sub-density on the continuation region
    previous_t = 0.0
    for t in times:
        increment = obrien_fleming_spending(t, alpha) - spent_before
        spent_before += increment
        step_sd = math.sqrt(t - previous_t)
        if grid is None:
            c = min(BOUNDARY_CAP, float(stats.norm.isf(increment / 2.0))) if increment > 0 else BOUNDARY_CAP
        else:
            def crossing(c: float, grid=grid, density=density, step_sd=step_sd, t=t) -> float:
                b = c * math.sqrt(t)
                tail = special.ndtr((grid - b) / step_sd) + special.ndtr((-b - grid) / step_sd)
                return float(np.trapezoid(density * tail, grid)) - increment

            c = BOUNDARY_CAP if increment <= 0 or crossing(BOUNDARY_CAP) > 0 else \
                float(optimize.brentq(crossing, 1e-6, BOUNDARY_CAP, xtol=1e-10))
        boundaries.append(c)
        b = c * math.sqrt(t)
        new_grid = np.linspace(-b, b, GRID_POINTS)
        if grid is None:
            density = stats.norm.pdf(new_grid, scale=math.sqrt(t))
        else:
            gap = (new_grid[:, None] - grid[None, :]) / step_sd
            kernel = np.exp(-0.5 * gap * gap) / (step_sd * math.sqrt(2 * math.pi))  # normal pdf
            density = np.trapezoid(kernel * density[None, :], grid, axis=1)
        grid, previous_t = new_grid, t
    return boundaries


def nominal_alpha(looks: int, alpha: float = 0.05, correction: str = "obrien-fleming",
                  fractions: Sequence[float] | None = None) -> float:
    """The p-value threshold for this (the last) of `looks` looks.

    `fractions` are the information fractions of the earlier looks (the current
    one is 1); without them the looks are taken as equally spaced.
    """
    if looks < 1:
        raise ValueError("looks must be >= 1")
    if looks == 1:
        return alpha
    if correction == "bonferroni":
        return alpha / looks
    if correction != "obrien-fleming":
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if fractions is None or len(fractions) == 0:
        fractions = [k / looks for k in range(1, looks)]
    boundaries = obrien_fleming_boundaries(list(fractions) + [1.0], alpha)
    return float(2.0 * stats.norm.sf(boundaries[-1]))
