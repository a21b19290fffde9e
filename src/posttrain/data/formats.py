"""Detect the shape of each data row and normalise it into a `posttrain.records` type.

Known shapes (the fields that identify them; detection checks them in this order):

==================  ===========================================  ============  =================
shape               fields                                       kind          record
==================  ===========================================  ============  =================
preference          [prompt | question | instruction [+ input] |  preference    PreferencePair
                    input], chosen, rejected, [margin]
ranked              prompt, responses, ranking | scores          ranked        Ranked
unpaired            prompt, completion, label                    unpaired      Unpaired
ultrafeedback       instruction, completions (openbmb's raw      ranked        Ranked
                    UltraFeedback: response + overall_score)
shp                 history, human_ref_A, human_ref_B, labels    preference    PreferencePair
                    (stanfordnlp/SHP, SHP-2)
arena               conversation_a, conversation_b, winner       preference    PreferencePair
                    (lmsys/chatbot_arena_conversations)
pku_saferlhf        prompt, response_0, response_1,              preference    PreferencePair
                    better_response_id (PKU-Alignment/PKU-SafeRLHF)
messages            messages                                     sft           Conversation
sharegpt            conversations (from/value or role/content)   sft           Conversation
alpaca              instruction, [input], output                 sft           Conversation
dolly               instruction, [context], response             sft           Conversation
prompt_completion   prompt, completion (or response)             sft           Conversation
question_answer     question | problem, answer | solution |      sft           Conversation
                    response (gsm8k, MATH, OpenOrca)
text                text (and no field of another shape)         text          Text
prompt              prompt (or question / problem) alone         prompt        Prompt
==================  ===========================================  ============  =================

A row that has a field only one shape uses (say `chosen`) but lacks the
others is taken as that shape, so the error names the missing field rather
than saying "unknown shape". With `kind="prompt"` every row that holds a
prompt is accepted and only its prompt is kept (see `prompts.parse_prompt`).

Prompts may be text or message lists; responses may be text or a list holding
one assistant message (TRL's "conversational" shapes). A preference row whose
chosen/rejected are full conversations takes the shared leading messages as
the prompt: TRL's "implicit prompt" shape, ultrafeedback_binarized (whose
`prompt` text must then be one of that prefix's user turns), and hh-rlhf's
transcripts (`\n\nHuman: ...\n\nAssistant: ...` text, parsed into turns).

The rules every row must pass are here, once: `data check` and training call
the same `parse_row`, so what `data check` passes, training accepts. Besides
field types: conversations start with the user (after any system message) and
alternate user/assistant; chosen and rejected differ (also after stripping
whitespace); ranked responses differ and their scores are finite and not all
equal; a row gives its prompt once (not both `prompt` and `question`).

Every problem is an `InputError`: `FILE:LINE: field 'x': what is wrong`. A
well-formed row whose own label prefers neither response (a chatbot-arena tie)
raises its subclass `NoPreference`; `iter_records(..., skipped=Counter())` counts
such rows instead, which is what `dpo`, `rm`, `kto` and `data check` do.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..records import Conversation, Message, PreferencePair, Prompt, Ranked, Record, Text, Unpaired, user_prompt
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
    "ultrafeedback": ("ranked", "instruction, completions (each with response and overall_score)"),
    "shp": ("preference", "history, human_ref_A, human_ref_B, labels"),
    "arena": ("preference", "conversation_a, conversation_b, winner"),
    "pku_saferlhf": ("preference", "prompt, response_0, response_1, better_response_id"),
    "messages": ("sft", "messages"),
    "sharegpt": ("sft", "conversations"),
    "alpaca": ("sft", "instruction, [input], output"),
    "dolly": ("sft", "instruction, [context], response"),
    "prompt_completion": ("sft", "prompt, completion or response"),
    "question_answer": ("sft", "question or problem, answer or solution or response"),
    "text": ("text", "text"),
    "prompt": ("prompt", "prompt, question or problem alone"),
}
KINDS = ("sft", "preference", "ranked", "unpaired", "prompt", "text")
PROMPT_ONLY_FIELDS = ("prompt", "question", "problem")


class NoPreference(InputError):
    """A well-formed preference row that holds no pair to learn from: its own label prefers neither
    response (chatbot arena's ties), or it judges whole multi-turn conversations rather than one
    reply to one prompt. `reason` ("tie", "multi-turn") is what the skip counts are keyed by."""

    def __init__(self, path: str | None, line: int | None, field: str | None, message: str, reason: str):
        super().__init__(path, line, field, message)
        self.reason = reason


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
        if value is None:  # a top-level field: the file may call it something else
            raise self.error(name, f"missing (if the file names it otherwise: --columns {name}=COLUMN)")
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


def detect_shape(row: Row, kinds: tuple[str, ...] | None = None) -> str | None:
    """The shape name of a row (see the module table), or None when no shape fits.

    A row with a telltale field of a shape but missing others counts as that shape. A row
    complete for several shapes takes the first in table order, or with `kinds` the first of
    those kinds: H4's `train_sft` rows hold `messages` and `chosen`/`rejected`, and `sft`
    reads their `messages`.
    """
    complete = _complete_shapes(row)
    wanted = [shape for shape in complete if kinds is None or SHAPES[shape][0] in kinds]
    return (wanted or complete or [None])[0] or _text_only(row) or _guess_shape(row) or _prompt_only(row)


def _text_only(row: Row) -> str | None:
    """Raw text, unless the row also has a field that belongs to another shape."""
    has_other = any(name in row for name, _ in _TELLTALE) or _prompt_only(row)
    return "text" if row.get("text") is not None and not has_other else None


def _prompt_only(row: Row) -> str | None:
    return "prompt" if any(row.get(name) is not None for name in PROMPT_ONLY_FIELDS) else None


def _complete_shapes(row: Row) -> list[str]:
    """Every shape whose fields the row has, in table order."""
    has = lambda name: row.get(name) is not None  # noqa: E731
    tests = {
        "preference": has("chosen") and has("rejected"),
        "ranked": has("prompt") and has("responses"),
        "unpaired": has("prompt") and has("completion") and "label" in row,
        "ultrafeedback": has("instruction") and has("completions"),
        "shp": has("history") and has("human_ref_A") and has("human_ref_B"),
        "arena": has("conversation_a") and has("conversation_b"),
        "pku_saferlhf": has("prompt") and has("response_0") and has("response_1"),
        "messages": has("messages"),
        "sharegpt": has("conversations"),
        "alpaca": has("instruction") and "output" in row,
        "dolly": has("instruction") and "response" in row,
        "prompt_completion": has("prompt") and ("completion" in row or has("response")),
        "question_answer": (has("question") or has("problem")) and any(has(name) for name in ANSWER_FIELDS),
    }
    return [shape for shape, complete in tests.items() if complete]


# Fields that only one shape uses: a row that has one but fails detection is that shape with a
# field missing, and gets a "field 'x': missing" error instead of "unknown shape".
_TELLTALE = (("chosen", "preference"), ("rejected", "preference"), ("responses", "ranked"), ("ranking", "ranked"),
             ("scores", "ranked"), ("label", "unpaired"), ("messages", "messages"), ("conversations", "sharegpt"),
             ("completions", "ultrafeedback"), ("human_ref_A", "shp"), ("human_ref_B", "shp"),
             ("conversation_a", "arena"), ("conversation_b", "arena"), ("response_0", "pku_saferlhf"),
             ("response_1", "pku_saferlhf"), ("instruction", "alpaca"), ("output", "alpaca"),
             ("completion", "prompt_completion"))
# (These leave out `response`, `answer` and `context`: too common as extra fields to name a shape.)


def _guess_shape(row: Row) -> str | None:
    return next((shape for name, shape in _TELLTALE if name in row), None)


def known_shapes_text() -> str:
    return "; ".join(f"{name} ({fields})" for name, (_, fields) in SHAPES.items())


COLUMNS_HINT = "or map your columns onto one with --columns FIELD=COLUMN (e.g. --columns prompt=question)"


def check_single_prompt(row: _Row) -> None:
    """A row that gives its prompt twice (`prompt` and `question`) is ambiguous: refuse to guess."""
    given = [name for name in PROMPT_ONLY_FIELDS if row.present(name)]
    values = {str(row.row[name]).strip() for name in given}
    if len(given) > 1 and len(values) > 1:  # the same text twice (mlabonne/orpo-dpo-mix-40k) is no ambiguity
        raise row.error(given[1], f"the row has both '{given[0]}' and '{given[1]}'; which is the prompt is ambiguous "
                        f"(drop one, or choose with --columns prompt={given[1]})")


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


def check_turn_order(row: _Row, name: str, messages: list[Message]) -> list[Message]:
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


def _prompt(row: _Row, name: str = "prompt") -> list[Message]:
    """A prompt given as text (with an optional `system` field) or as messages."""
    value = row.row.get(name)
    if value is not None and not isinstance(value, (str, list)):
        raise row.error(name, f"expected text or a list of messages, got {_type_name(value)}")
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
    return check_turn_order(row, field, messages)


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


def _from_dolly(row: _Row) -> Conversation:
    """databricks-dolly-15k: instruction, optional context (read as Alpaca's input), response, category."""
    instruction = row.text("instruction")
    context = row.text("context", allow_empty=True) if row.present("context") else ""
    response = row.text("response")
    prompt = user_prompt(alpaca_user_text(instruction, context))
    extra = {**_extra(row.row, ("response", "context")), "instruction": instruction, "input": context}
    return Conversation(prompt + [{"role": "assistant", "content": response}], source=row.source, extra=extra)


ANSWER_FIELDS = ("answer", "solution", "response")


def _from_question_answer(row: _Row) -> Conversation:
    """gsm8k's `question` / `answer`, MATH's `problem` / `solution`, OpenOrca's `question` / `response`
    as SFT data (the whole answer, reasoning included, is learned)."""
    question_field = "question" if row.present("question") else "problem"
    answer_field = next(name for name in ANSWER_FIELDS if row.present(name))
    question, answer = row.text(question_field), row.text(answer_field)
    system_field = next((name for name in ("system", "system_prompt") if row.present(name)), None)  # OpenOrca
    system = row.text(system_field, allow_empty=True) if system_field else None
    return Conversation(user_prompt(question, system or None) + [{"role": "assistant", "content": answer}],
                        source=row.source, extra=_extra(row.row, (question_field, answer_field, system_field or "")))


def _from_text(row: _Row) -> Text:
    return Text(row.text("text"), source=row.source, extra=_extra(row.row, ("text",)))


def _from_prompt_completion(row: _Row) -> Conversation:
    prompt = _prompt(row)
    name = "completion" if "completion" in row.row else "response"  # HelpSteer-style prompt/response
    completion = _response(row, name)
    return Conversation(prompt + [{"role": "assistant", "content": completion}], source=row.source,
                        extra=_extra(row.row, ("prompt", name, "system")))


def _shared_prefix(chosen: list[Message], rejected: list[Message]) -> int:
    count = 0
    for a, b in zip(chosen, rejected):
        if a.get("role") != b.get("role") or a.get("content") != b.get("content"):
            break
        count += 1
    return count


# hh-rlhf transcripts: "\n\nHuman: ...\n\nAssistant: ..." (the first marker may start the text).
_TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_TRANSCRIPT_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_transcript(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip().startswith("Human:")


def parse_transcript(text: str) -> list[dict[str, Any]]:
    """`"\n\nHuman: Hi\n\nAssistant: Hello"` -> user/assistant messages (content stripped)."""
    parts = _TRANSCRIPT_TURN.split(text.lstrip())
    # parts = ["", "Human", " Hi", "Assistant", "Hello", ...]: text before the first marker, then pairs.
    return [{"role": _TRANSCRIPT_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _conversation_value(row: _Row, name: str) -> list[Message] | None:
    """chosen/rejected as a full conversation (a message list that is more than one assistant reply,
    or an hh-rlhf transcript), validated; None when it is a plain response."""
    value = row.row.get(name)
    if is_transcript(value):
        value = parse_transcript(value)
    elif not (isinstance(value, list) and (len(value) != 1 or not isinstance(value[0], dict)
                                           or value[0].get("role") != "assistant")):
        return None
    return check_turn_order(row, name, check_messages(row, name, value))


def _implicit_prompt(row: _Row, chosen_messages: list[Message], rejected_messages: list[Message],
                     names: tuple[str, str] = ("chosen", "rejected")) -> tuple[list[Message], str, str]:
    """Split two full conversations into their shared prompt and the two final replies; `names`:
    the fields the two conversations came from, for the errors."""
    if chosen_messages == rejected_messages:
        raise row.error(names[1], f"is identical to '{names[0]}'")
    shared = _shared_prefix(chosen_messages, rejected_messages)
    if shared == 0:
        raise row.error("prompt", f"missing, and {names[0]}/{names[1]} share no leading messages to use as the "
                                  "prompt")
    for name, messages in zip(names, (chosen_messages, rejected_messages)):
        rest = messages[shared:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise row.error(name, "after the prompt it shares with the other response, expected one assistant "
                                  f"message, got {len(rest)} messages")
    return chosen_messages[:shared], chosen_messages[shared]["content"], rejected_messages[shared]["content"]


def _check_prompt_matches(row: _Row, prompt: list[Message]) -> None:
    """ultrafeedback_binarized gives `prompt` as text beside full conversations: it must be one of
    the prefix's user turns (the last one in ultrafeedback, the first in multi-turn sets such as
    Capybara), or, as messages, the whole shared prefix."""
    value = row.row.get("prompt")
    if isinstance(value, list):
        if check_messages(row, "prompt", value) != prompt:
            raise row.error("prompt", "differs from the messages that chosen and rejected start with")
        return
    text = check_text(row, "prompt", value)
    if not any(m["role"] == "user" and m["content"].strip() == text.strip() for m in prompt):
        raise row.error("prompt", "differs from every user turn of the conversation that chosen and rejected "
                                  "start with")


# Where a preference row with text replies gives its prompt when it has no `prompt` field:
# Intel/orca_dpo_pairs `question` (with `system`), argilla's distilabel pairs `input`, and
# `instruction` (with an Alpaca `input` after it).
PREFERENCE_PROMPT_FIELDS = ("question", "instruction", "input")


def _preference_prompt(row: _Row) -> tuple[list[Message], str]:
    """The prompt of a preference row with text replies, and the field it came from."""
    if row.present("prompt"):
        return _prompt(row), "prompt"
    field = next((name for name in PREFERENCE_PROMPT_FIELDS if row.present(name)), None)
    if field is None:
        return _prompt(row), "prompt"  # the "missing" error
    if field != "instruction":
        return _prompt(row, field), field
    input_text = row.text("input", allow_empty=True) if row.present("input") else ""
    system = row.text("system", allow_empty=True) if row.present("system") else None
    return user_prompt(alpaca_user_text(row.text("instruction"), input_text), system or None), field


def check_distinct(row: _Row, chosen: str, rejected: str, names: tuple[str, str] = ("chosen", "rejected")) -> None:
    """The two replies of a pair must differ, also after stripping whitespace (a tie teaches nothing)."""
    if chosen == rejected:
        raise row.error(names[1], f"is identical to '{names[0]}'")
    if chosen.strip() == rejected.strip():
        raise row.error(names[1], f"is identical to '{names[0]}' apart from leading/trailing whitespace")


def _from_preference(row: _Row) -> PreferencePair:
    prompt_field = "prompt"
    chosen_messages, rejected_messages = _conversation_value(row, "chosen"), _conversation_value(row, "rejected")
    if chosen_messages is not None and rejected_messages is not None:
        # Full conversations (TRL's implicit prompt, ultrafeedback_binarized, hh-rlhf): the shared
        # leading messages are the prompt, the rest is the reply.
        prompt, chosen, rejected = _implicit_prompt(row, chosen_messages, rejected_messages)
        if row.present("prompt"):
            _check_prompt_matches(row, prompt)
    elif (chosen_messages is None) != (rejected_messages is None) and not row.present("prompt"):
        full = "chosen" if chosen_messages is not None else "rejected"
        other = "rejected" if full == "chosen" else "chosen"
        raise row.error(other, f"is a single reply while '{full}' is a whole conversation; give both the same way")
    else:
        prompt, prompt_field = _preference_prompt(row)
        chosen, rejected = _response(row, "chosen"), _response(row, "rejected")
    check_distinct(row, chosen, rejected)
    margin = row.row.get("margin")
    is_number = isinstance(margin, (int, float)) and not isinstance(margin, bool)
    if margin is not None and not (is_number and math.isfinite(margin)):
        raise row.error("margin", f"expected a finite number, got {margin!r}")
    used = ("instruction", "input") if prompt_field == "instruction" else (prompt_field,)
    extra = _extra(row.row, ("chosen", "rejected", "margin", "system", *used))
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
    seen: dict[str, int] = {}
    for index, text in enumerate(responses):
        first = seen.setdefault(text.strip(), index)
        if first != index:
            raise row.error(f"responses[{index}]", f"is identical to responses[{first}] (a tie teaches nothing; "
                                                   "keep one copy)")
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
        bad = next((s for s in scores if not math.isfinite(s)), None)
        if bad is not None:
            raise row.error("scores", f"expected finite numbers, got {bad!r} in {scores!r}")
        scores = [float(s) for s in scores]
        if ranking is None and len(set(scores)) < 2:
            raise row.error("scores", f"all scores are equal ({scores[0]:g}): no response is better than another")
    extra = _extra(row.row, ("prompt", "responses", "ranking", "scores", "system"))
    return Ranked(prompt, responses, ranking, scores, source=row.source, extra=extra)


def _from_ultrafeedback(row: _Row) -> Ranked:
    """openbmb/UltraFeedback as published: `instruction` and `completions`, one per model, each with
    its `response` and GPT-4's `overall_score`: a ranking of the responses by that score (the rules
    of the ranked shape apply: distinct responses, finite scores, not all equal)."""
    instruction = row.text("instruction")
    completions = row.row.get("completions")
    if not isinstance(completions, list) or len(completions) < 2:
        raise row.error("completions", f"expected a list of at least 2 completions, got {_type_name(completions)}"
                        if not isinstance(completions, list) else f"expected at least 2 completions, got "
                        f"{len(completions)}")
    responses, scores = [], []
    for index, item in enumerate(completions):
        if not isinstance(item, dict):
            raise row.error(f"completions[{index}]", f"expected an object, got {_type_name(item)}")
        responses.append(check_text(row, f"completions[{index}].response", item.get("response")))
        score = item.get("overall_score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise row.error(f"completions[{index}].overall_score", f"expected a finite number, got {score!r}")
        scores.append(float(score))
    models = [item.get("model") for item in completions]
    extra = {**_extra(row.row, ("instruction", "completions")), "models": models}
    ranked = _Row({"prompt": instruction, "responses": responses, "scores": scores}, row.source)
    try:
        record = _from_ranked(ranked)
    except InputError as exc:  # name the fields as this file has them
        field = re.sub(r"^responses\[(\d+)\]$", r"completions[\1].response", exc.field or "")
        field = "completions[].overall_score" if field == "scores" else field
        raise row.error(field or None, exc.message.replace("responses[", "completions[")) from None
    record.extra = extra
    return record


# --- public preference sets with columns of their own: one pair per row, label fields kept in `extra` ---


def _binary_choice(row: _Row, name: str) -> int:
    """A 0/1 label naming one of two responses (SHP's `labels`, PKU-SafeRLHF's `*_response_id`)."""
    value = row.row.get(name)
    if value is None:
        raise row.error(name, f"missing (if the file names it otherwise: --columns {name}=COLUMN)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise row.error(name, f"expected 0 or 1, got {value!r}")
    return int(value)


def _pair_of_texts(row: _Row, prompt: list[Message], fields: tuple[str, str], used: tuple[str, ...]
                   ) -> PreferencePair:
    """A pair from two text fields, the preferred one first; `used` fields leave `extra`."""
    chosen, rejected = row.text(fields[0]), row.text(fields[1])
    check_distinct(row, chosen, rejected, fields)
    return PreferencePair(prompt, chosen, rejected, source=row.source, extra=_extra(row.row, used))


def _from_shp(row: _Row) -> PreferencePair:
    """stanfordnlp/SHP and SHP-2: a post (`history`) and two replies to it; `labels` 1 means
    human_ref_A is preferred, 0 human_ref_B. Scores, ids, domain and timestamps stay in `extra`."""
    prompt = user_prompt(row.text("history"))
    fields = ("human_ref_A", "human_ref_B") if _binary_choice(row, "labels") == 1 else ("human_ref_B", "human_ref_A")
    return _pair_of_texts(row, prompt, fields, ("history", "human_ref_A", "human_ref_B"))


def _from_pku_saferlhf(row: _Row) -> PreferencePair:
    """PKU-Alignment/PKU-SafeRLHF: `prompt`, `response_0`, `response_1`; `better_response_id`
    (helpfulness) names the chosen one. Its other label, `safer_response_id`, is read instead with
    `--columns better_response_id=safer_response_id`; safety flags and harm categories stay in `extra`."""
    prompt = _prompt(row)
    better = _binary_choice(row, "better_response_id")
    fields = ("response_0", "response_1") if better == 0 else ("response_1", "response_0")
    return _pair_of_texts(row, prompt, fields, ("prompt", "system", "response_0", "response_1"))


# lmsys/chatbot_arena_conversations: `winner` names the conversation voted better.
ARENA_WINNERS = {"model_a": ("conversation_a", "conversation_b"), "model_b": ("conversation_b", "conversation_a")}
ARENA_TIES = ("tie", "tie (bothbad)")
SKIPPED_BY = "dpo, rm, kto and data check skip such rows and count them"


def _from_arena(row: _Row) -> PreferencePair:
    """lmsys/chatbot_arena_conversations: two conversations (user turns shared, one model's replies
    each) and the vote. The shared user turn is the prompt. A tie, or a vote on a multi-turn
    conversation (it judges several replies, each after its own model's earlier ones), is no pair:
    `NoPreference`, which dpo/rm/data check count and skip. Models, judge, language, ... stay in `extra`."""
    winner = row.row.get("winner")
    if not isinstance(winner, str) or (winner not in ARENA_WINNERS and winner not in ARENA_TIES):
        raise row.error("winner", "missing" if winner is None else
                        f"expected one of {', '.join(map(repr, [*ARENA_WINNERS, *ARENA_TIES]))}, got {winner!r}")
    names = ARENA_WINNERS.get(winner, ("conversation_a", "conversation_b"))
    chosen, rejected = (check_turn_order(row, name, check_messages(row, name, row.row.get(name))) for name in names)
    if winner in ARENA_TIES:
        raise NoPreference(row.path, row.line, "winner", f"is {winner!r}: the vote prefers neither conversation "
                           f"({SKIPPED_BY})", reason="tie")
    replies = max(sum(m["role"] == "assistant" for m in messages) for messages in (chosen, rejected))
    if replies > 1:
        raise NoPreference(row.path, row.line, names[0], f"holds {replies} replies: the vote judges the whole "
                           f"multi-turn conversation, not one reply to one prompt ({SKIPPED_BY})", reason="multi-turn")
    prompt, chosen_text, rejected_text = _implicit_prompt(row, chosen, rejected, names)
    check_distinct(row, chosen_text, rejected_text, names)
    return PreferencePair(prompt, chosen_text, rejected_text, source=row.source,
                          extra=_extra(row.row, ("conversation_a", "conversation_b")))


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
    return parse_prompt(row.row, row.source)


# --- prompts (generation, online RL): the prompt of any row -------------------------------------

# Where a prompt may be, in order; the response fields are left out of a Prompt's `extra`.
PROMPT_FIELDS = ("prompt", "messages", "conversations", "instruction", "question", "problem")
RESPONSE_FIELDS = ("completion", "chosen", "rejected", "responses", "output", "response", "ranking", "scores", "label")


def _without_trailing_answers(row: _Row, field: str, messages: list[Message]) -> list[Message]:
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise row.error(field, "has no user turn to answer")
    return messages


def _speakers(field: str) -> tuple:
    """ShareGPT's `conversations` use from/value and human/gpt; other message lists role/content."""
    return (SHAREGPT_ROLES, ("from", "value")) if field == "conversations" else (None, ("role", "content"))


def parse_prompt(raw: dict[str, Any], source: str | None = None) -> Prompt:
    """The prompt of any row that has one (see `posttrain.data.prompts`); trailing assistant turns
    of a conversation are dropped, so the model answers the last user turn."""
    row = _Row(raw, source)
    check_single_prompt(row)
    field = next((f for f in PROMPT_FIELDS if raw.get(f) is not None), None)
    if field is None and raw.get("chosen") is not None:
        # A preference row whose prompt is implicit (hh-rlhf, TRL): the conversation before the reply.
        conversation = _conversation_value(row, "chosen")
        if conversation is not None:
            messages = _without_trailing_answers(row, "chosen", conversation)
            extra = {k: v for k, v in raw.items() if k not in RESPONSE_FIELDS}
            return Prompt(prompt=messages, source=source, extra=extra)
    if field is None:
        raise row.error(None, f"no prompt found (expected one of: {', '.join(PROMPT_FIELDS)})")
    value = raw[field]
    if field in ("messages", "conversations") or isinstance(value, list):
        messages = check_turn_order(row, field, check_messages(row, field, value, *_speakers(field)))
        messages = _without_trailing_answers(row, field, messages)
    elif field == "instruction":
        input_text = raw.get("input") or ""
        messages = user_prompt(alpaca_user_text(check_text(row, field, value), str(input_text)))
    else:
        messages = user_prompt(check_text(row, field, value))
    used = {field, "input"} if field == "instruction" else {field}
    extra = {k: v for k, v in raw.items() if k not in used and k not in RESPONSE_FIELDS}
    return Prompt(prompt=messages, source=source, extra=extra)


NORMALISERS: dict[str, Callable[[_Row], Record]] = {
    "preference": _from_preference,
    "ranked": _from_ranked,
    "unpaired": _from_unpaired,
    "ultrafeedback": _from_ultrafeedback,
    "shp": _from_shp,
    "arena": _from_arena,
    "pku_saferlhf": _from_pku_saferlhf,
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "dolly": _from_dolly,
    "prompt_completion": _from_prompt_completion,
    "question_answer": _from_question_answer,
    "text": _from_text,
    "prompt": _from_prompt,
}


def parse_row(row: Row, source: str | None = None, kind: str | tuple[str, ...] | None = None
              ) -> tuple[str, Record]:
    """Detect `row`'s shape, check it fits `kind` (one kind or several), and normalise it: `(shape, record)`."""
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and any(k not in KINDS for k in kinds):
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    located = _Row(row, source)
    check_single_prompt(located)
    shape = detect_shape(row, kinds)
    if kinds == ("prompt",):
        return shape or "prompt", parse_prompt(row, source)
    if shape is None:
        fields = ", ".join(sorted(map(str, row))) or "none"
        raise located.error(None, f"unknown shape (fields: {fields}); known shapes: {known_shapes_text()}; "
                                  + COLUMNS_HINT)
    shape_kind = SHAPES[shape][0]
    if kinds is not None and shape_kind not in kinds:
        wanted = "; ".join(f"{name} ({fields})" for name, (k, fields) in SHAPES.items() if k in kinds)
        needed = " or ".join(kinds)
        raise located.error(None, f"row has the {shape} shape ({shape_kind} data), but {needed} data is needed: "
                                  f"{wanted}; {COLUMNS_HINT}")
    return shape, NORMALISERS[shape](located)


def iter_records(source: str | os.PathLike, kind: str | tuple[str, ...] | None = None, split: str | None = None,
                 columns: dict[str, str] | None = None, max_line_bytes: int | None = None,
                 skipped: Counter | None = None) -> Iterator[tuple[str, Record]]:
    """Yield `(shape, record)` for each row of `source` (see `read_rows` for split, columns, max_line_bytes).

    With `skipped`, a row that holds no preference (`NoPreference`: a tie) is counted there by its
    reason and left out; without it, such a row raises like any other bad row."""
    for where, row in read_rows(source, split=split, columns=columns, max_line_bytes=max_line_bytes):
        try:
            parsed = parse_row(row, where, kind)
        except NoPreference as exc:
            if skipped is None:
                raise
            skipped[exc.reason] += 1
            continue
        yield parsed


def skipped_text(skipped: Counter) -> str:
    """`3 rows skipped as holding no preference pair (tie 2, multi-turn 1)`; "" when none were."""
    if not skipped:
        return ""
    reasons = ", ".join(f"{reason} {count}" for reason, count in skipped.most_common())
    return f"{sum(skipped.values())} rows skipped as holding no preference pair ({reasons})"


def load_records(source: str | os.PathLike, kind: str | tuple[str, ...] | None = None, split: str | None = None,
                 limit: int | None = None, columns: dict[str, str] | None = None,
                 max_line_bytes: int | None = None) -> list[Record]:
    """Read and normalise every row of `source`; the first bad row raises `InputError`.

    kind: "sft" (Conversation), "text" (Text), "preference" (PreferencePair),
    "ranked" (Ranked), "unpaired" (Unpaired), "prompt" (Prompt: the prompt of
    any row that has one), a tuple of these, or None to accept any shape.
    `limit` keeps the first N.
    """
    records: list[Record] = []
    for _, record in iter_records(source, kind, split, columns, max_line_bytes):
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    return records


def check_both_labels(path: str, desirable: int, undesirable: int) -> None:
    """KTO needs desirable and undesirable examples: with one label only, the loss has nothing to
    contrast (and TRL's z0 estimate degenerates). Raise InputError naming the file."""
    if desirable and undesirable:
        return
    have, lack = ("desirable", "undesirable") if desirable else ("undesirable", "desirable")
    raise InputError(path, None, "label", f"every example is {have} ({desirable + undesirable} rows); KTO needs "
                     f"{lack} examples too (label {str(not desirable).lower()})")
