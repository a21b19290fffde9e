"""Prompts for generation and online RL, from any file the data layer reads.

Accepted rows (other fields are kept in `extra`, e.g. `answer` for a verifier):
- `prompt`: text or a message list (also with `completion`, `chosen`/`rejected`, `responses`);
- `messages` / `conversations`: a chat; trailing assistant turns are dropped so the
  model answers the last user turn;
- Alpaca `instruction` (+ `input`), with or without `output`;
- `question` or `problem`: text (common in math/verifiable task sets).

`parse_prompt` lives in formats.py with the other row rules (one place for `data check` and
training) and is re-exported here, where generation and RL code looks for it.
"""
from __future__ import annotations

import os

from ..errors import InputError
from ..records import Prompt
from .formats import PROMPT_FIELDS, RESPONSE_FIELDS, parse_prompt
from .readers import read_rows

__all__ = ["PROMPT_FIELDS", "RESPONSE_FIELDS", "load_prompts", "parse_prompt"]


def load_prompts(source: str | os.PathLike, limit: int | None = None, split: str | None = None,
                 columns: dict[str, str] | None = None, max_line_bytes: int | None = None) -> list[Prompt]:
    """Every prompt in `source`; the first bad row raises `InputError` naming file and line.
    `split`, `columns` and `max_line_bytes` are as in `read_rows`."""
    prompts: list[Prompt] = []
    for where, raw in read_rows(source, split=split, columns=columns, max_line_bytes=max_line_bytes):
        prompts.append(parse_prompt(raw, where))
        if limit and len(prompts) >= limit:
            break
    if not prompts:
        raise InputError(str(source), None, None, "no prompts in file")
    return prompts
