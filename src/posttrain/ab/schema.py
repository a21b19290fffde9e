"""The A/B feedback log: one JSON object per line (docs/ab-testing.md has the full table).

A feedback row records what one user told us about one variant:

    {"variant": "B", "user": "u17", "thumbs": "up", "rating": 4, "success": true,
     "timestamp": "2025-05-01T12:00:00Z"}

- `variant`  (string) the variant the user was served. Required, except that a file
  given as `NAME=PATH` supplies it for rows that leave it out.
- `thumbs`   1 / "up", -1 / "down", or 0 / null for no vote (not counted).
- `rating`   integer 1-5.
- `success`  true / false (task completed, answer accepted, ...).
- `preferred` a pairwise judgement: a variant name or "tie"; `pair` lists the two
  variants compared (optional when the experiment has exactly two variants).
- `user`, `timestamp` (seconds since the epoch or ISO 8601), and any other fields
  (free text, ids) are allowed; unknown fields are ignored.

Every feedback row must carry at least one of thumbs, rating, success, preferred,
or be a comment (`text`) only; comment-only rows are read but not analysed.

A look row records that someone looked at the results (the peeking correction
counts them): `{"event": "look", "timestamp": ...}`. `posttrain ab --record-look`
appends one.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import InputError
from ..jsonl import read_jsonl

SIGNALS = ("thumbs", "rating", "success", "preferred")
THUMBS = {1: 1, -1: -1, 0: 0, "up": 1, "down": -1}
TIE = "tie"


@dataclass
class Feedback:
    """One validated feedback row. `thumbs` is 1, -1, 0 (no vote) or None."""

    source: str
    variant: str | None = None
    user: str | None = None
    thumbs: int | None = None
    rating: int | None = None
    success: bool | None = None
    preferred: str | None = None
    pair: tuple[str, str] | None = None
    timestamp: float | None = None


@dataclass
class Look:
    """An analysis checkpoint: results were looked at, at `timestamp` (if known)."""

    source: str
    timestamp: float | None = None


@dataclass
class FeedbackLog:
    rows: list[Feedback] = field(default_factory=list)
    looks: list[Look] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        names = {r.variant for r in self.rows if r.variant is not None}
        for r in self.rows:
            if r.pair:
                names.update(r.pair)
            if r.preferred not in (None, TIE):
                names.add(r.preferred)  # type: ignore[arg-type]
        return sorted(names)


def split_log_spec(spec: str) -> tuple[str | None, str]:
    """`NAME=PATH` -> (NAME, PATH); a plain path (or one that exists as given) -> (None, path)."""
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        if name and not any(c in name for c in "/\\"):
            return name, path
    return None, spec


def parse_timestamp(value: Any, path: str, line: int) -> float | None:
    """Seconds since the epoch from a number or an ISO 8601 string (naive times are UTC)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=_dt.timezone.utc)
            return moment.timestamp()
    raise InputError(path, line, "timestamp", f"expected seconds since the epoch or an ISO 8601 time, got {value!r}")


def _name(value: Any, path: str, line: int, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, key, f"expected a non-empty string, got {value!r}")
    if value == TIE:
        raise InputError(path, line, key, "'tie' is reserved for pairwise judgements and cannot name a variant")
    return value


