"""Turning input JSONL rows into items to judge, with `FILE:LINE: field 'x'` errors.

Pairwise rows (one pair each):
  {"prompt": ..., "response_a": "...", "response_b": "..."}
  {"prompt": ..., "chosen": "...", "rejected": "..."}       # A = chosen; adds reference_winner "A"
TRL's conversational form also works: `chosen`/`rejected` as message lists ending
with the assistant turn. Without a `prompt` (TRL's implicit prompt, hh-rlhf transcripts,
orca_dpo_pairs' `question`), the row is read as `posttrain dpo` reads it (data/formats.py).

Pointwise rows (one or more responses each):
  {"prompt": ..., "response": "..."}   or "completion"
  {"prompt": ..., "responses": ["...", "..."]}             # one record per response, with response_index

`prompt` is a string or a list of {"role", "content"} messages. Every other field
of the row is carried into the output records unchanged. The input is any data file
`read_rows` reads (JSONL, CSV, Parquet, a dataset directory), with `split` and
`columns` (`--split`, `--columns response_a=answer_1`) as for every other command.
"""
from __future__ import annotations

from typing import Any

from ..data.formats import is_transcript, parse_row
from ..data.readers import read_rows, split_location
from ..errors import InputError
from ..records import Message, user_prompt
from .judging import PairItem, PointItem


def _messages(value: Any, path: str, line: int, name: str) -> list[Message]:
    if isinstance(value, str):
        return user_prompt(value)
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise InputError(path, line, name, "expected a string or a non-empty list of {role, content} messages")


def _response(value: Any, path: str, line: int, name: str) -> str:
    """A response is text, or a message list whose last turn is the assistant's."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant" \
            and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise InputError(path, line, name, "expected text or a message list ending with an assistant turn")


def _prompt(row: dict, path: str, line: int, fallback_key: str | None = None) -> list[Message]:
    if "prompt" in row:
        return _messages(row["prompt"], path, line, "prompt")
    fallback = row.get(fallback_key) if fallback_key else None
    if isinstance(fallback, list) and len(fallback) >= 2:  # conversational pair with an implicit prompt
        return _messages(fallback[:-1], path, line, fallback_key)
    raise InputError(path, line, "prompt", "missing")


def _preference_pair(row: dict, path: str, line: int) -> PairItem:
    """A chosen/rejected row in any shape `posttrain dpo` reads (hh-rlhf transcripts, TRL's implicit
    prompt, orca_dpo_pairs' `question`), split into prompt and replies by the data layer."""
    _, pair = parse_row(row, f"{path}:{line}", kind="preference")
    extra = {key: value for key, value in row.items() if key not in ("prompt", "chosen", "rejected")}
    return PairItem(prompt=pair.prompt, response_a=pair.chosen, response_b=pair.rejected,
                    extra={**extra, "reference_winner": "A"})


def pair_item(row: dict, path: str, line: int) -> PairItem:
    if "response_a" in row or "response_b" in row:
        keys, reference = ("response_a", "response_b"), None
    elif ("chosen" in row or "rejected" in row) and (
            "prompt" not in row or any(is_transcript(row.get(k)) for k in ("chosen", "rejected"))):
        return _preference_pair(row, path, line)
    elif "chosen" in row or "rejected" in row:
        keys, reference = ("chosen", "rejected"), "A"
    else:
        raise InputError(path, line, None, "a pairwise row needs response_a and response_b (or chosen and rejected)")
    for key in keys:
        if key not in row:
            raise InputError(path, line, key, "missing")
    prompt = _prompt(row, path, line, fallback_key=keys[0])
    a, b = (_response(row[k], path, line, k) for k in keys)
    extra = {k: v for k, v in row.items() if k not in ("prompt", *keys)}
    if reference:
        extra["reference_winner"] = reference
    return PairItem(prompt=prompt, response_a=a, response_b=b, extra=extra)


def point_items(row: dict, path: str, line: int) -> list[PointItem]:
    prompt = _prompt(row, path, line)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "response", "completion", "responses")}
    if "responses" in row:
        responses = row["responses"]
        if not isinstance(responses, list) or not responses:
            raise InputError(path, line, "responses", "expected a non-empty list of responses")
        return [PointItem(prompt=prompt, response=_response(r, path, line, f"responses[{i}]"),
                          extra={**extra, "response_index": i}) for i, r in enumerate(responses)]
    for key in ("response", "completion"):
        if key in row:
            return [PointItem(prompt=prompt, response=_response(row[key], path, line, key), extra=extra)]
    raise InputError(path, line, None, "a pointwise row needs response, completion or responses")


def read_items(path: str, mode: str, limit: int | None = None, split: str | None = None,
               columns: dict[str, str] | None = None,
               max_line_bytes: int | None = None) -> list[tuple[int, list[PairItem | PointItem]]]:
    """(line number, items of that row) for each row (the first `limit` rows); all are checked up front.
    `split`, `columns` and `max_line_bytes` are `read_rows`' (see data/options.py)."""
    rows = []
    for where, row in read_rows(path, split=split, columns=columns, max_line_bytes=max_line_bytes):
        if limit is not None and len(rows) >= limit:
            break
        file, line = split_location(where)
        file = file or path
        line = line if line is not None else len(rows) + 1
        rows.append((line, [pair_item(row, file, line)] if mode == "pairwise" else point_items(row, file, line)))
    if not rows:
        raise InputError(path, None, None, "no rows to judge")
    return rows
