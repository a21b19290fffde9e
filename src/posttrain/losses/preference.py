"""Preference-optimisation losses: the DPO family, SimPO, ORPO, and their weighted mix.

Inputs, shared by every function here (all shape [B], one value per pair):

- ``policy_chosen_logps``, ``policy_rejected_logps``: log pi_theta(y|x), the
  *sum* of the response tokens' log-probs under the policy being trained;
- ``ref_chosen_logps``, ``ref_rejected_logps``: the same under the frozen
  reference model (pass zeros for a reference-free variant);
- ``chosen_lengths``, ``rejected_lengths``: number of response tokens |y|
  (only for the length-normalised losses).

Every function returns a ``PreferenceLossOutput(losses, chosen_rewards,
rejected_rewards)`` of [B] tensors: ``losses`` is *unreduced* (the recipe sums
it and divides by the global number of pairs, see ``reduce.py``), and the
rewards are the loss's implicit rewards, detached, for the metrics
rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies.

Notation: h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)),
the difference of the two policy/reference log-ratios; sigma is the logistic function.

A recipe bundles its log-probs in a ``PairLogps`` and calls ``preference_loss(name, pairs)``,
which passes each loss the inputs ``LOSS_INPUTS`` declares for it; ``mixed_preference_loss``
sums several with weights.
KTO works on unpaired data and lives in ``kto.py``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class PreferenceLossOutput(NamedTuple):
    losses: Tensor            # [B] per-pair loss, not reduced
    chosen_rewards: Tensor    # [B] implicit reward of the chosen response (detached)
    rejected_rewards: Tensor  # [B] implicit reward of the rejected response (detached)


def _log_ratio_margin(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                      ref_chosen_logps: Tensor, ref_rejected_logps: Tensor) -> Tensor:
    """h = (log pi_w - log ref_w) - (log pi_l - log ref_l). Shape: [B]."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def _with_dpo_rewards(losses: Tensor, beta: float, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                      ref_chosen_logps: Tensor, ref_rejected_logps: Tensor) -> PreferenceLossOutput:
    """Attach the DPO implicit rewards beta * (log pi - log pi_ref) to per-pair losses."""
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    return PreferenceLossOutput(losses, chosen.detach(), rejected.detach())


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> PreferenceLossOutput:
    """DPO, sigmoid loss (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7).

        loss = -log sigma(beta * h)

    Shape: four [B] sequence log-probs -> PreferenceLossOutput of [B] tensors.
    Rewards: beta * (log pi - log pi_ref). Reduction: none (per pair).
    """
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(beta * h)
    return _with_dpo_rewards(losses, beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)


def cdpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.1) -> PreferenceLossOutput:
    """Conservative DPO: DPO with label smoothing eps (Mitchell 2023, "A note on DPO
    with noisy preferences and relationship to IPO").

        loss = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)

    The label is trusted with probability 1 - eps, so the loss has a finite
    minimum at beta h = log((1 - eps) / eps) instead of pushing h to infinity.
    eps = 0 is plain DPO. Shape: four [B] -> [B]. Reduction: none.
    """
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return _with_dpo_rewards(losses, beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)


