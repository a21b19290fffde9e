"""Turn tokenised examples or packs into model-ready tensor batches.

- `pad_collate(examples, pad_id)`: one example per row, right-padded.
  Returns `input_ids`, `attention_mask` (1 = real token) and `labels`
  (-100 on padding), each `[batch, longest]`.
- `packed_collate(packs, pad_id)`: one pack per row (see `packing.py`).
  Returns `input_ids`, `labels`, `position_ids` (restarting at 0 per example)
  and, with `attention="4d"`, a float `attention_mask` of shape
  `[batch, 1, L, L]`: 0 where a query may attend a key (same example, key not
  after the query) and the dtype's minimum elsewhere. Both eager and sdpa
  attention add it to the scores, and transformers passes a 4D mask through
  untouched. With `attention="position_ids"` no mask is returned:
  transformers 5 finds the example boundaries where `position_ids` restart
  and builds the same mask itself (sdpa, eager, flex; flash-attention uses
  them as variable-length boundaries); call the model with `use_cache=False`,
  because with a cache it skips that detection.
- `padding_free_collate(examples)`: every example end to end in ONE row, no
  padding at all (the same layout as one big pack).

All three batches can be passed straight to `model(**batch)`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .packing import Pack, example_fields
from .tokenize import IGNORE_INDEX

ATTENTION_MODES = ("4d", "position_ids")


def pad_collate(examples: Sequence[Any], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad examples into `input_ids`, `attention_mask`, `labels` of shape `[B, L]`."""
    rows = [example_fields(e) for e in examples]
    longest = max(len(ids) for ids, _, _ in rows)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, (ids, row_labels, _) in enumerate(rows):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(row_labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Which packed example each token belongs to: a new example starts where position is 0.

    `[B, L]` -> `[B, L]`, e.g. positions `[0,1,2,0,1,0]` -> `[1,1,1,2,2,3]`.
    """
    return (position_ids == 0).long().cumsum(dim=-1)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention mask `[B, 1, L, L]`: causal inside each packed example, blocked across.

    mask[b, 0, q, k] = 0 if k <= q and tokens q, k are in the same example,
    else the most negative value of `dtype`.
    """
    segments = segment_ids(position_ids)
    length = position_ids.shape[-1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None, :, :]


def packed_collate(packs: Sequence[Pack], pad_id: int, attention: str = "4d",
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One pack per row: `input_ids`, `labels`, `position_ids` `[B, L]` (+ 4D mask, see module doc).

    Rows shorter than the longest are filled with a padding segment (its own
    positions from 0, label -100) so no real token attends to padding.
    `dtype` is the mask's dtype: use the model's dtype.
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    longest = max(len(p) for p in packs)
    input_ids = torch.full((len(packs), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(packs), longest), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(packs), longest), dtype=torch.long)
    for row, pack in enumerate(packs):
        n = len(pack)
        input_ids[row, :n] = torch.tensor(pack.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(pack.labels, dtype=torch.long)
        position_ids[row, :n] = torch.tensor(pack.position_ids, dtype=torch.long)
        position_ids[row, n:] = torch.arange(longest - n)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if attention == "4d":
        batch["attention_mask"] = block_causal_mask(position_ids, dtype)
    return batch


def padding_free_collate(examples: Sequence[Any], attention: str = "4d",
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """All examples end to end in one row `[1, total_tokens]`: no padding at all."""
    pack = Pack()
    for example in examples:
        ids, labels, source = example_fields(example)
        pack.add(ids, labels, source)
    return packed_collate([pack], pad_id=0, attention=attention, dtype=dtype)
