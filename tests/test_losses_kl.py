"""KL estimators (values, exact expectations), KL-penalised rewards, KL controllers."""
import math

import pytest
import torch

from posttrain.losses.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
)


def test_estimators_by_hand():
    logp, logq = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
    assert kl_k1(logp, logq).item() == pytest.approx(1.0)
    assert kl_k2(logp, logq).item() == pytest.approx(0.5)
    assert kl_k3(logp, logq).item() == pytest.approx(math.exp(-1) + 1 - 1)  # r - 1 - log r, log r = -1


def test_identical_distributions_give_zero():
    x = torch.randn(4, 5)
    for fn in KL_ESTIMATORS.values():
        assert fn(x, x).abs().max().item() == 0.0


def test_k3_is_nonnegative_and_k1_is_not():
    g = torch.Generator().manual_seed(0)
    logp, logq = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    assert (kl_k3(logp, logq) >= 0).all()
    assert (kl_k1(logp, logq) < 0).any()


def test_k1_and_k3_are_unbiased_exactly():
    """Sum over the whole support weighted by p: E_p[k1] = E_p[k3] = KL(p || q)."""
    p = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    kl_by_hand = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    for name in ("k1", "k3"):
        expectation = (p * KL_ESTIMATORS[name](p.log(), q.log())).sum().item()
        assert expectation == pytest.approx(kl_by_hand, rel=1e-12), name
    # k2 is biased: here it overestimates
    assert (p * kl_k2(p.log(), q.log())).sum().item() > kl_by_hand


def test_kl_penalized_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0, 5.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    rewards = kl_penalized_rewards(scores, kl, mask, kl_coef=0.5)
    expected = [[-0.05, -0.1, -0.15 + 2.0], [-0.25 - 1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    for row, exp_row in zip(rewards.tolist(), expected):
        assert row == pytest.approx(exp_row)


def test_adaptive_controller_by_hand():
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    # error clipped to +0.2
    assert ctl.update(current_kl=9.0, n_steps=1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    # error -1/6, not clipped
    before = ctl.value
    assert ctl.update(current_kl=5.0, n_steps=500) == pytest.approx(before * (1 - (1 / 6) * 0.05))
    # error clipped to -0.2
    before = ctl.value
    assert ctl.update(current_kl=0.0, n_steps=10000) == pytest.approx(before * 0.8)


def test_adaptive_controller_moves_toward_target():
    ctl = KL_CONTROLLERS["adaptive"](value=1.0, target=1.0, horizon=100)
    for _ in range(20):
        ctl.update(current_kl=3.0, n_steps=10)  # KL too high -> raise the penalty
    assert ctl.value > 1.0
    ctl2 = KL_CONTROLLERS["adaptive"](value=1.0, target=1.0, horizon=100)
    ctl2.update(current_kl=0.5, n_steps=10)
    assert ctl2.value < 1.0


def test_fixed_controller_never_changes():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 10) == 0.05 and ctl.value == 0.05


def test_mask_zeroes_padding_before_the_exponential():
    logps = torch.tensor([[-1.0, -500.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, 500.0]])
    mask = torch.tensor([[True, False]])
    for name, fn in KL_ESTIMATORS.items():
        logps.grad = None
        values = fn(logps, ref, mask)
        assert values[0, 1].item() == 0.0, name
        values.sum().backward()
        assert torch.isfinite(logps.grad).all(), name
    # without the mask, k3 overflows on the padding
    assert math.isinf(kl_k3(logps.detach(), ref)[0, 1].item())
