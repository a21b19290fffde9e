"""Prompts for generation and online RL, from any file the data layer reads.

Accepted rows (other fields are kept in `extra`, e.g. `answer` for a verifier):
- `prompt`: text or a message list (also with `completion`, `chosen`/`rejected`, `responses`);
- `messages` / `conversations`: a chat; trailing assistant turns are dropped so the
  model answers the last user turn;
- Alpaca `instruction` (+ `input`), with or without `output`;
- `question` or `problem`: text (common in math/verifiable task sets).
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import InputError
from ..records import Message, Prompt, user_prompt
from .formats import (
    _conversation_value,
    _Row,
    alpaca_user_text,
    check_messages,
    check_single_prompt,
    check_text,
    check_turn_order,
)
from .readers import read_rows

PROMPT_FIELDS = ("prompt", "messages", "conversations", "instruction", "question", "problem")
RESPONSE_FIELDS = ("completion", "chosen", "rejected", "responses", "output", "response", "ranking", "scores", "label")


def _without_trailing_answers(row: _Row, field: str, messages: list[Message]) -> list[Message]:
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise row.error(field, "has no user turn to answer")
    return messages


def _speakers(field: str) -> tuple:
    """ShareGPT's `conversations` use from/value and human/gpt; other message lists role/content."""
    from .formats import SHAREGPT_ROLES

    return (SHAREGPT_ROLES, ("from", "value")) if field == "conversations" else (None, ("role", "content"))


def parse_prompt(raw: dict[str, Any], source: str | None = None) -> Prompt:
    row = _Row(raw, source)
    check_single_prompt(row)
    field = next((f for f in PROMPT_FIELDS if raw.get(f) is not None), None)
    if field is None and raw.get("chosen") is not None:
        # A preference row whose prompt is implicit (hh-rlhf, TRL): the conversation before the reply.
        conversation = _conversation_value(row, "chosen")
        if conversation is not None:
            messages = _without_trailing_answers(row, "chosen", conversation)
            extra = {k: v for k, v in raw.items() if k not in RESPONSE_FIELDS}
            return Prompt(prompt=messages, source=source, extra=extra)
    if field is None:
        raise row.error(None, f"no prompt found (expected one of: {', '.join(PROMPT_FIELDS)})")
    value = raw[field]
    if field in ("messages", "conversations") or isinstance(value, list):
        messages = check_turn_order(row, field, check_messages(row, field, value, *_speakers(field)))
        messages = _without_trailing_answers(row, field, messages)
    elif field == "instruction":
        input_text = raw.get("input") or ""
        messages = user_prompt(alpaca_user_text(check_text(row, field, value), str(input_text)))
    else:
        messages = user_prompt(check_text(row, field, value))
    used = {field, "input"} if field == "instruction" else {field}
    extra = {k: v for k, v in raw.items() if k not in used and k not in RESPONSE_FIELDS}
    return Prompt(prompt=messages, source=source, extra=extra)


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
