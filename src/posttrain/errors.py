"""User-facing errors.

Anything a person can fix (bad data, a bad flag, a missing file) is raised as a
`PosttrainError`. The CLI prints its one-line message and exits with code 2, with
no traceback. Library callers can catch it like any exception.
"""
from __future__ import annotations


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
