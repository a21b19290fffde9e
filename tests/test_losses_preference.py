"""DPO-family losses against hand-derived values (python math), limits, symmetry, gradients."""
import math

import pytest
import torch

from posttrain.losses.kto import kto_loss, kto_reference_point
from posttrain.losses.preference import (
    LOSS_INPUTS,
    PREFERENCE_LOSSES,
    PairLogps,
    cdpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    ipo_sum_loss,
    log1mexp,
    mixed_preference_loss,
    needs_reference,
    orpo_loss,
    preference_loss,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)


def nls(x):
    """-log sigma(x), by hand."""
    return math.log1p(math.exp(-x))


def sigma(x):
    return 1 / (1 + math.exp(-x))


# Three pairs: (policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
ROWS = [(-5.0, -7.0, -6.0, -6.5, 2, 4),
        (-10.0, -4.0, -9.0, -5.0, 5, 1),
        (-3.0, -3.0, -3.0, -3.0, 3, 3)]


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def inputs():
    pc, pr, rc, rr, lc, lr = zip(*ROWS)
    return dict(policy_chosen_logps=t(pc), policy_rejected_logps=t(pr), ref_chosen_logps=t(rc),
                ref_rejected_logps=t(rr), chosen_lengths=torch.tensor(lc), rejected_lengths=torch.tensor(lr))


def margin(row):
    pc, pr, rc, rr, _, _ = row
    return (pc - rc) - (pr - rr)


def call(fn, **overrides):
    """Call a loss with the keyword inputs it accepts (as mixed_preference_loss does)."""
    import inspect
    accepted = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in {**inputs(), **overrides}.items() if k in accepted}
    return fn(**kwargs)


def test_margins_of_the_fixture():
    assert [margin(r) for r in ROWS] == [1.5, -2.0, 0.0]


def test_dpo_by_hand():
    out = call(dpo_loss, beta=0.1)
    assert out.losses.tolist() == pytest.approx([nls(0.1 * margin(r)) for r in ROWS])
    assert out.chosen_rewards.tolist() == pytest.approx([0.1 * (r[0] - r[2]) for r in ROWS])
    assert out.rejected_rewards.tolist() == pytest.approx([0.1 * (r[1] - r[3]) for r in ROWS])


def test_cdpo_by_hand():
    out = call(cdpo_loss, beta=0.1, label_smoothing=0.2)
    expected = [0.8 * nls(0.1 * margin(r)) + 0.2 * nls(-0.1 * margin(r)) for r in ROWS]
    assert out.losses.tolist() == pytest.approx(expected)


def test_robust_by_hand():
    out = call(robust_dpo_loss, beta=0.1, label_smoothing=0.2)
    expected = [(0.8 * nls(0.1 * margin(r)) - 0.2 * nls(-0.1 * margin(r))) / 0.6 for r in ROWS]
    assert out.losses.tolist() == pytest.approx(expected)


def test_robust_rejects_flip_rate_of_half():
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        call(robust_dpo_loss, label_smoothing=0.5)


def test_ipo_sum_by_hand():
    out = call(ipo_sum_loss, beta=0.1)
    assert out.losses.tolist() == pytest.approx([(margin(r) - 5.0) ** 2 for r in ROWS])


def test_ipo_length_averaged_by_hand():
    out = call(ipo_loss, beta=0.25)
    expected, chosen_rewards = [], []
    for pc, pr, rc, rr, lc, lr in ROWS:
        h = (pc - rc) / lc - (pr - rr) / lr
        expected.append((h - 1 / (2 * 0.25)) ** 2)
        chosen_rewards.append(0.25 * (pc - rc) / lc)
    assert out.losses.tolist() == pytest.approx(expected)
    assert out.chosen_rewards.tolist() == pytest.approx(chosen_rewards)


def test_hinge_by_hand():
    assert call(hinge_loss, beta=0.1).losses.tolist() == pytest.approx([0.85, 1.2, 1.0])
    # beta * h >= 1 gives exactly zero loss and zero gradient
    assert call(hinge_loss, beta=1.0).losses.tolist() == pytest.approx([0.0, 3.0, 1.0])


