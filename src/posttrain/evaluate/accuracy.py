"""Verifiable-task accuracy, pass@k and perplexity.

- `accuracy`: the fraction of items a verifier marked correct, with a Wilson interval.
- `pass_at_k`: the unbiased estimator of Chen et al. (2021, "Evaluating Large
  Language Models Trained on Code", eq. 1). With n samples per problem of which c
  pass, the chance that at least one of k samples drawn without replacement passes is

      pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

  The product form never builds the huge binomial coefficients, so it is stable
  for any n. The benchmark score is the mean over problems.
- `perplexity`: exp of the mean negative log-likelihood per token, where the mean
  is over all scored tokens of all sequences together (a token-weighted corpus
  perplexity, not a mean of per-sequence perplexities).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from .results import MetricResult, mean_result, proportion_result


def accuracy(correct: Sequence[bool], confidence: float = 0.95, item_ids: Sequence[str] | None = None,
             name: str = "accuracy") -> MetricResult:
    """Fraction correct with a Wilson interval; per-item 0/1 kept for comparisons."""
    return proportion_result(name, correct, confidence, item_ids)


def normalize_answer(text: str) -> str:
    """Lower-case, trim, collapse whitespace, drop a trailing full stop; numbers lose
    thousands separators and trailing zeros ("1,000.50" -> "1000.5")."""
    text = " ".join(str(text).strip().lower().split()).rstrip(".")
    number = text.replace(",", "")
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", number):
        value = float(number)
        return str(int(value)) if value == int(value) else repr(value)
    return text


def exact_match(prediction: str, answer: str) -> bool:
    """A simple verifier: equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct."""
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(samples: Sequence[tuple[int, int]], k: int, confidence: float = 0.95,
                   item_ids: Sequence[str] | None = None, seed: int = 0) -> MetricResult:
    """Mean pass@k over problems given (n, c) per problem, with a bootstrap interval over problems."""
    values = [pass_at_k(n, c, k) for n, c in samples]
    return mean_result(f"pass@{k}", values, confidence, item_ids, seed=seed)


def _nll_and_count(token_logprobs: Sequence[float], mask: Sequence[bool] | None) -> tuple[float, int]:
    lp = np.asarray(token_logprobs, dtype=float)
    keep = np.ones_like(lp, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != lp.shape:
        raise ValueError(f"mask shape {keep.shape} differs from log-probs shape {lp.shape}")
    if np.any(lp[keep] > 0):
        raise ValueError("log-probabilities must be <= 0")
    return float(-lp[keep].sum()), int(keep.sum())


def perplexity(sequences: Sequence[Sequence[float]], masks: Sequence[Sequence[bool]] | None = None) -> float:
    """exp(sum of token NLL / number of tokens) over all sequences.

    `sequences[i]` holds the natural-log probabilities of sequence i's scored tokens;
    `masks[i]` (optional) marks which of them count (e.g. not padding, not the prompt).
    """
    total, count = 0.0, 0
    for i, lp in enumerate(sequences):
        nll, tokens = _nll_and_count(lp, None if masks is None else masks[i])
        total, count = total + nll, count + tokens
    if count == 0:
        raise ValueError("no tokens to score")
    return math.exp(total / count)


def perplexity_from_stats(summed: Sequence[float]) -> float:
    """Perplexity from summed per-sequence statistics [nll_sum, token_count]."""
    return math.exp(summed[0] / summed[1])


def perplexity_result(sequences: Sequence[Sequence[float]], masks: Sequence[Sequence[bool]] | None = None,
                      confidence: float = 0.95, item_ids: Sequence[str] | None = None, seed: int = 0,
                      n_resamples: int = 1000, name: str = "perplexity") -> MetricResult:
    """Perplexity with per-sequence [nll_sum, tokens] statistics and a bootstrap interval over sequences."""
    stats = [list(_nll_and_count(lp, None if masks is None else masks[i])) for i, lp in enumerate(sequences)]
    matrix = np.asarray(stats, dtype=float)
    if matrix.size == 0 or matrix[:, 1].sum() == 0:
        raise ValueError("no tokens to score")
    value = perplexity_from_stats(matrix.sum(axis=0))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(stats), size=(n_resamples, len(stats)))
    sums = matrix[idx].sum(axis=1)  # (n_resamples, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.exp(sums[:, 0] / sums[:, 1])
    boot = boot[np.isfinite(boot)]  # a resample of only empty sequences has no tokens
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return MetricResult(name=name, value=value, kind="corpus", n=len(stats), ci=(float(low), float(high)),
                        confidence=confidence, higher_is_better=False, stats=[[float(a), float(b)] for a, b in stats],
                        scorer="perplexity", item_ids=list(item_ids) if item_ids is not None else None)
