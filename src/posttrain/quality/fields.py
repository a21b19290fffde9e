"""Reading rows and pulling prompts, responses and labels out of them.

The quality tools accept any row shape the data layer knows (messages,
prompt+completion, alpaca instruction/input/output, prompt+chosen+rejected,
ranked responses, unpaired KTO rows, judgements and annotations). Rather than
converting every row into a typed record, they only need a few views of a row:

- `prompt_of(row)`: the prompt as one string (all non-assistant turns),
- `responses_of(row)`: every response text in the row,
- `learn_responses(row)`: the responses a trainer would learn *towards*
  (chosen, the SFT answer, a desirable KTO completion) - quality filters
  judge these, not the rejected side of a pair,
- `winner_of(row)`: a pairwise label normalised to "A", "B" or "tie".

Bad values raise `InputError` naming file, line and field.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from ..data.readers import read_rows, split_location
from ..errors import InputError

Row = dict[str, Any]

# Field names, in the order they are looked for.
LABEL_FIELDS = ("winner", "choice", "label", "preference")
PROMPT_FIELDS = ("prompt", "instruction", "question", "query", "input")
SINGLE_RESPONSE_FIELDS = ("completion", "response", "output", "answer")
PAIR_FIELDS = (("chosen", "rejected"), ("response_a", "response_b"))

_WINNER_SYNONYMS = {"a": "A", "b": "B", "tie": "tie", "draw": "tie", "equal": "tie"}


def load_rows(path: str | os.PathLike, **read: Any) -> list[tuple[int, Row]]:
    """All `(line_number, row)` pairs of a data file (JSONL, JSON, CSV, Parquet, a saved
    `datasets` folder; see `posttrain.data.read_rows`, which takes `read`: split, columns,
    max_line_bytes). InputError on a bad or empty file."""
    rows = []
    for source, row in read_rows(path, **read):
        _, number = split_location(source)
        rows.append((number, row))
    return rows


def _text(value: Any, path: str | None, line: int | None, field: str) -> str:
    """A text field: a string, or a message list (contents joined); else InputError."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return "\n".join(_message_content(m, path, line, field) for m in value)
    raise InputError(path, line, field, f"expected text or a list of messages, got {type(value).__name__}")


def _message_content(message: dict, path: str | None, line: int | None, field: str) -> str:
    content = message.get("content", "")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise InputError(path, line, f"{field}.content", f"expected a string, got {type(content).__name__}")
    return content


def _messages(row: Row, path: str | None, line: int | None) -> list[dict]:
    messages = row["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError(path, line, "messages", "expected a list of {role, content} objects")
    return messages


def prompt_of(row: Row, path: str | None = None, line: int | None = None) -> str:
    """The prompt as one string: the prompt field, or every non-assistant turn of `messages`."""
    if "messages" in row and not any(f in row for f in PROMPT_FIELDS):
        turns = [m for m in _messages(row, path, line) if m.get("role") != "assistant"]
        return "\n".join(_message_content(m, path, line, "messages") for m in turns)
    parts = []
    # alpaca rows split the prompt into instruction + input; both belong to it
    for field in ("instruction", "input") if "instruction" in row else PROMPT_FIELDS:
        if row.get(field) is not None:
            parts.append(_text(row[field], path, line, field))
            if field != "instruction":
                break
    return "\n".join(p for p in parts if p)


def responses_of(row: Row, path: str | None = None, line: int | None = None) -> list[str]:
    """Every response text in the row (both sides of a pair, all ranked responses, ...)."""
    out: list[str] = []
    for first, second in PAIR_FIELDS:
        for field in (first, second):
            if field in row:
                out.append(_response(row[field], path, line, field))
    if "responses" in row:
        values = row["responses"]
        if not isinstance(values, list):
            raise InputError(path, line, "responses", "expected a list of response texts")
        out += [_response(v, path, line, f"responses[{i}]") for i, v in enumerate(values)]
    for field in SINGLE_RESPONSE_FIELDS:
        if field in row:
            out.append(_response(row[field], path, line, field))
            break
    if not out and "messages" in row:
        out = [_message_content(m, path, line, "messages")
               for m in _messages(row, path, line) if m.get("role") == "assistant"]
    return out


def _response(value: Any, path: str | None, line: int | None, field: str) -> str:
    """A response is text; TRL-style rows may store it as a message list (assistant turns)."""
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        value = [m for m in value if m.get("role", "assistant") == "assistant"]
    return _text(value, path, line, field)


def learn_responses(row: Row, path: str | None = None, line: int | None = None) -> list[str]:
    """Responses a trainer learns towards: chosen, SFT answers, desirable KTO completions.

    Judgement/annotation rows (response_a/response_b) have no learning side, so both count.
    """
    if "chosen" in row:
        return [_response(row["chosen"], path, line, "chosen")]
    if "label" in row and "completion" in row and isinstance(row["label"], bool):
        return [_response(row["completion"], path, line, "completion")] if row["label"] else []
    best = _best_index(row)
    if isinstance(row.get("responses"), list) and best is not None:
        responses = [_response(v, path, line, f"responses[{i}]") for i, v in enumerate(row["responses"])]
        if not 0 <= best < len(responses):
            raise InputError(path, line, "ranking", f"index {best} is out of range for {len(responses)} responses")
        return [responses[best]]
    return responses_of(row, path, line)


def _best_index(row: Row) -> int | None:
    """Index of the best of ranked `responses` (first of `ranking`, or highest of `scores`)."""
    ranking = row.get("ranking")
    if isinstance(ranking, list) and ranking:
        return ranking[0] if isinstance(ranking[0], int) and not isinstance(ranking[0], bool) else None
    scores = row.get("scores")
    if isinstance(scores, list) and scores and all(isinstance(s, (int, float)) for s in scores):
        return max(range(len(scores)), key=lambda i: scores[i])
    return None


def label_field(row: Row) -> str | None:
    """The name of the field holding a pairwise label, if any."""
    for field in LABEL_FIELDS:
        if field in row and not isinstance(row[field], bool):
            return field
    return None


def winner_of(row: Row, path: str | None = None, line: int | None = None) -> str | None:
    """The pairwise label as "A", "B" or "tie"; None when absent or null (unlabelled)."""
    field = label_field(row)
    if field is None or row[field] is None:
        return None
    return normalise_winner(row[field], path, line, field)


def normalise_winner(value: Any, path: str | None, line: int | None, field: str) -> str:
    """"A"/"a" -> "A", "tie"/"draw"/"equal" -> "tie"; anything else is an InputError."""
    if isinstance(value, str) and value.strip().lower() in _WINNER_SYNONYMS:
        return _WINNER_SYNONYMS[value.strip().lower()]
    raise InputError(path, line, field, f"expected 'A', 'B' or 'tie', got {value!r}")


def get_path(row: Row, dotted: str) -> Any:
    """`get_path(row, "scores.judge")` -> row["scores"]["judge"]; KeyError when absent."""
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def iter_strings(value: Any) -> Iterable[str]:
    """Every string inside a nested JSON value (for scanning whole rows)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_strings(item)


def map_strings(value: Any, function) -> Any:
    """A copy of a nested JSON value with `function` applied to every string."""
    if isinstance(value, str):
        return function(value)
    if isinstance(value, dict):
        return {key: map_strings(item, function) for key, item in value.items()}
    if isinstance(value, list):
        return [map_strings(item, function) for item in value]
    return value
