"""Reward-model batches: prompt groups, two layouts, and one forward for every response.

This is the scoring core shared by `posttrain rm` (training and held-out metrics)
and `posttrain score` / `RewardScorer` (inference): the same tokenisation, the
same layouts and the same forward, so a model scores at inference exactly as it
was trained.

A *prompt group* is one prompt with K >= 1 responses: a preference pair is K = 2
(chosen first), an InstructGPT ranking K = 4..9, a best-of-n batch K = n.
`ranks[k]` orders the responses for training: smaller is better, equal is a tie.

Layouts (how a micro-batch of groups becomes model input):

  shared_prompt  one row per group: the prompt once, then every response after it.
                 The positions of each response continue from the end of the prompt,
                 and a block mask lets a response token see the prompt and the
                 earlier tokens of its own response only:

                     row:       p p p | a a | b b b
                     a attends  p p p   a a
                     b attends  p p p         b b b

                 so each response gets the hidden states it would get alone (tested),
                 while the prompt goes through the model once per group. Needs an
                 attention kernel that takes a 4D mask (sdpa, eager).
  padded         one row per (prompt + response), right-padded. Works with every
                 attention kernel and with sequence-classification models.

Either way all responses of a micro-batch go through the model in ONE forward, and
the reward of a response is the head's value at its last token (the end-of-turn
token, unless the length policy cut the response).

Batch tensors (`collate_groups`), P groups of at most K responses, R rows of T tokens:
  input_ids [R, T], position_ids [R, T], attention_mask [R, T] (padded) or
  [R, 1, T, T] bool (shared_prompt, True = may attend), last_index [P, K] (flat
  index into R*T of each response's last token), response_mask [P, K] bool,
  ranks [P, K] long, margins [P] float, has_margin [P] bool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..data import apply_length_policy, tokenize_prompt_response
from ..data.readers import split_location
from ..errors import ConfigError, InputError
from ..records import PreferencePair, Ranked

LAYOUTS = ("auto", "shared_prompt", "padded")
MASKED_KERNELS = ("sdpa", "eager")  # attention kernels that accept a custom 4D mask


@dataclass
class RewardGroup:
    """One prompt and its tokenised responses (each ending with the end-of-turn token)."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    ranks: list[int] | None = None  # per response, 0 = best; equal = tie; None when only scoring
    margin: float | None = None  # preference strength of a pair (Llama 2), from the data
    source: str | None = None

    def num_tokens(self, layout: str) -> int:
        """Tokens this group puts through the model in `layout`."""
        responses = sum(len(r) for r in self.response_ids)
        copies = len(self.response_ids) if layout == "padded" else 1
        return copies * len(self.prompt_ids) + responses


# --------------------------------------------------------------------------- layout choice

def resolve_layout(layout: str, attn_implementation: str | None, model: Any = None) -> str:
    """"auto" -> shared_prompt when the kernel takes a 4D mask and the model is a scalar-head
    model, else padded; an explicit shared_prompt that cannot work is a ConfigError."""
    from ..models.heads import ScalarHeadModel

    if layout not in LAYOUTS:
        raise ConfigError("layout", f"{layout!r} is not one of {', '.join(LAYOUTS)}")
    possible = (attn_implementation in MASKED_KERNELS
                and (model is None or isinstance(getattr(model, "module", model), ScalarHeadModel)))
    if layout == "auto":
        return "shared_prompt" if possible else "padded"
    if layout == "shared_prompt" and not possible:
        raise ConfigError("layout", f"shared_prompt needs the sdpa or eager attention kernel and a posttrain scalar-head "
                                    f"model (attention here: {attn_implementation}); use padded")
    return layout


# --------------------------------------------------------------------------- from records to groups

def ranks_from_record(record: Ranked) -> list[int]:
    """Per-response ranks (0 = best) from `ranking` (best-first indices) or `scores` (ties share a rank)."""
    if record.ranking is not None:
        ranks = [0] * len(record.responses)
        for position, index in enumerate(record.ranking):
            ranks[index] = position
        return ranks
    assert record.scores is not None
    return [sum(1 for other in record.scores if other > score) for score in record.scores]


def _located(source: str | None, field: str, message: str) -> InputError:
    path, line = split_location(source)
    return InputError(path, line, field, message)


