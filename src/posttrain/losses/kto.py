"""KTO: preference optimisation from unpaired desirable / undesirable examples.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization".
Each example is one (prompt, response) with a label: desirable or undesirable.
With r = log pi(y|x) - log pi_ref(y|x) (sequence log-probs) and a reference
point z0 >= 0 (an estimate of KL(pi || pi_ref), no gradient through it):

    desirable:   loss = lambda_D * (1 - sigma(beta * (r - z0)))
    undesirable: loss = lambda_U * (1 - sigma(beta * (z0 - r)))

How the recipe computes z0 (``kto_reference_point``): pair each prompt x_i with
the response of *another* example of the batch, y_j (e.g. shift the responses
by one), run policy and reference on these mismatched pairs, and take
z0 = max(0, mean_i [log pi(y_j|x_i) - log pi_ref(y_j|x_i)]) without gradient.
With several micro-batches or processes, sum the log-ratio differences and
their count over all of them (all-reduce) before dividing, so every process
uses the same z0.

Weights: the paper recommends lambda_D * n_D / (lambda_U * n_U) in [1, 4/3],
where n_D, n_U are the numbers of desirable and undesirable examples; with
imbalanced data, raise the weight of the rarer kind.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class KTOLossOutput(NamedTuple):
    losses: Tensor   # [B] per-example loss, not reduced
    rewards: Tensor  # [B] implicit reward beta * (log pi - log pi_ref), detached


def kto_reference_point(policy_mismatched_logps: Tensor, ref_mismatched_logps: Tensor) -> Tensor:
    """z0 = max(0, mean(log pi - log pi_ref)) over mismatched (x_i, y_j) pairs, detached.

    Shape: [M], [M] -> scalar. For multi-process training compute the sum and
    count yourself, all-reduce both, divide, then ``clamp(min=0)``.
    """
    return (policy_mismatched_logps - ref_mismatched_logps).mean().clamp(min=0).detach()


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, reference_point: Tensor | float, *,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> KTOLossOutput:
    """KTO loss per example (see the module docstring for the equation).

    Shape: policy_logps [B], ref_logps [B] (sequence log-probs), desirable [B]
    bool, reference_point scalar (z0, from ``kto_reference_point``) -> KTOLossOutput
    of [B] tensors. Reduction: none (the recipe averages over examples).
    """
    z0 = torch.as_tensor(reference_point, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    log_ratio = policy_logps - ref_logps
    desirable_loss = desirable_weight * (1 - F.sigmoid(beta * (log_ratio - z0)))
    undesirable_loss = undesirable_weight * (1 - F.sigmoid(beta * (z0 - log_ratio)))
    losses = torch.where(desirable.bool(), desirable_loss, undesirable_loss)
    return KTOLossOutput(losses, (beta * log_ratio).detach())
