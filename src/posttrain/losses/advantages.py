"""Advantage estimators: GAE for PPO, group baselines for GRPO / Dr. GRPO / RLOO, whitening.

These run on rollout data, normally under ``torch.no_grad`` (rewards and
values are data here, not things to differentiate).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional
    Continuous Control Using GAE") over per-token rewards.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t          (the value target, "returns")

    "t+1" is the next position where the mask is on: masked positions are
    skipped (their reward and value are ignored), and after the last one
    V = 0 and A = 0 (the episode ends with the response). For right-padded
    responses this is the textbook recursion on each sequence.

    Shape: rewards, values, mask [B, T] -> (advantages [B, T], returns [B, T]),
    0 where the mask is off. A reverse scan over T, vectorised over the batch.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    next_value = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    next_advantage = torch.zeros_like(next_value)
    columns = []
    for t in reversed(range(values.shape[1])):
        on = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        columns.append(torch.where(on, advantage, zero))
        # Off positions pass the "next" state through unchanged (skipping them).
        next_value = torch.where(on, values[:, t], next_value)
        next_advantage = torch.where(on, advantage, next_advantage)
    advantages = torch.stack(columns[::-1], dim=1) if columns else torch.zeros_like(values)
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


def _group_mean_and_count(rewards: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    count = mask.sum(-1, keepdim=True).to(rewards.dtype)
    total = torch.where(mask, rewards, zero).sum(-1, keepdim=True)
    return total / count.clamp(min=1), count


def grpo_advantages(rewards: Tensor, mask: Tensor | None = None, *, scale_by_std: bool = True,
                    eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages of GRPO (Shao et al. 2024, "DeepSeekMath", Sec. 4.1.2):

        A_i = (r_i - mean_j r_j) / (std_j r_j + eps)     over the G samples of one prompt

    std is the sample standard deviation (n - 1 denominator, as torch.std and
    TRL). ``scale_by_std=False`` gives A_i = r_i - mean (Dr. GRPO, Liu et al. 2025:
    dividing by std up-weights prompts that are too easy or too hard).

    Shape: rewards [P, G] (P prompts, G samples each), mask [P, G] or None for
    groups of unequal size -> advantages [P, G], 0 where the mask is off and for
    groups of one sample. Flatten a [P*G] batch with ``rewards.view(P, G)``.
    """
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    mean, count = _group_mean_and_count(rewards, mask)
    centred = torch.where(mask, rewards - mean, zero)
    if scale_by_std:
        var = (centred ** 2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
        centred = centred / (var.sqrt() + eps)
    return centred


def dr_grpo_advantages(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """Dr. GRPO advantages: r_i - mean_j r_j (no std scaling). Shape: [P, G] -> [P, G]."""
    return grpo_advantages(rewards, mask, scale_by_std=False)


def rloo_advantages(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"):

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j   ( = G/(G-1) * (r_i - mean_j r_j) )

    Each sample's baseline is the mean of the *other* samples of its prompt, so
    it does not depend on the sample itself and the estimate stays unbiased.

    Shape: rewards [P, G], mask [P, G] or None -> [P, G]; 0 where the mask is off
    and for groups of one sample (no other sample to compare with).
    """
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    total = torch.where(mask, rewards, zero).sum(-1, keepdim=True)
    count = mask.sum(-1, keepdim=True).to(rewards.dtype)
    baseline = (total - rewards) / (count - 1).clamp(min=1)
    return torch.where(mask & (count > 1), rewards - baseline, zero)


GROUP_ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def masked_moments(values: Tensor, mask: Tensor) -> Tensor:
    """(sum, sum of squares, count) of the mask entries, in float64. Shape: -> [3].

    To whiten with statistics of the *global* batch, all-reduce (sum) this
    tensor across processes and pass it to ``whiten(..., moments=...)``.
    """
    mask = mask.bool()
    x = torch.where(mask, values.double(), torch.zeros((), dtype=torch.float64, device=values.device))
    return torch.stack([x.sum(), (x * x).sum(), mask.sum().double()])


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8,
           moments: Tensor | None = None) -> Tensor:
    """Masked whitening: (x - mean) / sqrt(var + eps) over the mask entries.

    var is the sample variance (n - 1 denominator). ``shift_mean=False`` scales
    to unit variance but keeps the mean (used for rewards). ``moments`` (from
    ``masked_moments``, possibly all-reduced) replaces the local statistics.

    Shape: values, mask [B, T] -> [B, T], 0 where the mask is off.
    """
    total, total_sq, count = masked_moments(values, mask) if moments is None else moments.double()
    mean = total / count.clamp(min=1)
    var = (total_sq - total * mean) / (count - 1).clamp(min=1)
    scaled = (values.double() - mean) * torch.rsqrt(var.clamp(min=0) + eps)
    if not shift_mean:
        scaled = scaled + mean
    return torch.where(mask.bool(), scaled, torch.zeros((), dtype=torch.float64, device=values.device)).to(values.dtype)
