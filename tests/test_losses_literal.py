"""Every loss against literal numbers worked out on paper from its paper's equation.

The other loss tests compare against formulas; these compare against numbers, so a formula in
the code that is wrong against the paper (a sign, a missing 1/2, the wrong std) fails here even
if the same slip were made in a test's formula. Each case states its arithmetic in a comment.
Notation: sigma(x) = 1/(1+e^-x), so -log sigma(1) = log(1 + e^-1) = 0.3132616875.
"""
import pytest
import torch

from posttrain.losses.advantages import gae, grpo_advantages, rloo_advantages
from posttrain.losses.kl import kl_k1, kl_k2, kl_k3
from posttrain.losses.kto import kto_loss
from posttrain.losses.policy import clipped_value_losses, ppo_clip_losses
from posttrain.losses.preference import (
    cdpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    ipo_sum_loss,
    orpo_loss,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)
from posttrain.losses.reward import bradley_terry_loss, pairwise_ranking_loss, plackett_luce_loss
from posttrain.losses.sft import token_nll


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# One pair for the DPO family: log pi(y_w) = -4, log pi(y_l) = -6, log ref(y_w) = log ref(y_l) = -5,
# so h = (-4 - -5) - (-6 - -5) = 2; with beta = 0.5, beta h = 1.
PAIR = (t(-4.0), t(-6.0), t(-5.0), t(-5.0))


def test_dpo_eq7():
    # -log sigma(beta h) = -log sigma(1) = 0.3132616875
    assert dpo_loss(*PAIR, beta=0.5).losses.item() == pytest.approx(0.3132616875, abs=1e-9)
    # rewards: beta (log pi - log ref) = 0.5 * 1 and 0.5 * -1
    out = dpo_loss(*PAIR, beta=0.5)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (0.5, -0.5)


def test_cdpo_label_smoothing():
    # 0.9 * -log sigma(1) + 0.1 * -log sigma(-1) = 0.9 * 0.3132616875 + 0.1 * 1.3132616875 = 0.4132616875
    assert cdpo_loss(*PAIR, beta=0.5, label_smoothing=0.1).losses.item() == pytest.approx(0.4132616875, abs=1e-9)


def test_robust_dpo():
    # (0.9 * 0.3132616875 - 0.1 * 1.3132616875) / (1 - 0.2) = 0.1506093750 / 0.8 = 0.1882616875
    assert robust_dpo_loss(*PAIR, beta=0.5, label_smoothing=0.1).losses.item() == pytest.approx(0.1882616875, abs=1e-9)


def test_ipo_sum_and_length_averaged():
    # paper form: (h - 1/(2 beta))^2 = (2 - 1)^2 = 1
    assert ipo_sum_loss(*PAIR, beta=0.5).losses.item() == pytest.approx(1.0)
    # averaged: |y_w| = 2, |y_l| = 4: h_avg = 1/2 - (-1)/4 = 0.75; (0.75 - 1)^2 = 0.0625
    assert ipo_loss(*PAIR, t(2), t(4), beta=0.5).losses.item() == pytest.approx(0.0625)


def test_hinge_slic():
    # max(0, 1 - beta h): beta 0.25 -> 1 - 0.5 = 0.5; beta 0.5 -> max(0, 0) = 0
    assert hinge_loss(*PAIR, beta=0.25).losses.item() == pytest.approx(0.5)
    assert hinge_loss(*PAIR, beta=0.5).losses.item() == pytest.approx(0.0)


def test_rpo_adds_length_normalised_nll():
    # -log sigma(1) + alpha * (-log pi(y_w) / |y_w|) = 0.3132616875 + 1 * 4/2 = 2.3132616875
    assert rpo_loss(*PAIR, t(2), beta=0.5, alpha=1.0).losses.item() == pytest.approx(2.3132616875, abs=1e-9)


def test_simpo():
    # beta/|y_w| log pi_w - beta/|y_l| log pi_l - gamma = 2 * -4/2 - 2 * -6/4 - 1 = -4 + 3 - 1 = -2
    # -log sigma(-2) = log(1 + e^2) = 2.1269280110
    out = simpo_loss(t(-4.0), t(-6.0), t(2), t(4), beta=2.0, gamma=1.0)
    assert out.losses.item() == pytest.approx(2.1269280110, abs=1e-9)


def test_orpo():
    # a_w = -4/4 = -1, a_l = -6/3 = -2; log odds(a) = a - log(1 - e^a):
    #   log odds(-1) = -1 - log(0.6321205588) = -0.5413248546; log odds(-2) = -2 - log(0.8646647168) = -1.8545865421
    # loss = -a_w + lam * -log sigma(1.3132616875) = 1 + 0.1 * 0.2381830264 = 1.0238183026
    out = orpo_loss(t(-4.0), t(-6.0), t(4), t(3), lam=0.1)
    assert out.losses.item() == pytest.approx(1.0238183026, abs=1e-9)


def test_kto():
    # beta 0.5, z0 0.5. Desirable, log ratio 1: 1 - sigma(0.5 * (1 - 0.5)) = 1 - sigma(0.25) = 0.4378234991
    # Undesirable, log ratio -1: 1 - sigma(0.5 * (0.5 - -1)) = 1 - sigma(0.75) = 0.3208213008
    out = kto_loss(t(-4.0, -6.0), t(-5.0, -5.0), torch.tensor([True, False]), 0.5, beta=0.5)
    assert out.losses.tolist() == pytest.approx([0.4378234991, 0.3208213008], abs=1e-9)