def training_texts(record: Any) -> tuple[list[str], list[int], list[str], float | None]:
    """(responses, ranks, field names, margin) of a preference pair or a ranking."""
    if isinstance(record, PreferencePair):
        return [record.chosen, record.rejected], [0, 1], ["chosen", "rejected"], record.margin
    if isinstance(record, Ranked):
        # repeated responses and all-equal scores were refused by the data layer (data/formats.py)
        ranks = ranks_from_record(record)
        return list(record.responses), ranks, [f"responses[{i}]" for i in range(len(record.responses))], None
    raise _located(record.source, None, f"a reward model trains on preference pairs (prompt, chosen, rejected) "
                                        f"or rankings (prompt, responses, ranking|scores), not {type(record).__name__} rows")


def tokenize_group(prompt: list[dict], responses: Sequence[str], tokenizer: Any, template: Any, *,
                   ranks: list[int] | None = None, margin: float | None = None, source: str | None = None,
                   max_length: int | None = None, policy: str = "error", stats: Any = None,
                   fields: Sequence[str] | None = None, extra: dict | None = None) -> RewardGroup | None:
    """Tokenise one prompt and its responses, fitted to `max_length` under `policy`
    (the prompt is cut once for all responses); None when the policy drops the group."""

    prompt_ids: list[int] = []
    response_ids: list[list[int]] = []
    for text in responses:
        prompt_ids, ids = tokenize_prompt_response(prompt, text, tokenizer, template, extra)
        response_ids.append(ids)
    longest = max(range(len(response_ids)), key=lambda i: len(response_ids[i]))
    field = fields[longest] if fields else "response"
    fitted = apply_length_policy(prompt_ids, response_ids, max_length, policy, source, stats, field_name=field)
    if fitted is None:
        return None
    prompt_ids, response_ids = fitted
    return RewardGroup(list(prompt_ids), [list(r) for r in response_ids], ranks, margin, source)


def training_group(record: Any, tokenizer: Any, template: Any, max_length: int | None, policy: str,
                   stats: Any = None) -> RewardGroup | None:
    """A PreferencePair or Ranked record -> a RewardGroup with ranks (None: dropped by the policy,
    or truncation made two responses identical, which would teach nothing)."""
    texts, ranks, fields, margin = training_texts(record)
    group = tokenize_group(record.prompt, texts, tokenizer, template, ranks=ranks, margin=margin,
                           source=record.source, max_length=max_length, policy=policy, stats=stats,
                           fields=fields, extra=record.extra)
    if group is not None and len({tuple(r) for r in group.response_ids}) < len(group.response_ids):
        return None
    return group


# --------------------------------------------------------------------------- collation

def _rows(groups: Sequence[RewardGroup], layout: str) -> tuple[list[tuple[list[int], list[int], list[int]]], list[list[tuple[int, int]]]]:
    """Rows as (ids, positions, branch) and, per group, (row, column) of each response's last token.

    branch: 0 for prompt tokens, k + 1 for tokens of response k (used by the block mask).
    """
    rows: list[tuple[list[int], list[int], list[int]]] = []
    ends: list[list[tuple[int, int]]] = []
    for group in groups:
        prompt = group.prompt_ids
        group_ends = []
        if layout == "shared_prompt":
            ids, positions, branch = list(prompt), list(range(len(prompt))), [0] * len(prompt)
            for k, response in enumerate(group.response_ids):
                ids += response
                positions += range(len(prompt), len(prompt) + len(response))
                branch += [k + 1] * len(response)
                group_ends.append((len(rows), len(ids) - 1))
            rows.append((ids, positions, branch))
        else:
            for response in group.response_ids:
                ids = prompt + response
                group_ends.append((len(rows), len(ids) - 1))
                rows.append((ids, list(range(len(ids))), [1] * len(ids)))
        ends.append(group_ends)
    return rows, ends


def shared_prompt_mask(branch: torch.Tensor) -> torch.Tensor:
    """Bool mask [R, 1, T, T] from branch ids [R, T] (padding = -1): query q may attend key k
    when k <= q and k is a prompt token (branch 0) or in q's own branch.

    Padding queries see the prompt and other padding, so no row of the mask is empty
    (an all-masked row gives NaN in softmax); real queries never see padding."""
    length = branch.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=branch.device).tril()
    query, key = branch[:, :, None], branch[:, None, :]
    allowed = causal & ((key == 0) | (key == query))
    return allowed[:, None, :, :]


