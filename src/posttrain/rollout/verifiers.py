"""Built-in verifiers: rule-based rewards for answers that can be checked.

Every reward here is made by a small factory (so options are explicit) and has the reward
signature `fn(prompt, response, **extra) -> Score`, where `extra` is the record's other fields
(`answer`, `pattern`, `schema`, `tests`). A `Score` is a float that also carries `reason`: why it
is not 1 ("no answer found", "expected 12, got 13"), for logs. Bad *model output* scores 0 with a
reason; bad *data* (a missing `answer` field, an invalid schema) raises PosttrainError.

    math_reward       the final "Answer: <number>" line (as the shipped prompts ask; strict by
                      default), or with lenient=True \\boxed{..}, else after "Answer:", else the last
                      number; compared numerically: fractions exactly, decimals within a tolerance
    exact_reward      whole response equals `answer` (normalised whitespace/case by default)
    regex_reward      response matches the record's `pattern`
    json_schema_reward first JSON value in the response validates against `schema`
    code_reward       the response's Python passes the record's `tests` in the sandbox
    sort_reward       the final "Answer: a, b, c" line equals `answer` (lenient=True: any final list)
    answer_format_reward  the response ends with one "Answer: <numbers>" line (lenient=True: any
                      line starting with "Answer:")

Strict is the default because RL optimises whatever the reward accepts: with a last-number
fallback, GRPO on SmolLM2 learned to end with the literal line "Answer: N" (issue 19).
Lenient extraction and shaped partial credit (`format_credit`) are explicit options.
"""
from __future__ import annotations

import functools
import json
import math
import re
import threading
from fractions import Fraction
from typing import Any, Callable, Sequence

from ..errors import PosttrainError
from .sandbox import Sandbox

REASON_MAX_CHARS = 160


def short_reason(reason: str | None) -> str | None:
    """A reason as one short line (rollout logs keep one per sample): whitespace runs become one
    space (a traceback or a program's output would otherwise fill the log), cut at
    REASON_MAX_CHARS with an ellipsis."""
    if reason is None:
        return None
    line = " ".join(str(reason).split())
    return line if len(line) <= REASON_MAX_CHARS else line[:REASON_MAX_CHARS - 1] + "…"


class Score(float):
    """A reward value that remembers why it is what it is: `Score(0.0, "no answer found")`.

    It is a float (arithmetic and JSON work unchanged; results of arithmetic are plain floats).
    """

    def __new__(cls, value: float, reason: str | None = None):
        score = super().__new__(cls, value)
        score.reason = short_reason(reason)
        return score

    def __repr__(self) -> str:
        return f"Score({float(self)!r}, {self.reason!r})"


RewardFn = Callable[..., float]


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    return fn

# ---------------------------------------------------------------------------- numbers

_MINUS = "-\u2212"
_NUMBER = re.compile(
    rf"""
    [{_MINUS}]?\s*\\[dt]?frac\s*\{{\s*[{_MINUS}]?\d+\s*\}}\s*\{{\s*[{_MINUS}]?\d+\s*\}}   # \\frac{{3}}{{4}}
    | [{_MINUS}]?\d+\s*/\s*\d+(?![\d.])                       # 3/4
    | [{_MINUS}]?\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?(?![\d])       # 1,234,567.5
    | [{_MINUS}]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?                # 42, -3.5, 1e6
    | [{_MINUS}]?\.\d+                                         # .5
    """,
    re.VERBOSE,
)
_MARKER = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)?\s*:?|####", re.IGNORECASE)
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
        i += 1
    return None  # unbalanced: the model stopped mid-answer


