"""Cheap quality heuristics for one response (and its prompt).

Each function is a pure measurement in [0, 1] (or a count / flag); thresholds live in the filter.

- `word_count`: whitespace-separated words.
- `repetition_ratio`: share of the response's word n-grams that repeat an earlier n-gram,
  1 - distinct / total. Degenerate loops ("the the the ...") approach 1; normal prose is
  near 0 for n = 3.
- `non_alpha_ratio`: share of non-space characters that are neither letters nor digits
  (symbols and punctuation). Markup debris, ASCII art and encoding garbage are high; prose is
  around 0.02-0.05, arithmetic like "12 * 13 = 156" 0.3, dense code 0.2-0.4. Digits count as
  content so that math answers are not dropped.
- `echo_ratio`: share of the response's word n-grams that already appear in the prompt (a
  response that mostly parrots its prompt).
- `is_refusal` / `has_ai_boilerplate`: opening-sentence refusals ("I can't help with that")
  and "As an AI language model" disclaimers.
"""
from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits and underscore runs)."""
    return _WORD.findall(text.lower())


def word_count(text: str) -> int:
    return len(text.split())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repetition_ratio(text: str, n: int = 3) -> float:
    """1 - distinct n-grams / n-grams (0 for texts shorter than n words)."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def non_alpha_ratio(text: str) -> float:
    """Share of the non-whitespace characters that are neither letters nor digits (0 if empty)."""
    chars = [c for c in text if not c.isspace()]
    return sum(not c.isalnum() for c in chars) / len(chars) if chars else 0.0


def echo_ratio(prompt: str, response: str, n: int = 3) -> float:
    """Share of the response's word n-grams found in the prompt (word sets when shorter than n)."""
    response_words, prompt_words = words(response), words(prompt)
    if not response_words:
        return 0.0
    size = min(n, len(response_words))
    response_grams = ngrams(response_words, size)
    prompt_grams = set(ngrams(prompt_words, size))
    return sum(g in prompt_grams for g in response_grams) / len(response_grams)


_CANT = (r"(?:can(?:no|')?t|won'?t be able to|won'?t|will not|am not able to|'m not able to|am unable to"
         r"|'m unable to|must decline to)")
_REFUSALS = [re.compile(p, re.IGNORECASE) for p in (
    rf"\bi {_CANT} (?:help|assist|provide|comply|fulfil|fulfill|support|do that|create|generate|give|share|write|"
    r"offer|engage|answer|describe|explain)",
    r"\b(?:i'?m|i am|we'?re|we are) (?:sorry|afraid),? (?:but )?(?:i|we) (?:can(?:no|')?t|won'?t|will not|am unable|"
    r"'m unable|am not able|'m not able)",
    r"\bi must (?:decline|refuse)",
    r"\bi (?:will not|won'?t|refuse to) (?:be )?(?:help|assist|provid|participat)",
    r"\b(?:this|that|your) request (?:is|goes) against\b",
    r"\bi'?m not (?:comfortable|going to) (?:help|assist|provid|do|writ|shar)",
    r"\b(?:is|would be) (?:illegal|unethical|harmful)(?: and (?:illegal|unethical|harmful|dangerous))?, (?:so |and )?i "
    + _CANT,
)]
_BOILERPLATE = re.compile(r"\bas an ai(?: language model| assistant| model)?\b", re.IGNORECASE)


def is_refusal(text: str, window: int = 300) -> bool:
    """Does the response open by refusing? Only the first `window` characters are read, because a
    refusal comes first and a later "I can't stress enough..." should not count."""
    head = text[:window].replace("\u2019", "'")
    return any(p.search(head) for p in _REFUSALS)


def has_ai_boilerplate(text: str) -> bool:
    """'As an AI language model, ...' style disclaimers anywhere in the text."""
    return bool(_BOILERPLATE.search(text))


def measure(prompt: str, response: str, n: int = 3) -> dict[str, float | int | bool]:
    """Every heuristic for one response."""
    return {
        "words": word_count(response),
        "repetition": repetition_ratio(response, n),
        "non_alpha": non_alpha_ratio(response),
        "echo": echo_ratio(prompt, response, n),
        "refusal": is_refusal(response) or has_ai_boilerplate(response),
    }