def collate_groups(groups: Sequence[RewardGroup], layout: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Model input for all responses of `groups` in one forward (see the module docstring)."""
    if layout not in ("shared_prompt", "padded"):
        raise ValueError(f"layout must be shared_prompt or padded (resolve 'auto' first), got {layout!r}")
    rows, ends = _rows(groups, layout)
    num_rows, length = len(rows), max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((num_rows, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((num_rows, length), dtype=torch.long)
    branch = torch.full((num_rows, length), -1, dtype=torch.long)
    for r, (ids, positions, row_branch) in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        position_ids[r, :len(ids)] = torch.tensor(positions, dtype=torch.long)
        branch[r, :len(ids)] = torch.tensor(row_branch, dtype=torch.long)
    width = max(len(g.response_ids) for g in groups)
    last_index = torch.zeros((len(groups), width), dtype=torch.long)
    response_mask = torch.zeros((len(groups), width), dtype=torch.bool)
    ranks = torch.full((len(groups), width), width, dtype=torch.long)
    for p, (group, group_ends) in enumerate(zip(groups, ends)):
        for k, (row, column) in enumerate(group_ends):
            last_index[p, k] = row * length + column
            response_mask[p, k] = True
            ranks[p, k] = group.ranks[k] if group.ranks is not None else 0
    attention_mask = shared_prompt_mask(branch) if layout == "shared_prompt" else (branch >= 0).long()
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask,
            "last_index": last_index, "response_mask": response_mask, "ranks": ranks,
            "margins": torch.tensor([g.margin or 0.0 for g in groups], dtype=torch.float32),
            "has_margin": torch.tensor([g.margin is not None for g in groups], dtype=torch.bool)}


# --------------------------------------------------------------------------- the forward

def forward_rewards(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rewards [P, K] float32 of every response in `batch`, from one forward (0 in empty slots).

    `model` is a ScalarHeadModel (possibly DDP-wrapped) for either layout, or a
    sequence-classification model for the padded layout.
    """
    from ..models.heads import ScalarHeadModel

    mask = batch["attention_mask"]
    inner = getattr(model, "module", model)
    if isinstance(inner, ScalarHeadModel):
        if mask.dim() == 4 and mask.dtype == torch.bool:
            # Additive float mask, built once for every layer: eager attention adds the mask to the
            # scores, and sdpa given a bool mask would convert it in each layer and keep every copy
            # for backward (layers x rows x T^2 x 4 bytes).
            dtype = next(inner.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
        values = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])
        flat = values.reshape(-1)
    else:
        if mask.dim() == 4:
            raise ConfigError("layout", "a sequence-classification reward model needs the padded layout")
        logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits[:, 0].float()
        # one row per response: the row's score goes to every slot that ends in that row
        flat = logits.repeat_interleave(batch["input_ids"].shape[1])
    rewards = flat[batch["last_index"]]
    return torch.where(batch["response_mask"], rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def length_sorted_batches(groups: Sequence[RewardGroup], layout: str, max_responses: int) -> list[list[int]]:
    """Group indices in batches of at most `max_responses` responses, longest first (padding
    stays small because neighbours have similar lengths; an out-of-memory shows up at once)."""
    order = sorted(range(len(groups)), key=lambda i: -max(len(groups[i].prompt_ids) + len(r)
                                                         for r in groups[i].response_ids))
    batches: list[list[int]] = []
    current: list[int] = []
    count = 0
    for index in order:
        size = len(groups[index].response_ids)
        if current and count + size > max_responses:
            batches.append(current)
            current, count = [], 0
        current.append(index)
        count += size
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def rewards_for_groups(model: Any, groups: Sequence[RewardGroup], layout: str, pad_id: int,
                       max_responses: int = 32, on_batch: Any = None) -> list[torch.Tensor]:
    """Rewards of every group ([K] float32 on the CPU each), in the order of `groups`.

    Batches are formed by length (see `length_sorted_batches`); `on_batch(num_responses,
    num_tokens)` is called after each forward (progress reports).
    """
    results: list[torch.Tensor | None] = [None] * len(groups)
    device = _device(model)
    for indices in length_sorted_batches(groups, layout, max_responses):
        chosen = [groups[i] for i in indices]
        batch = {k: v.to(device) for k, v in collate_groups(chosen, layout, pad_id).items()}
        rewards = forward_rewards(model, batch).float().cpu()
        for row, index in enumerate(indices):
            results[index] = rewards[row, :len(groups[index].response_ids)].clone()
        if on_batch is not None:
            on_batch(sum(len(g.response_ids) for g in chosen), sum(g.num_tokens(layout) for g in chosen))
    return results  # type: ignore[return-value]