def test_rpo_by_hand():
    out = call(rpo_loss, beta=0.1, alpha=0.5)
    expected = [nls(0.1 * margin(r)) + 0.5 * (-r[0] / r[4]) for r in ROWS]
    assert out.losses.tolist() == pytest.approx(expected)


def test_simpo_by_hand():
    out = call(simpo_loss, beta=2.0, gamma=1.0)
    expected = [nls(2.0 * pc / lc - 2.0 * pr / lr - 1.0) for pc, pr, _, _, lc, lr in ROWS]
    assert out.losses.tolist() == pytest.approx(expected)
    assert out.chosen_rewards.tolist() == pytest.approx([2.0 * r[0] / r[4] for r in ROWS])
    assert expected[0] == pytest.approx(nls(-2.5))  # -5 - (-3.5) - 1


def test_simpo_ignores_the_reference():
    a = call(simpo_loss)
    b = simpo_loss(t([-5.0, -10.0, -3.0]), t([-7.0, -4.0, -3.0]), torch.tensor([2, 5, 3]), torch.tensor([4, 1, 3]))
    assert a.losses.tolist() == b.losses.tolist()


def log_odds_by_hand(avg_logp):
    return avg_logp - math.log(1 - math.exp(avg_logp))


def test_orpo_by_hand():
    out = call(orpo_loss, lam=0.1)
    expected = []
    for pc, pr, _, _, lc, lr in ROWS:
        a_w, a_l = pc / lc, pr / lr
        expected.append(-a_w + 0.1 * nls(log_odds_by_hand(a_w) - log_odds_by_hand(a_l)))
    assert out.losses.tolist() == pytest.approx(expected)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1 * r[0] / r[4] for r in ROWS])


def test_orpo_is_finite_when_probability_is_one():
    chosen = torch.tensor([0.0, -1e-9], dtype=torch.float32, requires_grad=True)
    rejected = torch.tensor([0.0, -0.5], dtype=torch.float32, requires_grad=True)
    out = orpo_loss(chosen, rejected, torch.tensor([3, 3]), torch.tensor([3, 3]))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


@pytest.mark.parametrize("x", [-1e-10, -1e-4, -0.5, -math.log(2), -0.7, -3.0, -50.0])
def test_log1mexp_matches_math_in_float64(x):
    expected = math.log(-math.expm1(x)) if x > -0.7 else math.log1p(-math.exp(x))
    assert log1mexp(t([x])).item() == pytest.approx(expected, rel=1e-12)


def test_log1mexp_float32_is_accurate_where_naive_fails():
    x = torch.tensor([-1e-8, -60.0], dtype=torch.float32, requires_grad=True)
    naive = torch.log1p(-torch.exp(x.detach()))
    assert naive[0].item() == float("-inf")  # exp(-1e-8) rounds to 1 in float32
    y = log1mexp(x)
    assert y[0].item() == pytest.approx(math.log(1e-8), rel=1e-6)
    assert y[1].item() == pytest.approx(-math.exp(-60.0), rel=1e-5)
    y.sum().backward()
    # d/dx log(1 - e^x) = -e^x / (1 - e^x)
    assert x.grad[0].item() == pytest.approx(-1 / 1e-8, rel=1e-4)
    assert torch.isfinite(x.grad).all()


