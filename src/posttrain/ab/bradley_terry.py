"""Bradley–Terry strengths for pairwise preferences, with intervals.

Model: variant i beats variant j with probability

    P(i > j) = exp(θ_i) / (exp(θ_i) + exp(θ_j)) = sigmoid(θ_i - θ_j).

Only differences are identified, so one reference variant (the control) is fixed
at θ = 0 and every θ_i reads "log-odds of beating the reference".

Fit: the minorise-maximise iteration of Hunter (2004, "MM algorithms for
generalized Bradley-Terry models", eq. 3), with p_i = exp(θ_i):

    p_i <- W_i / Σ_{j != i} N_ij / (p_i + p_j)

where W_i counts i's wins and N_ij the comparisons of i and j. A tie counts as
half a win for each side. It increases the likelihood every step and converges
to the maximum-likelihood estimate when one exists, i.e. when every variant both
wins and loses along some chain to every other (the "win graph" is strongly
connected); otherwise a strength is infinite and we say so.

Intervals: Wald intervals θ_i ± z·se_i from the observed Fisher information
(equal to the expected one for this model), I = Σ_{pairs} N_ij p_ij (1 - p_ij)
(e_i - e_j)(e_i - e_j)ᵀ restricted to the non-reference variants — the same
numbers as a logistic regression without intercept on ±1 indicator columns. Or
a seeded percentile bootstrap over comparisons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..evaluate.intervals import z_quantile

Comparison = tuple[str, str, str]  # (variant i, variant j, winner: i, j or "tie")


@dataclass
class BradleyTerry:
    """Fitted strengths. `theta[k]` is names[k]'s log-strength relative to `reference`."""

    names: list[str]
    reference: str
    theta: list[float]
    se: list[float]
    ci: list[tuple[float, float]]
    win_prob_vs_reference: list[float]
    n_comparisons: int
    iterations: int
    method: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "method": self.method, "n_comparisons": self.n_comparisons,
                "iterations": self.iterations, "notes": self.notes,
                "variants": {name: {"theta": t, "se": s, "ci": list(c), "p_beats_reference": w}
                             for name, t, s, c, w in zip(self.names, self.theta, self.se, self.ci,
                                                         self.win_prob_vs_reference)}}


class NotEstimable(ValueError):
    """The comparisons do not pin down every strength (someone never lost or never won)."""


