"""Masked reductions: hand-computed values for every mode, and split-batch invariance."""
import math

import pytest
import torch

from posttrain.losses.reduce import REDUCTIONS, aggregate, aggregate_parts, masked_mean, masked_sum, safe_divide

# Two sequences: [1, 2, 3] (3 tokens) and [10, pad, pad] (1 token), plus an empty row.
VALUES = torch.tensor([[1.0, 2.0, 3.0], [10.0, float("nan"), float("inf")], [5.0, 5.0, 5.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)


def test_token_mean_by_hand():
    assert aggregate(VALUES, MASK, "token_mean").item() == pytest.approx((1 + 2 + 3 + 10) / 4)


def test_sequence_mean_by_hand_excludes_empty_rows():
    # per-sequence means 2 and 10; the empty third row counts for nothing
    assert aggregate(VALUES, MASK, "sequence_mean").item() == pytest.approx((2 + 10) / 2)


def test_sequence_sum_by_hand():
    assert aggregate(VALUES, MASK, "sequence_sum").item() == pytest.approx((6 + 10) / 2)


def test_sum_over_constant_by_hand():
    assert aggregate(VALUES, MASK, "sum_over_constant", constant=8).item() == pytest.approx((6 / 8 + 10 / 8) / 2)


def test_sum_over_constant_needs_constant():
    with pytest.raises(ValueError, match="constant"):
        aggregate(VALUES, MASK, "sum_over_constant")


def test_padding_nan_and_inf_never_leak():
    for mode in REDUCTIONS:
        assert math.isfinite(aggregate(VALUES, MASK, mode, constant=4).item())


def test_unknown_mode_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown reduction 'mean'.*token_mean"):
        aggregate(VALUES, MASK, "mean")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        aggregate(VALUES, MASK[:, :2])


def test_empty_mask_gives_zero():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for mode in REDUCTIONS:
        assert aggregate(torch.ones(2, 3), mask, mode, constant=3).item() == 0.0


def test_masked_helpers():
    assert masked_sum(VALUES, MASK).item() == 16
    assert masked_mean(VALUES, MASK, dim=-1).tolist() == [2.0, 10.0, 0.0]
    assert safe_divide(torch.tensor(3.0), 0).item() == 0.0


@pytest.mark.parametrize("mode", list(REDUCTIONS))
def test_split_batch_parts_equal_full_batch(mode):
    """Summing (num, den) over micro-batches then dividing equals the full batch —
    including micro-batches of different padded widths and an empty row."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(7, 9, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 1, 4, 0, 6, 2, 8])
    mask = torch.arange(9) < lengths.unsqueeze(1)
    full = aggregate(values, mask, mode, constant=16)

    num, den = 0.0, 0.0
    for rows in ([0, 1], [2, 3, 4], [5], [6]):
        width = max(int(lengths[rows].max()), 1)  # each micro-batch padded only to its own longest row
        n, d = aggregate_parts(values[rows, :width], mask[rows, :width], mode, constant=16)
        num, den = num + n, den + d
    assert (num / den).item() == pytest.approx(full.item(), rel=1e-12)


def test_mean_of_micro_batch_means_would_differ():
    """The point of the parts form: averaging per-micro-batch token means is a different number."""
    values = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    naive = (aggregate(values[:1], mask[:1]) + aggregate(values[1:], mask[1:])) / 2
    assert naive.item() == pytest.approx(2.5)
    assert aggregate(values, mask).item() == pytest.approx(7 / 4)


def test_denominator_depends_on_mask_only():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    for mode in REDUCTIONS:
        _, d1 = aggregate_parts(torch.randn(2, 3), mask, mode, constant=5)
        _, d2 = aggregate_parts(torch.randn(2, 3), mask, mode, constant=5)
        assert d1.item() == d2.item()


def test_gradient_of_token_mean():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    aggregate(values, mask).backward()
    assert values.grad.flatten().tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