def test_bradley_terry_with_llama2_margin():
    # -log sigma(r_c - r_r - m): (2 - 0.5 - 0) -> -log sigma(1.5) = 0.2014132780; (1.5 - 0.5 - 0) with m = 0 ... and m = 0
    assert bradley_terry_loss(t(2.0, 1.5), t(0.5, 0.5)).tolist() == pytest.approx([0.2014132780, 0.3132616875], abs=1e-9)
    # margin 0.5 on the first pair: -log sigma(1.5 - 0.5) = 0.3132616875
    assert bradley_terry_loss(t(2.0), t(0.5), t(0.5)).item() == pytest.approx(0.3132616875, abs=1e-9)


def test_instructgpt_k_way_and_plackett_luce():
    # rewards [2, 1, 0] in rank order; pairs (2,1), (2,0), (1,0): margins 1, 2, 1
    # mean of -log sigma: (0.3132616875 + 0.1269280110 + 0.3132616875) / 3 = 0.2511504620
    assert pairwise_ranking_loss(t(2.0, 1.0, 0.0).view(1, 3)).item() == pytest.approx(0.2511504620, abs=1e-9)
    # PL: [log(e^2 + e + 1) - 2] + [log(e + 1) - 1] + [log 1 - 0] = 0.4076059644 + 0.3132616875 + 0 = 0.7208676520
    assert plackett_luce_loss(t(2.0, 1.0, 0.0).view(1, 3)).item() == pytest.approx(0.7208676520, abs=1e-9)


def test_ppo_clipped_surrogate_eq7():
    # log ratio 0.5: rho = e^0.5 = 1.6487212707, eps 0.2.
    # A = +1: max(-1.6487, -1.2) = -1.2 (clipped); A = -1: max(1.6487, 1.2) = 1.6487212707 (not clipped)
    logps, old = t(-1.0, -1.0).view(1, 2), t(-1.5, -1.5).view(1, 2)
    losses, clipped = ppo_clip_losses(logps, old, t(1.0, -1.0).view(1, 2), torch.ones(1, 2, dtype=torch.bool))
    assert losses.flatten().tolist() == pytest.approx([-1.2, 1.6487212707], abs=1e-9)
    assert clipped.flatten().tolist() == [True, False]


def test_ppo2_clipped_value_loss():
    # V = 1.0, V_old = 0.5, R = 2.0, eps 0.2: V_clip = 0.7; 1/2 max((1 - 2)^2, (0.7 - 2)^2) = 1/2 * 1.69 = 0.845
    losses, clipped = clipped_value_losses(t(1.0).view(1, 1), t(0.5).view(1, 1), t(2.0).view(1, 1),
                                           torch.ones(1, 1, dtype=torch.bool), clip=0.2)
    assert losses.item() == pytest.approx(0.845) and clipped.item()


def test_gae_recursion():
    # gamma 1, lambda 0.5, rewards [0, 0, 1], values [0.5, 0.6, 0.7]:
    #   t=2: delta = 1 + 0 - 0.7 = 0.3, A = 0.3
    #   t=1: delta = 0 + 0.7 - 0.6 = 0.1, A = 0.1 + 0.5 * 0.3 = 0.25
    #   t=0: delta = 0 + 0.6 - 0.5 = 0.1, A = 0.1 + 0.5 * 0.25 = 0.225;  returns = A + V = [0.725, 0.85, 1.0]
    adv, ret = gae(t(0.0, 0.0, 1.0).view(1, 3), t(0.5, 0.6, 0.7).view(1, 3), torch.ones(1, 3, dtype=torch.bool),
                   gamma=1.0, lam=0.5)
    assert adv.flatten().tolist() == pytest.approx([0.225, 0.25, 0.3])
    assert ret.flatten().tolist() == pytest.approx([0.725, 0.85, 1.0])


def test_grpo_and_rloo_advantages():
    # rewards [1, 0, 0, 1]: mean 0.5, sample std sqrt(4 * 0.25 / 3) = 0.5773502692
    # GRPO: +-0.5 / 0.5773502692 = +-0.8660254038 (eps 1e-6 moves the 6th decimal)
    assert grpo_advantages(t(1.0, 0.0, 0.0, 1.0).view(1, 4)).flatten().tolist() == pytest.approx(
        [0.8660239, -0.8660239, -0.8660239, 0.8660239], abs=1e-6)
    # RLOO: 1 - (0 + 0 + 1)/3 = 0.6666666667; 0 - (1 + 0 + 1)/3 = -0.6666666667
    assert rloo_advantages(t(1.0, 0.0, 0.0, 1.0).view(1, 4)).flatten().tolist() == pytest.approx(
        [2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_kl_estimators_schulman():
    # log p = -1, log q = -1.5: k1 = 0.5; k2 = 0.5^2 / 2 = 0.125; k3 = e^-0.5 + 0.5 - 1 = 0.1065306597
    p, q = t(-1.0), t(-1.5)
    assert (kl_k1(p, q).item(), kl_k2(p, q).item()) == pytest.approx((0.5, 0.125))
    assert kl_k3(p, q).item() == pytest.approx(0.1065306597, abs=1e-9)


def test_token_nll_is_cross_entropy():
    # logits [0, ln 3] over 2 tokens: p(1) = 3/4, so -log p(1) = 0.2876820725; label -100 is ignored
    logits = t(0.0, 1.0986122887, 0.0, 0.0).view(1, 2, 2)
    nll, mask = token_nll(logits, torch.tensor([[1, -100]]))
    assert nll[mask].tolist() == pytest.approx([0.2876820725], abs=1e-9)