def extract_final_answer(text: str) -> str | None:
    """The answer a response commits to, as text.

    Order: the last `\\boxed{}`; else the first number after the last "answer"/"final answer"
    marker (or GSM8K's `####`); else the last number anywhere. None when there is no number.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    markers = list(_MARKER.finditer(text))
    if markers:
        after = _NUMBER.search(text, markers[-1].end())
        if after:
            return after.group().strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def parse_number(text: str) -> Fraction | None:
    """`"-1,234.5"`, `"3/4"`, `"\\frac{3}{4}"`, `"$12$"`, `"1e3"`, `"50%"` -> an exact Fraction, else None."""
    s = str(text).strip().rstrip(".").replace("\u2212", "-")
    for junk in ("$", "\\!", "\\,", "{,}", "\\left", "\\right", " "):
        s = s.replace(junk, "")
    percent = s.endswith("%") or s.endswith("\\%")
    s = s.removesuffix("\\%").removesuffix("%")
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    frac = _FRAC.match(s)
    try:
        if frac:
            sign, num, den = frac.groups()
            value = Fraction(int(num), int(den)) * (-1 if sign else 1)
        elif re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
            value = Fraction(s.replace(",", ""))
        elif re.fullmatch(r"-?\d+/-?\d+", s):
            num, den = s.split("/")
            value = Fraction(int(num), int(den))
        else:
            value = Fraction(s)  # integers, decimals, exponents; raises on anything else
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def numbers_equal(a: Fraction, b: Fraction, rel_tol: float = 1e-6) -> bool:
    """Exact for integers and fractions; within `rel_tol` (relative) when either is non-integral."""
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=1e-12)


def _normalise_answer_text(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", str(text))
    for junk in ("$", "\\!", "\\left", "\\right", "\\,", " "):
        text = text.replace(junk, "")
    return text.strip().rstrip(".").lower()


def _gold_value(answer: Any) -> tuple[Fraction | None, str]:
    """Parse the record's gold answer (a number, or text such as "3/4" or "... #### 72")."""
    if isinstance(answer, bool):
        return None, str(answer).lower()
    if isinstance(answer, int):
        return Fraction(answer), str(answer)
    if isinstance(answer, float):
        return (Fraction(repr(answer)) if math.isfinite(answer) else None), repr(answer)
    text = str(answer)
    value = parse_number(text)
    if value is None:
        final = extract_final_answer(text)
        value = parse_number(final) if final is not None and ("####" in text or "boxed" in text) else None
    return value, text


def _need(extra: dict[str, Any], field: str, reward: str) -> Any:
    if extra.get(field) is None:
        raise PosttrainError(f"the '{reward}' reward needs a '{field}' field in every record")
    return extra[field]


_ANSWER_LINE_START = re.compile(r"^\s*\**\s*(?:final\s+)?answer\s*\**\s*(?::|=|is\b)", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^Answer:[ \t]*(?P<value>.*?)[ \t]*$")
_PLAIN_NUMBER = r"[-\u2212]?\d+(?:\.\d+)?(?:/\d+)?"
_NUMBER_LIST = re.compile(rf"^{_PLAIN_NUMBER}(?:[ \t]*,[ \t]*{_PLAIN_NUMBER})*\.?$")


def answer_line(text: str) -> tuple[str | None, str | None]:
    """The value of the response's answer line, checked strictly: (value, None) or (None, reason).

    The prompts ask the reply to *end* with a line `Answer: N`, so: the last non-empty line is
    `Answer: <value>` (exactly "Answer:", no markdown), it is the only line that starts like an
    answer line, and the value is not empty. Whether the value is a number is the caller's check.
    """
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return None, "empty response"
    answer_lines = [line for line in lines if _ANSWER_LINE_START.match(line)]
    if not answer_lines:
        return None, "no 'Answer: ...' line"
    if len(answer_lines) > 1:
        return None, f"{len(answer_lines)} answer lines (exactly one is asked for)"
    match = _ANSWER_LINE.match(lines[-1])
    if match is None:
        if _ANSWER_LINE_START.match(lines[-1]):
            return None, f"answer line not as asked ('Answer: ...'): {lines[-1][:40]!r}"
        return None, f"text after the answer line: {lines[-1][:40]!r}"
    if not match.group("value"):
        return None, "empty answer line"
    return match.group("value"), None


def number_list_value(value: str) -> list[Fraction] | None:
    """`"1, 3, 5"` -> [1, 3, 5]; `"30"` -> [30]; None unless the text is only numbers and commas
    (an optional final period allowed). Placeholders such as `N` or `<number>` are not numbers."""
    if not _NUMBER_LIST.match(value.strip()):
        return None
    parsed = [parse_number(part) for part in value.strip().rstrip(".").split(",")]
    return None if any(p is None for p in parsed) else parsed


def math_reward(rel_tol: float = 1e-6, lenient: bool = False, format_credit: float = 0.0) -> RewardFn:
    """1.0 when the response's final answer equals the record's `answer` (see numbers_equal).

    Strict (default): the answer is read only from the final `Answer: <number>` line
    (`answer_line`); a response without one scores 0, whatever numbers it contains.
    lenient=True: `extract_final_answer` (\\boxed{}, else after an answer marker, else the last
    number) -- for evaluating free-form output, not for RL. format_credit: the score of a
    well-formed answer line with a wrong number (shaped partial credit; 0 unless asked for)."""
    if not 0.0 <= format_credit < 1.0:
        raise PosttrainError(f"math reward: format_credit must be in [0, 1), got {format_credit}")

    def strict_answer(response: str) -> tuple[str | None, str | None]:
        value, problem = answer_line(response)
        if problem is not None:
            return None, problem
        if number_list_value(value) is None or len(number_list_value(value)) != 1:
            return None, f"the answer line has no number: {value[:40]!r}"
        return value.rstrip("."), None

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        gold_value, gold_text = _gold_value(_need(extra, "answer", "math"))
        if lenient:
            predicted, problem = extract_final_answer(response), "no answer found"
        else:
            predicted, problem = strict_answer(response)
        if predicted is None:
            return Score(0.0, problem)
        value = parse_number(predicted)
        if gold_value is not None and value is not None:
            ok = numbers_equal(value, gold_value, rel_tol)
        else:  # symbolic answers (\sqrt{2}, x+1): compare normalised text
            ok = _normalise_answer_text(predicted) == _normalise_answer_text(gold_text)
        if ok:
            return Score(1.0)
        return Score(0.0 if lenient else format_credit, f"expected {gold_text}, got {predicted}")

    return _named(reward, "math_lenient" if lenient else "math")


# ------------------------------------------------------------------------ exact, regex


def normalise_text(text: str, ignore_case: bool = True, collapse_whitespace: bool = True,
                   strip_punctuation: bool = False) -> str:
    text = str(text).strip()
    if collapse_whitespace:
        text = " ".join(text.split())
    if ignore_case:
        text = text.casefold()
    if strip_punctuation:
        text = re.sub(r"[^\w\s]", "", text)
    return text


def exact_reward(ignore_case: bool = True, collapse_whitespace: bool = True, strip_punctuation: bool = False) -> RewardFn:
    """1.0 when the normalised response equals the normalised `answer` (or any of a list of them)."""
    norm = functools.partial(normalise_text, ignore_case=ignore_case, collapse_whitespace=collapse_whitespace,
                             strip_punctuation=strip_punctuation)

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        answer = _need(extra, "answer", "exact")
        answers = answer if isinstance(answer, list) else [answer]
        got = norm(response)
        if any(got == norm(str(a)) for a in answers):
            return Score(1.0)
        return Score(0.0, f"expected {str(answers[0])[:80]!r}, got {response[:80]!r}")

    return _named(reward, "exact")


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str, flags: int) -> re.Pattern:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise PosttrainError(f"regex reward: invalid pattern {pattern!r}: {exc}") from None


