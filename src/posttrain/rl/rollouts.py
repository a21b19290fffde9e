"""Rollouts: generations -> `Sample`s -> right-padded training batches.

One `Sample` is one sampled response to one prompt. Everything the losses need per
token (the rollout policy's log-probs, the reference's, values, advantages, returns)
is stored on the sample as a 1-D tensor over its *response tokens only* (length L).
`collate` lays a list of samples out as

    input_ids      [B, T]  prompt ids, then response ids, then padding (right padding)
    attention_mask [B, T]  1 on prompt and response tokens
    response_mask  [B, T]  True exactly on the response tokens (the eos included when
                           generation stopped on it; prompt and padding excluded)
    <token field>  [B, T]  the per-token values at the response positions, 0 elsewhere
    <scalar field> [B]     per-sample numbers (e.g. a GRPO advantage)

so `response_logprobs(model, input_ids, attention_mask, response_mask=...)` scores
exactly the sampled tokens, and `logprobs[b, j]` lines up with `<field>[b, j]`.
Keeping per-token data per sample lets PPO reshuffle samples into new minibatches every
epoch without re-padding anything by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from ..data import get_template
from ..data.readers import split_location
from ..data.tokenize import encode
from ..errors import InputError
from ..records import Message


@dataclass
class Sample:
    prompt_index: int  # index into the run's prompt list
    sample_index: int  # 0..n-1 among the samples of that prompt
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: str  # "eos", "stop" or "length"
    score: float = 0.0  # total reward (sum of weighted components, minus penalties)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [L] float tensor
    scalars: dict[str, float] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.response_ids)


def samples_from_generations(generations: Iterable[Any], prompt_indices: Sequence[int]) -> list[Sample]:
    """`rollout.generation.Generation`s (whose `prompt_index` indexes the batch given to
    `generate`) -> Samples whose `prompt_index` is the run-level index `prompt_indices[i]`."""
    return [Sample(prompt_index=prompt_indices[g.prompt_index], sample_index=g.sample_index,
                   prompt_ids=list(g.prompt_ids), response_ids=list(g.response_ids), text=g.text,
                   finish_reason=g.finish_reason)
            for g in generations]


def collate(samples: Sequence[Sample], pad_id: int, token_fields: Sequence[str] = (),
            scalar_fields: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Right-padded [B, T] tensors for `samples` (see the module docstring)."""
    width = max(len(s.prompt_ids) + s.length for s in samples)
    batch_size = len(samples)
    input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    response_mask = torch.zeros((batch_size, width), dtype=torch.bool)
    out_tokens = {name: torch.zeros((batch_size, width), dtype=torch.float32) for name in token_fields}
    for row, sample in enumerate(samples):
        start, end = len(sample.prompt_ids), len(sample.prompt_ids) + sample.length
        input_ids[row, :end] = torch.tensor(sample.prompt_ids + sample.response_ids, dtype=torch.long)
        attention_mask[row, :end] = 1
        response_mask[row, start:end] = True
        for name in token_fields:
            out_tokens[name][row, start:end] = sample.tokens[name].float()
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask, **out_tokens}
    for name in scalar_fields:
        batch[name] = torch.tensor([s.scalars[name] for s in samples], dtype=torch.float32)
    return batch


def store_tokens(samples: Sequence[Sample], name: str, values: torch.Tensor, response_mask: torch.Tensor) -> None:
    """The inverse of `collate` for one field: `values[b]` at `response_mask[b]` -> `samples[b].tokens[name]`."""
    values = values.detach().float().cpu()
    response_mask = response_mask.cpu()
    for row, sample in enumerate(samples):
        sample.tokens[name] = values[row][response_mask[row]].clone()


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive pieces of at most `size` items."""
    size = max(int(size), 1)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def split_even(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """`parts` consecutive pieces whose sizes differ by at most one (minibatches of a rollout batch)."""
    parts = max(min(int(parts), len(items)), 1)
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def reward_rows(samples: Sequence[Sample], prompts: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows for the reward functions: prompt messages, response text, the prompt's extra fields."""
    return [{**prompts[s.prompt_index].extra, "prompt": prompts[s.prompt_index].prompt, "response": s.text}
            for s in samples]


def rollout_records(samples: Sequence[Sample], prompts: Sequence[Any], step: int,
                    components: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """rollouts.jsonl rows: the prompt row's own fields, then step, prompt, response, reward and its components."""
    rows = []
    for i, s in enumerate(samples):
        prompt = prompts[s.prompt_index]
        row: dict[str, Any] = {**prompt.extra, "step": step, "prompt": prompt.prompt, "response": s.text,
                               "reward": round(float(s.score), 6), "sample": s.sample_index,
                               "finish_reason": s.finish_reason, "response_tokens": s.length}
        if components and len(components) > 1:
            row["rewards"] = {k: round(float(v[i]), 6) for k, v in components.items()}
        if "advantage" in s.scalars:
            row["advantage"] = round(float(s.scalars["advantage"]), 6)
        rows.append(row)
    return rows


def render_prompt_ids(prompts: Sequence[Any], tokenizer, template_name: str, max_prompt_tokens: int,
                      length_policy: str) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt (generation prompt of the template) and the indices kept.

    Prompts longer than `max_prompt_tokens` are dropped, cut from the left
    ("truncate"), or an error ("error"), as `length_policy` says.
    """

    template = get_template(template_name, tokenizer)
    ids, kept = [], []
    for index, prompt in enumerate(prompts):
        tokens = encode(tokenizer, template.prompt(prompt.prompt, prompt.extra))
        if len(tokens) > max_prompt_tokens:
            if length_policy == "error":
                path, line = split_location(prompt.source)
                raise InputError(path, line, "prompt", f"prompt is {len(tokens)} tokens, longer than the "
                                 f"{max_prompt_tokens} left for it (max_length - max_new_tokens)")
            if length_policy == "drop":
                continue
            tokens = tokens[len(tokens) - max_prompt_tokens:]
        ids.append(tokens)
        kept.append(index)
    return ids, kept


def conversation(prompt: list[Message], response: str) -> list[Message]:
    return list(prompt) + [{"role": "assistant", "content": response}]
