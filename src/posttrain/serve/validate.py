"""Request bodies and fields: the one place where outside input is parsed and checked.

Every JSON body goes through `parse_json_body`, before any route sees it:

- at most `MAX_BODY_BYTES` bytes (413), valid UTF-8 (400), valid JSON (400), no key given
  twice in one object (400: the last value would silently win);
- nested at most `MAX_DEPTH` levels (400). The JSON parser guards its own recursion
  (100,000 `[` stop it with RecursionError, which is answered as 400, not 500), and
  anything it accepts deeper than `MAX_DEPTH` is refused while it is checked;
- every number finite (`Infinity`, `NaN` and `1e400`, which Python reads as inf, are 422);
- every integer within SQLite's 64-bit range (422), so no stored value can overflow;
- every string (keys too) encodable as UTF-8: a lone surrogate such as "\\ud800" is
  422 (SQLite and the JSON exports could not write it).

Errors name the field as a path (`items[2].prompt`), and come back to the client as
`{"detail": "field 'confidence': ...", "field": "confidence"}` with a 4xx status.
Form posts are flat strings (`web.form`); their fields go through the same
`whole_number` / `text` helpers as JSON fields, so both paths accept the same values.
"""
from __future__ import annotations

import json
import math
from typing import Any

from ..jsonl import DuplicateKeyError, loads_strict

MAX_BODY_BYTES = 8 * 1024 * 1024  # an item import of a few thousand rows
MAX_DEPTH = 32  # the deepest legitimate body (an item import with message lists) is 5
SQLITE_MAX_INT = 2**63 - 1


class RequestError(ValueError):
    """Bad input from a client: answered with `status` and a message naming `field`."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        super().__init__(f"field '{field}': {message}" if field else message)
        self.field, self.message, self.status = field, message, status

    def to_json(self) -> dict[str, Any]:
        return {"detail": str(self), "field": self.field}


def parse_json_body(raw: bytes, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Bytes of a request body -> checked JSON value (an empty body is None), or RequestError."""
    if len(raw) > max_bytes:
        raise RequestError(None, f"body too large ({len(raw)} bytes; at most {max_bytes})", status=413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(None, f"body is not UTF-8 (byte {exc.start})", status=400) from None
    if not text.strip():
        return None
    try:
        value = loads_strict(text)
    except DuplicateKeyError as exc:  # `{"choice": "A", "choice": "B"}`: which one was meant is unknown
        raise RequestError(exc.key, "given twice in one JSON object", status=400) from None
    except json.JSONDecodeError as exc:
        raise RequestError(None, f"body is not valid JSON ({exc})", status=400) from None
    except RecursionError:  # the C parser's own guard, far below the stack's real limit
        raise RequestError(None, f"body is nested more than {max_depth} levels deep", status=400) from None
    except ValueError as exc:
        raise RequestError(None, f"body is not valid JSON ({exc})", status=400) from None
    check_json_values(value, max_depth=max_depth)
    return value


def check_json_values(value: Any, path: str = "", max_depth: int = MAX_DEPTH, depth: int = 0) -> None:
    """Raise RequestError for the first value SQLite or a JSON export could not hold."""
    if isinstance(value, (list, dict)) and depth >= max_depth:  # this container is level depth + 1
        raise RequestError(None, f"body is nested more than {max_depth} levels deep", status=400)
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(path or "body", "must be a finite number (got a number too large, Infinity or NaN)")
    elif isinstance(value, int):
        if not -SQLITE_MAX_INT - 1 <= value <= SQLITE_MAX_INT:
            raise RequestError(path or "body", "integer out of range (at most 2**63 - 1 in size)")
    elif isinstance(value, str):
        _check_utf8(value, path or "body")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_values(item, f"{path}[{index}]", max_depth, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_utf8(key, f"{path}.{key!r}" if path else repr(key))
            check_json_values(item, f"{path}.{key}" if path else key, max_depth, depth + 1)


def _check_utf8(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(field, f"text is not valid Unicode (lone surrogate at character {exc.start})") from None


def json_object(value: Any) -> dict[str, Any]:
    """The body must be a JSON object."""
    if not isinstance(value, dict):
        raise RequestError(None, "expected a JSON object")
    return value


def whole_number(value: Any, field: str, low: int, high: int, optional: bool = False) -> int | None:
    """An integer in [low, high], given as a JSON integer, a float like 3.0, or decimal text (forms).

    With `optional`, None and "" mean "not given" and return None. Booleans are refused
    (JSON `true` is not the number 1 here).
    """
    if optional and (value is None or value == ""):
        return None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _is_ascii_integer(value.strip()):
        number = int(value.strip())
    if number is None or not low <= number <= high:
        raise RequestError(field, f"must be a whole number from {low} to {high}")
    return number


def _is_ascii_integer(value: str) -> bool:
    """"12", "-3", "+4": ASCII digits only (`int()` would also take "３" or Arabic-Indic digits)."""
    digits = value[1:] if value[:1] in "+-" else value
    return 0 < len(digits) <= 19 and digits.isascii() and digits.isdigit()


def text(value: Any, field: str, max_chars: int, optional: bool = True) -> str:
    """A string of at most `max_chars` characters; with `optional`, None means ""."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RequestError(field, "expected text")
    if len(value) > max_chars:
        raise RequestError(field, f"must be at most {max_chars} characters (got {len(value)})")
    _check_utf8(value, field)
    return value
