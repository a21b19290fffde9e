"""Reward-model losses: Bradley–Terry, K-way InstructGPT ranking, Plackett–Luce, metrics."""
import itertools
import math

import pytest
import torch

from posttrain.losses.reward import (
    RANKING_LOSSES,
    bradley_terry_loss,
    pairwise_accuracy,
    pairwise_ranking_loss,
    plackett_luce_loss,
    ranking_accuracy_parts,
    reward_margin,
)


def neg_log_sigmoid(x):
    return math.log1p(math.exp(-x))


def test_bradley_terry_by_hand():
    chosen = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 0.0, 1.5], dtype=torch.float64)
    losses = bradley_terry_loss(chosen, rejected)
    assert losses.tolist() == pytest.approx([neg_log_sigmoid(1.0), math.log(2), neg_log_sigmoid(-2.5)])


def test_bradley_terry_margin_by_hand():
    chosen = torch.tensor([2.0, 3.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 1.0], dtype=torch.float64)
    margin = torch.tensor([1.0, 0.5], dtype=torch.float64)
    losses = bradley_terry_loss(chosen, rejected, margin)
    assert losses.tolist() == pytest.approx([math.log(2), neg_log_sigmoid(1.5)])


def test_bradley_terry_gradient_by_hand():
    chosen = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-0.5], dtype=torch.float64, requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    sigma = 1 / (1 + math.exp(-1.0))
    assert chosen.grad.item() == pytest.approx(-(1 - sigma))
    assert rejected.grad.item() == pytest.approx(1 - sigma)


def ranking_loss_by_loop(rewards, ranks):
    """InstructGPT: mean over all ordered pairs of -log sigma(r_better - r_worse)."""
    losses = [neg_log_sigmoid(rewards[i] - rewards[j])
              for i, j in itertools.permutations(range(len(rewards)), 2) if ranks[i] < ranks[j]]
    return sum(losses) / len(losses) if losses else 0.0


def plackett_luce_by_loop(rewards, ranks):
    order = sorted(range(len(rewards)), key=lambda i: (ranks[i], i))
    total = 0.0
    for k, i in enumerate(order):
        rest = [rewards[j] for j in order[k:]]
        total += math.log(sum(math.exp(r) for r in rest)) - rewards[i]
    return total


def random_ranked_batch(seed, prompts=6, max_k=6):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(prompts, max_k, generator=g, dtype=torch.float64)
    ks = torch.randint(1, max_k + 1, (prompts,), generator=g)
    mask = torch.arange(max_k) < ks.unsqueeze(1)
    ranks = torch.stack([torch.randperm(max_k, generator=g) for _ in range(prompts)])
    ranks[0] = torch.tensor([0, 1, 1, 2, 3, 3])  # ties
    rewards = torch.where(mask, rewards, torch.full_like(rewards, 123.0))  # padding junk
    return rewards, mask, ranks, ks


def test_pairwise_ranking_equals_loop():
    rewards, mask, ranks, ks = random_ranked_batch(0)
    got = pairwise_ranking_loss(rewards, mask, ranks)
    for p in range(rewards.shape[0]):
        k = int(ks[p])
        expected = ranking_loss_by_loop(rewards[p, :k].tolist(), ranks[p, :k].tolist())
        assert got[p].item() == pytest.approx(expected, rel=1e-12)


def test_pairwise_ranking_k4_by_hand():
    # best to worst: 3, 1, 0, -2 ; six pairs
    r = [3.0, 1.0, 0.0, -2.0]
    diffs = [2, 3, 5, 1, 3, 2]
    expected = sum(neg_log_sigmoid(d) for d in diffs) / 6
    got = pairwise_ranking_loss(torch.tensor([r], dtype=torch.float64))
    assert got.item() == pytest.approx(expected)


def test_ranking_with_k2_equals_bradley_terry():
    chosen = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    rejected = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    rewards = torch.stack([chosen, rejected], dim=1)
    bt = bradley_terry_loss(chosen, rejected)
    for name, fn in RANKING_LOSSES.items():
        assert fn(rewards).tolist() == pytest.approx(bt.tolist()), name


def test_plackett_luce_equals_loop():
    rewards, mask, ranks, ks = random_ranked_batch(1)
    got = plackett_luce_loss(rewards, mask, ranks)
    for p in range(rewards.shape[0]):
        k = int(ks[p])
        expected = plackett_luce_by_loop(rewards[p, :k].tolist(), ranks[p, :k].tolist())
        assert got[p].item() == pytest.approx(expected, rel=1e-12)


def test_plackett_luce_k3_by_hand():
    # order: 1.0 > 0.0 > -1.0
    expected = (math.log(math.e + 1 + math.exp(-1)) - 1.0) + (math.log(1 + math.exp(-1)) - 0.0)
    got = plackett_luce_loss(torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64))
    assert got.item() == pytest.approx(expected)


@pytest.mark.parametrize("name", list(RANKING_LOSSES))
def test_column_permutation_does_not_matter(name):
    rewards = torch.tensor([[0.2, 1.5, -0.3, 0.9]], dtype=torch.float64)
    ranks = torch.tensor([[2, 0, 3, 1]])
    perm = torch.tensor([3, 0, 2, 1])
    fn = RANKING_LOSSES[name]
    assert fn(rewards[:, perm], ranks=ranks[:, perm]).item() == pytest.approx(fn(rewards, ranks=ranks).item())


@pytest.mark.parametrize("name", list(RANKING_LOSSES))
def test_padding_changes_nothing_and_gets_no_gradient(name):
    fn = RANKING_LOSSES[name]
    short = torch.tensor([[0.5, -0.5, 0.1]], dtype=torch.float64)
    padded = torch.tensor([[0.5, -0.5, 0.1, 40.0, -40.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    loss = fn(padded, mask)
    assert loss.item() == pytest.approx(fn(short).item())
    loss.sum().backward()
    assert torch.isfinite(padded.grad).all()
    assert padded.grad[0, 3:].abs().sum().item() == 0.0


def test_prompt_with_one_response_gives_zero():
    rewards = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[True, False]])
    assert pairwise_ranking_loss(rewards, mask).item() == 0.0
    assert plackett_luce_loss(rewards, mask).item() == 0.0


def test_ranking_gradient_pushes_better_up():
    rewards = torch.zeros(1, 3, requires_grad=True)
    pairwise_ranking_loss(rewards).sum().backward()
    # each response: d/dr of mean over 3 pairs of -log sigma(r_i - r_j) at 0 is -(wins - losses) / 2 / 3
    assert rewards.grad[0].tolist() == pytest.approx([-2 / 6, 0.0, 2 / 6])


def test_accuracy_and_margin():
    chosen = torch.tensor([1.0, 0.0, 2.0, -1.0])
    rejected = torch.tensor([0.0, 0.0, 3.0, -2.0])
    assert pairwise_accuracy(chosen, rejected).tolist() == [1.0, 0.5, 0.0, 1.0]
    assert pairwise_accuracy(chosen, rejected, tie_value=0.0).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert reward_margin(chosen, rejected).tolist() == [1.0, 0.0, -1.0, 1.0]


def test_ranking_accuracy_parts():
    # ranking best->worst by column; rewards get one of the three pairs wrong
    rewards = torch.tensor([[2.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    correct, pairs = ranking_accuracy_parts(rewards, mask)
    assert correct.tolist() == [2.0, 1.0]
    assert pairs.tolist() == [3.0, 1.0]
