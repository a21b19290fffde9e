"""User-facing errors.

Anything a person can fix (bad data, a bad flag, a missing file) is raised as a
`PosttrainError`. The CLI prints its one-line message and exits with code 2, with
no traceback. Library callers can catch it like any exception.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty):
    enough to name what a library refused without printing its traceback."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PosttrainError(Exception):
    """An error whose message is a complete, one-line explanation for the user."""

    exit_code = 2


class InputError(PosttrainError):
    """Bad input data, located as `FILE:LINE: field 'x': what is wrong`."""

    def __init__(self, path: str | None, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        super().__init__(format_location(path, line, field) + message)


class ConfigError(PosttrainError):
    """A bad configuration value, always naming the field (`config field 'lr': ...`)."""

    def __init__(self, field: str, message: str, source: str | None = None):
        self.field = field
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config field '{field}': {message}")


class TrainingError(PosttrainError):
    """Training cannot go on (a NaN loss, a broken checkpoint); the message names the step."""


def format_location(path: str | None, line: int | None, field: str | None) -> str:
    """`file:line: field 'x': ` with the parts that are known."""
    parts = ""
    if path is not None:
        parts += f"{path}:{line}: " if line is not None else f"{path}: "
    if field is not None:
        parts += f"field '{field}': "
    return parts


class StorageError(PosttrainError):
    """A file could not be written for a reason outside posttrain (a full disk, a read-only or
    unwritable directory, a quota): `cannot write WHAT PATH: CAUSE`."""


# errno values that mean "the storage refused", not "posttrain has a bug".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO,
                            errno.EFBIG})
# torch's zip writer reports a failed write without an errno, in one of these words.
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "basic_ios::clear", "PytorchStreamWriter failed")
_OS_ERROR_CODE = re.compile(r"os error (\d+)|code: (\d+)")  # safetensors (Rust) spells the errno so


def _free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the filesystem holding `path` (or its nearest existing parent)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def storage_cause(exc: BaseException, path: str | os.PathLike) -> str | None:
    """The cause of a failed write in words ("No space left on device"), when `exc` (or the exception
    it was raised from) is what a full or refusing disk gives; None when it is something else (a bug).

    The writers report it three ways: an `OSError` with an errno (Python, tokenizers); safetensors'
    error that names the OS error code; torch's zip writer, whose message has no errno at all (then
    the free space on `path`'s disk tells a full disk from another failed write).
    """
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for seen in chain:  # an errno anywhere in the chain names the cause best
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return os.strerror(seen.errno)
        if (code := _OS_ERROR_CODE.search(str(seen))) and int(code.group(1) or code.group(2)) in STORAGE_ERRNOS:
            return os.strerror(int(code.group(1) or code.group(2)))
    for seen in chain:
        text = str(seen)
        if isinstance(seen, RuntimeError) and any(words in text for words in _TORCH_WRITE_FAILURES):
            free = _free_bytes(path)
            if free is not None and free < 1024 * 1024:
                return os.strerror(errno.ENOSPC)
            return f"the write failed ({text.splitlines()[0][:120]})"
    return None


@contextlib.contextmanager
def storage_errors(what: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn a full or refusing disk inside the block into `StorageError("cannot write WHAT PATH: CAUSE")`;
    any other exception passes through unchanged."""
    try:
        yield
    except PosttrainError:
        raise
    except Exception as exc:
        cause = storage_cause(exc, path)
        if cause is None:
            raise
        raise StorageError(f"cannot write {what} {path}: {cause}") from exc
