"""Reading and writing JSONL, atomically.

Every stage writes its records through `atomic_write` / `write_jsonl`, so a crash
never leaves a half-written file under the final name: we write to a temporary
file beside the target and `os.replace` it into place.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import InputError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file next to `path`; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write dict rows as JSONL atomically; return how many were written."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically (indented, for people to read)."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line; bad lines raise InputError."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError(path, None, None, "file not found")
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise InputError(path, None, None, f"cannot read file: {exc.strerror}") from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InputError(path, number, None, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise InputError(path, number, None, f"expected a JSON object, got {type(obj).__name__}")
                yield number, obj
        except UnicodeDecodeError:
            raise InputError(path, None, None, "file is not valid UTF-8 text") from None


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row and flush (for metrics logs, where appending is the point)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
