"""Pairwise items: reading them from JSONL rows and storing them.

Two row shapes are accepted (the prompt is a string or a message list):

    {"prompt": ..., "response_a": "...", "response_b": "..."}   # neutral pair
    {"prompt": ..., "chosen": "...", "rejected": "..."}         # re-label an existing pair

A chosen/rejected row may be in any preference shape `posttrain dpo` reads (data/formats.py):
TRL's implicit prompt, conversational replies, hh-rlhf transcripts, ultrafeedback_binarized,
orca_dpo_pairs' `question` + `system`.

For a chosen/rejected row, `response_a` is the chosen text and `response_b` the
rejected one, and `extra.original_choice = "A"` keeps the old verdict so you can
measure how often annotators agree with it. Annotators never see which is
which: the display order is randomised per assignment.

`id` or `item_id` in the row names the item; otherwise the id is a hash of the
content, so importing the same file twice adds nothing the second time.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..data.formats import parse_row
from ..data.readers import read_rows, split_location
from ..errors import InputError
from ..records import Message, user_prompt
from .db import now_iso, write_transaction


@dataclass
class Item:
    item_id: str
    prompt: list[Message]
    response_a: str
    response_b: str
    extra: dict[str, Any] = field(default_factory=dict)


def _prompt_messages(value: Any, path: str | None, line: int | None) -> list[Message]:
    if isinstance(value, str) and value.strip():
        return user_prompt(value)
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise InputError(path, line, "prompt", "expected a non-empty string or a list of {role, content} messages")


def _text(row: dict[str, Any], name: str, path: str | None, line: int | None) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, name, "expected a non-empty string")
    return value


def content_id(prompt: list[Message], response_a: str, response_b: str) -> str:
    blob = json.dumps([prompt, response_a, response_b], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def item_from_row(row: dict[str, Any], path: str | None = None, line: int | None = None) -> Item:
    """Validate one input row; errors name FILE:LINE and the field."""
    if "response_a" not in row and "response_b" not in row and ("chosen" in row or "rejected" in row):
        return _item_from_pair(row, path, line)
    if "prompt" not in row:
        raise InputError(path, line, "prompt", "missing (rows need prompt + response_a/response_b "
                                               "or prompt + chosen/rejected)")
    prompt = _prompt_messages(row["prompt"], path, line)
    if "response_a" in row or "response_b" in row:
        a, b = _text(row, "response_a", path, line), _text(row, "response_b", path, line)
        used = {"prompt", "response_a", "response_b"}
        extra: dict[str, Any] = {}
    else:
        raise InputError(path, line, "response_a", "missing (rows need response_a/response_b or chosen/rejected)")
    raw_id = row.get("item_id", row.get("id"))
    if raw_id is not None and (not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool)):
        raise InputError(path, line, "item_id" if "item_id" in row else "id", "expected a string or an integer")
    item_id = str(raw_id) if raw_id is not None else content_id(prompt, a, b)
    extra.update({k: v for k, v in row.items() if k not in used | {"id", "item_id"}})
    return Item(item_id=item_id, prompt=prompt, response_a=a, response_b=b, extra=extra)


def _item_from_pair(row: dict[str, Any], path: str | None, line: int | None) -> Item:
    """A chosen/rejected row in any preference shape `posttrain dpo` reads (TRL's explicit or implicit
    prompt, text or conversational; hh-rlhf transcripts; ultrafeedback_binarized; orca_dpo_pairs'
    `question`), by the data layer's own rules."""
    source = f"{path}:{line}" if path is not None and line is not None else path
    try:
        _, pair = parse_row(row, source, kind="preference")
    except InputError as exc:
        raise InputError(path, line, exc.field, exc.message) from None
    a, b = pair.chosen, pair.rejected
    for name, text in (("chosen", a), ("rejected", b)):
        if not text.strip():
            raise InputError(path, line, name, "expected a non-empty string")
    raw_id = row.get("item_id", row.get("id"))
    if raw_id is not None and (not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool)):
        raise InputError(path, line, "item_id" if "item_id" in row else "id", "expected a string or an integer")
    item_id = str(raw_id) if raw_id is not None else content_id(pair.prompt, a, b)
    extra = {"original_choice": "A", **{k: v for k, v in pair.extra.items() if k not in ("id", "item_id")}}
    if pair.margin is not None:
        extra["margin"] = pair.margin
    return Item(item_id=item_id, prompt=pair.prompt, response_a=a, response_b=b, extra=extra)


def read_items(path: str, split: str | None = None, columns: dict[str, str] | None = None,
               max_line_bytes: int | None = None) -> list[Item]:
    """All items of a data file (validated before anything is stored). `split`, `columns` and
    `max_line_bytes` are `read_rows`' (`--split`, `--columns`, `--max-line-bytes`)."""
    items, seen = [], {}
    for where, row in read_rows(path, split=split, columns=columns, max_line_bytes=max_line_bytes):
        file, line = split_location(where)
        item = item_from_row(row, file or path, line)
        if item.item_id in seen:
            raise InputError(file or path, line, "item_id", f"duplicate item id {item.item_id!r} "
                                                            f"(first at {seen[item.item_id]})")
        seen[item.item_id] = where
        items.append(item)
    return items


def insert_items(conn: sqlite3.Connection, items: Iterable[Item], k: int) -> tuple[int, int]:
    """Store items wanting `k` labels each, in one transaction. Returns (added, already present)."""
    if k < 1:
        raise InputError(None, None, "k", "must be at least 1")
    added = skipped = 0
    created = now_iso()
    with write_transaction(conn):
        for item in items:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO items (item_id, prompt, response_a, response_b, k, extra, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item.item_id, json.dumps(item.prompt, ensure_ascii=False), item.response_a, item.response_b,
                 k, json.dumps(item.extra, ensure_ascii=False), created))
            added += cursor.rowcount
            skipped += 1 - cursor.rowcount
    return added, skipped