def regex_reward(pattern: str | None = None, fullmatch: bool = False, flags: int = 0) -> RewardFn:
    """1.0 when `pattern` (or the record's `pattern` field) is found in the response
    (`re.search`; with fullmatch=True the stripped response must match entirely)."""

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        compiled = _compile(pattern if pattern is not None else str(_need(extra, "pattern", "regex")), flags)
        hit = compiled.fullmatch(response.strip()) if fullmatch else compiled.search(response)
        return Score(1.0) if hit else Score(0.0, f"no match for /{compiled.pattern}/")

    return _named(reward, "regex")


def answer_format_reward(lenient: bool = False) -> RewardFn:
    """1.0 when the response ends with exactly one `Answer: <numbers>` line (one number, or
    numbers separated by commas), as the shipped prompts ask; `Answer: N` or `Answer: <number>`
    score 0. lenient=True: some line starts with `Answer:` followed by anything."""
    line = re.compile(r"^\s*\**answer\**\s*:\s*\S", re.IGNORECASE | re.MULTILINE)

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        if lenient:
            return Score(1.0) if line.search(response) else Score(0.0, "no 'Answer: ...' line")
        value, problem = answer_line(response)
        if problem is not None:
            return Score(0.0, problem)
        if number_list_value(value) is None:
            return Score(0.0, f"the answer line has no number: {value[:40]!r}")
        return Score(1.0)

    return _named(reward, "answer_format_lenient" if lenient else "answer_format")


# -------------------------------------------------------------------------- sorting


_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+([-\u2212]?\d+(?:\.\d+)?)\s*[.,]?\s*$")


def extract_number_list(text: str) -> list[Fraction] | None:
    """The list a response commits to: the numbers after the last "answer" marker (to the end of
    that line), else inside the last `[...]`, else a trailing bulleted or numbered list with one
    number per item ("1. 9" / "- 9"), else the numbers on the last non-empty line."""
    markers = list(_MARKER.finditer(text))
    lines = [line for line in text.splitlines() if line.strip()]
    items: list[str] = []
    for line in reversed(lines):
        match = _LIST_ITEM.match(line)
        if not match:
            break
        items.insert(0, match.group(1))
    if markers:
        span = text[markers[-1].end():].strip().split("\n", 1)[0]
    elif brackets := re.findall(r"\[([^\[\]]*)\]", text):
        span = brackets[-1]
    elif len(items) >= 2:
        span = " ".join(items)
    else:
        span = lines[-1] if lines else ""
    numbers = [parse_number(n) for n in re.findall(r"[-\u2212]?\d+(?:\.\d+)?", span)]
    return [n for n in numbers if n is not None] or None


