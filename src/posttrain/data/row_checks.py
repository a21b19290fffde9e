"""The checks every data row passes, whatever its shape: a row that knows where it came from
(`LocatedRow`, so each error names file, line and field), text and message-list fields, the
user/assistant turn order, a prompt given once, and the prompt and response fields most shapes share.
`formats.py` detects shapes and normalises rows with these; `preference_shapes.py` does the same
for the preference and ranking shapes."""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..records import Message, user_prompt
from .readers import Row, split_location

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}
PROMPT_ONLY_FIELDS = ("prompt", "question", "problem")


class NoPreference(InputError):
    """A well-formed preference row that holds no pair to learn from: its own label prefers neither
    response (chatbot arena's ties), or it judges whole multi-turn conversations rather than one
    reply to one prompt. `reason` ("tie", "multi-turn") is what the skip counts are keyed by."""

    def __init__(self, path: str | None, line: int | None, field: str | None, message: str, reason: str):
        super().__init__(path, line, field, message)
        self.reason = reason


class LocatedRow:
    """A row plus its location, so every check can raise a located error briefly."""

    def __init__(self, row: Row, source: str | None):
        self.row, self.source = row, source
        self.path, self.line = split_location(source)

    def error(self, field: str | None, message: str) -> InputError:
        return InputError(self.path, self.line, field, message)

    def present(self, name: str) -> bool:
        return self.row.get(name) is not None

    def text(self, name: str, allow_empty: bool = False) -> str:
        value = self.row.get(name)
        if value is None:  # a top-level field: the file may call it something else
            raise self.error(name, f"missing (if the file names it otherwise: --columns {name}=COLUMN)")
        return check_text(self, name, value, allow_empty)


def check_text(row: LocatedRow, name: str, value: Any, allow_empty: bool = False) -> str:
    if value is None:
        raise row.error(name, "missing")
    if not isinstance(value, str):
        raise row.error(name, f"expected text, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise row.error(name, "is empty")
    return value


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_single_prompt(row: LocatedRow) -> None:
    """A row that gives its prompt twice (`prompt` and `question`) is ambiguous: refuse to guess."""
    given = [name for name in PROMPT_ONLY_FIELDS if row.present(name)]
    values = {str(row.row[name]).strip() for name in given}
    if len(given) > 1 and len(values) > 1:  # the same text twice (mlabonne/orpo-dpo-mix-40k) is no ambiguity
        raise row.error(given[1], f"the row has both '{given[0]}' and '{given[1]}'; which is the prompt is ambiguous "
                        f"(drop one, or choose with --columns prompt={given[1]})")


# --- messages -------------------------------------------------------------------------------


def check_messages(row: LocatedRow, name: str, value: Any, roles: dict[str, str] | None = None,
                   keys: tuple[str, str] = ("role", "content")) -> list[Message]:
    """Validate a message list; ShareGPT-style keys/roles are mapped to role/content."""
    if value is None:
        raise row.error(name, "missing")
    if not isinstance(value, list):
        raise row.error(name, f"expected a list of messages, got {type_name(value)}")
    if not value:
        raise row.error(name, "is empty")
    role_key, content_key = keys
    messages: list[Message] = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise row.error(where, f"expected a message object, got {type_name(message)}")
        if role_key not in message and "role" in message:  # a ShareGPT list written with role/content
            role_key, content_key, roles = "role", "content", None
        role = message.get(role_key)
        if role is None:
            raise row.error(f"{where}.{role_key}", "missing")
        if roles is not None:
            if role not in roles:
                raise row.error(f"{where}.{role_key}", f"unknown speaker {role!r} (known: {', '.join(roles)})")
            role = roles[role]
        if role not in ROLES:
            raise row.error(f"{where}.{role_key}", f"invalid role {role!r} (expected one of: {', '.join(ROLES)})")
        content = message.get(content_key)
        check_text(row, f"{where}.{content_key}", content, allow_empty=role in ("system", "tool"))
        kept = {k: v for k, v in message.items() if k not in (role_key, content_key)}
        messages.append({"role": role, "content": content, **kept})
    return messages


def check_turn_order(row: LocatedRow, name: str, messages: list[Message]) -> list[Message]:
    """A conversation starts with the user (after any system messages) and then alternates
    user/assistant; tool messages may sit between an assistant turn and the next one."""
    previous, previous_index = None, None
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            continue
        if previous is None and role == "assistant":
            raise row.error(f"{name}[{index}]", "the conversation starts with an assistant turn; it should start "
                                                "with the user's turn (after any system message)")
        if role == previous and role in ("user", "assistant"):
            raise row.error(f"{name}[{index}]", f"two {role} turns in a row ({name}[{previous_index}] and "
                                                f"{name}[{index}]); turns must alternate user/assistant "
                                                "(merge the two messages into one)")
        previous, previous_index = role, index
    return messages


def prompt_messages(row: LocatedRow, name: str = "prompt") -> list[Message]:
    """A prompt given as text (with an optional `system` field) or as messages."""
    value = row.row.get(name)
    if value is not None and not isinstance(value, (str, list)):
        raise row.error(name, f"expected text or a list of messages, got {type_name(value)}")
    if isinstance(value, list):
        messages = check_turn_order(row, name, check_messages(row, name, value))
        if messages[-1]["role"] == "assistant":
            raise row.error(name, "the prompt ends with an assistant message; it should end with the user's turn")
        return messages
    text = row.text(name)
    system = row.row.get("system")
    if system is not None:
        check_text(row, "system", system, allow_empty=True)
    return user_prompt(text, system or None)


def response_text(row: LocatedRow, name: str) -> str:
    """A response as text, or as a list holding one assistant message."""
    value = row.row.get(name)
    if value is not None and not isinstance(value, (str, list)):
        raise row.error(name, f"expected text or a list with one assistant message, got {type_name(value)}")
    if isinstance(value, list):
        messages = check_messages(row, name, value)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise row.error(name, "expected text or a list with one assistant message")
        return messages[0]["content"]
    return row.text(name)


def extra_fields(row: Row, used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


# --- one normaliser per shape ---------------------------------------------------------------


def alpaca_user_text(instruction: str, input_text: str) -> str:
    """The user turn of an Alpaca row: the instruction, then the input after a blank line."""
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction

