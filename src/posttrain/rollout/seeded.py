"""Sampling in which every generated sequence has its own random stream.

`generate(..., sample_seeds=...)` samples row r of a batch from `torch.Generator(seed_r)`
alone, so what a prompt's samples are depends only on their seeds, not on which other
prompts share the batch, how the batch is padded, or how many processes split the work.
Online RL relies on it: two processes answering half the prompts each sample exactly the
responses one process answering all of them samples (tests/test_rl_distributed.py).

How: the Gumbel-max trick. With g_i ~ Gumbel(0, 1) independent,

    argmax_i (log p_i + g_i)  ~  Categorical(p)

so a processor that adds row-seeded Gumbel noise to the warped log-probabilities
(temperature, then top-k, then top-p: transformers' order) turns greedy decoding into
sampling from exactly the distribution `do_sample=True` samples from. Filtered tokens stay
at -inf and are never picked.

Cost: one small `torch.rand` per sequence per token (a generator cannot be batched); on a
GPU that is a few microseconds per sequence and token, small beside a decoding step.
"""
from __future__ import annotations

from typing import Sequence

import torch


def sample_seed(prompt_seed: int, sample_index: int) -> int:
    """The seed of sample `sample_index` of a prompt whose seed is `prompt_seed`."""
    return (int(prompt_seed) * 1_000_003 + int(sample_index) * 7_919 + 1) % (2 ** 63 - 1)


class SeededSampler:
    """A transformers logits processor: row r gets Gumbel noise from its own generator.

    Use with `do_sample=False` (the argmax of what it returns is the sample).
    scores: [B, V] next-token logits -> [B, V] log-probs + noise (-inf where filtered).
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
        if self.generators is None:
            if len(self.seeds) != scores.shape[0]:
                raise ValueError(f"{len(self.seeds)} seeds for a batch of {scores.shape[0]} sequences")
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logp = torch.log_softmax(self.warpers(input_ids, scores.float()), dim=-1)
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])
        tiny = torch.finfo(uniform.dtype).tiny
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny)))
        return logp + gumbel
