"""GAE, GRPO / Dr. GRPO / RLOO and whitening: hand values and loop-vs-vectorised equality."""
import math
import statistics

import pytest
import torch

from posttrain.losses.advantages import (
    GROUP_ADVANTAGES,
    dr_grpo_advantages,
    gae,
    grpo_advantages,
    masked_moments,
    rloo_advantages,
    whiten,
)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_gae_by_hand():
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=0.9, lam=0.8)
    # delta_2 = 1 - 0.7 = 0.3 ; delta_1 = 0.9*0.7 - 0.6 = 0.03 ; delta_0 = 0.9*0.6 - 0.5 = 0.04
    a2 = 0.3
    a1 = 0.03 + 0.72 * a2
    a0 = 0.04 + 0.72 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def gae_by_loop(rewards, values, mask, gamma, lam):
    """Textbook GAE on each sequence's masked positions only, in python floats."""
    adv = [[0.0] * len(row) for row in rewards]
    for b in range(len(rewards)):
        idx = [t_ for t_ in range(len(rewards[b])) if mask[b][t_]]
        last = 0.0
        for k in reversed(range(len(idx))):
            t_ = idx[k]
            next_v = values[b][idx[k + 1]] if k + 1 < len(idx) else 0.0
            delta = rewards[b][t_] + gamma * next_v - values[b][t_]
            last = delta + gamma * lam * last
            adv[b][t_] = last
    return adv


def test_gae_equals_loop_with_padding_and_holes():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 8, generator=g, dtype=torch.float64)
    values = torch.randn(5, 8, generator=g, dtype=torch.float64)
    mask = torch.arange(8) < torch.tensor([8, 3, 1, 0, 6]).unsqueeze(1)
    mask[0, 2:4] = False  # a hole (e.g. tool output tokens inside the response)
    rewards[~mask] = 1e6  # junk that must be ignored
    adv, ret = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    expected = gae_by_loop(rewards.tolist(), values.tolist(), mask.tolist(), 0.95, 0.9)
    for b in range(5):
        assert adv[b].tolist() == pytest.approx(expected[b], rel=1e-12, abs=1e-12)
    assert torch.equal(ret, torch.where(mask, adv + values, 0.0))


def test_gae_lambda_one_gamma_one_gives_reward_to_go():
    rewards, values = t([[1.0, 2.0, 3.0, 0.0]]), t([[9.0, -4.0, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert ret[0].tolist() == pytest.approx([6.0, 5.0, 3.0, 0.0])


def test_gae_lambda_zero_gives_td_error():
    rewards, values = t([[1.0, 2.0]]), t([[0.5, 0.25]])
    adv, _ = gae(rewards, values, torch.ones(1, 2, dtype=torch.bool), gamma=0.5, lam=0.0)
    assert adv[0].tolist() == pytest.approx([1.0 + 0.5 * 0.25 - 0.5, 2.0 - 0.25])


def test_grpo_by_hand():
    rewards = t([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    std = statistics.stdev([1.0, 0.0, 0.0, 1.0])  # sample std, sqrt(1/3)
    adv = grpo_advantages(rewards, eps=1e-6)
    a = 0.5 / (std + 1e-6)
    assert adv[0].tolist() == pytest.approx([a, -a, -a, a])
    assert adv[1].tolist() == [0.0] * 4  # all equal: no signal
    assert dr_grpo_advantages(rewards)[0].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert grpo_advantages(rewards, scale_by_std=False).tolist() == dr_grpo_advantages(rewards).tolist()


def test_rloo_by_hand():
    rewards = t([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 6.0]])
    adv = rloo_advantages(rewards)
    assert adv[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert adv[1].tolist() == pytest.approx([3 - 3.0, 1 - 11 / 3, 2 - 10 / 3, 6 - 2.0])
    # identity: G/(G-1) * (r - mean)
    assert adv.flatten().tolist() == pytest.approx((4 / 3 * dr_grpo_advantages(rewards)).flatten().tolist())


def group_by_loop(rewards, name):
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    mean = sum(rewards) / n
    if name == "grpo":
        std = statistics.stdev(rewards)
        return [(r - mean) / (std + 1e-6) for r in rewards]
    if name == "dr_grpo":
        return [r - mean for r in rewards]
    return [r - (sum(rewards) - r) / (n - 1) for r in rewards]


@pytest.mark.parametrize("name", list(GROUP_ADVANTAGES))
def test_masked_groups_equal_loop(name):
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(6, 5, generator=g, dtype=torch.float64)
    sizes = [5, 3, 1, 2, 4, 0]
    mask = torch.arange(5) < torch.tensor(sizes).unsqueeze(1)
    adv = GROUP_ADVANTAGES[name](rewards, mask)
    for p, k in enumerate(sizes):
        assert adv[p, :k].tolist() == pytest.approx(group_by_loop(rewards[p, :k].tolist(), name), rel=1e-12)
        assert adv[p, k:].abs().sum().item() == 0.0


def test_whiten_gives_zero_mean_unit_sample_variance():
    g = torch.Generator().manual_seed(4)
    values = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3 + 7
    mask = torch.arange(6) < torch.tensor([6, 2, 5, 3]).unsqueeze(1)
    out = whiten(values, mask, eps=0.0)
    picked = out[mask].tolist()
    assert statistics.mean(picked) == pytest.approx(0.0, abs=1e-12)
    assert statistics.stdev(picked) == pytest.approx(1.0)
    assert out[~mask].abs().sum().item() == 0.0
    kept = whiten(values, mask, shift_mean=False, eps=0.0)
    assert statistics.mean(kept[mask].tolist()) == pytest.approx(statistics.mean(values[mask].tolist()))
    assert statistics.stdev(kept[mask].tolist()) == pytest.approx(1.0)


def test_whiten_with_summed_moments_equals_full_batch():
    """Two 'processes' all-reduce their moments and whiten locally: same as whitening the whole batch."""
    g = torch.Generator().manual_seed(5)
    values = torch.randn(6, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 4, generator=g) > 0.3
    full = whiten(values, mask)
    moments = masked_moments(values[:2], mask[:2]) + masked_moments(values[2:], mask[2:])
    parts = torch.cat([whiten(values[:2], mask[:2], moments=moments), whiten(values[2:], mask[2:], moments=moments)])
    assert torch.allclose(parts, full, atol=1e-12)


def test_masked_moments_by_hand():
    m = masked_moments(t([[1.0, 2.0, 100.0]]), torch.tensor([[1, 1, 0]], dtype=torch.bool))
    assert m.tolist() == [3.0, 5.0, 2.0]
    assert math.isclose(whiten(t([[1.0, 3.0]]), torch.ones(1, 2, dtype=torch.bool), eps=0.0)[0, 1].item(),
                        1 / math.sqrt(2))
