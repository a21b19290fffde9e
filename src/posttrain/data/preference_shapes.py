"""Preference and ranking rows, the generic shapes (chosen/rejected, ranked responses) and the
public sets that have columns of their own (UltraFeedback, SHP, PKU-SafeRLHF, chatbot arena).
Chosen/rejected may be whole conversations (TRL's implicit prompt, ultrafeedback_binarized, hh-rlhf
transcripts): their shared leading messages are the prompt. See `formats.py` for the shape table."""
from __future__ import annotations

import math
import re
from typing import Any

from ..errors import InputError
from ..records import Message, PreferencePair, Ranked, user_prompt
from .row_checks import (
    LocatedRow,
    NoPreference,
    alpaca_user_text,
    check_messages,
    check_text,
    check_turn_order,
    extra_fields,
    prompt_messages,
    response_text,
    type_name,
)


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


def conversation_value(row: LocatedRow, name: str) -> list[Message] | None:
    """chosen/rejected as a full conversation (a message list that is more than one assistant reply,
    or an hh-rlhf transcript), validated; None when it is a plain response."""
    value = row.row.get(name)
    if is_transcript(value):
        value = parse_transcript(value)
    elif not (isinstance(value, list) and (len(value) != 1 or not isinstance(value[0], dict)
                                           or value[0].get("role") != "assistant")):
        return None
    return check_turn_order(row, name, check_messages(row, name, value))


