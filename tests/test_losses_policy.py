"""PPO clipped surrogate, value loss, entropy and metrics against hand-derived values."""
import math

import pytest
import torch

from posttrain.losses.policy import (
    approx_kl,
    clip_fraction,
    clipped_value_losses,
    entropy_from_logits,
    explained_variance,
    ppo_clip_losses,
    ppo_policy_loss,
    value_loss,
)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# (advantage, ratio, expected loss, clipped?) with clip 0.2, worked out by hand:
CASES = [
    (1.0, 1.5, -1.2, True),    # A > 0, ratio above 1 + eps: capped at -(1.2) A
    (1.0, 0.5, -0.5, False),   # A > 0, ratio below 1 - eps: unclipped term is larger
    (-1.0, 0.5, 0.8, True),    # A < 0, ratio below 1 - eps: capped at 0.8
    (-1.0, 1.5, 1.5, False),   # A < 0, ratio above 1 + eps: pessimistic unclipped term
    (2.0, 1.1, -2.2, False),   # inside the trust region
]


def case_tensors():
    adv = t([[c[0] for c in CASES]])
    old = t([[-1.0] * len(CASES)])
    logps = (old + t([[math.log(c[1]) for c in CASES]])).requires_grad_(True)
    mask = torch.ones_like(adv, dtype=torch.bool)
    return logps, old, adv, mask


def test_ppo_clip_cases_by_hand():
    logps, old, adv, mask = case_tensors()
    losses, clipped = ppo_clip_losses(logps, old, adv, mask, clip_low=0.2)
    assert losses[0].tolist() == pytest.approx([c[2] for c in CASES])
    assert clipped[0].tolist() == [c[3] for c in CASES]
    losses.sum().backward()
    # d/dlogp of -A * ratio is -A * ratio; clipped tokens get no gradient
    expected_grad = [0.0 if c[3] else -c[0] * c[1] for c in CASES]
    assert logps.grad[0].tolist() == pytest.approx(expected_grad)


def test_clip_higher_is_asymmetric():
    old = t([[0.0, 0.0]])
    logps = t([[math.log(1.25), math.log(0.75)]])
    adv = t([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    sym, _ = ppo_clip_losses(logps, old, adv, mask, clip_low=0.2)
    dapo, clipped = ppo_clip_losses(logps, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert sym[0].tolist() == pytest.approx([-1.2, 0.8])
    assert dapo[0].tolist() == pytest.approx([-1.25, 0.8])  # upper bound now 1.28: 1.25 is inside
    assert clipped[0].tolist() == [False, True]


def test_dual_clip_bounds_negative_advantage_loss():
    old = t([[0.0, 0.0]])
    logps = t([[math.log(5.0), math.log(5.0)]])
    adv = t([[-1.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    plain, _ = ppo_clip_losses(logps, old, adv, mask)
    dual, _ = ppo_clip_losses(logps, old, adv, mask, dual_clip=3.0)
    assert plain[0].tolist() == pytest.approx([5.0, -1.2])
    assert dual[0].tolist() == pytest.approx([3.0, -1.2])  # min(5, 3 * |A|); positive A untouched


def test_sequence_advantages_broadcast():
    logps, old, _, mask = case_tensors()
    per_token = ppo_clip_losses(logps, old, t([[1.0] * 5]), mask)[0]
    per_sequence = ppo_clip_losses(logps, old, t([1.0]), mask)[0]
    assert per_token.tolist() == per_sequence.tolist()


def test_padding_garbage_is_harmless():
    logps = t([[-1.0, 1000.0]]).requires_grad_(True)
    old = t([[-1.2, -1000.0]])
    mask = torch.tensor([[True, False]])
    loss = ppo_policy_loss(logps, old, t([[1.0, 1.0]]), mask)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logps.grad).all()
    assert loss.item() == pytest.approx(-1.2)  # ratio e^0.2 = 1.22 is clipped to 1.2


def test_policy_loss_reduction_modes_by_hand():
    old = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    logps = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # ratio 1: loss = -A
    adv = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert ppo_policy_loss(logps, old, adv, mask).item() == pytest.approx(-10 / 4)
    assert ppo_policy_loss(logps, old, adv, mask, mode="sequence_mean").item() == pytest.approx(-(2 + 4) / 2)
    assert ppo_policy_loss(logps, old, adv, mask, mode="sum_over_constant", constant=5).item() == pytest.approx(
        -(6 / 5 + 4 / 5) / 2)


def test_value_loss_by_hand():
    values, old, returns = t([[1.0, 1.0, 3.0]]), t([[0.5, 0.5, 3.0]]), t([[0.0, 2.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    losses, clipped = clipped_value_losses(values, old, returns, mask, clip=0.2)
    # token 0: max(1, 0.49) ; token 1: max(1, (0.7 - 2)^2 = 1.69) ; token 2: no move, (3 - 1)^2 = 4
    assert losses[0].tolist() == pytest.approx([0.5, 0.845, 2.0])
    assert clipped[0].tolist() == [False, True, False]
    assert value_loss(values, old, returns, mask).item() == pytest.approx((0.5 + 0.845 + 2.0) / 3)
    plain, _ = clipped_value_losses(values, old, returns, mask, clip=None)
    assert plain[0].tolist() == pytest.approx([0.5, 0.5, 2.0])


def test_entropy_by_hand():
    logits = torch.zeros(2, 3, 5)
    assert entropy_from_logits(logits).flatten().tolist() == pytest.approx([math.log(5)] * 6, rel=1e-6)
    p = 1 / (1 + math.exp(-1))
    two = entropy_from_logits(t([[1.0, 0.0]]))
    assert two.item() == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p))


def test_entropy_chunked_equals_unchunked_and_categorical():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64) * 3
    a = entropy_from_logits(logits, chunk_size=2)
    b = entropy_from_logits(logits, chunk_size=10_000)
    c = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(a, c, atol=1e-12)
    assert entropy_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32


def test_clip_fraction_and_approx_kl():
    logps, old, adv, mask = case_tensors()
    _, clipped = ppo_clip_losses(logps.detach(), old, adv, mask)
    assert clip_fraction(clipped, mask).item() == pytest.approx(2 / 5)
    # k3 with samples from the old policy: r = pi/pi_old, (r - 1) - log r
    kl = approx_kl(t([[-1.0, 0.0]]), t([[-2.0, 5.0]]), torch.tensor([[True, False]]))
    assert kl.item() == pytest.approx(math.e - 1 - 1)


def test_explained_variance():
    returns = t([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    values = t([[1.5, 2.0, 2.5, 0.0]])
    # Var[R] = 2/3, Var[R - V] = Var[-0.5, 0, 0.5] = 1/6
    assert explained_variance(values, returns, mask).item() == pytest.approx(1 - (1 / 6) / (2 / 3))
    assert math.isnan(explained_variance(values, t([[1.0, 1.0, 1.0, 0.0]]), mask).item())
