"""Which batch layout a recipe uses by default: an estimate of each layout's cost, the cheapest wins.

Padding-free rows and a shared prompt remove work (padding, repeated prompts), but
without flash-attention they need a dense `N x N` attention mask over the row, so
attention grows with the square of the row's tokens: for long sequences or large
micro-batches a padded layout can be cheaper. The recipes (`dpo`, `sft`) resolve
`--layout auto` with `choose_layout`, which prices every allowed layout over the run's
micro-batches and logs its choice in one line.

Cost of one micro-batch in a layout (training FLOPs, forward + backward):

    sum over rows of  linear * width + attention * span

- `width`: tokens the row holds (a padded row: the longest row's width; padding is
  computed like real tokens);
- `span`: query-key pairs the attention kernel computes. A row with a mask computes
  all `width**2` pairs (sdpa and eager do not skip masked blocks); flash-attention on
  a padding-free row computes each sequence's own `length**2` only.
- `linear = 6 * P` with P the matmul weights of the transformer blocks;
  `attention = 12 * layers * heads * head_dim * ATTENTION_SLOWDOWN`.

`ATTENTION_SLOWDOWN` scales the attention FLOPs by how much slower they run than the
matmuls of the same FLOP count: measured with `benchmarks/attention_cost.py` on the CPU
(2 cores, torch 2.13, SmolLM2's shapes, forward + backward, a float block mask): 1.56 at
1,024 tokens in the row, 1.16 at 2,048 (docs/benchmarks.md, "Choosing the layout").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

ATTENTION_SLOWDOWN = 1.5


@dataclass(frozen=True)
class CostModel:
    linear: float  # per token of a row
    attention: float  # per query-key pair of a row

    def rows(self, widths: Iterable[int], spans: Iterable[int]) -> float:
        return self.linear * sum(widths) + self.attention * sum(spans)


def cost_model(model) -> CostModel:
    """Per-token and per-pair costs from a causal LM's shape (see the module doc)."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 1) or 1
    hidden = getattr(config, "hidden_size", 64) or 64
    heads = getattr(config, "num_attention_heads", 1) or 1
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    embeddings = {id(p) for module in (_embeddings(model)) for p in module.parameters()}
    block_weights = sum(p.numel() for p in model.parameters() if id(p) not in embeddings and p.dim() >= 2)
    return CostModel(linear=6.0 * block_weights, attention=12.0 * layers * heads * head_dim * ATTENTION_SLOWDOWN)


def _embeddings(model) -> list:
    out = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            out.append(module)
    return out


def padded_cost(costs: CostModel, row_lengths: Sequence[int]) -> float:
    """One row per entry of `row_lengths`, all padded to the longest, causal attention over the padded width."""
    width = max(row_lengths)
    return costs.rows([width] * len(row_lengths), [width * width] * len(row_lengths))


def padding_free_cost(costs: CostModel, row_lengths: Sequence[int], dense_mask: bool = True) -> float:
    """Every row end to end in one row: a dense `N x N` mask, or (flash-attention) per-sequence attention."""
    total = sum(row_lengths)
    span = total * total if dense_mask else sum(n * n for n in row_lengths)
    return costs.rows([total], [span])


def choose_layout(candidates: dict[str, Callable[[list], float]], examples: Sequence, batch_size: int,
                  baseline: str) -> tuple[str, dict[str, float]]:
    """The cheapest candidate over the data's micro-batches (consecutive chunks of `batch_size`).

    `candidates`: layout name -> cost of one micro-batch (a list of examples).
    Returns (name, each candidate's total cost relative to `baseline`'s).
    """
    chunks = [list(examples[i:i + batch_size]) for i in range(0, len(examples), max(batch_size, 1))]
    totals = {name: sum(cost(chunk) for chunk in chunks) for name, cost in candidates.items()}
    reference = totals[baseline] or 1.0
    relative = {name: total / reference for name, total in totals.items()}
    best = min(relative, key=lambda name: (relative[name], name != baseline))
    return best, relative


def describe_choice(name: str, relative: dict[str, float], baseline: str) -> str:
    """One log line: the choice and the estimates it was made from."""
    others = ", ".join(f"{n} {v:.2f}" for n, v in sorted(relative.items(), key=lambda kv: kv[1]))
    return (f"layout: {name} (auto: estimated cost relative to {baseline}: {others}; "
            f"--layout {baseline} for the plain path)")