def test_kto_by_hand():
    policy, ref = t([-3.0, -4.0]), t([-3.5, -3.0])
    desirable = torch.tensor([True, False])
    out = kto_loss(policy, ref, desirable, t(0.2), beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    assert out.losses.tolist() == pytest.approx([1 - sigma(0.5 * (0.5 - 0.2)), 1.5 * (1 - sigma(0.5 * (0.2 + 1.0)))])
    assert out.rewards.tolist() == pytest.approx([0.25, -0.5])


def test_kto_reference_point_is_clamped_and_gets_no_gradient():
    assert kto_reference_point(t([-3.0, -2.0]), t([-2.0, -2.5])).item() == 0.0  # mean -0.25 -> 0
    assert kto_reference_point(t([-1.0, -2.0]), t([-2.0, -2.5])).item() == pytest.approx(0.75)
    policy = t([-1.0, -2.0]).requires_grad_(True)
    z0 = kto_reference_point(policy, t([-2.0, -2.5]))
    assert not z0.requires_grad


@pytest.mark.parametrize("name", ["sigmoid", "cdpo", "robust"])
def test_zero_margin_gives_log2(name):
    out = call(PREFERENCE_LOSSES[name], beta=0.3)
    assert out.losses[2].item() == pytest.approx(math.log(2))


def test_zero_margin_other_losses():
    assert call(hinge_loss, beta=0.3).losses[2].item() == pytest.approx(1.0)
    assert call(ipo_sum_loss, beta=0.5).losses[2].item() == pytest.approx(1.0)  # (0 - 1)^2
    equal = simpo_loss(t([-4.0]), t([-2.0]), torch.tensor([4]), torch.tensor([2]), gamma=0.0)
    assert equal.losses.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_swapping_chosen_and_rejected_swaps_rewards(name):
    fn = PREFERENCE_LOSSES[name]
    a = call(fn)
    swapped = {"policy_chosen_logps": inputs()["policy_rejected_logps"],
               "policy_rejected_logps": inputs()["policy_chosen_logps"],
               "ref_chosen_logps": inputs()["ref_rejected_logps"],
               "ref_rejected_logps": inputs()["ref_chosen_logps"],
               "chosen_lengths": inputs()["rejected_lengths"], "rejected_lengths": inputs()["chosen_lengths"]}
    b = call(fn, **swapped)
    assert b.chosen_rewards.tolist() == pytest.approx(a.rejected_rewards.tolist())
    assert (b.chosen_rewards - b.rejected_rewards).tolist() == pytest.approx(
        (-(a.chosen_rewards - a.rejected_rewards)).tolist())


def test_dpo_swap_identity():
    # -log sigma(x) - (-log sigma(-x)) = -x
    a = call(dpo_loss, beta=0.1).losses
    b = call(dpo_loss, beta=0.1, policy_chosen_logps=inputs()["policy_rejected_logps"],
             policy_rejected_logps=inputs()["policy_chosen_logps"], ref_chosen_logps=inputs()["ref_rejected_logps"],
             ref_rejected_logps=inputs()["ref_chosen_logps"]).losses
    assert (a - b).tolist() == pytest.approx([-0.1 * margin(r) for r in ROWS])


def test_limits_equal_dpo():
    dpo = call(dpo_loss, beta=0.2).losses.tolist()
    assert call(cdpo_loss, beta=0.2, label_smoothing=0.0).losses.tolist() == pytest.approx(dpo)
    assert call(robust_dpo_loss, beta=0.2, label_smoothing=0.0).losses.tolist() == pytest.approx(dpo)
    assert call(rpo_loss, beta=0.2, alpha=0.0).losses.tolist() == pytest.approx(dpo)


def test_ipo_equals_ipo_sum_for_unit_lengths():
    ones = torch.ones(3, dtype=torch.long)
    a = call(ipo_loss, chosen_lengths=ones, rejected_lengths=ones)
    assert a.losses.tolist() == pytest.approx(call(ipo_sum_loss).losses.tolist())


def test_dpo_gradient_by_hand():
    policy_chosen = t([-5.0]).requires_grad_(True)
    policy_rejected = t([-7.0]).requires_grad_(True)
    dpo_loss(policy_chosen, policy_rejected, t([-6.0]), t([-6.5]), beta=0.1).losses.sum().backward()
    # d/dh -log sigma(beta h) = -beta sigma(-beta h)
    g = 0.1 * sigma(-0.15)
    assert policy_chosen.grad.item() == pytest.approx(-g)
    assert policy_rejected.grad.item() == pytest.approx(g)


def test_ipo_gradient_is_zero_at_target():
    policy_chosen = t([0.5 / 0.1 - 2.0]).requires_grad_(True)  # h = 1/(2 beta) = 5
    ipo_sum_loss(policy_chosen, t([-2.0]), t([0.0]), t([0.0]), beta=0.1).losses.sum().backward()
    assert policy_chosen.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_cdpo_gradient_is_zero_at_its_optimum():
    eps, beta = 0.1, 0.5
    h = math.log((1 - eps) / eps) / beta
    policy_chosen = t([h]).requires_grad_(True)
    cdpo_loss(policy_chosen, t([0.0]), t([0.0]), t([0.0]), beta=beta, label_smoothing=eps).losses.sum().backward()
    assert policy_chosen.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_rewards_are_detached():
    x = inputs()
    x["policy_chosen_logps"].requires_grad_(True)
    out = dpo_loss(x["policy_chosen_logps"], x["policy_rejected_logps"], x["ref_chosen_logps"], x["ref_rejected_logps"])
    assert out.losses.requires_grad and not out.chosen_rewards.requires_grad


def pairs(with_reference: bool = True) -> PairLogps:
    x = inputs()
    return PairLogps(x["policy_chosen_logps"], x["policy_rejected_logps"],
                     x["ref_chosen_logps"] if with_reference else None,
                     x["ref_rejected_logps"] if with_reference else None, x["chosen_lengths"], x["rejected_lengths"])


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_declared_inputs_match_each_signature(name):
    """LOSS_INPUTS names each loss's positional inputs in order (a new loss cannot drift from it)."""
    import inspect
    params = [p for p in inspect.signature(PREFERENCE_LOSSES[name]).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    renamed = {"policy_chosen_logps": "policy_chosen", "policy_rejected_logps": "policy_rejected",
               "ref_chosen_logps": "ref_chosen", "ref_rejected_logps": "ref_rejected"}
    assert tuple(renamed.get(p.name, p.name) for p in params) == LOSS_INPUTS[name]


def test_needs_reference_from_the_table():
    assert needs_reference(["sigmoid"]) and needs_reference(["simpo", "rpo"])
    assert not needs_reference(["simpo", "orpo"])


def test_reference_free_bundle_refused_by_a_reference_loss():
    assert preference_loss("simpo", pairs(with_reference=False)).losses.shape == (3,)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        preference_loss("sigmoid", pairs(with_reference=False))


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_mixed_with_one_component_equals_that_component(name):
    options = {} if name == "orpo" else {"beta": 0.2}
    mixed = mixed_preference_loss({name: 1.0}, pairs(), {name: options})
    alone = call(PREFERENCE_LOSSES[name], **options)
    assert mixed.losses.tolist() == pytest.approx(alone.losses.tolist())
    assert mixed.chosen_rewards.tolist() == pytest.approx(alone.chosen_rewards.tolist())


def test_mixed_07_sigmoid_03_hinge_by_hand():
    mixed = mixed_preference_loss({"sigmoid": 0.7, "hinge": 0.3}, pairs(), {"sigmoid": {"beta": 0.1}, "hinge": {"beta": 0.1}})
    expected = [0.7 * nls(0.1 * margin(r)) + 0.3 * max(0.0, 1 - 0.1 * margin(r)) for r in ROWS]
    assert mixed.losses.tolist() == pytest.approx(expected)


def test_mixed_component_kwargs_override():
    mixed = mixed_preference_loss({"sigmoid": 0.5, "simpo": 0.5}, pairs(),
                                  {"sigmoid": {"beta": 0.1}, "simpo": {"beta": 2.0, "gamma": 1.0}})
    expected = 0.5 * call(dpo_loss, beta=0.1).losses + 0.5 * call(simpo_loss, beta=2.0, gamma=1.0).losses
    assert mixed.losses.tolist() == pytest.approx(expected.tolist())
    # rewards come from the first component
    assert mixed.chosen_rewards.tolist() == pytest.approx(call(dpo_loss, beta=0.1).chosen_rewards.tolist())


def test_mixed_unknown_name():
    with pytest.raises(ValueError, match="unknown preference loss 'dpo'.*sigmoid"):
        mixed_preference_loss({"dpo": 1.0}, pairs())
    with pytest.raises(ValueError, match="at least one"):
        mixed_preference_loss({}, pairs())
