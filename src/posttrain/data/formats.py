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

The rules every row must pass are in this module, `row_checks.py` (fields, messages, turn
order) and `preference_shapes.py` (pairs and rankings), once: `data check` and training call
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

import os
from collections import Counter
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..records import Conversation, Message, Prompt, Record, Text, Unpaired, user_prompt
from .preference_shapes import (
    conversation_value,
    from_arena,
    from_pku_saferlhf,
    from_preference,
    from_ranked,
    from_shp,
    from_ultrafeedback,
    is_transcript,
)
from .readers import Row, read_rows
from .row_checks import (
    PROMPT_ONLY_FIELDS,
    SHAREGPT_ROLES,
    LocatedRow,
    NoPreference,
    alpaca_user_text,
    check_messages,
    check_single_prompt,
    check_text,
    check_turn_order,
    extra_fields,
    prompt_messages,
    response_text,
)

__all__ = ["KINDS", "SHAPES", "NoPreference", "check_both_labels", "detect_shape", "is_transcript", "iter_records",
           "load_records", "parse_prompt", "parse_row", "skipped_text"]

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


# --- one normaliser per shape (the preference and ranking ones: preference_shapes.py) ---------


def _sft_messages(row: LocatedRow, messages: list[Message], field: str) -> list[Message]:
    if not any(m["role"] == "assistant" for m in messages):
        raise row.error(field, "no assistant turn to learn from")
    return check_turn_order(row, field, messages)


def _from_messages(row: LocatedRow) -> Conversation:
    messages = _sft_messages(row, check_messages(row, "messages", row.row.get("messages")), "messages")
    return Conversation(messages, source=row.source, extra=extra_fields(row.row, ("messages",)))


def _from_sharegpt(row: LocatedRow) -> Conversation:
    messages = check_messages(row, "conversations", row.row.get("conversations"), SHAREGPT_ROLES, ("from", "value"))
    messages = _sft_messages(row, messages, "conversations")
    return Conversation(messages, source=row.source, extra=extra_fields(row.row, ("conversations",)))


def _from_alpaca(row: LocatedRow) -> Conversation:
    instruction = row.text("instruction")
    input_text = row.text("input", allow_empty=True) if row.present("input") else ""
    output = row.text("output")
    system = row.text("system", allow_empty=True) if row.present("system") else None
    prompt = user_prompt(alpaca_user_text(instruction, input_text), system or None)
    # instruction/input stay in `extra` so the alpaca and with_input templates can place them.
    extra = {**extra_fields(row.row, ("output", "system")), "instruction": instruction, "input": input_text}
    return Conversation(prompt + [{"role": "assistant", "content": output}], source=row.source, extra=extra)


def _from_dolly(row: LocatedRow) -> Conversation:
    """databricks-dolly-15k: instruction, optional context (read as Alpaca's input), response, category."""
    instruction = row.text("instruction")
    context = row.text("context", allow_empty=True) if row.present("context") else ""
    response = row.text("response")
    prompt = user_prompt(alpaca_user_text(instruction, context))
    extra = {**extra_fields(row.row, ("response", "context")), "instruction": instruction, "input": context}
    return Conversation(prompt + [{"role": "assistant", "content": response}], source=row.source, extra=extra)


ANSWER_FIELDS = ("answer", "solution", "response")


def _from_question_answer(row: LocatedRow) -> Conversation:
    """gsm8k's `question` / `answer`, MATH's `problem` / `solution`, OpenOrca's `question` / `response`
    as SFT data (the whole answer, reasoning included, is learned)."""
    question_field = "question" if row.present("question") else "problem"
    answer_field = next(name for name in ANSWER_FIELDS if row.present(name))
    question, answer = row.text(question_field), row.text(answer_field)
    system_field = next((name for name in ("system", "system_prompt") if row.present(name)), None)  # OpenOrca
    system = row.text(system_field, allow_empty=True) if system_field else None
    return Conversation(user_prompt(question, system or None) + [{"role": "assistant", "content": answer}],
                        source=row.source, extra=extra_fields(row.row, (question_field, answer_field, system_field or "")))


def _from_text(row: LocatedRow) -> Text:
    return Text(row.text("text"), source=row.source, extra=extra_fields(row.row, ("text",)))


def _from_prompt_completion(row: LocatedRow) -> Conversation:
    prompt = prompt_messages(row)
    name = "completion" if "completion" in row.row else "response"  # HelpSteer-style prompt/response
    completion = response_text(row, name)
    return Conversation(prompt + [{"role": "assistant", "content": completion}], source=row.source,
                        extra=extra_fields(row.row, ("prompt", name, "system")))


def _from_unpaired(row: LocatedRow) -> Unpaired:
    prompt = prompt_messages(row)
    completion = response_text(row, "completion")
    label = row.row.get("label")
    if label is None:
        raise row.error("label", "missing")
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise row.error("label", f"expected true or false, got {label!r}")
    extra = extra_fields(row.row, ("prompt", "completion", "label", "system"))
    return Unpaired(prompt, completion, label, source=row.source, extra=extra)


def _from_prompt(row: LocatedRow) -> Prompt:
    return parse_prompt(row.row, row.source)


# --- prompts (generation, online RL): the prompt of any row -------------------------------------

# Where a prompt may be, in order; the response fields are left out of a Prompt's `extra`.
PROMPT_FIELDS = ("prompt", "messages", "conversations", "instruction", "question", "problem")
RESPONSE_FIELDS = ("completion", "chosen", "rejected", "responses", "output", "response", "ranking", "scores", "label")


def _without_trailing_answers(row: LocatedRow, field: str, messages: list[Message]) -> list[Message]:
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
    row = LocatedRow(raw, source)
    check_single_prompt(row)
    field = next((f for f in PROMPT_FIELDS if raw.get(f) is not None), None)
    if field is None and raw.get("chosen") is not None:
        # A preference row whose prompt is implicit (hh-rlhf, TRL): the conversation before the reply.
        conversation = conversation_value(row, "chosen")
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


NORMALISERS: dict[str, Callable[[LocatedRow], Record]] = {
    "preference": from_preference,
    "ranked": from_ranked,
    "unpaired": _from_unpaired,
    "ultrafeedback": from_ultrafeedback,
    "shp": from_shp,
    "arena": from_arena,
    "pku_saferlhf": from_pku_saferlhf,
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
    located = LocatedRow(row, source)
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
