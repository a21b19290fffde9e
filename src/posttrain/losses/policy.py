"""Policy-gradient losses for PPO / GRPO / RLOO: clipped surrogate, clipped value loss,
entropy, and the usual metrics.

Shapes: per-token tensors are [B, T] over the response tokens, with ``mask``
[B, T] marking real tokens. Token-level functions return unreduced [B, T]
tensors (0 where the mask is off); the ``*_loss`` functions reduce them with an
explicit ``mode`` from ``posttrain.losses.reduce`` (``token_mean`` by default;
for split-invariant accumulation call ``reduce.aggregate_parts`` on the
token-level values instead).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..models.logprobs import entropy_from_logits  # noqa: F401  (re-exported: the entropy metric's one home)
from .kl import kl_k3
from .reduce import aggregate, masked_mean


def _zero(like: Tensor) -> Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)


def ppo_clip_losses(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                    clip_low: float = 0.2, clip_high: float | None = None,
                    dual_clip: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate per token (Schulman et al. 2017, "Proximal Policy
    Optimization Algorithms", eq. 7), as a loss to minimise:

        rho_t  = exp(log pi(a_t) - log pi_old(a_t))
        loss_t = max( -A_t rho_t,  -A_t clip(rho_t, 1 - eps_low, 1 + eps_high) )

    ``clip_high`` = eps_high defaults to ``clip_low``; a larger eps_high is DAPO's
    clip-higher (Yu et al. 2025, "DAPO"), which lets unlikely tokens with
    positive advantage grow faster. ``dual_clip`` = c > 1 also bounds the loss of
    negative-advantage tokens by -c A_t (Ye et al. 2020, "Mastering Complex Control
    in MOBA Games with Deep RL").

    Shape: logps, old_logps [B, T], advantages [B, T] or [B] (one per sequence,
    broadcast over tokens), mask [B, T] -> (losses [B, T], is_clipped [B, T] bool),
    both zero/false where the mask is off. ``is_clipped`` marks tokens where the
    clipped term is the larger one (no gradient flows through them).
    """
    mask = mask.bool()
    if advantages.dim() == logps.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    clip_high = clip_low if clip_high is None else clip_high
    # Padding log-probs may be garbage; a zero log-ratio there keeps exp() finite.
    log_ratio = torch.where(mask, logps - old_logps, _zero(logps))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if dual_clip is not None:
        bounded = torch.minimum(losses, -advantages * dual_clip)
        losses = torch.where(advantages < 0, bounded, losses)
    return torch.where(mask, losses, _zero(losses)), is_clipped & mask


def ppo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                    clip_low: float = 0.2, clip_high: float | None = None, dual_clip: float | None = None,
                    mode: str = "token_mean", constant: float | None = None) -> Tensor:
    """``ppo_clip_losses`` reduced with reduction ``mode`` -> scalar.

    GRPO as in DeepSeekMath uses ``sequence_mean``; DAPO ``token_mean``; Dr. GRPO
    ``sum_over_constant`` with ``constant`` = the maximum response length.
    """
    losses, _ = ppo_clip_losses(logps, old_logps, advantages, mask,
                                clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
    return aggregate(losses, mask, mode, constant)


def clipped_value_losses(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *,
                         clip: float | None = 0.2) -> tuple[Tensor, Tensor]:
    """PPO2-style clipped value loss per token (as in OpenAI baselines' ppo2):

        V_clip = old_V + clip(V - old_V, -eps, eps)
        loss_t = 1/2 * max( (V - R)^2, (V_clip - R)^2 )

    The new value may not move more than eps from the value at rollout time
    without paying for it. ``clip=None`` gives the plain 1/2 (V - R)^2.

    Shape: values, old_values, returns, mask [B, T] -> (losses [B, T],
    is_clipped [B, T] bool: the clipped error was the larger), 0 where the mask is off.
    """
    mask = mask.bool()
    unclipped = (values - returns) ** 2
    if clip is None:
        losses, is_clipped = 0.5 * unclipped, torch.zeros_like(mask)
    else:
        values_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped = (values_clipped - returns) ** 2
        losses, is_clipped = 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped
    return torch.where(mask, losses, _zero(losses)), is_clipped & mask


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip: float | None = 0.2,
               mode: str = "token_mean", constant: float | None = None) -> Tensor:
    """``clipped_value_losses`` reduced with ``mode`` -> scalar."""
    losses, _ = clipped_value_losses(values, old_values, returns, mask, clip=clip)
    return aggregate(losses, mask, mode, constant)


def clip_fraction(is_clipped: Tensor, mask: Tensor) -> Tensor:
    """Fraction of mask tokens whose objective was clipped (token mean). Shape: [B, T] -> scalar."""
    return masked_mean(is_clipped.float(), mask)


def approx_kl(logps: Tensor, old_logps: Tensor, mask: Tensor) -> Tensor:
    """Approximate KL(pi_old || pi) between the rollout policy and the current one:
    the token mean of the k3 estimator (``kl.kl_k3``; tokens were sampled from pi_old).

    Shape: [B, T], [B, T], [B, T] -> scalar. A PPO health metric: it grows as
    the updates take the policy away from the one that produced the data.
    """
    return masked_mean(kl_k3(old_logps, logps, mask), mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over mask tokens (1 = perfect value function, 0 = no better
    than a constant, < 0 = worse). Shape: [B, T] x3 -> scalar; nan if Var[R] = 0.
    """
    mask = mask.bool()
    r, v = returns[mask].double(), values[mask].double()
    var_r = r.var(unbiased=False)
    ev = 1 - (r - v).var(unbiased=False) / var_r
    return torch.where(var_r > 0, ev, float("nan")).to(values.dtype)