def win_matrix(comparisons: Sequence[Comparison], names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(names, W) with W[i, j] = wins of i over j, ties adding ½ to both W[i, j] and W[j, i]."""
    if names is None:
        names = sorted({c[0] for c in comparisons} | {c[1] for c in comparisons})
    index = {name: k for k, name in enumerate(names)}
    wins = np.zeros((len(names), len(names)))
    for i, j, winner in comparisons:
        if i == j:
            raise ValueError(f"a variant cannot be compared with itself: {i!r}")
        if winner == i:
            wins[index[i], index[j]] += 1
        elif winner == j:
            wins[index[j], index[i]] += 1
        elif winner == "tie":
            wins[index[i], index[j]] += 0.5
            wins[index[j], index[i]] += 0.5
        else:
            raise ValueError(f"winner must be {i!r}, {j!r} or 'tie', got {winner!r}")
    return list(names), wins


def strongly_connected(wins: np.ndarray) -> bool:
    """True if every variant reaches every other along edges i -> j with W[i, j] > 0."""
    k = wins.shape[0]
    reach = (wins > 0) | np.eye(k, dtype=bool)
    for _ in range(max(1, int(np.ceil(np.log2(max(k, 2)))) + 1)):  # repeated squaring
        reach = (reach.astype(int) @ reach.astype(int)) > 0
    return bool(reach.all())


def fit_mm(wins: np.ndarray, max_iter: int = 10_000, tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """Maximum-likelihood log-strengths (mean zero) by Hunter's MM iteration; (theta, iterations)."""
    if not strongly_connected(wins):
        raise NotEstimable("some variant never wins or never loses against the rest; strengths are infinite")
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    p = np.ones(wins.shape[0])
    for iteration in range(1, max_iter + 1):
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = total_wins / denominator
        new /= np.exp(np.mean(np.log(new)))  # fix the scale: geometric mean 1
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            return np.log(new), iteration
        p = new
    return np.log(p), max_iter


def fisher_standard_errors(wins: np.ndarray, theta: np.ndarray, reference: int) -> np.ndarray:
    """Standard errors of θ_i - θ_reference from the Fisher information (0 for the reference)."""
    games = wins + wins.T
    prob = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # P(i beats j)
    weight = games * prob * prob.T
    information = np.diag(weight.sum(axis=1)) - weight
    keep = [k for k in range(len(theta)) if k != reference]
    covariance = np.linalg.inv(information[np.ix_(keep, keep)])
    se = np.zeros(len(theta))
    se[keep] = np.sqrt(np.diag(covariance))
    return se


def bradley_terry(comparisons: Sequence[Comparison], reference: str | None = None, confidence: float = 0.95,
                  method: str = "fisher", n_resamples: int = 1000, seed: int = 0,
                  names: Sequence[str] | None = None) -> BradleyTerry:
    """Fit strengths and intervals ("fisher" or "bootstrap") relative to `reference`.

    Raises `NotEstimable` when the maximum-likelihood estimate does not exist.
    """
    names, wins = win_matrix(comparisons, names)
    if len(names) < 2:
        raise NotEstimable("need comparisons between at least two variants")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise ValueError(f"reference {reference!r} is not among the compared variants {names}")
    ref = names.index(reference)
    theta, iterations = fit_mm(wins)
    theta = theta - theta[ref]
    notes: list[str] = []
    if method == "fisher":
        se = fisher_standard_errors(wins, theta, ref)
        z = z_quantile(confidence)
        ci = [(float(t - z * s), float(t + z * s)) for t, s in zip(theta, se)]
    elif method == "bootstrap":
        draws, skipped = _bootstrap_thetas(comparisons, names, ref, n_resamples, seed)
        if skipped:
            notes.append(f"{skipped} of {n_resamples} bootstrap resamples had infinite strengths and were skipped")
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
        se = draws.std(axis=0, ddof=1)
        ci = [(float(lo), float(hi)) for lo, hi in zip(low, high)]
    else:
        raise ValueError(f"method must be 'fisher' or 'bootstrap', got {method!r}")
    win_prob = 1.0 / (1.0 + np.exp(-theta))
    return BradleyTerry(names=list(names), reference=reference, theta=[float(t) for t in theta],
                        se=[float(s) for s in se], ci=ci, win_prob_vs_reference=[float(w) for w in win_prob],
                        n_comparisons=len(comparisons), iterations=iterations, method=method, notes=notes)


def _bootstrap_thetas(comparisons: Sequence[Comparison], names: list[str], ref: int, n_resamples: int,
                      seed: int) -> tuple[np.ndarray, int]:
    """Refit on comparisons resampled with replacement; returns (draws, number skipped)."""
    k = len(names)
    # Each comparison's own win matrix, flattened: W(resample) = counts @ contributions.
    contributions = np.stack([win_matrix([c], names)[1].ravel() for c in comparisons])  # (n, k*k)
    rng = np.random.default_rng(seed)
    draws, skipped = [], 0
    for _ in range(n_resamples):
        counts = np.bincount(rng.integers(0, len(comparisons), size=len(comparisons)), minlength=len(comparisons))
        try:
            theta, _ = fit_mm((counts @ contributions).reshape(k, k), max_iter=2000, tol=1e-9)
        except NotEstimable:
            skipped += 1
            continue
        draws.append(theta - theta[ref])
    if not draws:
        raise NotEstimable("no bootstrap resample gave finite strengths")
    return np.asarray(draws), skipped
