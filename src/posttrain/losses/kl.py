"""Per-token KL estimators, the KL-penalised reward, and KL-coefficient controllers.

Sign convention. Every estimator takes ``logps`` = log p(x) and ``ref_logps`` =
log q(x) for tokens x *sampled from p* (in RL: p = the policy that generated
the response, q = the reference model) and estimates KL(p || q) = E_p[log p - log q].
With log r = log q - log p (Schulman 2020, "Approximating KL Divergence"):

    k1 = -log r            = log p - log q         unbiased, high variance, can be < 0
    k2 = (log r)^2 / 2                             biased, low variance, >= 0
    k3 = (r - 1) - log r   = exp(log q - log p) - (log q - log p) - 1
                                                   unbiased, low variance, >= 0

All are elementwise: any shape in, same shape out, then reduce with
``reduce.aggregate``. Pass ``mask`` when padding positions may hold garbage:
the log-ratio is set to exactly 0 there *before* k3 exponentiates it, so
neither the value nor the gradient can become inf/nan (selecting away only
after the exp would still give 0 * inf = nan in the backward pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def _log_ratio(logps: Tensor, ref_logps: Tensor, mask: Tensor | None) -> Tensor:
    """log p - log q, and exactly 0 where ``mask`` is off (so padding can hold anything)."""
    diff = logps - ref_logps
    if mask is None:
        return diff
    return torch.where(mask.bool(), diff, torch.zeros((), dtype=diff.dtype, device=diff.device))


def kl_k1(logps: Tensor, ref_logps: Tensor, mask: Tensor | None = None) -> Tensor:
    """k1 = log p - log q. Shape: [...] -> [...], 0 where ``mask`` is off."""
    return _log_ratio(logps, ref_logps, mask)


def kl_k2(logps: Tensor, ref_logps: Tensor, mask: Tensor | None = None) -> Tensor:
    """k2 = (log p - log q)^2 / 2. Shape: [...] -> [...], 0 where ``mask`` is off."""
    return 0.5 * _log_ratio(logps, ref_logps, mask) ** 2


def kl_k3(logps: Tensor, ref_logps: Tensor, mask: Tensor | None = None) -> Tensor:
    """k3 = exp(log q - log p) - (log q - log p) - 1 (>= 0). Shape: [...] -> [...], 0 where ``mask`` is off."""
    log_r = -_log_ratio(logps, ref_logps, mask)
    return torch.expm1(log_r) - log_r  # expm1 keeps precision when p and q are close


KL_ESTIMATORS: dict[str, Callable[..., Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalized_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards for PPO: the sequence score on the last response token,
    minus a KL penalty on every token (Ziegler et al. 2019; Stiennon et al. 2020):

        R_t = -beta * kl_t + [t = last] * score

    Shape: scores [B], kl [B, T] (e.g. ``kl_k1(logps, ref_logps)``), mask [B, T]
    -> rewards [B, T], 0 where the mask is off. "Last" is the last position
    where the mask is on; rows with an empty mask get no score.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    rewards = torch.where(mask, -kl_coef * kl, zero)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = torch.where(mask, positions, -1).max(-1).values  # [B], -1 for empty rows
    at_last = (positions == last.unsqueeze(-1)) & mask
    return rewards + torch.where(at_last, scores.to(kl.dtype).unsqueeze(-1), zero)


@dataclass
class FixedKLController:
    """A constant KL coefficient. ``update`` is a no-op kept for a common interface."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from
    Human Preferences"): a proportional controller toward ``target`` KL.

        e       = clip(KL_current / target - 1, -0.2, 0.2)
        beta   <- beta * (1 + e * n_steps / horizon)

    ``current_kl`` is the measured KL (per sequence, summed over tokens, as in the
    paper); ``n_steps`` is the number of samples (or steps) since the last update;
    ``horizon`` sets how fast beta moves. The only stateful object in ``losses``.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


KL_CONTROLLERS = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}
