"""The batch path of the preference recipes: many sequences in one forward pass, log-probs
only on response tokens.

A micro-batch of B pairs holds S = 2B scored sequences (chosen i is sequence i,
rejected i is sequence B + i); a KTO micro-batch holds one per example. Every
layout below runs all of them through the model in ONE forward pass, and
`sequence_logps` gathers log-probs with `response_logprobs`, which projects
only the hidden states that predict response tokens through the output head:
prompt positions never get a vocabulary-sized row of logits.

Building blocks. A *group* is a list of `Piece`s that may attend to each other;
each piece has token ids, a `branch`, the position id of its first token, and
the scored sequence it belongs to (None for context). Inside a group, token q
may attend to token k when k is not after q and k's branch is 0 (shared by
all) or equal to q's branch. Groups never see each other.

- plain sequence: `[prompt | response]`, all branch 0: an ordinary causal row.
- shared prompt (`--prefix-sharing`): `[prompt[:-1] | prompt[-1], chosen | prompt[-1], rejected]`
  with branches 0, 1, 2. Each response branch starts with its own copy of the
  last prompt token, at that token's position (P - 1), so both responses
  continue from position P: the rejected positions restart from the prompt end,
  not from the end of chosen. Why the copy: the first response token is
  predicted from the hidden state of the token just before it in the row, and
  for the rejected branch that would otherwise be the last chosen token. The
  copy sees exactly what the original sees, so it has the same hidden state,
  and `response_logprobs` works unchanged. Cost: one token per pair; saved:
  P - 1 prompt tokens per pair.

Layouts (`padding_free`):
- padded: one group per row, right-padded to the longest. Plain groups use an
  ordinary 2D attention mask (the fastest kernel path); shared-prompt groups a
  4D mask per row.
- padding-free: every group of the micro-batch end to end in ONE row `[1, N]`,
  no padding at all. It needs a 4D mask of N x N (an additive float mask in
  the model's dtype, built once and shared by every layer), except with
  flash-attention, where plain groups need no mask at all: the restarting
  `position_ids` mark the sequence boundaries (`mask_style="position_ids"`).
  A dense N x N mask makes attention grow with the square of the micro-batch,
  so without flash-attention padding-free pays off for short sequences only.

The DPO recipe's `--layout auto` (the default) prices each layout the kernel
allows over the run's micro-batches and takes the cheapest (`resolve_layout`,
train/layout_cost.py); `--layout padded` is the plain path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch

from ..errors import ConfigError
from .layout_cost import choose_layout, cost_model, describe_choice, padded_cost, padding_free_cost

MASK_STYLES = ("bool", "float", "position_ids")


@dataclass
class Piece:
    ids: Sequence[int]
    branch: int = 0
    position: int = 0
    sequence: int | None = None  # index of the scored sequence these response tokens belong to


def plain_group(prompt: Sequence[int], response: Sequence[int], sequence: int) -> list[Piece]:
    """`[prompt | response]` as one causal sequence; the response is scored as `sequence`."""
    return [Piece(prompt, 0, 0, None), Piece(response, 0, len(prompt), sequence)]


def shared_prompt_group(prompt: Sequence[int], responses: Sequence[Sequence[int]], sequences: Sequence[int]) -> list[Piece]:
    """The prompt once, each response on its own branch (see the module doc). `len(prompt) >= 1`."""
    head, last, start = prompt[:-1], prompt[-1:], len(prompt)
    pieces = [Piece(head, 0, 0, None)]
    for branch, (response, sequence) in enumerate(zip(responses, sequences), start=1):
        pieces += [Piece(last, branch, start - 1, None), Piece(response, branch, start, sequence)]
    return pieces


def group_tokens(group: list[Piece]) -> int:
    return sum(len(p.ids) for p in group)


def tree_attention_mask(group_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """Bool mask `[R, 1, L, L]`, True where query q may attend key k (see the module doc).

    `group_ids`, `branch_ids`: `[R, L]`. Padding has its own group (-1) and
    attends only to padding, so no row of the mask is empty.
    """
    length = group_ids.shape[-1]
    same_group = group_ids[:, :, None] == group_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=group_ids.device).tril()
    key_branch = branch_ids[:, None, :]
    visible_branch = (key_branch == 0) | (branch_ids[:, :, None] == key_branch)
    return (same_group & causal & visible_branch)[:, None]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as an additive float mask: 0 where allowed, the dtype's minimum elsewhere."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)


def layout_batch(groups: list[list[Piece]], num_sequences: int, *, pad_id: int, padding_free: bool = False,
                 mask_style: str = "bool", mask_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Tensors for one forward pass over `groups`.

    Returns `input_ids`, `position_ids`, `response_mask` (bool), `sequence_index`
    (which scored sequence a response token belongs to, -1 elsewhere), all
    `[R, L]`; `lengths [S]` (response tokens per sequence); `attention_mask`
    (`[R, L]` for padded plain rows, `[R, 1, L, L]` bool or float otherwise,
    absent for `mask_style="position_ids"` padding-free rows); `tokens` (real
    tokens in the batch).
    """
    if mask_style not in MASK_STYLES:
        raise ValueError(f"mask_style must be one of {MASK_STYLES}, got {mask_style!r}")
    plain = all(p.branch == 0 for g in groups for p in g)
    if mask_style == "position_ids" and not plain:
        raise ValueError("shared-prompt groups need a 4D mask; mask_style='position_ids' only serves plain sequences")
    rows = [groups] if padding_free else [[g] for g in groups]
    width = max(sum(group_tokens(g) for g in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    group_ids = torch.full(shape, -1, dtype=torch.long)
    branch_ids = torch.zeros(shape, dtype=torch.long)
    sequence_index = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for g, group in enumerate(row):
            for piece in group:
                n = len(piece.ids)
                span = slice(at, at + n)
                input_ids[r, span] = torch.as_tensor(list(piece.ids), dtype=torch.long)
                position_ids[r, span] = torch.arange(piece.position, piece.position + n)
                group_ids[r, span] = g
                branch_ids[r, span] = piece.branch
                if piece.sequence is not None:
                    sequence_index[r, span] = piece.sequence
                at += n
        position_ids[r, at:] = torch.arange(width - at)  # padding: its own positions from 0
    response_mask = sequence_index >= 0
    batch: dict[str, Any] = {
        "input_ids": input_ids, "position_ids": position_ids, "response_mask": response_mask,
        "sequence_index": sequence_index,
        "lengths": torch.bincount(sequence_index[response_mask], minlength=num_sequences),
        "tokens": int((group_ids >= 0).sum()),
    }
    if plain and not padding_free:
        batch["attention_mask"] = (group_ids >= 0).long()
    elif mask_style == "bool":
        batch["attention_mask"] = tree_attention_mask(group_ids, branch_ids)
    elif mask_style == "float":
        batch["attention_mask"] = additive(tree_attention_mask(group_ids, branch_ids), mask_dtype)
    return batch


class SequenceLogps(NamedTuple):
    """Per-sequence results, each `[S]` float32."""

    logps: torch.Tensor                 # sum of the response tokens' log-probs (differentiable)
    lengths: torch.Tensor               # number of response tokens
    mean_logits: torch.Tensor | None    # mean over response tokens of the mean logit (a metric, detached)


def sequence_logps(model, batch: dict[str, Any], *, mean_logits: bool = False) -> SequenceLogps:
    """Run `model` once over a `layout_batch` and sum log-probs per scored sequence."""
    from ..models.logprobs import response_logprobs

    mask = batch["response_mask"]
    out = response_logprobs(model, batch["input_ids"], batch.get("attention_mask"), response_mask=mask,
                            position_ids=batch["position_ids"], return_mean_logits=mean_logits)
    index = batch["sequence_index"][mask]
    lengths = batch["lengths"]
    num = lengths.shape[0]
    logps = out.logprobs.new_zeros(num).index_add(0, index, out.logprobs[mask])
    means = None
    if mean_logits:
        sums = out.mean_logits.new_zeros(num).index_add(0, index, out.mean_logits[mask])
        means = sums / lengths.clamp(min=1).to(sums.dtype)
    return SequenceLogps(logps, lengths.to(logps.dtype), means)


# --------------------------------------------------------------------------- collators


@dataclass
class BatchLayout:
    """How the recipes lay out a micro-batch: padding-free or padded, prompt shared or not."""

    pad_id: int
    padding_free: bool = False
    prefix_sharing: bool = False
    mask_style: str = "float"
    mask_dtype: torch.dtype = torch.float32

    def _batch(self, groups: list[list[Piece]], num_sequences: int) -> dict[str, Any]:
        return layout_batch(groups, num_sequences, pad_id=self.pad_id, padding_free=self.padding_free,
                            mask_style=self.mask_style, mask_dtype=self.mask_dtype)

    def pairs(self, examples: Sequence[Any]) -> dict[str, Any]:
        """B pairs -> 2B sequences: chosen i is sequence i, rejected i is sequence B + i."""
        b = len(examples)
        if self.prefix_sharing:
            groups = [shared_prompt_group(e.prompt_ids, [e.chosen_ids, e.rejected_ids], [i, b + i])
                      for i, e in enumerate(examples)]
        else:
            groups = ([plain_group(e.prompt_ids, e.chosen_ids, i) for i, e in enumerate(examples)]
                      + [plain_group(e.prompt_ids, e.rejected_ids, b + i) for i, e in enumerate(examples)])
        batch = self._batch(groups, 2 * b)
        batch["example_index"] = torch.tensor([e.index for e in examples], dtype=torch.long)
        return batch

    def unpaired(self, examples: Sequence[Any], field: str = "completion_ids") -> dict[str, Any]:
        """B KTO examples -> B sequences `[prompt | completion]` (or the mismatched completion)."""
        groups = [plain_group(e.prompt_ids, getattr(e, field), i) for i, e in enumerate(examples)]
        batch = self._batch(groups, len(examples))
        batch["example_index"] = torch.tensor([e.index for e in examples], dtype=torch.long)
        batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
        return batch

    def pair_tokens(self, example: Any) -> int:
        """Tokens one pair puts through the model in this layout (for throughput)."""
        if self.prefix_sharing:
            return len(example.prompt_ids) + 1 + len(example.chosen_ids) + len(example.rejected_ids)
        return 2 * len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)


def mask_style_for(attn_implementation: str) -> str:
    """The 4D-mask form an attention kernel takes: flash-attention uses position ids, sdpa and eager an
    additive float mask.

    Why float for sdpa too: given a bool mask, sdpa converts it to a float mask inside
    every attention call, and in training each layer keeps its own converted copy for
    backward (layers x N^2 x 4 bytes: 0.5 GB for one 2,048-token row of a 30-layer model).
    A float mask built once is shared by every layer.
    """
    return {"flash_attention_2": "position_ids"}.get(attn_implementation, "float")


# --------------------------------------------------------------------------- choosing the layout

# `--layout` of the DPO recipe: name -> (padding_free, prefix_sharing). "padded" is the plain path.
LAYOUTS = {"padded": (False, False), "padding_free": (True, False), "shared_prompt": (False, True),
           "shared_prompt_padding_free": (True, True)}
LAYOUT_CHOICES = ["auto", *LAYOUTS]


def layout_name(padding_free: bool, prefix_sharing: bool) -> str:
    return next(name for name, flags in LAYOUTS.items() if flags == (padding_free, prefix_sharing))


def allowed_layouts(attn_implementation: str, peft: str = "none") -> list[str]:
    """The layouts an attention kernel (and PEFT method) can run."""
    if peft == "prefix" or attn_implementation == "flex_attention":
        return ["padded"]
    if attn_implementation == "flash_attention_2":  # no 4D mask; padding-free rows by position ids
        return ["padded", "padding_free"]
    return list(LAYOUTS)


def pair_row_lengths(example: Any, padding_free: bool, prefix_sharing: bool) -> list[int]:
    """Token counts of the groups one pair becomes in a layout."""
    if prefix_sharing:
        return [len(example.prompt_ids) + 1 + len(example.chosen_ids) + len(example.rejected_ids)]
    return [len(example.prompt_ids) + len(example.chosen_ids), len(example.prompt_ids) + len(example.rejected_ids)]


def pair_layout_cost(costs, name: str, examples: Sequence[Any], dense_mask: bool = True) -> float:
    """Estimated cost of one micro-batch of pairs in layout `name` (see train/layout_cost.py)."""

    padding_free, prefix_sharing = LAYOUTS[name]
    rows = [n for e in examples for n in pair_row_lengths(e, padding_free, prefix_sharing)]
    return padding_free_cost(costs, rows, dense_mask) if padding_free else padded_cost(costs, rows)


def resolve_layout(cfg, model, examples: Sequence[Any]) -> tuple[bool, bool, str]:
    """(padding_free, prefix_sharing, one log line) for a DPO config.

    An explicit `--layout`, or the old `--padding-free` / `--prefix-sharing` flags, is
    taken as given (check_layout has vetted it); `auto` prices every layout the kernel
    allows over the data and takes the cheapest (train/layout_cost.py).
    """

    if cfg.padding_free or cfg.prefix_sharing:  # the old flags: --padding-free, --prefix-sharing
        name = layout_name(cfg.padding_free, cfg.prefix_sharing)
        return (*LAYOUTS[name], f"layout: {name} (from --padding-free/--prefix-sharing)")
    if cfg.layout != "auto":
        return (*LAYOUTS[cfg.layout], f"layout: {cfg.layout} (--layout)")
    costs = cost_model(model)
    dense = cfg.attn_implementation != "flash_attention_2"
    candidates = {name: (lambda chunk, name=name: pair_layout_cost(costs, name, chunk, dense))
                  for name in allowed_layouts(cfg.attn_implementation, cfg.peft)}
    name, relative = choose_layout(candidates, examples, cfg.batch_size, baseline="padded")
    return (*LAYOUTS[name], describe_choice(name, relative, "padded"))


def check_layout(cfg) -> str:
    """The mask style for `cfg.attn_implementation`; a ConfigError for a layout that kernel cannot run.

    `cfg.layout` (DPO) names the layout; `cfg.padding_free` / `cfg.prefix_sharing` are the
    older flags (KTO has only `padding_free`)."""

    style = mask_style_for(cfg.attn_implementation)
    layout = getattr(cfg, "layout", "auto")
    sharing = getattr(cfg, "prefix_sharing", False) or layout in ("shared_prompt", "shared_prompt_padding_free")
    padding_free = cfg.padding_free or layout in ("padding_free", "shared_prompt_padding_free")
    if layout != "auto" and (cfg.padding_free or getattr(cfg, "prefix_sharing", False)):
        raise ConfigError("layout", "give --layout or the older --padding-free/--prefix-sharing flags, not both")
    needs_4d = sharing or (padding_free and style != "position_ids")
    if needs_4d and cfg.attn_implementation in ("flash_attention_2", "flex_attention"):
        raise ConfigError("attn_implementation", f"{cfg.attn_implementation} cannot take the 4D mask that this "
                          "layout needs (prefix sharing, or padding-free without flash-attention); use sdpa or eager")
    if cfg.peft == "prefix" and (sharing or padding_free):
        raise ConfigError("peft", "prefix tuning adds virtual tokens to every row; use padded batches with it")
    return style