def _implicit_prompt(row: LocatedRow, chosen_messages: list[Message], rejected_messages: list[Message],
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


def _check_prompt_matches(row: LocatedRow, prompt: list[Message]) -> None:
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


def _preference_prompt(row: LocatedRow) -> tuple[list[Message], str]:
    """The prompt of a preference row with text replies, and the field it came from."""
    if row.present("prompt"):
        return prompt_messages(row), "prompt"
    field = next((name for name in PREFERENCE_PROMPT_FIELDS if row.present(name)), None)
    if field is None:
        return prompt_messages(row), "prompt"  # the "missing" error
    if field != "instruction":
        return prompt_messages(row, field), field
    input_text = row.text("input", allow_empty=True) if row.present("input") else ""
    system = row.text("system", allow_empty=True) if row.present("system") else None
    return user_prompt(alpaca_user_text(row.text("instruction"), input_text), system or None), field


def check_distinct(row: LocatedRow, chosen: str, rejected: str, names: tuple[str, str] = ("chosen", "rejected")) -> None:
    """The two replies of a pair must differ, also after stripping whitespace (a tie teaches nothing)."""
    if chosen == rejected:
        raise row.error(names[1], f"is identical to '{names[0]}'")
    if chosen.strip() == rejected.strip():
        raise row.error(names[1], f"is identical to '{names[0]}' apart from leading/trailing whitespace")


def from_preference(row: LocatedRow) -> PreferencePair:
    prompt_field = "prompt"
    chosen_messages, rejected_messages = conversation_value(row, "chosen"), conversation_value(row, "rejected")
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
        chosen, rejected = response_text(row, "chosen"), response_text(row, "rejected")
    check_distinct(row, chosen, rejected)
    margin = row.row.get("margin")
    is_number = isinstance(margin, (int, float)) and not isinstance(margin, bool)
    if margin is not None and not (is_number and math.isfinite(margin)):
        raise row.error("margin", f"expected a finite number, got {margin!r}")
    used = ("instruction", "input") if prompt_field == "instruction" else (prompt_field,)
    extra = extra_fields(row.row, ("chosen", "rejected", "margin", "system", *used))
    margin = None if margin is None else float(margin)
    return PreferencePair(prompt, chosen, rejected, margin, source=row.source, extra=extra)


def from_ranked(row: LocatedRow) -> Ranked:
    prompt = prompt_messages(row)
    value = row.row.get("responses")
    if not isinstance(value, list):
        raise row.error("responses", f"expected a list of responses, got {type_name(value)}")
    if len(value) < 2:
        raise row.error("responses", f"expected at least 2 responses, got {len(value)}")
    responses = []
    for index, item in enumerate(value):
        if isinstance(item, list):
            fake = LocatedRow({"r": item}, row.source)
            responses.append(response_text(fake, "r"))
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
    extra = extra_fields(row.row, ("prompt", "responses", "ranking", "scores", "system"))
    return Ranked(prompt, responses, ranking, scores, source=row.source, extra=extra)


def from_ultrafeedback(row: LocatedRow) -> Ranked:
    """openbmb/UltraFeedback as published: `instruction` and `completions`, one per model, each with
    its `response` and GPT-4's `overall_score`: a ranking of the responses by that score (the rules
    of the ranked shape apply: distinct responses, finite scores, not all equal)."""
    instruction = row.text("instruction")
    completions = row.row.get("completions")
    if not isinstance(completions, list) or len(completions) < 2:
        raise row.error("completions", f"expected a list of at least 2 completions, got {type_name(completions)}"
                        if not isinstance(completions, list) else f"expected at least 2 completions, got "
                        f"{len(completions)}")
    responses, scores = [], []
    for index, item in enumerate(completions):
        if not isinstance(item, dict):
            raise row.error(f"completions[{index}]", f"expected an object, got {type_name(item)}")
        responses.append(check_text(row, f"completions[{index}].response", item.get("response")))
        score = item.get("overall_score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise row.error(f"completions[{index}].overall_score", f"expected a finite number, got {score!r}")
        scores.append(float(score))
    models = [item.get("model") for item in completions]
    extra = {**extra_fields(row.row, ("instruction", "completions")), "models": models}
    ranked = LocatedRow({"prompt": instruction, "responses": responses, "scores": scores}, row.source)
    try:
        record = from_ranked(ranked)
    except InputError as exc:  # name the fields as this file has them
        field = re.sub(r"^responses\[(\d+)\]$", r"completions[\1].response", exc.field or "")
        field = "completions[].overall_score" if field == "scores" else field
        raise row.error(field or None, exc.message.replace("responses[", "completions[")) from None
    record.extra = extra
    return record


# --- public preference sets with columns of their own: one pair per row, label fields kept in `extra` ---


def _binary_choice(row: LocatedRow, name: str) -> int:
    """A 0/1 label naming one of two responses (SHP's `labels`, PKU-SafeRLHF's `*_response_id`)."""
    value = row.row.get(name)
    if value is None:
        raise row.error(name, f"missing (if the file names it otherwise: --columns {name}=COLUMN)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise row.error(name, f"expected 0 or 1, got {value!r}")
    return int(value)


def _pair_of_texts(row: LocatedRow, prompt: list[Message], fields: tuple[str, str], used: tuple[str, ...]
                   ) -> PreferencePair:
    """A pair from two text fields, the preferred one first; `used` fields leave `extra`."""
    chosen, rejected = row.text(fields[0]), row.text(fields[1])
    check_distinct(row, chosen, rejected, fields)
    return PreferencePair(prompt, chosen, rejected, source=row.source, extra=extra_fields(row.row, used))


def from_shp(row: LocatedRow) -> PreferencePair:
    """stanfordnlp/SHP and SHP-2: a post (`history`) and two replies to it; `labels` 1 means
    human_ref_A is preferred, 0 human_ref_B. Scores, ids, domain and timestamps stay in `extra`."""
    prompt = user_prompt(row.text("history"))
    fields = ("human_ref_A", "human_ref_B") if _binary_choice(row, "labels") == 1 else ("human_ref_B", "human_ref_A")
    return _pair_of_texts(row, prompt, fields, ("history", "human_ref_A", "human_ref_B"))


def from_pku_saferlhf(row: LocatedRow) -> PreferencePair:
    """PKU-Alignment/PKU-SafeRLHF: `prompt`, `response_0`, `response_1`; `better_response_id`
    (helpfulness) names the chosen one. Its other label, `safer_response_id`, is read instead with
    `--columns better_response_id=safer_response_id`; safety flags and harm categories stay in `extra`."""
    prompt = prompt_messages(row)
    better = _binary_choice(row, "better_response_id")
    fields = ("response_0", "response_1") if better == 0 else ("response_1", "response_0")
    return _pair_of_texts(row, prompt, fields, ("prompt", "system", "response_0", "response_1"))


# lmsys/chatbot_arena_conversations: `winner` names the conversation voted better.
ARENA_WINNERS = {"model_a": ("conversation_a", "conversation_b"), "model_b": ("conversation_b", "conversation_a")}
ARENA_TIES = ("tie", "tie (bothbad)")
SKIPPED_BY = "dpo, rm, kto and data check skip such rows and count them"


def from_arena(row: LocatedRow) -> PreferencePair:
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
                          extra=extra_fields(row.row, ("conversation_a", "conversation_b")))
