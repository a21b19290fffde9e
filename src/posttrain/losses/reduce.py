"""Masked reductions with explicit, written-down modes.

Every loss in posttrain that has a per-token value reduces it through one of the
modes below, so that "mean" always means one thing. Shapes: ``values`` and
``mask`` are ``[B, T]`` (sequences by tokens); ``mask`` is bool or 0/1 and marks
the tokens that count. Positions where the mask is off are *selected away*
(``torch.where``), never multiplied by zero, so a ``-inf`` or ``nan`` in padding
cannot leak into the result.

A "sequence" below is a row with at least one mask token; empty rows count
for nothing in any mode.

=====================  =====================================================  ========================
mode                   value                                                  verl name
=====================  =====================================================  ========================
``token_mean``         sum_{i,t} m x / sum_{i,t} m                            token-mean
``sequence_mean``      (1/N) sum_i [ sum_t m x / sum_t m ]                    seq-mean-token-mean
``sequence_sum``       (1/N) sum_i sum_t m x                                  seq-mean-token-sum
``sum_over_constant``  (1/N) sum_i sum_t m x / C   (Dr. GRPO, C fixed)        seq-mean-token-sum-norm
=====================  =====================================================  ========================

(N = number of sequences, C = a fixed length such as ``max_new_tokens``.)

Split-invariance: every mode is a ratio ``numerator / denominator`` where both
parts are *sums over examples* and the denominator depends on the mask only.
``aggregate_parts`` returns the two parts. To get the same result whether a
batch is processed whole, in gradient-accumulation micro-batches, or across
processes:

1. compute the denominator of the whole global batch first (it needs masks
   only, so it is known before any forward pass): sum ``den`` over the
   micro-batches, then all-reduce (sum) across processes;
2. for each micro-batch, backpropagate ``num * world_size / global_den``
   (DDP averages gradients over processes, hence ``world_size``).

This is exactly what ``posttrain.train.engine`` does with ``LossOutput.loss_sum``
(= ``num``) and ``TrainTask.item_count`` (one example's share of ``den``:
its label tokens for ``token_mean``, 1 for the three sequence modes).
Dividing each micro-batch by its own count and averaging afterwards is *not*
equivalent (it weights short micro-batches more) and is what this module avoids.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Parts = tuple[Tensor, Tensor]


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is on (over all elements, or along ``dim``)."""
    picked = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is on; 0 where nothing is on."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def safe_divide(num: Tensor, den: Tensor | float) -> Tensor:
    """``num / den``, and 0 when ``den`` is 0 (a batch with nothing to count)."""
    den = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    has_items = den > 0
    return torch.where(has_items, num / torch.where(has_items, den, 1), 0)


def _sequence_counts(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row token counts ``[B]`` and which rows are non-empty ``[B]``."""
    counts = mask.bool().sum(-1)
    return counts, counts > 0


def token_mean_parts(values: Tensor, mask: Tensor, constant: float | None = None) -> Parts:
    """Token mean over the whole batch: ``(sum_{i,t} m x, sum_{i,t} m)``.

    Every token weighs the same, so long sequences weigh more (DAPO's choice;
    the standard SFT loss). ``constant`` is unused (all modes share one signature).
    """
    num = masked_sum(values, mask)
    den = mask.bool().sum().to(values.dtype)
    return num, den


def sequence_mean_parts(values: Tensor, mask: Tensor, constant: float | None = None) -> Parts:
    """Sequence mean of per-sequence token means: ``(sum_i mean_t x_i, N)``.

    Every sequence weighs the same whatever its length (the original GRPO
    formula: 1/G sum_i 1/|o_i| sum_t). ``constant`` is unused.
    """
    counts, nonempty = _sequence_counts(mask)
    per_sequence = masked_sum(values, mask, dim=-1) / counts.clamp(min=1).to(values.dtype)
    num = per_sequence.sum()  # empty rows contribute 0
    return num, nonempty.sum().to(values.dtype)


def sequence_sum_parts(values: Tensor, mask: Tensor, constant: float | None = None) -> Parts:
    """Sequence mean of per-sequence token sums: ``(sum_{i,t} m x, N)``.

    The loss of a sequence is its summed token loss (a sequence log-likelihood),
    averaged over sequences. ``constant`` is unused.
    """
    _, nonempty = _sequence_counts(mask)
    return masked_sum(values, mask), nonempty.sum().to(values.dtype)


def sum_over_constant_parts(values: Tensor, mask: Tensor, constant: float | None = None) -> Parts:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"):
    per-sequence token sums divided by a fixed ``constant`` C, averaged over sequences:
    ``(sum_{i,t} m x / C, N)``.

    C must be the same number for every batch (e.g. ``max_new_tokens``), never the
    padded length of the current batch, or the loss would depend on batching.
    """
    if constant is None or constant <= 0:
        raise ValueError("reduction 'sum_over_constant' needs constant= a fixed positive length "
                         "(e.g. max_new_tokens)")
    _, nonempty = _sequence_counts(mask)
    return masked_sum(values, mask) / constant, nonempty.sum().to(values.dtype)


REDUCTIONS: dict[str, Callable[..., Parts]] = {
    "token_mean": token_mean_parts,
    "sequence_mean": sequence_mean_parts,
    "sequence_sum": sequence_sum_parts,
    "sum_over_constant": sum_over_constant_parts,
}


def aggregate_parts(values: Tensor, mask: Tensor, mode: str = "token_mean",
                    constant: float | None = None) -> Parts:
    """``(numerator, denominator)`` of reduction ``mode`` (see the module docstring).

    Shape: values [B, T], mask [B, T] -> two scalars. The denominator depends on
    the mask only. Sum both parts over micro-batches / processes, then divide.
    """
    if mode not in REDUCTIONS:
        raise ValueError(f"unknown reduction {mode!r} (known: {', '.join(REDUCTIONS)})")
    if values.shape != mask.shape:
        raise ValueError(f"values shape {tuple(values.shape)} and mask shape {tuple(mask.shape)} differ")
    return REDUCTIONS[mode](values, mask, constant)


def aggregate(values: Tensor, mask: Tensor, mode: str = "token_mean", constant: float | None = None) -> Tensor:
    """Reduce ``values`` [B, T] under ``mask`` [B, T] to a scalar with reduction ``mode``.

    Equal to ``safe_divide(*aggregate_parts(...))``; 0 if the mask is empty.
    """
    return safe_divide(*aggregate_parts(values, mask, mode, constant))
