"""Supervised fine-tuning loss: token-level cross entropy (negative log-likelihood).

    L = - (1/|M|) sum_{(i,t) in M} log p_theta(y_{i,t} | x_i, y_{i,<t})

where M is the set of label tokens (labels != -100). The default reduction is
the token mean over the whole batch (``token_mean``); any mode of
``posttrain.losses.reduce`` can be asked for, and every function has a
``*_parts`` twin returning ``(sum, count)`` for split-invariant accumulation.

Alignment: ``labels[:, t]`` is the token that ``logits[:, t]`` predicts. Hugging
Face causal LMs predict the *next* token, so shift before calling:
``logits[:, :-1]`` with ``labels[:, 1:]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.tokenize import IGNORE_INDEX  # labels are built there; one definition
from .reduce import Parts, aggregate_parts, safe_divide


def token_nll(logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Per-token negative log-likelihood and the label mask.

    Shape: logits [B, T, V], labels [B, T] (aligned, see module docstring)
    -> (nll [B, T] with 0 at ignored positions, mask [B, T] bool).

    Uses the fused ``F.cross_entropy`` (no separate log-softmax tensor is kept).
    Half-precision logits are upcast to float32 first, as Hugging Face does,
    because a bf16 log-sum-exp over a large vocabulary loses several digits.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          ignore_index=ignore_index, reduction="none")
    return nll.view(labels.shape), labels != ignore_index


def sft_loss_parts(logits: Tensor, labels: Tensor, *, mode: str = "token_mean",
                   ignore_index: int = IGNORE_INDEX, constant: float | None = None) -> Parts:
    """``(loss numerator, denominator)`` of the SFT loss under reduction ``mode``.

    Shape: logits [B, T, V], labels [B, T] -> two scalars. For ``token_mean``
    these are (summed NLL, number of label tokens).
    """
    nll, mask = token_nll(logits, labels, ignore_index=ignore_index)
    return aggregate_parts(nll, mask, mode, constant)


def sft_loss(logits: Tensor, labels: Tensor, *, mode: str = "token_mean",
             ignore_index: int = IGNORE_INDEX, constant: float | None = None) -> Tensor:
    """SFT cross-entropy reduced with ``mode`` (default: token mean over the batch).

    Shape: logits [B, T, V], labels [B, T] -> scalar. 0 if there is no label token.
    """
    return safe_divide(*sft_loss_parts(logits, labels, mode=mode, ignore_index=ignore_index, constant=constant))


def sft_loss_parts_from_logps(token_logps: Tensor, mask: Tensor, *, mode: str = "token_mean",
                              constant: float | None = None) -> Parts:
    """``(numerator, denominator)`` of the NLL from per-token log-probs.

    Shape: token_logps [B, T] (log p of each label token), mask [B, T]
    (``labels != -100``) -> two scalars.
    """
    return aggregate_parts(-token_logps, mask, mode, constant)


def sft_loss_from_logps(token_logps: Tensor, mask: Tensor, *, mode: str = "token_mean",
                        constant: float | None = None) -> Tensor:
    """NLL from per-token log-probs, reduced with ``mode``. Shape: [B, T], [B, T] -> scalar."""
    return safe_divide(*sft_loss_parts_from_logps(token_logps, mask, mode=mode, constant=constant))
