"""Sequence packing for SFT: several short examples share one row, without leaking.

`pack_examples` puts tokenised examples into packs of at most `max_length`
tokens. Inside a pack, `position_ids` restart at 0 for each example, so every
example sees the positions it would see alone. Attention is kept inside each
example by the collator (`collate.packed_collate`), which either builds a
block-diagonal causal mask or relies on the restarting `position_ids` (see
docs/data-formats.md, "Packing").

The first token of each packed example gets label -100. On its own that token
is never a target (nothing comes before it), and in a pack it would otherwise
be "predicted" from the end of the previous example, a loss term that does not
exist when examples are trained separately.

Strategies:
- "first_fit" (default): first-fit decreasing. Longest examples first, each into
  the first pack with room. Few packs, little padding, order not kept.
- "sequential": keep the data order; start a new pack when the next example does
  not fit. Use it with a curriculum order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import PosttrainError
from .tokenize import IGNORE_INDEX

STRATEGIES = ("first_fit", "sequential")


@dataclass
class Pack:
    """Several examples end to end. `lengths[k]` is the k-th example's token count."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, input_ids: Sequence[int], labels: Sequence[int], source: str | None = None) -> None:
        n = len(input_ids)
        self.input_ids += list(input_ids)
        self.labels += ([IGNORE_INDEX] + list(labels[1:])) if n else []
        self.position_ids += list(range(n))
        self.lengths.append(n)
        self.sources.append(source)


def example_fields(example: Any) -> tuple[list[int], list[int], str | None]:
    """`(input_ids, labels, source)` from a TokenizedExample or a mapping with those keys."""
    if isinstance(example, dict):
        ids = list(example["input_ids"])
        return ids, list(example.get("labels", ids)), example.get("source")
    return list(example.input_ids), list(example.labels), getattr(example, "source", None)


def pack_examples(examples: Sequence[Any], max_length: int, strategy: str = "first_fit") -> list[Pack]:
    """Pack examples into rows of at most `max_length` tokens (see the module doc)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    items = [example_fields(e) for e in examples]
    for ids, _, source in items:
        if len(ids) > max_length:
            where = f"{source}: " if source else ""
            raise PosttrainError(f"{where}example of {len(ids)} tokens does not fit in a pack of {max_length}; "
                                 "apply a max-length policy before packing")
    packs: list[Pack] = []
    if strategy == "sequential":
        for ids, labels, source in items:
            if not packs or len(packs[-1]) + len(ids) > max_length:
                packs.append(Pack())
            packs[-1].add(ids, labels, source)
        return packs
    # First-fit decreasing; ties keep data order (sorted() is stable).
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    for index in order:
        ids, labels, source = items[index]
        target = next((p for p in packs if len(p) + len(ids) <= max_length), None)
        if target is None:
            target = Pack()
            packs.append(target)
        target.add(ids, labels, source)
    return packs


def packing_efficiency(packs: Sequence[Pack], max_length: int) -> float:
    """Fraction of the `len(packs) * max_length` slots that hold real tokens."""
    return sum(len(p) for p in packs) / (len(packs) * max_length) if packs else 0.0
