"""Detect the shape of each data row and normalise it into a `posttrain.records` type.

Known shapes (the fields that identify them; detection checks them in this order):

==================  ===========================================  ============  =================
shape               fields                                       kind          record
==================  ===========================================  ============  =================
preference          [prompt], chosen, rejected, [margin]         preference    PreferencePair
ranked              prompt, responses, ranking | scores          ranked        Ranked
unpaired            prompt, completion, label                    unpaired      Unpaired
messages            messages                                     sft           Conversation
sharegpt            conversations (from/value or role/content)   sft           Conversation
alpaca              instruction, [input], output                 sft           Conversation
prompt_completion   prompt, completion                           sft           Conversation
prompt              prompt (or question / problem) alone         prompt        Prompt
==================  ===========================================  ============  =================

A row that has a field only one shape uses (say `chosen`) but lacks the
others is taken as that shape, so the error names the missing field rather
than saying "unknown shape". With `kind="prompt"` every row that holds a
prompt is accepted and only its prompt is kept (see `prompts.parse_prompt`).

Prompts may be text or message lists; responses may be text or a list holding
one assistant message (TRL's "conversational" shapes). A preference row whose
chosen/rejected are full conversations and which has no prompt (TRL's
"implicit prompt") takes the shared leading messages as the prompt.

Every problem is an `InputError`: `FILE:LINE: field 'x': what is wrong`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..records import Conversation, Message, PreferencePair, Prompt, Ranked, Record, Unpaired, user_prompt
from .readers import Row, read_rows, split_location

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}

# shape -> (kind, identifying fields), in detection order.
SHAPES: dict[str, tuple[str, str]] = {
    "preference": ("preference", "[prompt], chosen, rejected, [margin]"),
    "ranked": ("ranked", "prompt, responses, ranking or scores"),
    "unpaired": ("unpaired", "prompt, completion, label"),
    "messages": ("sft", "messages"),
    "sharegpt": ("sft", "conversations"),
    "alpaca": ("sft", "instruction, [input], output"),
    "prompt_completion": ("sft", "prompt, completion"),
    "prompt": ("prompt", "prompt, question or problem alone"),
}
KINDS = ("sft", "preference", "ranked", "unpaired", "prompt")
PROMPT_ONLY_FIELDS = ("prompt", "question", "problem")


class _Row:
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
        return check_text(self, name, value, allow_empty)


def check_text(row: _Row, name: str, value: Any, allow_empty: bool = False) -> str:
    if value is None:
        raise row.error(name, "missing")
    if not isinstance(value, str):
        raise row.error(name, f"expected text, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise row.error(name, "is empty")
    return value


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def detect_shape(row: Row) -> str | None:
    """The shape name of a row (see the module table), or None when no shape fits.

    A row with a telltale field of a shape but missing others counts as that shape.
    """
    return _complete_shape(row) or _guess_shape(row) or _prompt_only(row)


def _prompt_only(row: Row) -> str | None:
    return "prompt" if any(row.get(name) is not None for name in PROMPT_ONLY_FIELDS) else None


def _complete_shape(row: Row) -> str | None:
    has = lambda name: row.get(name) is not None  # noqa: E731
    if has("chosen") and has("rejected"):
        return "preference"
    if has("prompt") and has("responses"):
        return "ranked"
    if has("prompt") and has("completion") and "label" in row:
        return "unpaired"
    if has("messages"):
        return "messages"
    if has("conversations"):
        return "sharegpt"
    if has("instruction") and "output" in row:
        return "alpaca"
    if has("prompt") and "completion" in row:
        return "prompt_completion"
    return None


# Fields that only one shape uses: a row that has one but fails detection is that shape with a
# field missing, and gets a "field 'x': missing" error instead of "unknown shape".
_TELLTALE = (("chosen", "preference"), ("rejected", "preference"), ("responses", "ranked"), ("ranking", "ranked"),
             ("scores", "ranked"), ("label", "unpaired"), ("messages", "messages"), ("conversations", "sharegpt"),
             ("instruction", "alpaca"), ("output", "alpaca"), ("completion", "prompt_completion"))


def _guess_shape(row: Row) -> str | None:
    return next((shape for name, shape in _TELLTALE if name in row), None)


def known_shapes_text() -> str:
    return "; ".join(f"{name} ({fields})" for name, (_, fields) in SHAPES.items())


# --- messages -------------------------------------------------------------------------------


def check_messages(row: _Row, name: str, value: Any, roles: dict[str, str] | None = None,
                   keys: tuple[str, str] = ("role", "content")) -> list[Message]:
    """Validate a message list; ShareGPT-style keys/roles are mapped to role/content."""
    if value is None:
        raise row.error(name, "missing")
    if not isinstance(value, list):
        raise row.error(name, f"expected a list of messages, got {_type_name(value)}")
    if not value:
        raise row.error(name, "is empty")
    role_key, content_key = keys
    messages: list[Message] = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise row.error(where, f"expected a message object, got {_type_name(message)}")
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


def _prompt(row: _Row, name: str = "prompt") -> list[Message]:
    """A prompt given as text (with an optional `system` field) or as messages."""
    value = row.row.get(name)
    if value is not None and not isinstance(value, (str, list)):
        raise row.error(name, f"expected text or a list of messages, got {_type_name(value)}")
    if isinstance(value, list):
        messages = check_messages(row, name, value)
        if messages[-1]["role"] == "assistant":
            raise row.error(name, "the prompt ends with an assistant message; it should end with the user's turn")
        return messages
    text = row.text(name)
    system = row.row.get("system")
    if system is not None:
        check_text(row, "system", system, allow_empty=True)
    return user_prompt(text, system or None)


def _response(row: _Row, name: str) -> str:
    """A response as text, or as a list holding one assistant message."""
    value = row.row.get(name)
    if value is not None and not isinstance(value, (str, list)):
        raise row.error(name, f"expected text or a list with one assistant message, got {_type_name(value)}")
    if isinstance(value, list):
        messages = check_messages(row, name, value)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise row.error(name, "expected text or a list with one assistant message")
        return messages[0]["content"]
    return row.text(name)


def _extra(row: Row, used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


# --- one normaliser per shape ---------------------------------------------------------------


def _sft_messages(row: _Row, messages: list[Message], field: str) -> list[Message]:
    if not any(m["role"] == "assistant" for m in messages):
        raise row.error(field, "no assistant turn to learn from")
    return messages


def _from_messages(row: _Row) -> Conversation:
    messages = _sft_messages(row, check_messages(row, "messages", row.row.get("messages")), "messages")
    return Conversation(messages, source=row.source, extra=_extra(row.row, ("messages",)))


def _from_sharegpt(row: _Row) -> Conversation:
    messages = check_messages(row, "conversations", row.row.get("conversations"), SHAREGPT_ROLES, ("from", "value"))
    messages = _sft_messages(row, messages, "conversations")
    return Conversation(messages, source=row.source, extra=_extra(row.row, ("conversations",)))


def alpaca_user_text(instruction: str, input_text: str) -> str:
    """The user turn of an Alpaca row: the instruction, then the input after a blank line."""
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def _from_alpaca(row: _Row) -> Conversation:
    instruction = row.text("instruction")
    input_text = row.text("input", allow_empty=True) if row.present("input") else ""
    output = row.text("output")
    system = row.text("system", allow_empty=True) if row.present("system") else None
    prompt = user_prompt(alpaca_user_text(instruction, input_text), system or None)
    # instruction/input stay in `extra` so the alpaca and with_input templates can place them.
    extra = {**_extra(row.row, ("output", "system")), "instruction": instruction, "input": input_text}
    return Conversation(prompt + [{"role": "assistant", "content": output}], source=row.source, extra=extra)


def _from_prompt_completion(row: _Row) -> Conversation:
    prompt = _prompt(row)
    completion = _response(row, "completion")
    return Conversation(prompt + [{"role": "assistant", "content": completion}], source=row.source,
                        extra=_extra(row.row, ("prompt", "completion", "system")))


def _shared_prefix(chosen: list[Message], rejected: list[Message]) -> int:
    count = 0
    for a, b in zip(chosen, rejected):
        if a.get("role") != b.get("role") or a.get("content") != b.get("content"):
            break
        count += 1
    return count


def _from_preference(row: _Row) -> PreferencePair:
    chosen_value, rejected_value = row.row.get("chosen"), row.row.get("rejected")
    if not row.present("prompt") and isinstance(chosen_value, list) and isinstance(rejected_value, list):
        # Implicit prompt: the shared leading messages are the prompt, the rest is the reply.
        chosen_messages = check_messages(row, "chosen", chosen_value)
        rejected_messages = check_messages(row, "rejected", rejected_value)
        shared = _shared_prefix(chosen_messages, rejected_messages)
        if shared == 0:
            raise row.error("prompt", "missing, and chosen/rejected share no leading messages to use as the prompt")
        prompt = chosen_messages[:shared]
        for name, messages in (("chosen", chosen_messages), ("rejected", rejected_messages)):
            rest = messages[shared:]
            if len(rest) != 1 or rest[0]["role"] != "assistant":
                raise row.error(name, "after the shared prompt expected one assistant message, "
                                      f"got {len(rest)} messages")
        chosen, rejected = chosen_messages[shared]["content"], rejected_messages[shared]["content"]
    else:
        prompt = _prompt(row)
        chosen, rejected = _response(row, "chosen"), _response(row, "rejected")
    if chosen == rejected:
        raise row.error("rejected", "is identical to 'chosen'")
    margin = row.row.get("margin")
    is_number = isinstance(margin, (int, float)) and not isinstance(margin, bool)
    if margin is not None and not (is_number and math.isfinite(margin)):
        raise row.error("margin", f"expected a finite number, got {margin!r}")
    extra = _extra(row.row, ("prompt", "chosen", "rejected", "margin", "system"))
    margin = None if margin is None else float(margin)
    return PreferencePair(prompt, chosen, rejected, margin, source=row.source, extra=extra)


def _from_ranked(row: _Row) -> Ranked:
    prompt = _prompt(row)
    value = row.row.get("responses")
    if not isinstance(value, list):
        raise row.error("responses", f"expected a list of responses, got {_type_name(value)}")
    if len(value) < 2:
        raise row.error("responses", f"expected at least 2 responses, got {len(value)}")
    responses = []
    for index, item in enumerate(value):
        if isinstance(item, list):
            fake = _Row({"r": item}, row.source)
            responses.append(_response(fake, "r"))
        else:
            responses.append(check_text(row, f"responses[{index}]", item))
    ranking, scores = row.row.get("ranking"), row.row.get("scores")
    if ranking is None and scores is None:
        raise row.error("ranking", "missing (give 'ranking', best-first indices, or 'scores')")
    if ranking is not None:
        if not isinstance(ranking, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ranking):
            raise row.error("ranking", f"expected a list of integer indices, got {ranking!r}")
        if sorted(ranking) != list(range(len(responses))):
            raise row.error("ranking", f"expected a permutation of 0..{len(responses) - 1}, got {ranking!r}")
    if scores is not None:
        if not isinstance(scores, list) or any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in scores):
            raise row.error("scores", f"expected a list of numbers, got {scores!r}")
        if len(scores) != len(responses):
            raise row.error("scores", f"expected {len(responses)} scores (one per response), got {len(scores)}")
        scores = [float(s) for s in scores]
    extra = _extra(row.row, ("prompt", "responses", "ranking", "scores", "system"))
    return Ranked(prompt, responses, ranking, scores, source=row.source, extra=extra)


def _from_unpaired(row: _Row) -> Unpaired:
    prompt = _prompt(row)
    completion = _response(row, "completion")
    label = row.row.get("label")
    if label is None:
        raise row.error("label", "missing")
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise row.error("label", f"expected true or false, got {label!r}")
    extra = _extra(row.row, ("prompt", "completion", "label", "system"))
    return Unpaired(prompt, completion, label, source=row.source, extra=extra)


def _from_prompt(row: _Row) -> Prompt:
    from .prompts import parse_prompt  # prompts.py builds on this module

    return parse_prompt(row.row, row.source)


NORMALISERS: dict[str, Callable[[_Row], Record]] = {
    "preference": _from_preference,
    "ranked": _from_ranked,
    "unpaired": _from_unpaired,
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
    "prompt": _from_prompt,
}


def parse_row(row: Row, source: str | None = None, kind: str | None = None) -> tuple[str, Record]:
    """Detect `row`'s shape, check it fits `kind`, and normalise it: `(shape, record)`."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    located = _Row(row, source)
    shape = detect_shape(row)
    if kind == "prompt":
        from .prompts import parse_prompt  # prompts.py builds on this module

        return shape or "prompt", parse_prompt(row, source)
    if shape is None:
        fields = ", ".join(sorted(map(str, row))) or "none"
        raise located.error(None, f"unknown shape (fields: {fields}); known shapes: {known_shapes_text()}")
    shape_kind = SHAPES[shape][0]
    if kind is not None and shape_kind != kind:
        wanted = "; ".join(f"{name} ({fields})" for name, (k, fields) in SHAPES.items() if k == kind)
        raise located.error(None, f"row has the {shape} shape ({shape_kind} data), but {kind} data is needed: {wanted}")
    return shape, NORMALISERS[shape](located)


def iter_records(source: str | os.PathLike, kind: str | None = None, split: str | None = None
                 ) -> Iterator[tuple[str, Record]]:
    """Yield `(shape, record)` for each row of `source` (see `read_rows`)."""
    for where, row in read_rows(source, split=split):
        yield parse_row(row, where, kind)


def load_records(source: str | os.PathLike, kind: str | None = None, split: str | None = None,
                 limit: int | None = None) -> list[Record]:
    """Read and normalise every row of `source`; the first bad row raises `InputError`.

    kind: "sft" (Conversation), "preference" (PreferencePair), "ranked" (Ranked),
    "unpaired" (Unpaired), "prompt" (Prompt: the prompt of any row that has one),
    or None to accept any shape. `limit` keeps the first N.
    """
    records: list[Record] = []
    for _, record in iter_records(source, kind, split):
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    return records
