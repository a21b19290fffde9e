"""Mixing several datasets: by weights or by temperature, deterministic for a seed.

Everything here is a pure function of sizes, weights and a seed that returns
index lists, so a training run can log exactly which examples it used.

A mixture is a list of `(dataset, index)` pairs. How many picks each dataset
gets is decided first, exactly (`allocate`); which examples are picked and in
what order comes from the seed.

- Weights: dataset i gets a share `w_i / sum(w)` of `total` picks.
- Temperature: `p_i = n_i^(1/T) / sum_j n_j^(1/T)` (T=1: in proportion to size;
  larger T flattens towards uniform, so small datasets are seen more often).
- A dataset asked for more picks than it has examples is repeated: whole
  shuffled passes first, then a shuffled part pass (no example repeats twice
  before every example has been seen once more).

Orders (`order`): "shuffle" (all picks in one random order), "dataset" (curriculum by
dataset: all of dataset 0, then dataset 1, ...), "length" (curriculum by
length: shortest first; needs `lengths`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

ORDERS = ("shuffle", "dataset", "length")


def temperature_weights(sizes: Sequence[int], temperature: float) -> list[float]:
    """Sampling probabilities `p_i ∝ n_i^(1/T)`, normalised to sum to 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if any(n < 0 for n in sizes):
        raise ValueError(f"dataset sizes must be non-negative, got {list(sizes)}")
    raw = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    raw[np.asarray(sizes) == 0] = 0.0
    return (raw / raw.sum()).tolist()


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` picks in proportion to `weights`, as integers summing to `total`.

    Largest-remainder rounding: each share's floor first, then one more pick to
    the largest fractional parts (ties go to the earlier dataset).
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(int)
    remainder = total - int(counts.sum())
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:remainder]:
        counts[i] += 1
    return counts.tolist()


def sample_indices(size: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` indices into `range(size)`: whole shuffled passes, then a shuffled part pass."""
    if count and not size:
        raise ValueError("cannot sample from an empty dataset")
    picks: list[int] = []
    while len(picks) < count:
        picks += rng.permutation(size)[: count - len(picks)].tolist()
    return picks


def mix(sizes: Sequence[int], weights: Sequence[float] | None = None, temperature: float | None = None,
        total: int | None = None, seed: int = 0, order: str = "shuffle",
        lengths: Sequence[Sequence[int]] | None = None) -> list[tuple[int, int]]:
    """A mixture of datasets as `(dataset, index)` pairs.

    sizes: examples in each dataset. Give `weights` or `temperature` (neither:
    every example once, i.e. weights proportional to size). total: number of
    picks (default: the sum of sizes). order: see `ORDERS`; "length" needs
    `lengths[d][i]`, the length of example i of dataset d.
    """
    if weights is not None and temperature is not None:
        raise ValueError("give weights or temperature, not both")
    if weights is not None and len(weights) != len(sizes):
        raise ValueError(f"{len(weights)} weights for {len(sizes)} datasets")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "length" and lengths is None:
        raise ValueError("order='length' needs the example lengths")
    if temperature is not None:
        weights = temperature_weights(sizes, temperature)
    elif weights is None:
        weights = [float(n) for n in sizes]
    total = sum(sizes) if total is None else total
    rng = np.random.default_rng(seed)
    counts = allocate(total, weights)
    picks = [(d, i) for d, count in enumerate(counts) for i in sample_indices(sizes[d], count, rng)]
    return order_mixture(picks, order, lengths, rng)


def order_mixture(picks: list[tuple[int, int]], order: str, lengths: Sequence[Sequence[int]] | None,
                  rng: np.random.Generator) -> list[tuple[int, int]]:
    """Put picks in training order (see `ORDERS`); ties are broken by a seeded shuffle."""
    shuffled = [picks[k] for k in rng.permutation(len(picks))]
    if order == "shuffle":
        return shuffled
    if order == "dataset":
        return sorted(shuffled, key=lambda pick: pick[0])  # stable: shuffled within each dataset
    assert lengths is not None
    return sorted(shuffled, key=lambda pick: lengths[pick[0]][pick[1]])


def proportions(picks: Sequence[tuple[int, int]], num_datasets: int) -> list[float]:
    """Observed share of each dataset in a mixture (for logs and tests)."""
    counts = np.bincount([d for d, _ in picks], minlength=num_datasets)
    return (counts / max(len(picks), 1)).tolist()
