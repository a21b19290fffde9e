"""Win-rate of a model against a baseline from pairwise judgements.

Position swap. LLM judges prefer one position. Each item is judged twice: once
with the model's response in position A ("first"), once in position B
("second"). Verdicts are "A", "B" or "tie" as the judge saw them. The item's
outcome for the model:

    first  second   outcome
    A      B        win      (the judge picked the model both times)
    B      A        loss
    tie    tie      tie
    other           tie      (the verdict depended on the order: no preference)

Score per item: win 1, tie 0.5, loss 0. The win-rate is the mean score, i.e.
(wins + ties/2) / n, with a Wilson interval on that fractional count (default)
or a percentile bootstrap.

Length control (in the spirit of AlpacaEval's length-controlled win-rate, Dubois
et al. 2024): judges favour longer answers, so we ask what the win-rate would be
if the model's answers were as long as the baseline's. We fit

    logit P(win_i) = b0 + b1 * tanh(Δ_i / s),    Δ_i = len(model_i) - len(baseline_i)

by maximum likelihood with the item score y_i in {0, 0.5, 1} as the Bernoulli
target (a tie contributes half a win and half a loss), where s is the standard
deviation (ddof=0) of Δ over the items (tanh keeps one very long answer from
dominating). The length-controlled win-rate is the prediction at Δ = 0:
sigmoid(b0). A tiny L2 penalty (1e-6, on both coefficients) keeps the fit finite
when outcomes are perfectly separated; it changes non-separated fits by less
than 1e-6. Its interval comes from a seeded bootstrap over items (s held fixed).
AlpacaEval also models per-instruction difficulty across many models; with one
model and one baseline that term is not identifiable and is left out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .intervals import bootstrap_indices, bootstrap_mean_interval, wilson_interval
from .results import MetricResult

VERDICTS = ("A", "B", "tie")
OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}
RIDGE = 1e-6


def swap_outcome(first: str, second: str) -> str:
    """Combine the two orders' verdicts into "win", "loss" or "tie" for the model.

    `first`: the verdict with the model's response shown as A; `second`: with it shown as B.
    """
    for verdict in (first, second):
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if first == "A" and second == "B":
        return "win"
    if first == "B" and second == "A":
        return "loss"
    return "tie"


def outcome_scores(outcomes: Sequence[str]) -> list[float]:
    """"win"/"tie"/"loss" -> 1 / 0.5 / 0."""
    try:
        return [OUTCOME_SCORE[o] for o in outcomes]
    except KeyError as exc:
        raise ValueError(f"outcome must be win, tie or loss, got {exc.args[0]!r}") from None


def win_rate(outcomes: Sequence[str], confidence: float = 0.95, method: str = "wilson", seed: int = 0,
             n_resamples: int = 2000, item_ids: Sequence[str] | None = None, name: str = "win_rate",
             inconsistent: int | None = None) -> MetricResult:
    """Win-rate with ties counted as half, and its interval ("wilson" or "bootstrap")."""
    outcomes = list(outcomes)
    scores = outcome_scores(outcomes)
    n = len(scores)
    if n == 0:
        raise ValueError("no judgements")
    wins, ties = outcomes.count("win"), outcomes.count("tie")
    value = (wins + 0.5 * ties) / n
    if method == "wilson":
        ci = wilson_interval(wins + 0.5 * ties, n, confidence)
    elif method == "bootstrap":
        ci = bootstrap_mean_interval(scores, confidence, n_resamples, seed)
    else:
        raise ValueError(f"method must be 'wilson' or 'bootstrap', got {method!r}")
    extra = {"wins": wins, "ties": ties, "losses": n - wins - ties, "interval": method}
    if inconsistent is not None:
        extra["inconsistent"] = inconsistent
    return MetricResult(name=name, value=value, kind="mean", n=n, ci=ci, confidence=confidence, per_item=scores,
                        item_ids=list(item_ids) if item_ids is not None else None, extra=extra)


def swapped_win_rate(first: Sequence[str], second: Sequence[str], **kwargs) -> MetricResult:
    """Win-rate from both orders' verdicts; `extra["inconsistent"]` counts order-dependent items."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} first-order verdicts but {len(second)} swapped ones")
    outcomes = [swap_outcome(a, b) for a, b in zip(first, second)]
    inconsistent = sum(1 for a, b in zip(first, second) if not ((a, b) in (("A", "B"), ("B", "A"), ("tie", "tie"))))
    return win_rate(outcomes, inconsistent=inconsistent, **kwargs)


def fit_logistic(features: np.ndarray, targets: np.ndarray, ridge: float = RIDGE, max_iter: int = 100,
                 tol: float = 1e-10) -> np.ndarray:
    """Logistic regression by Newton's method, batched over leading dimensions.

    Shapes: features (..., n, d) (include a column of ones for an intercept),
    targets (..., n) in [0, 1] (fractional targets allowed). Returns (..., d) maximising
        sum_i y_i log p_i + (1 - y_i) log(1 - p_i) - ridge/2 * |beta|²,   p = sigmoid(X beta).
    """
    X, y = np.asarray(features, dtype=float), np.asarray(targets, dtype=float)
    beta = np.zeros(X.shape[:-2] + X.shape[-1:])
    eye = np.eye(X.shape[-1])
    for _ in range(max_iter):
        eta = np.clip(np.einsum("...nd,...d->...n", X, beta), -50, 50)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = np.einsum("...nd,...n->...d", X, y - p) - ridge * beta
        hessian = np.einsum("...nd,...n,...ne->...de", X, p * (1 - p), X) + ridge * eye
        step = np.linalg.solve(hessian, grad[..., None])[..., 0]
        beta = beta + step
        if np.max(np.abs(step)) < tol:
            break
    return beta


def length_features(model_lengths: Sequence[float], baseline_lengths: Sequence[float],
                    scale: float | None = None) -> tuple[np.ndarray, float]:
    """Design matrix [1, tanh(Δ/s)] of shape (n, 2), and the scale s used."""
    delta = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    if scale is None:
        scale = float(delta.std())
    column = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)
    return np.stack([np.ones_like(delta), column], axis=1), scale


def length_controlled_win_rate(outcomes: Sequence[str], model_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], confidence: float = 0.95, seed: int = 0,
                               n_resamples: int = 1000, name: str = "lc_win_rate") -> MetricResult:
    """sigmoid(b0) of the length regression above, with a bootstrap interval.

    Lengths are whatever unit the caller chooses (characters or tokens); only
    their differences, scaled by their standard deviation, enter the fit.
    """
    y = np.asarray(outcome_scores(outcomes))
    if not (len(y) == len(model_lengths) == len(baseline_lengths)):
        raise ValueError("outcomes and both length lists must have the same length")
    if len(y) == 0:
        raise ValueError("no judgements")
    X, scale = length_features(model_lengths, baseline_lengths)
    beta = fit_logistic(X, y)
    value = float(1.0 / (1.0 + np.exp(-beta[0])))
    idx = bootstrap_indices(len(y), n_resamples, seed)
    boot_beta = fit_logistic(X[idx], y[idx])
    boot = 1.0 / (1.0 + np.exp(-boot_beta[:, 0]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    extra = {"intercept": float(beta[0]), "length_coef": float(beta[1]), "length_scale": scale,
             "raw_win_rate": float(y.mean()), "mean_length_diff": float(np.mean(np.asarray(model_lengths, float)
                                                                              - np.asarray(baseline_lengths, float)))}
    return MetricResult(name=name, value=value, kind="corpus", n=len(y), ci=(float(low), float(high)),
                        confidence=confidence, extra=extra)