def sort_reward(lenient: bool = False) -> RewardFn:
    """1.0 when the response's final list equals `answer` (the sorted list) element by element.

    Strict (default): the list is read only from the final `Answer: a, b, c` line (`answer_line`).
    lenient=True: `extract_number_list` (after a marker, in brackets, a trailing list, the last line)."""

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        answer = _need(extra, "answer", "sort")
        gold = [parse_number(str(x)) for x in answer] if isinstance(answer, list) else extract_number_list(str(answer))
        if lenient:
            got = extract_number_list(response)
            if got is None:
                return Score(0.0, "no list of numbers found")
        else:
            value, problem = answer_line(response)
            if problem is not None:
                return Score(0.0, problem)
            got = number_list_value(value)
            if got is None:
                return Score(0.0, f"the answer line is not a list of numbers: {value[:40]!r}")
        if got == gold:
            return Score(1.0)
        show = lambda xs: "[" + ", ".join(str(x) for x in xs or []) + "]"  # noqa: E731
        return Score(0.0, f"expected {show(gold)}, got {show(got)}")

    return _named(reward, "sort_lenient" if lenient else "sort")


# ----------------------------------------------------------------------------- JSON

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_json(text: str) -> tuple[Any, str | None]:
    """The first JSON object/array in a response: a fenced ```json block if any parses, else the
    first `{` or `[` from which a JSON value decodes. Returns (value, None) or (None, reason)."""
    decoder = json.JSONDecoder()
    for language, body in _FENCE.findall(text):
        if language.lower() in ("json", "", "javascript", "js"):
            try:
                return json.loads(body), None
            except json.JSONDecodeError:
                continue
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
            return value, None
        except json.JSONDecodeError:
            continue
    return None, "no JSON object found"


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str):
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PosttrainError(f"json_schema reward: the schema is invalid: {exc.message}") from None
    return cls(schema)


def json_schema_reward(schema: dict | None = None) -> RewardFn:
    """1.0 when the first JSON value in the response validates against `schema` (or the record's
    `schema` field, a dict or a JSON string)."""

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        wanted = schema if schema is not None else _need(extra, "schema", "json_schema")
        if isinstance(wanted, str):
            try:
                wanted = json.loads(wanted)
            except json.JSONDecodeError as exc:
                raise PosttrainError(f"json_schema reward: the 'schema' field is not valid JSON: {exc.msg}") from None
        validator = _validator(json.dumps(wanted, sort_keys=True))
        value, problem = extract_json(response)
        if problem:
            return Score(0.0, problem)
        error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.path))), None)
        if error is None:
            return Score(1.0)
        where = "/".join(str(p) for p in error.path)
        return Score(0.0, f"schema: {where + ': ' if where else ''}{error.message[:200]}")

    return _named(reward, "json_schema")


# ----------------------------------------------------------------------------- code


def extract_code(text: str) -> str:
    """The program in a response: the first fenced block tagged python/py (else the first
    untagged one; an unclosed fence runs to the end), else the whole response."""
    blocks = _FENCE.findall(text)
    for wanted in (("python", "py", "python3"), ("",)):
        for language, body in blocks:
            if language.lower() in wanted:
                return body.strip("\n")
    return text.strip("\n")


def code_reward(all_or_nothing: bool = False, sandbox: Any = None) -> RewardFn:
    """Fraction of the record's `tests` that the response's code passes (1/0 with
    all_or_nothing=True). Runs in `sandbox` (a posttrain.rollout.sandbox.Sandbox; a default one
    is created on first use). Has a `.batch(prompts, responses, extras)` method that runs many
    programs concurrently; `score_batch` uses it."""
    lock = threading.Lock()
    holder: list[Any] = [sandbox]

    def box():
        with lock:
            if holder[0] is None:
                holder[0] = Sandbox()
            return holder[0]

    def to_score(result) -> Score:
        value = float(result.passed) if all_or_nothing else result.fraction_passed
        score = Score(value, result.reason)
        score.blocked = result.blocked  # an escape or forgery attempt, counted as reward/sandbox_violations
        return score

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        return to_score(box().run(extract_code(response), _need(extra, "tests", "code")))

    def batch(prompts: Sequence[str], responses: Sequence[str], extras: Sequence[dict[str, Any]]) -> list[Score]:
        jobs = [(extract_code(r), _need(e, "tests", "code")) for r, e in zip(responses, extras)]
        return [to_score(result) for result in box().run_many(jobs)]

    reward.batch = batch
    return _named(reward, "code")
