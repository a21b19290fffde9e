"""The pieces of the combined online objective (GRPO/PPO policy loss + DPO + behaviour cloning).

    J = w_pg * L_policy + w_dpo * L_dpo + w_bc * L_bc

L_policy is the clipped surrogate of `policy.py`, L_bc the token-mean NLL of `sft.py` on
expert completions, and L_dpo the DPO loss of `preference.py` on pairs taken from the rollout
groups themselves: in each group of G samples of one prompt, the best-scored response is
"chosen" and the worst "rejected" (groups whose rewards are all equal give no pair).

A pair's two responses may sit in different micro-batches, so the DPO term is not computed
as one loss on a batch. Instead `dpo_sequence_coefficients` evaluates the DPO loss on the
sequence log-probs *at the current weights* (detached) and returns dL/d(logp_i) for every
sample; a micro-batch then backpropagates sum_i c_i * logp_i(theta). Because
grad L_dpo = sum_i (dL/dlogp_i) * grad logp_i, this gives exactly the gradient of the DPO loss,
whatever the micro-batching (tests/test_rl_combined.py checks it against the direct loss).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .preference import dpo_loss


def group_best_worst_pairs(rewards: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) flat sample indices, one pair per group with unequal rewards.

    Shape: rewards [P, G] (prompt-major, G samples per prompt) -> two [K] long tensors,
    K <= P, indices into the flattened [P * G] samples. Ties: the first best, the first worst.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [P, G], got shape {tuple(rewards.shape)}")
    best = rewards.argmax(dim=-1)
    worst = rewards.argmin(dim=-1)
    has_signal = rewards.max(dim=-1).values > rewards.min(dim=-1).values
    offsets = torch.arange(rewards.shape[0]) * rewards.shape[1]
    return (offsets + best)[has_signal], (offsets + worst)[has_signal]


def dpo_sequence_coefficients(policy_logps: Tensor, ref_logps: Tensor, chosen: Tensor, rejected: Tensor,
                              beta: float) -> tuple[Tensor, Tensor]:
    """(summed DPO loss over the pairs, dL/dlogp for every sample).

    Shape: policy_logps, ref_logps [N] (sequence log-prob sums; detached values are fine);
    chosen, rejected [K] indices into N. Returns a scalar and an [N] tensor (zero for samples
    in no pair; a sample in several pairs sums its parts). The loss is Rafailov et al. 2023,
    eq. 7: -log sigma(beta * ((logp_w - ref_w) - (logp_l - ref_l))), summed over pairs.
    """
    logps = policy_logps.detach().double().clone().requires_grad_(True)
    ref = ref_logps.detach().double()
    if chosen.numel() == 0:
        return logps.new_zeros(()).detach(), torch.zeros_like(logps).detach()
    losses = dpo_loss(logps[chosen], logps[rejected], ref[chosen], ref[rejected], beta=beta).losses
    total = losses.sum()
    (coefficients,) = torch.autograd.grad(total, logps)
    return total.detach(), coefficients.detach()
