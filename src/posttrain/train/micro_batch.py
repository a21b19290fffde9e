"""How many examples go through the model at once: `--micro-batch-tokens` (auto by default).

Peak memory of a training step is mostly the activations autograd saves for backward,
about `layers x (14 hidden + 3 intermediate)` values per token (SmolLM2-135M in float32:
~1.5 MB per token, 30 layers), so a micro-batch of 4 DPO pairs (~1,200 tokens) holds
~1.8 GB against 0.54 GB of weights. Splitting the optimizer step's `--batch-size`
examples into several micro-batches whose gradients are accumulated takes the same
step: the engine picks the same examples for the step (micro-batch m of a step is
the next `size` examples of the epoch's order, so the union over the step is
unchanged, also per process), every recipe returns loss *sums* and the engine divides
by the global item count (ARCHITECTURE.md, "Means"). Only the order of float additions
changes. `tests/test_micro_batch.py` checks the whole-run equality.

The rule (`plan_micro_batches`), applied when `--micro-batch-tokens` is -1 (auto):
- budget: on the CPU, the tokens whose activations take as much memory as the model's
  weights (at least `MIN_TOKENS`); on a GPU, a quarter of the free device memory;
- size: the largest divisor of `--batch-size` whose micro-batch of the longest examples
  (`size x` the 95th percentile of the tokens per example) fits the budget, at least 1.
`--micro-batch-tokens N` sets the budget; 0 never splits (`--batch-size` examples per
micro-batch, as before). An explicit `--grad-accum` is kept and multiplied.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

MIN_TOKENS = 256
GPU_FREE_SHARE = 0.25


def activation_bytes_per_token(model) -> float:
    """Bytes autograd keeps per token for backward, estimated from the model's shape (see the doc)."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 1) or 1
    hidden = getattr(config, "hidden_size", 64) or 64
    intermediate = getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden
    dtype_bytes = next(model.parameters()).element_size()
    return float(layers * (14 * hidden + 3 * intermediate) * dtype_bytes)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def token_budget(model, device=None) -> int:
    """The auto budget of tokens per micro-batch (see the module doc)."""
    import torch

    per_token = activation_bytes_per_token(model)
    if device is not None and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return max(MIN_TOKENS, int(GPU_FREE_SHARE * free / per_token))
    return max(MIN_TOKENS, int(weight_bytes(model) / per_token))


def percentile(values: Sequence[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else 0


def micro_batch_size(batch_size: int, tokens_per_example: Sequence[int], budget: int) -> int:
    """The largest divisor of `batch_size` whose micro-batch fits `budget` tokens (at least 1)."""
    if budget <= 0:
        return batch_size
    typical_long = max(1, percentile(tokens_per_example, 0.95))
    fits = [d for d in range(1, batch_size + 1) if batch_size % d == 0 and d * typical_long <= budget]
    return max(fits, default=1)


@dataclasses.dataclass(frozen=True)
class MicroBatchPlan:
    size: int  # examples per micro-batch
    grad_accum: int  # micro-batches per optimizer step per process
    budget: int  # tokens (0: no split)
    line: str  # what the log says

    def apply(self, args):
        """`args` with the micro-batch size and accumulation of this plan (the same global batch)."""
        return dataclasses.replace(args, batch_size=self.size, grad_accum=self.grad_accum)


def plan_micro_batches(args, model, examples: Sequence[Any], token_count: Callable[[Any], int],
                       unit: str = "examples", device=None) -> MicroBatchPlan:
    """How `args.batch_size` examples per process and step are split (see the module doc)."""
    requested = getattr(args, "micro_batch_tokens", 0)
    if requested == 0:
        return MicroBatchPlan(args.batch_size, args.grad_accum, 0,
                              f"micro-batches: {args.batch_size} {unit} each (--micro-batch-tokens 0: no split)")
    budget = token_budget(model, device) if requested < 0 else requested
    tokens = [token_count(e) for e in examples]
    size = micro_batch_size(args.batch_size, tokens, budget)
    split = args.batch_size // size
    how = "auto: the activations of about as many tokens as the weights take" if requested < 0 else "--micro-batch-tokens"
    per_token_mb = activation_bytes_per_token(model) / 2**20
    line = (f"micro-batches: {size} {unit} each, {split * args.grad_accum} per step and process "
            f"(budget {budget} tokens, {how}; ~{per_token_mb:.2f} MB of activations per token; "
            f"95th percentile {percentile(tokens, 0.95)} tokens per example; --micro-batch-tokens 0: no split)")
    return MicroBatchPlan(size, args.grad_accum * split, budget, line)
