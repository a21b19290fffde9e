"""Dataset mixing: exact proportions, temperature weights, determinism, curriculum orders."""
from __future__ import annotations

from collections import Counter

import pytest

from posttrain.data.mixing import allocate, mix, proportions, sample_indices, temperature_weights


def test_temperature_weights_hand_values():
    # T=1: proportional to size. T=2: proportional to sqrt(size): sqrt(100)=10, sqrt(25)=5 -> 2/3, 1/3.
    assert temperature_weights([100, 25], 1.0) == pytest.approx([0.8, 0.2])
    assert temperature_weights([100, 25], 2.0) == pytest.approx([2 / 3, 1 / 3])
    # Very high temperature flattens towards uniform.
    assert temperature_weights([1000, 10], 1e9) == pytest.approx([0.5, 0.5], abs=1e-6)
    with pytest.raises(ValueError):
        temperature_weights([1, 2], 0)


def test_allocate_is_exact_and_sums_to_total():
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]  # the tie goes to the first dataset
    assert allocate(100, [0.5, 0.3, 0.2]) == [50, 30, 20]
    assert allocate(7, [2, 1]) == [5, 2]  # 4.67, 2.33 -> floors 4, 2, remainder 1 to the larger fraction
    assert sum(allocate(1001, [0.123, 0.456, 0.421])) == 1001


def test_mix_by_weights_gives_exact_counts():
    picks = mix([100, 50], weights=[1, 3], total=80, seed=1)
    counts = Counter(d for d, _ in picks)
    assert counts == {0: 20, 1: 60}
    assert proportions(picks, 2) == [0.25, 0.75]
    # Dataset 1 has 50 examples but 60 picks: one full pass plus 10 more, no example thrice.
    uses = Counter(i for d, i in picks if d == 1)
    assert set(uses) == set(range(50)) and max(uses.values()) == 2 and sum(uses.values()) == 60


def test_mix_by_temperature_counts():
    # sizes 100 and 25 at T=2 -> 2/3 and 1/3 of 90 picks.
    picks = mix([100, 25], temperature=2.0, total=90, seed=0)
    assert Counter(d for d, _ in picks) == {0: 60, 1: 30}


def test_default_mix_uses_every_example_once():
    picks = mix([3, 2], seed=5)
    assert sorted(picks) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_mix_is_deterministic_for_a_seed_and_changes_with_it():
    a = mix([40, 30], weights=[1, 1], total=50, seed=7)
    assert a == mix([40, 30], weights=[1, 1], total=50, seed=7)
    assert a != mix([40, 30], weights=[1, 1], total=50, seed=8)


def test_curriculum_orders():
    by_dataset = mix([4, 3], seed=2, order="dataset")
    assert [d for d, _ in by_dataset] == [0, 0, 0, 0, 1, 1, 1]
    lengths = [[5, 1, 3], [2, 4]]
    by_length = mix([3, 2], seed=2, order="length", lengths=lengths)
    assert [lengths[d][i] for d, i in by_length] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="needs the example lengths"):
        mix([3], order="length")


def test_sample_indices_passes():
    import numpy as np

    picks = sample_indices(4, 10, np.random.default_rng(0))
    assert sorted(picks[:4]) == [0, 1, 2, 3] and sorted(picks[4:8]) == [0, 1, 2, 3] and len(set(picks[8:])) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        mix([1, 2], weights=[1, 1], temperature=1.0)
    with pytest.raises(ValueError, match="2 weights for 3 datasets"):
        mix([1, 2, 3], weights=[1, 1])
