"""Accuracy, the unbiased pass@k estimator, and perplexity."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from posttrain.evaluate.accuracy import accuracy, exact_match, mean_pass_at_k, pass_at_k, perplexity, perplexity_result


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n,c,k", [(10, 0, 1), (10, 3, 1), (10, 3, 5), (20, 1, 10), (200, 13, 100), (5, 5, 5),
                                   (7, 2, 6)])
def test_pass_at_k_equals_the_exact_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(5000, 2500) overflows floats; the product form does not
    value = pass_at_k(5000, 3, 2500)
    assert value == pytest.approx(float(exact_pass_at_k(5000, 3, 2500)), abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain success rate


def test_pass_at_k_bad_input():
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_mean_pass_at_k():
    result = mean_pass_at_k([(10, 3), (10, 0), (10, 10)], k=2, seed=0)
    expected = np.mean([float(exact_pass_at_k(10, 3, 2)), 0.0, 1.0])
    assert result.name == "pass@2" and result.value == pytest.approx(expected)


def test_accuracy_with_wilson():
    result = accuracy([True] * 17 + [False] * 8)
    assert result.value == 0.68 and result.successes == 17
    assert result.ci == pytest.approx(proportion_confint(17, 25, method="wilson"))


def test_perplexity_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    targets = torch.randint(0, 11, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    logprobs = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    expected = math.exp(torch.nn.functional.cross_entropy(logits[mask], targets[mask]).item())
    assert perplexity(logprobs.tolist(), mask.tolist()) == pytest.approx(expected, rel=1e-5)


def test_perplexity_is_token_weighted_and_result_keeps_stats():
    # sequence 1: one token at log(1/2); sequence 2: three tokens at log(1/4) -> exp(mean NLL)
    seqs = [[math.log(0.5)], [math.log(0.25)] * 3]
    expected = math.exp((math.log(2) + 3 * math.log(4)) / 4)
    assert perplexity(seqs) == pytest.approx(expected)
    result = perplexity_result(seqs, n_resamples=100)
    assert result.value == pytest.approx(expected) and result.stats[1] == pytest.approx([3 * math.log(4), 3])
    assert result.higher_is_better is False
    with pytest.raises(ValueError):
        perplexity([[0.3]])


def test_exact_match():
    assert exact_match(" 1,000.50 ", "1000.5")
    assert exact_match("Paris.", "paris")
    assert not exact_match("12", "13")
