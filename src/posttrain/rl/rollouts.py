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

The training forward need not run that padded layout. `tree_layout` adds `tree_*` tensors
that compute each prompt ONCE per micro-batch for all its samples (the DPO recipe's shared
prompt, `train.preference_batch`: the prompt, then each response on its own branch that
attends to the prompt and itself), padded per group or padding-free (every group end to end
in one row); `tree_logprobs` runs the model on them and lays the per-token results back out
as the `[B, T]` tensors above, so the losses do not change. `choose_tree_layout` prices the
layouts (`train.layout_cost`) per micro-batch and takes the cheapest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..data import get_template
from ..data.readers import split_location
from ..data.tokenize import encode
from ..errors import ConfigError, InputError
from ..records import Message
from ..train.layout_cost import CostModel, cost_model, padded_cost, padding_free_cost
from ..train.preference_batch import layout_batch, plain_group, shared_prompt_group

# `rollout_layout` of the online recipes: how the training forward lays out a micro-batch.
ROLLOUT_LAYOUTS = ("auto", "padded", "shared_prompt", "shared_prompt_padding_free")


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


def prompt_groups(samples: Sequence[Sample]) -> list[list[int]]:
    """Indices of the samples that share a prompt (same prompt ids), in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(tuple(sample.prompt_ids), []).append(index)
    return list(groups.values())


def tree_row_lengths(samples: Sequence[Sample], shared: bool) -> list[int]:
    """Tokens of each group row: the prompt once + (1 + response) per sample when shared."""
    if not shared:
        return [len(s.prompt_ids) + s.length for s in samples]
    return [len(samples[g[0]].prompt_ids) + sum(1 + samples[i].length for i in g) if len(g) > 1
            else len(samples[g[0]].prompt_ids) + samples[g[0]].length for g in prompt_groups(samples)]


def choose_tree_layout(samples: Sequence[Sample], costs: CostModel) -> str:
    """The cheapest of padded, shared_prompt and shared_prompt_padding_free for this micro-batch
    (training FLOPs with the masked-attention slowdown, `train.layout_cost`)."""
    candidates = {"padded": padded_cost(costs, tree_row_lengths(samples, False)),
                  "shared_prompt": padded_cost(costs, tree_row_lengths(samples, True)),
                  "shared_prompt_padding_free": padding_free_cost(costs, tree_row_lengths(samples, True))}
    return min(candidates, key=lambda name: (candidates[name], name != "padded"))


def tree_layout(samples: Sequence[Sample], pad_id: int, padding_free: bool,
                mask_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """`tree_*` tensors for one forward over `samples` with each prompt computed once (module doc):
    input_ids, position_ids, attention_mask (4-D additive float mask), response_mask and
    sequence_index (which sample a response token belongs to, -1 elsewhere)."""
    groups = []
    for members in prompt_groups(samples):
        first = samples[members[0]]
        if len(members) == 1:
            groups.append(plain_group(first.prompt_ids, first.response_ids, members[0]))
        else:
            groups.append(shared_prompt_group(first.prompt_ids, [samples[i].response_ids for i in members], members))
    batch = layout_batch(groups, len(samples), pad_id=pad_id, padding_free=padding_free, mask_style="float",
                         mask_dtype=mask_dtype)
    return {f"tree_{k}": batch[k] for k in ("input_ids", "position_ids", "attention_mask", "response_mask",
                                             "sequence_index")}


def tree_logprobs(model, batch: dict[str, torch.Tensor], temperature: float, entropy: bool = False):
    """`response_logprobs` over a batch's `tree_*` layout, returned as `TokenLogprobs` of `[B, T]`
    tensors in the batch's plain layout (`collate`): the same values the plain forward gives,
    to float rounding (`tests/test_rl_rollouts.py`)."""
    from ..models.logprobs import TokenLogprobs, response_logprobs

    out = response_logprobs(model, batch["tree_input_ids"], batch["tree_attention_mask"],
                            response_mask=batch["tree_response_mask"], position_ids=batch["tree_position_ids"],
                            temperature=temperature, return_entropy=entropy)
    plain = tree_to_plain(batch)
    return TokenLogprobs(plain(out.logprobs), plain(out.entropy))


def tree_to_plain(batch: dict[str, torch.Tensor]) -> Callable[[torch.Tensor | None], torch.Tensor | None]:
    """A function that lays per-token values computed over the batch's `tree_*` layout (`[R, L]`,
    read at `tree_response_mask`) out as `[B, T]` in its plain layout (at `response_mask`)."""
    tree_mask = batch["tree_response_mask"]
    # Within a sample its tokens come in position order; a stable sort by sample gives the plain
    # layout's row-major order of response tokens.
    order = torch.argsort(batch["tree_sequence_index"][tree_mask], stable=True)
    plain_mask = batch["response_mask"]

    def plain(values: torch.Tensor | None) -> torch.Tensor | None:
        if values is None:
            return None
        return values.new_zeros(plain_mask.shape).masked_scatter(plain_mask, values[tree_mask][order])
    return plain


def tree_layout_allowed(cfg) -> bool:
    """Shared-prompt layouts need a 4-D mask (sdpa, eager) and no virtual tokens (prefix tuning)."""
    return cfg.attn_implementation in ("sdpa", "eager") and cfg.peft != "prefix"


def check_rollout_layout(cfg) -> None:
    if cfg.rollout_layout not in ("auto", "padded") and not tree_layout_allowed(cfg):
        raise ConfigError("rollout_layout", f"{cfg.rollout_layout} needs a 4-D attention mask, which "
                                            f"{cfg.attn_implementation} / peft {cfg.peft} cannot take; use padded or auto")


def rollout_collate(run: Any, cfg: Any, pad_id: int, token_fields: Sequence[str] = (),
                    scalar_fields: Sequence[str] = ()) -> Callable[[list[Sample]], dict[str, torch.Tensor]]:
    """collate_micro for the training forward of an online run: the plain `collate` batch (what
    the losses read), plus the `tree_*` layout of `cfg.rollout_layout` (auto: the cheapest per
    micro-batch) that the recipe's forward runs the model on (`tree_logprobs`, PPO's `ActorCritic`)."""
    layout = cfg.rollout_layout if tree_layout_allowed(cfg) else "padded"
    policy = run.unwrapped_policy()
    costs = cost_model(policy) if layout == "auto" else None
    dtype = next(policy.parameters()).dtype

    def collate_micro(micro: list[Sample]) -> dict[str, torch.Tensor]:
        batch = collate(micro, pad_id, token_fields, scalar_fields)
        name = choose_tree_layout(micro, costs) if costs is not None else layout
        if name != "padded":
            batch.update(tree_layout(micro, pad_id, name.endswith("padding_free"), dtype))
        return batch
    return collate_micro


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


def scoring_batches(run: Any, samples: Sequence[Sample], micro_batch_size: int,
                    collate_micro: Callable[[list[Sample]], dict[str, torch.Tensor]]) -> Iterator[tuple[list[Sample], dict]]:
    """(micro, batch on `run.device`) over `samples`, with the model in eval mode and no gradients.

    The one loop of the no-grad passes that score a rollout batch before its update (pi_old,
    pi_ref, V_old, DPO sequence sums): eval mode so dropout does not perturb log-probs that the
    update compares against. The model's train/eval mode is restored when the loop ends, also
    when the caller leaves it early (the generator's `finally`); gradients stay off for the whole
    loop, the body included, because `torch.no_grad()` is entered once around all the yields."""
    model = run.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for micro in chunks(samples, micro_batch_size):
                yield micro, {k: v.to(run.device) for k, v in collate_micro(micro).items()}
    finally:
        model.train(was_training)


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
