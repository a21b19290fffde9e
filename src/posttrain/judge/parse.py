"""Reading a verdict out of a judge's free text.

Judges do not always follow the requested format, so each parser tries several
formats, most explicit first, and returns `None` when nothing matches. `None` is
counted as *unparseable* by the caller; it is never turned into a tie here.

Pairwise, in order of preference:
  1. a JSON object with a `winner` / `verdict` / `choice` key: `{"winner": "A"}`
  2. double brackets: `[[A]]`, `[[B]]`, `[[C]]` (C = tie), `[[tie]]` (the last one counts)
  3. a labelled verdict: `Winner: B`, `**Final verdict:** tie`, `The better response is A`
  4. `it's a tie` / `it is a draw`
  5. `Answer A is better` / `Response B is preferred` (the last such statement counts)
  6. a last line that is only a label: `A`, `Answer B.`, `Tie`

Pointwise scores, in order: JSON `{"score": 7}`, `[[7]]`, `Score: 7/10` / `Rating: 7 out of 10`,
a bare fraction `7/10`, a last line that is only a number. A fraction whose
denominator is not the template's maximum, or a score outside [min, max], is
unparseable (we do not guess a rescaling).
"""
from __future__ import annotations

import json
import re

_TIE_WORDS = {"c", "tie", "draw", "tied", "equal", "both", "neither", "same"}
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_DENOMINATOR = r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"

_BRACKETS = re.compile(r"\[\[\s*(A|B|C|tie|draw)\s*\]\]", re.IGNORECASE)
_LABELLED = re.compile(
    r"\b(?:final\s+)?(?:winner|verdict|decision|choice|preference|preferred(?:\s+(?:answer|response))?|"
    r"better\s+(?:answer|response|one)|answer)"
    r"[\s*]*(?:is|:|=|-)[\s*:\"'`(\[]*(?:assistant|answer|response|output|model)?\s*[(\[\"']?\s*"
    r"(A|B|tie|draw)\b",
    re.IGNORECASE,
)
_BETTER = re.compile(r"\b(?:assistant|answer|response|output)\s+\(?(A|B)\)?\s+is\s+(?:clearly\s+|much\s+|slightly\s+)?"
                     r"(?:better|superior|preferred|preferable)\b", re.IGNORECASE)
_TIE_PHRASE = re.compile(r"\b(?:it'?s|it\s+is|this\s+is)\s+a\s+(?:tie|draw)\b", re.IGNORECASE)
_BARE_LABEL = re.compile(r"^(?:(?:assistant|answer|response|output|model)\s*)?\(?(a|b|tie|draw)\)?$")

_SCORE_BRACKETS = re.compile(r"\[\[\s*" + _NUMBER + r"\s*(?:/\s*(\d+(?:\.\d+)?))?\s*\]\]")
_SCORE_LABELLED = re.compile(
    r"\b(?:score|rating|grade)\b[\s*]*(?:is|of|:|=|-)?[\s*:\"'`(\[]*" + _NUMBER + _DENOMINATOR, re.IGNORECASE)
_FRACTION = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"^" + _NUMBER + r"$")


def _json_objects(text: str) -> list[dict]:
    """Flat JSON objects found anywhere in the text (a fenced ```json block included)."""
    found = []
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found.append({str(k).lower(): v for k, v in obj.items()})
    return found


def normalize_label(value: object) -> str | None:
    """'A' / 'b' / 'Assistant A' / 'tie' / 'C' -> 'A', 'B' or 'tie'; anything else -> None."""
    if not isinstance(value, str):
        return None
    word = re.sub(r"^(assistant|answer|response|output|model)\s*", "", value.strip().lower()).strip(" ()[].*'\"")
    if word == "a":
        return "A"
    if word == "b":
        return "B"
    return "tie" if word in _TIE_WORDS else None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip().strip("*#.!:\"'` ").lower() if lines else ""


def parse_pairwise(text: str | None) -> str | None:
    """The winner named in `text`: 'A', 'B' or 'tie'; None if no verdict can be read."""
    if not text:
        return None
    for obj in reversed(_json_objects(text)):
        for key in ("winner", "verdict", "choice", "preferred", "better"):
            label = normalize_label(obj.get(key))
            if label:
                return label
    brackets = _BRACKETS.findall(text)
    if brackets:
        return normalize_label(brackets[-1])
    labelled = _LABELLED.findall(text)
    if labelled:
        return normalize_label(labelled[-1])
    if _TIE_PHRASE.search(text):
        return "tie"
    better = _BETTER.findall(text)
    if better:
        return normalize_label(better[-1])
    bare = _BARE_LABEL.match(_last_line(text))
    return normalize_label(bare.group(1)) if bare else None


def _in_range(value: str | float, denominator: str | None, low: float, high: float) -> float | None:
    score = float(value)
    if denominator is not None and float(denominator) != float(high):
        return None
    return score if low <= score <= high else None


def parse_score(text: str | None, low: float = 1, high: float = 10) -> float | None:
    """The score given in `text` if it lies in [low, high]; None otherwise."""
    if not text:
        return None
    for obj in reversed(_json_objects(text)):
        for key in ("score", "rating", "grade"):
            value = obj.get(key)
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) or (isinstance(value, str) and _BARE_NUMBER.match(value.strip())):
                return _in_range(value, None, low, high)
    for pattern in (_SCORE_BRACKETS, _SCORE_LABELLED, _FRACTION):
        matches = pattern.findall(text)
        if matches:
            number, denominator = matches[-1]
            return _in_range(number, denominator or None, low, high)
    bare = _BARE_NUMBER.match(_last_line(text))
    return _in_range(bare.group(1), None, low, high) if bare else None
