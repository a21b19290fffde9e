"""Reading scored (or model-labelled) responses for `posttrain pairs`.

Two kinds of input row are accepted, and may be mixed in one file:

* one response per row (what `posttrain generate`, `posttrain score` and a pointwise
  `posttrain judge` write):

      {"prompt": ..., "response": "...", "model": "m1", "score": 7.5}

  The response field is `response`, `completion`, or `response_a` (a pointwise
  `Judgement` record). The score is read from `--score-field` (default `score`).
  A judge record whose `judge_status` is not "ok" has no score; it is counted as
  unscored instead of stopping the run.

* several responses per row (a ranked row):

      {"prompt": ..., "responses": ["...", "..."], "scores": [0.9, 0.1], "models": ["m1", "m2"]}
      {"prompt": ..., "responses": ["...", "..."], "ranking": [1, 0]}

  With a `ranking` only (best-first indices) each response's score is the number
  of responses ranked below it, so a margin is a gap in rank positions.
  `models` (one per response) is optional; otherwise the row's `model` applies.

Every response becomes a `Response`; rows that share a prompt (the same messages,
whether written as text or as one user message) are grouped later.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..data.prompts import parse_prompt
from ..data.readers import read_rows, split_location
from ..errors import InputError

RESPONSE_FIELDS = ("response", "completion", "response_a")


@dataclass
class Response:
    """One candidate response, located in the input."""

    prompt_key: str   # canonical JSON of the prompt messages: the grouping key
    prompt: Any       # the prompt exactly as written in the input (text or a message list)
    text: str
    model: str | None
    score: float | None
    source: str       # "FILE:LINE" (with "[i]" for the i-th response of a ranked row)
    order: int        # position in the input, for stable tie-breaks


@dataclass
class ReadResult:
    responses: list[Response]
    rows: int
    unscored: int     # judge records without a score (failed or unparseable verdicts)


def _error(where: str, field: str | None, message: str) -> InputError:
    path, line = split_location(where)
    return InputError(path, line, field, message)


def _response_text(value: Any, where: str, field: str) -> str:
    """Text, or a list holding one assistant message (TRL's conversational completion)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if not isinstance(value, str):
        raise _error(where, field, f"expected text, got {type(value).__name__}")
    return value


def _score(value: Any, where: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _error(where, field, f"expected a finite number, got {value!r}")
    return float(value)


def _model(value: Any, where: str, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _error(where, field, f"expected a model name, got {value!r}")
    return value


def _prompt(row: dict[str, Any], where: str) -> tuple[Any, str]:
    """(prompt as written, grouping key); the prompt is validated by the data layer."""
    if row.get("prompt") is None:
        raise _error(where, "prompt", "missing (every row needs the prompt its response answers)")
    messages = parse_prompt({"prompt": row["prompt"]}, where).prompt
    return row["prompt"], json.dumps(messages, sort_keys=True, ensure_ascii=False)


def _ranked(row: dict[str, Any], where: str, prompt: Any, key: str, order: int) -> list[Response]:
    texts = row["responses"]
    if not isinstance(texts, list) or not texts:
        raise _error(where, "responses", "expected a non-empty list of responses")
    texts = [_response_text(t, where, f"responses[{i}]") for i, t in enumerate(texts)]
    scores, ranking = row.get("scores"), row.get("ranking")
    if scores is not None:
        if not isinstance(scores, list) or len(scores) != len(texts):
            raise _error(where, "scores", f"expected a list of {len(texts)} numbers (one per response)")
        values = [_score(s, where, f"scores[{i}]") for i, s in enumerate(scores)]
    elif ranking is not None:
        if not isinstance(ranking, list) or sorted(ranking) != list(range(len(texts))) \
                or any(isinstance(i, bool) for i in ranking):
            raise _error(where, "ranking", f"expected a permutation of 0..{len(texts) - 1}, got {ranking!r}")
        values = [0.0] * len(texts)
        for position, index in enumerate(ranking):
            values[index] = float(len(texts) - 1 - position)  # responses ranked below this one
    else:
        values = [None] * len(texts)
    models = row.get("models")
    if models is not None:
        if not isinstance(models, list) or len(models) != len(texts):
            raise _error(where, "models", f"expected a list of {len(texts)} model names (one per response)")
        names = [_model(m, where, f"models[{i}]") for i, m in enumerate(models)]
    else:
        names = [_model(row.get("model"), where, "model")] * len(texts)
    return [Response(key, prompt, text, name, value, f"{where}[{i}]", order + i)
            for i, (text, name, value) in enumerate(zip(texts, names, values))]


def read_responses(path: str, score_field: str = "score", scores_required: bool = True, **read: Any) -> ReadResult:
    """Every response in `path`; bad rows raise `InputError` naming FILE:LINE and the field.

    scores_required: a single-response row without `score_field` is an error (unless it is
    a judge record whose verdict failed, which is counted as unscored); ranked rows need
    `scores` or `ranking`. With False (model-order pairs only) scores are optional.
    `read` (split, columns, max_line_bytes) goes to `read_rows`.
    """
    responses: list[Response] = []
    rows = unscored = 0
    for where, row in read_rows(path, **read):
        rows += 1
        prompt, key = _prompt(row, where)
        if row.get("responses") is not None:
            group = _ranked(row, where, prompt, key, len(responses))
            if scores_required and group[0].score is None:
                raise _error(where, "scores", "missing (a ranked row needs 'scores' or 'ranking')")
            responses.extend(group)
            continue
        field = next((f for f in RESPONSE_FIELDS if row.get(f) is not None), None)
        if field is None or (field == "response_a" and row.get("response_b") is not None):
            raise _error(where, "response", "missing (expected response, completion, or responses with scores)")
        text = _response_text(row[field], where, field)
        score = row.get(score_field)
        if score is None:
            failed_verdict = row.get("judge_status") not in (None, "ok")
            if scores_required and not failed_verdict:
                raise _error(where, score_field, "missing (score rows with `posttrain score` or a pointwise "
                                                 "judge, or name the field with --score-field)")
            unscored += failed_verdict
        else:
            score = _score(score, where, score_field)
        responses.append(Response(key, prompt, text, _model(row.get("model"), where, "model"), score,
                                  where, len(responses)))
    return ReadResult(responses, rows, unscored)
