"""Reward-model losses: Bradley–Terry pairs, K-way rankings, Plackett–Luce, and metrics.

All functions return *unreduced* losses (one per pair or per prompt); the
recipe sums them and divides by the global number of pairs/prompts (see
``posttrain.losses.reduce`` for why).

Ranked data layout (``pairwise_ranking_loss``, ``plackett_luce_loss``):
``rewards [P, K]`` holds the scalar reward of the K responses of each of P
prompts; prompts with fewer responses are padded and ``mask [P, K]`` marks the
real ones (padded rewards may hold any finite value). ``ranks [P, K]`` gives
each response's rank, *smaller is better* (0 = best); equal ranks are ties.
Without ``ranks`` the column order is the ranking (column 0 best).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Bradley–Terry pairwise loss, optionally with a per-pair margin.

        loss_i = -log sigma(r_c,i - r_r,i - m_i)

    InstructGPT (Ouyang et al. 2022, eq. 1) for m = 0; Llama 2 (Touvron et al.
    2023, eq. 2) adds the margin m_i >= 0 from the preference strength, so a
    clearly better response has to win by more.

    Shape: chosen_rewards [B], rejected_rewards [B], margin [B] or None -> losses [B].
    Reduction: none (the recipe averages over pairs).
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def _ranks_and_mask(rewards: Tensor, mask: Tensor | None, ranks: Tensor | None) -> tuple[Tensor, Tensor]:
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    if ranks is None:
        ranks = torch.arange(rewards.shape[-1], device=rewards.device).expand_as(rewards)
    return mask.bool(), ranks


def ranking_pairs(rewards: Tensor, mask: Tensor | None = None, ranks: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All ordered pairs of each prompt's ranking.

    Shape: rewards [P, K] -> (diff [P, K, K], pair_mask [P, K, K]) where
    ``diff[p, i, j] = r_i - r_j`` and ``pair_mask[p, i, j]`` is true when both
    responses are real and i is ranked strictly better than j. A full ranking of
    K responses has K(K-1)/2 such pairs; ties give none.
    """
    mask, ranks = _ranks_and_mask(rewards, mask, ranks)
    diff = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    both_real = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    better = ranks.unsqueeze(-1) < ranks.unsqueeze(-2)
    return diff, both_real & better


def pairwise_ranking_loss(rewards: Tensor, mask: Tensor | None = None, ranks: Tensor | None = None) -> Tensor:
    """K-way ranking loss of InstructGPT (Ouyang et al. 2022, eq. 1).

        loss_p = -1 / |pairs_p| * sum_{(i better than j)} log sigma(r_i - r_j)

    Every response is scored once and all K(K-1)/2 comparisons of a prompt
    form one batch element, which avoids over-fitting from seeing each response
    in K-1 separate pairs.

    Shape: rewards [P, K], mask [P, K] or None, ranks [P, K] or None -> losses [P].
    Reduction: mean over the prompt's pairs; a prompt with no pair (fewer than
    two real responses, or all tied) gets 0. The recipe averages over prompts.
    """
    diff, pair_mask = ranking_pairs(rewards, mask, ranks)
    pair_losses = torch.where(pair_mask, -F.logsigmoid(diff), torch.zeros((), dtype=diff.dtype, device=diff.device))
    counts = pair_mask.sum((-1, -2)).clamp(min=1).to(rewards.dtype)
    return pair_losses.sum((-1, -2)) / counts


def plackett_luce_loss(rewards: Tensor, mask: Tensor | None = None, ranks: Tensor | None = None) -> Tensor:
    """Negative log-likelihood of the ranking under the Plackett–Luce model.

        P(order) = prod_{k=1}^{K} exp(r_(k)) / sum_{l >= k} exp(r_(l))
        loss_p   = sum_k [ log sum_{l >= k} exp(r_(l)) - r_(k) ]

    where r_(k) is the reward of the response ranked k-th (Plackett 1975; Luce
    1959; the listwise DPO variant in Rafailov et al. 2023, appendix). For K = 2
    it equals the Bradley–Terry loss. Plackett–Luce needs a strict order: ties
    are broken by column position (earlier column = better).

    Shape: rewards [P, K], mask [P, K] or None, ranks [P, K] or None -> losses [P].
    Reduction: sum over the ranking's positions (a log-likelihood, not a mean).
    """
    mask, ranks = _ranks_and_mask(rewards, mask, ranks)
    position = torch.arange(rewards.shape[-1], device=rewards.device)
    # at_or_below[p, k, l]: response l is ranked at or below response k (ties broken by column).
    rank_k, rank_l = ranks.unsqueeze(-1), ranks.unsqueeze(-2)
    at_or_below = (rank_l > rank_k) | ((rank_l == rank_k) & (position.unsqueeze(0) >= position.unsqueeze(-1)))
    # The diagonal is always in, so no row of the log-sum-exp is empty (no -inf - -inf).
    diagonal = torch.eye(rewards.shape[-1], dtype=torch.bool, device=rewards.device)
    candidates = (at_or_below & mask.unsqueeze(-2)) | diagonal
    logits = torch.where(candidates, rewards.unsqueeze(-2).expand_as(candidates), float("-inf"))
    terms = torch.logsumexp(logits, dim=-1) - rewards
    return torch.where(mask, terms, torch.zeros((), dtype=rewards.dtype, device=rewards.device)).sum(-1)


RANKING_LOSSES: dict[str, Callable[..., Tensor]] = {
    "pairwise": pairwise_ranking_loss,
    "plackett_luce": plackett_luce_loss,
}


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor, *, tie_value: float = 0.5) -> Tensor:
    """1 where the chosen response scores higher, 0 where lower, ``tie_value`` on a tie.

    Shape: [B], [B] -> [B] float (sum it and divide by the number of pairs).
    Ties count 0.5 by default, so a constant reward model scores chance (0.5).
    """
    wins = (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype)
    ties = (chosen_rewards == rejected_rewards).to(chosen_rewards.dtype)
    return wins + tie_value * ties


def reward_margin(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """r_c - r_r per pair. Shape: [B], [B] -> [B]."""
    return chosen_rewards - rejected_rewards


def ranking_accuracy_parts(rewards: Tensor, mask: Tensor | None = None, ranks: Tensor | None = None,
                           *, tie_value: float = 0.5) -> tuple[Tensor, Tensor]:
    """Correctly ordered pairs and number of pairs, per prompt.

    Shape: rewards [P, K] -> (correct [P] float, pairs [P] float); the held-out
    pairwise accuracy of a ranked set is ``correct.sum() / pairs.sum()``.
    """
    diff, pair_mask = ranking_pairs(rewards, mask, ranks)
    score = (diff > 0).to(rewards.dtype) + tie_value * (diff == 0).to(rewards.dtype)
    correct = torch.where(pair_mask, score, torch.zeros((), dtype=rewards.dtype, device=rewards.device))
    return correct.sum((-1, -2)), pair_mask.sum((-1, -2)).to(rewards.dtype)
