"""SFT cross entropy: hand-computed values, -100 labels, log-prob path, split invariance."""
import math

import pytest
import torch

from posttrain.losses.sft import sft_loss, sft_loss_from_logps, sft_loss_parts, sft_loss_parts_from_logps, token_nll

# One sequence, 3 positions, vocabulary of 3.
LOGITS = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, -1.0, 2.0]]], dtype=torch.float64)
LABELS = torch.tensor([[1, -100, 2]])


def nll_by_hand(row, label):
    return math.log(sum(math.exp(z) for z in row)) - row[label]


def test_token_nll_by_hand():
    nll, mask = token_nll(LOGITS, LABELS)
    assert mask.tolist() == [[True, False, True]]
    assert nll[0, 0].item() == pytest.approx(nll_by_hand([1.0, 2.0, 0.0], 1))
    assert nll[0, 1].item() == 0.0
    assert nll[0, 2].item() == pytest.approx(nll_by_hand([3.0, -1.0, 2.0], 2))


def test_sft_loss_token_mean_by_hand():
    expected = (nll_by_hand([1.0, 2.0, 0.0], 1) + nll_by_hand([3.0, -1.0, 2.0], 2)) / 2
    assert sft_loss(LOGITS, LABELS).item() == pytest.approx(expected)
    num, den = sft_loss_parts(LOGITS, LABELS)
    assert den.item() == 2
    assert num.item() == pytest.approx(2 * expected)


def test_uniform_logits_give_log_vocab():
    logits = torch.zeros(2, 4, 7)
    labels = torch.randint(0, 7, (2, 4))
    assert sft_loss(logits, labels).item() == pytest.approx(math.log(7), rel=1e-6)


def test_logps_path_equals_logits_path():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, :2] = -100
    labels[2, 3:] = -100
    mask = labels != -100
    token_logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    for mode in ("token_mean", "sequence_mean", "sequence_sum"):
        a = sft_loss(logits, labels, mode=mode)
        b = sft_loss_from_logps(token_logps, mask, mode=mode)
        assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_split_batch_equals_full_batch():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (4, 6), generator=g)
    labels[1, 1:] = -100
    labels[3, 4:] = -100
    full = sft_loss(logits, labels)
    parts = [sft_loss_parts(logits[i:i + 1], labels[i:i + 1]) for i in range(4)]
    num = sum(p[0] for p in parts)
    den = sum(p[1] for p in parts)
    assert (num / den).item() == pytest.approx(full.item(), rel=1e-12)


def test_gradient_is_softmax_minus_onehot_over_count():
    logits = LOGITS.clone().requires_grad_(True)
    sft_loss(logits, LABELS).backward()
    row = [3.0, -1.0, 2.0]
    z = sum(math.exp(v) for v in row)
    expected = [math.exp(v) / z / 2 for v in row]
    expected[2] -= 1 / 2
    assert logits.grad[0, 2].tolist() == pytest.approx(expected)
    assert logits.grad[0, 1].abs().sum().item() == 0.0  # ignored position gets no gradient


def test_bf16_logits_are_upcast():
    logits = LOGITS.to(torch.bfloat16)
    nll, _ = token_nll(logits, LABELS)
    assert nll.dtype == torch.float32


def test_parts_from_logps():
    num, den = sft_loss_parts_from_logps(torch.tensor([[-1.0, -2.0, -7.0]]), torch.tensor([[1, 1, 0]]))
    assert (num.item(), den.item()) == (3.0, 2.0)