def parse_row(row: dict[str, Any], path: str, line: int, default_variant: str | None = None) -> Feedback | Look:
    """Validate one log row into a `Feedback` or a `Look`; errors name file:line:field."""
    source = f"{path}:{line}"
    if "event" in row:
        if row["event"] != "look":
            raise InputError(path, line, "event", f"expected 'look', got {row['event']!r}")
        return Look(source, parse_timestamp(row.get("timestamp"), path, line))
    if not any(row.get(k) is not None for k in SIGNALS) and not isinstance(row.get("text"), str):
        raise InputError(path, line, None, f"no feedback: expected at least one of {', '.join(SIGNALS)} "
                                           "(or a comment in 'text')")
    item = Feedback(source, timestamp=parse_timestamp(row.get("timestamp"), path, line))
    if row.get("variant") is not None:
        item.variant = _name(row["variant"], path, line, "variant")
        if default_variant is not None and item.variant != default_variant:
            raise InputError(path, line, "variant", f"{item.variant!r} in a log given as {default_variant}=...")
    else:
        item.variant = default_variant
    if row.get("user") is not None:
        if not isinstance(row["user"], (str, int)) or isinstance(row["user"], bool):
            raise InputError(path, line, "user", f"expected a string id, got {row['user']!r}")
        item.user = str(row["user"])
    thumbs = row.get("thumbs")
    if thumbs is not None:
        key = thumbs.lower() if isinstance(thumbs, str) else thumbs
        if isinstance(thumbs, bool) or key not in THUMBS:
            raise InputError(path, line, "thumbs", f"expected 1, -1, 0, 'up' or 'down', got {thumbs!r}")
        item.thumbs = THUMBS[key]
    rating = row.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or rating != int(rating) \
                or not 1 <= rating <= 5:
            raise InputError(path, line, "rating", f"expected an integer from 1 to 5, got {rating!r}")
        item.rating = int(rating)
    success = row.get("success")
    if success is not None:
        if not isinstance(success, bool):
            raise InputError(path, line, "success", f"expected true or false, got {success!r}")
        item.success = success
    if row.get("preferred") is not None:
        _parse_preference(row, item, path, line)
    elif row.get("pair") is not None:
        raise InputError(path, line, "pair", "given without 'preferred'")
    if item.variant is None and row.get("preferred") is None:
        raise InputError(path, line, "variant", "missing (or give the file as NAME=PATH)")
    return item


def _parse_preference(row: dict[str, Any], item: Feedback, path: str, line: int) -> None:
    preferred = row["preferred"]
    if not isinstance(preferred, str) or not preferred.strip():
        raise InputError(path, line, "preferred", f"expected a variant name or 'tie', got {preferred!r}")
    pair = row.get("pair")
    if pair is not None:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise InputError(path, line, "pair", f"expected a list of two variant names, got {pair!r}")
        first, second = (_name(v, path, line, "pair") for v in pair)
        if first == second:
            raise InputError(path, line, "pair", f"the two variants must differ, got {pair!r}")
        if preferred not in (first, second, TIE):
            raise InputError(path, line, "preferred", f"expected {first!r}, {second!r} or 'tie', got {preferred!r}")
        item.pair = (first, second)
    item.preferred = preferred


def resolve_pairs(log: FeedbackLog) -> None:
    """Give pairwise rows without `pair` the experiment's two variants (error if not exactly two)."""
    variants = log.variants
    for item in log.rows:
        if item.preferred is None or item.pair is not None:
            continue
        path, line = item.source.rsplit(":", 1)
        if len(variants) != 2:
            raise InputError(path, int(line), "pair", f"needed when the experiment has {len(variants)} variants "
                                                      f"({', '.join(variants)}), not 2")
        if item.preferred not in (*variants, TIE):
            raise InputError(path, int(line), "preferred", f"expected one of {', '.join(variants)} or 'tie', "
                                                           f"got {item.preferred!r}")
        item.pair = (variants[0], variants[1])


def read_feedback(specs: Sequence[str]) -> FeedbackLog:
    """Read and validate one or more logs (`PATH` or `NAME=PATH`) into one `FeedbackLog`."""
    if not specs:
        raise InputError(None, None, "logs", "no feedback log given")
    log = FeedbackLog()
    for spec in specs:
        default_variant, path = split_log_spec(spec)
        if default_variant == TIE:
            raise InputError(path, None, "variant", "'tie' cannot name a variant")
        for line, row in read_jsonl(path):
            item = parse_row(row, path, line, default_variant)
            (log.looks if isinstance(item, Look) else log.rows).append(item)  # type: ignore[arg-type]
    if not log.rows:
        raise InputError(specs[0], None, None, "no feedback rows")
    resolve_pairs(log)
    return log
