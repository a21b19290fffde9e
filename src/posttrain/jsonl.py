"""Reading and writing JSONL, atomically.

Every stage writes its records through `atomic_write` / `write_jsonl`, so a crash
never leaves a half-written file under the final name: we write to a temporary
file beside the target and `os.replace` it into place.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import re
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ConfigError, InputError, PosttrainError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file next to `path`; on success rename it over `path`."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail only after all the work, with IsADirectoryError
        raise PosttrainError(f"cannot write {path}: it is a directory (give a file name)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PosttrainError(f"cannot write {path}: a part of {path.parent} is a file, not a directory") from None
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


def check_output_file(field: str, path: str | os.PathLike | None) -> None:
    """ConfigError naming `field` when `path` cannot become a file (it is a directory, or a part of
    its folder is a file): commands call it before any work, so the mistake costs nothing."""
    if not path:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(field, f"{path} is a directory; give a file name such as {path / 'output.jsonl'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(field, f"cannot write {path}: {parent} is a file, not a directory")


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


# The longest line (or field) a data file may hold. A 50 MB line is almost always a mistake (a
# whole file dumped into one cell) and would cost gigabytes once parsed and tokenised, so it is
# refused before it is read into memory. Raise it with --max-line-bytes or this variable.
MAX_LINE_BYTES_ENV = "POSTTRAIN_MAX_LINE_BYTES"
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
_SKIP_CHUNK = 1024 * 1024  # bytes read at a time while measuring an over-long line


def max_line_bytes(value: int | None = None) -> int:
    """The line/field size limit: `value` when given, else $POSTTRAIN_MAX_LINE_BYTES, else 16 MiB."""
    if value:
        return value
    text = os.environ.get(MAX_LINE_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_LINE_BYTES
    if not text.isdigit() or int(text) < 1:
        raise PosttrainError(f"{MAX_LINE_BYTES_ENV}={text!r}: expected a positive number of bytes")
    return int(text)


def too_long_message(size: int, limit: int, what: str = "line") -> str:
    return (f"{what} is {size:,} bytes, over the limit of {limit:,} bytes "
            f"(raise it with --max-line-bytes or {MAX_LINE_BYTES_ENV})")


def check_data_file(path: str) -> None:
    """Raise InputError unless `path` is a regular file we can open without blocking.

    A FIFO would block forever on open/read, a device could be endless, and a symlink loop
    is not "file not found": each gets its own message, without opening anything.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(path, None, None, "symlink loop (the link points back to itself)") from None
        if exc.errno == errno.ENOENT:
            dangling = os.path.islink(path)
            message = f"broken symlink (to {os.readlink(path)})" if dangling else "file not found"
            raise InputError(path, None, None, message) from None
        raise InputError(path, None, None, f"cannot read file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file")
        raise InputError(path, None, None, f"is {kind}, not a regular data file")


def open_data_file(path: str):
    """`check_data_file`, then open `path` for reading bytes (decompressed when it ends with .gz,
    as hh-rlhf's `train.jsonl.gz` files do)."""
    check_data_file(path)
    try:
        return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")
    except OSError as exc:
        raise InputError(path, None, None, f"cannot read file: {exc.strerror}") from None


def iter_lines(path: str, limit: int | None = None) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, text)` for every line of `path`, decoded as UTF-8.

    Memory is bounded by the limit: a line is read at most `limit + 1` bytes at a time, and
    an over-long line is measured in chunks (not kept) before it is reported with its size.
    Invalid UTF-8 is reported with its line and column.
    """
    limit = max_line_bytes(limit)
    with open_data_file(path) as handle:
        number = 0
        while True:
            raw = read_line(handle, limit + 1, path, number + 1)
            if not raw:
                return
            number += 1
            if len(raw.rstrip(b"\r\n")) > limit:
                size = len(raw)
                while not raw.endswith(b"\n"):
                    raw = read_line(handle, _SKIP_CHUNK, path, number)
                    if not raw:
                        break
                    size += len(raw)
                raise InputError(path, number, None, too_long_message(size, limit))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(path, number, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                                 f"{exc.start + 1} of the line)") from None
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
            yield number, text


def read_line(handle: Any, size: int, path: str, number: int) -> bytes:
    """`handle.readline(size)`; a broken .gz file is an InputError naming the line it broke in."""
    try:
        return handle.readline(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, number, None, f"cannot decompress: {exc}") from None


class DuplicateKeyError(ValueError):
    """A JSON object with a key given twice (json.loads would silently keep the last value)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKeyError(key)
        obj[key] = value
    return obj


def loads_strict(text: str) -> Any:
    """`json.loads` that raises DuplicateKeyError for an object with a repeated key, and
    JSONDecodeError (not a bare ValueError) for an integer too long for Python to convert."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, DuplicateKeyError):
        raise
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise json.JSONDecodeError(f"a number too long to read ({str(exc).split(';')[0]})", text, 0) from None


def duplicate_key_message(key: str) -> str:
    return f"key {key!r} appears twice in one JSON object (the last value would silently win)"


def read_jsonl(path: str | os.PathLike, max_bytes: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line; bad lines raise InputError.

    Bad means: malformed JSON, not an object, a key given twice, invalid UTF-8, or a line
    longer than `max_bytes` (default: `max_line_bytes()`); the file itself must be a regular file.
    """
    path = str(path)
    for number, text in iter_lines(path, max_bytes):
        if not text.strip():
            continue
        try:
            obj = loads_strict(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, number, None, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
        except DuplicateKeyError as exc:
            raise InputError(path, number, exc.key, duplicate_key_message(exc.key)) from None
        except RecursionError:
            raise InputError(path, number, None, "malformed JSON: nested too deeply") from None
        if not isinstance(obj, dict):
            raise InputError(path, number, None, f"expected a JSON object, got {type(obj).__name__}")
        if SURROGATE_ESCAPE.search(text):
            check_no_surrogates(obj, path, number)
        yield number, obj


# A `\ud800`-style escape: JSON decodes a lone one into a string that is not text (it cannot be
# written as UTF-8 nor tokenised), so rows holding one are refused where they are read.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate_field(value: Any, where: str = "") -> str | None:
    """The path (`messages[0].content`) of the first string in `value` holding a lone UTF-16
    surrogate, or None. (A valid escaped pair, such as an emoji, decodes to one character.)"""
    if isinstance(value, str):
        return where if any("\ud800" <= char <= "\udfff" for char in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = lone_surrogate_field(item, f"{where}[{key}]" if isinstance(key, int) else
                                     f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def check_no_surrogates(value: Any, path: str, line: int | None) -> None:
    """InputError naming the field when a string in `value` holds a lone surrogate."""
    field = lone_surrogate_field(value)
    if field is not None:
        raise InputError(path, line, field or None, "holds a lone UTF-16 surrogate escape (such as \\ud800), "
                         "which is not text; fix or drop that escape")


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row and flush (for metrics logs, where appending is the point)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
