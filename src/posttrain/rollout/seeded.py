"""Sampling in which every generated sequence has its own random stream.

`generate(..., sample_seeds=...)` samples row r of a batch from `torch.Generator(seed_r)`
alone, so what a prompt's samples are depends only on their seeds, not on which other
prompts share the batch, how the batch is padded, or how many processes split the work.
Online RL relies on it: two processes answering half the prompts each sample exactly the
responses one process answering all of them samples (tests/test_rl_distributed.py).

How: inverse-CDF sampling. The processor warps the logits as transformers' `do_sample`
does (temperature, then top-k, then top-p), takes the softmax p and its running sum
c_i = p_1 + ... + p_i, draws ONE uniform u from the row's generator and picks the first
token with c_i > u * c_V. Token i is picked with probability p_i, exactly; filtered tokens
(p = 0) have an empty interval and are never picked. It returns 0 for the picked token and
-inf elsewhere, so greedy decoding (`do_sample=False`) emits the sample.

Cost: one random number per sequence and token (a generator cannot be batched). An earlier
version added row-seeded Gumbel noise to every vocabulary entry instead: V random numbers and
two logarithms per sequence and token, ~35 ms per decoding step for 32 sequences of SmolLM2's
49,152-token vocabulary on one CPU core against ~7 ms now (`benchmarks/rl_grpo.py` measures
the whole step).
"""
from __future__ import annotations

from typing import Sequence

import torch


def sample_seed(prompt_seed: int, sample_index: int) -> int:
    """The seed of sample `sample_index` of a prompt whose seed is `prompt_seed`."""
    return (int(prompt_seed) * 1_000_003 + int(sample_index) * 7_919 + 1) % (2 ** 63 - 1)


class SeededSampler:
    """A transformers logits processor: row r samples its token with its own generator.

    Use with `do_sample=False` (the argmax of what it returns is the sample).
    scores: [B, V] next-token logits -> [B, V]: 0 at the sampled token, -inf elsewhere.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = 1.0, top_k: int = 0):
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.seeds = [int(s) for s in seeds]
        self.generators: list[torch.Generator] | None = None  # made on the first call, on the logits' device
        warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The processor interface: every row of the batch, in order."""
        return self.pick_rows(input_ids, scores, None)

    def pick_rows(self, input_ids: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The same for a subset of the rows (`rows`: their indices among the seeds), as
        `rollout.decode` asks once finished rows have left the batch."""
        if self.generators is None:
            if len(self.seeds) != scores.shape[0]:
                raise ValueError(f"{len(self.seeds)} seeds for a batch of {scores.shape[0]} sequences")
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        generators = self.generators if rows is None else [self.generators[r] for r in rows.tolist()]
        probs = torch.softmax(self.warpers(input_ids, scores.float()), dim=-1)
        cdf = probs.double().cumsum(-1)  # float64: 49k float32 terms would drift
        uniform = torch.cat([torch.rand(1, generator=g, device=scores.device, dtype=torch.float64)
                             for g in generators])
        vocab = probs.shape[-1]
        picks = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1), right=True).clamp_(max=vocab - 1)
        stray = probs.gather(-1, picks) == 0  # u * c_V rounded up to c_V: the pick ran past the last kept token
        if bool(stray.any()):
            last_kept = vocab - 1 - (probs > 0).flip(-1).int().argmax(-1, keepdim=True)
            picks = torch.where(stray, last_kept, picks)
        return torch.full_like(scores, float("-inf")).scatter_(-1, picks, 0.0)