def robust_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                    ref_rejected_logps: Tensor, *, beta: float = 0.1,
                    label_smoothing: float = 0.1) -> PreferenceLossOutput:
    """Robust DPO (Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO"),
    with ``label_smoothing`` = eps, the assumed rate at which labels are flipped.

        loss = [ -(1 - eps) log sigma(beta h) + eps log sigma(-beta h) ] / (1 - 2 eps)

    An unbiased estimate of the clean-label DPO loss under flip rate eps < 1/2
    (unlike cDPO it is not bounded below). eps = 0 is plain DPO.
    Shape: four [B] -> [B]. Reduction: none.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5 (a flip rate), got {label_smoothing}")
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return _with_dpo_rewards(losses, beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)


def ipo_sum_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, *, beta: float = 0.1) -> PreferenceLossOutput:
    """IPO on summed sequence log-probs, as written in the paper (Azar et al. 2023,
    "A General Theoretical Paradigm to Understand Learning from Human Preferences"):

        loss = (h - 1 / (2 beta))^2

    A squared loss that regresses the log-ratio margin to a finite target, so it
    does not over-fit deterministic preferences the way DPO can. beta plays the
    role of the paper's tau. Shape: four [B] -> [B]. Reduction: none.
    """
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (h - 1 / (2 * beta)) ** 2
    return _with_dpo_rewards(losses, beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *,
             beta: float = 0.1) -> PreferenceLossOutput:
    """IPO on *length-averaged* log-probs (what TRL's ``loss_type="ipo"`` does).

        h_avg = (log pi_w - log ref_w) / |y_w| - (log pi_l - log ref_l) / |y_l|
        loss  = (h_avg - 1 / (2 beta))^2

    Averaging keeps the target 1/(2 beta) on the same scale whatever the response
    lengths; ``ipo_sum_loss`` is the paper's summed form. The rewards are
    beta times the averaged log-ratios. Shape: four [B] log-probs, two [B]
    lengths -> [B]. Reduction: none.
    """
    c_len, r_len = chosen_lengths.to(policy_chosen_logps.dtype), rejected_lengths.to(policy_chosen_logps.dtype)
    return ipo_sum_loss(policy_chosen_logps / c_len, policy_rejected_logps / r_len,
                        ref_chosen_logps / c_len, ref_rejected_logps / r_len, beta=beta)


def hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor, *, beta: float = 0.1) -> PreferenceLossOutput:
    """Hinge loss of SLiC (Zhao et al. 2023, "SLiC-HF"), on the DPO log-ratio margin:

        loss = max(0, 1 - beta h)

    SLiC writes max(0, delta - log pi(y_w) + log pi(y_l)); with the reference
    log-ratios and delta = 1/beta this is the form above (as in TRL). Pairs
    already separated by 1/beta give no gradient. Shape: four [B] -> [B]. Reduction: none.
    """
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1 - beta * h)
    return _with_dpo_rewards(losses, beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)


def chosen_nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Length-normalised negative log-likelihood of the chosen response: -log pi(y_w) / |y_w|.

    Shape: [B], [B] -> [B]. This is the per-sequence token mean; the SFT loss
    ``sft.sft_loss`` (token mean over the batch) weighs long responses more.
    """
    return -policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype)


def rpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, chosen_lengths: Tensor, *, beta: float = 0.1,
             alpha: float = 1.0) -> PreferenceLossOutput:
    """DPO plus a behaviour-cloning NLL term on the chosen response (RPO; Pang et al.
    2024, "Iterative Reasoning Preference Optimization"):

        loss = -log sigma(beta h) - alpha * log pi(y_w) / |y_w|

    The NLL term keeps the chosen log-likelihood from falling, which plain DPO
    allows. alpha = 0 is DPO. Shape: four [B] log-probs, [B] lengths -> [B].
    Reduction: none (the NLL is a per-sequence token mean).
    """
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    return dpo._replace(losses=dpo.losses + alpha * chosen_nll(policy_chosen_logps, chosen_lengths))


def simpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
               rejected_lengths: Tensor, *, beta: float = 2.0, gamma: float = 1.0) -> PreferenceLossOutput:
    """SimPO, reference-free and length-normalised (Meng, Xia & Chen 2024, "SimPO"):

        loss = -log sigma( beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma )

    The implicit reward is the average log-prob scaled by beta, and gamma is a
    target reward margin. No reference model is needed. The paper uses beta
    around 2-2.5 and gamma around 1 (a much larger beta than DPO's).
    Rewards: beta * log pi(y) / |y|. Shape: two [B] log-probs, two [B] lengths -> [B].
    Reduction: none.
    """
    chosen = beta * policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype)
    rejected = beta * policy_rejected_logps / rejected_lengths.to(policy_rejected_logps.dtype)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return PreferenceLossOutput(losses, chosen.detach(), rejected.detach())


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate over the whole range (Mächler 2012,
    "Accurately computing log(1 - exp(-|a|))").

    Near 0, 1 - exp(x) cancels, so use log(-expm1(x)); far below, exp(x) is tiny
    and log1p(-exp(x)) keeps it. The switch is at x = -log 2. Each branch only
    sees inputs it is safe on, so neither produces inf/nan gradients.
    """
    near_zero = x > -math.log(2)
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


# An average log-prob of exactly 0 (probability 1) would give infinite log-odds.
_ORPO_MAX_AVG_LOGP = -1e-6


def orpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
              rejected_lengths: Tensor, *, lam: float = 0.1) -> PreferenceLossOutput:
    """ORPO, reference-free: NLL plus an odds-ratio term (Hong, Lee & Thorne 2024,
    "ORPO: Monolithic Preference Optimization without Reference Model").

        a(y)         = log pi(y) / |y|                       (average token log-prob)
        log odds(y)  = a(y) - log(1 - exp(a(y)))
        loss         = -a(y_w) + lam * ( -log sigma(log odds(y_w) - log odds(y_l)) )

    log(1 - exp(a)) is computed with ``log1mexp``; a is clamped to <= -1e-6 in
    the odds term only. The NLL is the chosen response's per-sequence token mean
    (ORPO's code uses the token mean over the batch; the two differ only in how
    sequences of different lengths are weighted). Rewards: lam * a(y), as in TRL.
    Shape: two [B] log-probs, two [B] lengths -> [B]. Reduction: none.
    """
    chosen_avg = policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype)
    rejected_avg = policy_rejected_logps / rejected_lengths.to(policy_rejected_logps.dtype)
    c, r = chosen_avg.clamp(max=_ORPO_MAX_AVG_LOGP), rejected_avg.clamp(max=_ORPO_MAX_AVG_LOGP)
    log_odds_ratio = (c - log1mexp(c)) - (r - log1mexp(r))
    losses = -chosen_avg - lam * F.logsigmoid(log_odds_ratio)
    return PreferenceLossOutput(losses, (lam * chosen_avg).detach(), (lam * rejected_avg).detach())


PREFERENCE_LOSSES: dict[str, Callable[..., PreferenceLossOutput]] = {
    "sigmoid": dpo_loss,
    "cdpo": cdpo_loss,
    "robust": robust_dpo_loss,
    "ipo": ipo_loss,
    "ipo_sum": ipo_sum_loss,
    "hinge": hinge_loss,
    "rpo": rpo_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
}


class PairLogps(NamedTuple):
    """Everything a preference loss may read, one value per pair. Shape: each [B].

    ``policy_*`` are summed response log-probs under the policy, ``ref_*`` the same under
    the reference (None for a reference-free run), ``*_lengths`` the response token counts.
    """
    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    chosen_lengths: Tensor
    rejected_lengths: Tensor


_WITH_REFERENCE = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
_REFERENCE_FREE = ("policy_chosen", "policy_rejected", "chosen_lengths", "rejected_lengths")

# The positional inputs of each loss, read from a `PairLogps` in this order. Declared, not
# discovered: a reader sees here exactly what `preference_loss` passes to each function.
LOSS_INPUTS: dict[str, tuple[str, ...]] = {
    "sigmoid": _WITH_REFERENCE,
    "cdpo": _WITH_REFERENCE,
    "robust": _WITH_REFERENCE,
    "ipo": _WITH_REFERENCE + ("chosen_lengths", "rejected_lengths"),
    "ipo_sum": _WITH_REFERENCE,
    "hinge": _WITH_REFERENCE,
    "rpo": _WITH_REFERENCE + ("chosen_lengths",),
    "simpo": _REFERENCE_FREE,
    "orpo": _REFERENCE_FREE,
}


def needs_reference(names: list[str] | tuple[str, ...]) -> bool:
    """True when any of the named losses reads reference log-probs (simpo and orpo do not)."""
    return any("ref_chosen" in LOSS_INPUTS[name] for name in names)


def preference_loss(name: str, pairs: PairLogps, **options: float) -> PreferenceLossOutput:
    """Call ``PREFERENCE_LOSSES[name]`` on the inputs ``LOSS_INPUTS[name]`` declares.

    ``options`` are the loss's keyword options (``beta``, ``label_smoothing``, ``gamma``, ...).
    Shape: [B] -> [B]. Reduction: none.
    """
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r} (known: {', '.join(PREFERENCE_LOSSES)})")
    args = [getattr(pairs, field) for field in LOSS_INPUTS[name]]
    if any(arg is None for arg in args):
        raise ValueError(f"preference loss {name!r} needs reference log-probs")
    return PREFERENCE_LOSSES[name](*args, **options)


def mixed_preference_loss(weights: dict[str, float], pairs: PairLogps,
                          options: dict[str, dict[str, float]] | None = None) -> PreferenceLossOutput:
    """Weighted sum of preference losses, e.g. ``{"sigmoid": 0.7, "hinge": 0.3}``.

        loss = sum_k w_k * loss_k

    ``options[name]`` are that component's keyword options (for example a different beta
    for SimPO). The returned rewards are those of the first component in ``weights``.
    Shape: [B] -> [B]. Reduction: none.
    """
    if not weights:
        raise ValueError("mixed_preference_loss needs at least one component")
    options = options or {}
    for name in [*weights, *options]:
        if name not in PREFERENCE_LOSSES:
            raise ValueError(f"unknown preference loss {name!r} (known: {', '.join(PREFERENCE_LOSSES)})")
    outputs = {name: preference_loss(name, pairs, **options.get(name, {})) for name in weights}
    total = sum(weight * outputs[name].losses for name, weight in weights.items())
    first = outputs[next(iter(weights))]
    return first._replace(losses=total)
