"""Reward functions: the interface, loading, combining and batch scoring.

A reward function is any callable

    fn(prompt: str, response: str, **extra) -> float

where `prompt` is the text of the last user turn, `response` the model's text and `extra` the
record's other fields (`answer`, `tests`, ...). A function that does not take `**extra` gets only
the fields it names as parameters. Returning a `Score` (a float with `.reason`) lets logs say why
a reward was low; a plain float is fine too.

    resolve_reward("math")                       a built-in (see BUILTIN_REWARDS)
    resolve_reward("my_pkg.rewards:brevity")     an importable function ("file.py:fn" works too)
    weighted_sum({"math": 1.0, "answer_format": 0.2})
    score_batch({"math": "math"}, rows)          per-function scores, reasons, timing, total

Built-ins are a plain dict, not a plugin registry: to add one, write a function.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import PosttrainError
from ..records import prompt_text
from .verifiers import (
    RewardFn,
    Score,
    answer_format_reward,
    code_reward,
    exact_reward,
    json_schema_reward,
    math_reward,
    regex_reward,
    sort_reward,
)

__all__ = ["BUILTIN_REWARDS", "BatchScores", "RewardFn", "Score", "TASKS", "load_reward_function", "resolve_reward",
           "score_batch", "task_file", "weighted_sum"]

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "math": math_reward(),
    "exact": exact_reward(),
    "regex": regex_reward(),
    "json_schema": json_schema_reward(),
    "code": code_reward(),
    "sort": sort_reward(),
    "answer_format": answer_format_reward(),
    # Lenient extraction (last number, any "Answer:" line): for scoring free-form output, never
    # as an RL reward, where the policy learns to exploit whatever the check lets through.
    "math_lenient": math_reward(lenient=True),
    "sort_lenient": sort_reward(lenient=True),
    "answer_format_lenient": answer_format_reward(lenient=True),
}

# Shipped verifiable task sets (src/posttrain/resources/tasks/NAME_SPLIT.jsonl) and their reward.
TASKS: dict[str, str] = {"arithmetic": "math", "sorting": "sort", "code": "code"}
_TASK_DIR = Path(__file__).resolve().parent.parent / "resources" / "tasks"


def task_file(name: str, split: str = "train") -> Path:
    """Path of a shipped task set: `task_file("arithmetic", "test")`. Splits: train, test."""
    if name not in TASKS:
        raise PosttrainError(f"unknown task '{name}' (shipped tasks: {', '.join(sorted(TASKS))})")
    if split not in ("train", "test"):
        raise PosttrainError(f"unknown split '{split}' for task '{name}' (splits: train, test)")
    return _TASK_DIR / f"{name}_{split}.jsonl"


def load_reward_function(spec: str) -> RewardFn:
    """Import `module:function` (or `path/to/file.py:function`)."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise PosttrainError(f"reward function '{spec}' must look like 'module:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise PosttrainError(f"reward function '{spec}': file '{module_name}' not found")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except PosttrainError:
        raise
    except ImportError as exc:
        raise PosttrainError(f"reward function '{spec}': cannot import '{module_name}': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise PosttrainError(f"reward function '{spec}': importing '{module_name}' failed: "
                             f"{type(exc).__name__}: {exc}") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise PosttrainError(f"reward function '{spec}': '{module_name}' has no attribute '{function_name}'")
    if not callable(function):
        raise PosttrainError(f"reward function '{spec}': '{function_name}' is not callable")
    return function


def resolve_reward(spec: str | RewardFn) -> RewardFn:
    """A callable as is; a built-in name; or `module:function`."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise PosttrainError(f"a reward must be a name or a function, got {type(spec).__name__}")
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" in spec:
        return load_reward_function(spec)
    raise PosttrainError(f"unknown reward '{spec}' (built-ins: {', '.join(sorted(BUILTIN_REWARDS))}; "
                         f"or give 'module:function')")


def _name(fn: Any) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _accepted(fn: Callable) -> set[str] | None:
    """Keyword names `fn` accepts, or None when it takes **kwargs (or cannot be inspected)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _checked(value: Any, name: str, row: int) -> float:
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PosttrainError(f"reward function '{name}' returned {value!r} for row {row}; expected a finite number")
    return value if isinstance(value, Score) else float(value)


def call_reward(fn: RewardFn, prompt: str, response: str, extra: Mapping[str, Any], name: str | None = None,
                row: int = 0) -> float:
    """Call one reward function on one response, passing only the extra fields it accepts; a
    failure inside a user function becomes a one-line PosttrainError naming it and the row."""
    name = name or _name(fn)
    accepted = _accepted(fn)
    kwargs = {k: v for k, v in extra.items() if accepted is None or k in accepted}
    try:
        value = fn(prompt, response, **kwargs)
    except PosttrainError:
        raise
    except Exception as exc:  # noqa: BLE001 - report which function and which row
        raise PosttrainError(f"reward function '{name}' failed on row {row}: {type(exc).__name__}: {exc}") from exc
    return _checked(value, name, row)


def _score_all(fn: RewardFn, name: str, prompts: Sequence[str], responses: Sequence[str],
               extras: Sequence[Mapping[str, Any]]) -> list[float]:
    """One function over many rows: its `.batch` when it has one (e.g. concurrent sandboxes)."""
    batch = getattr(fn, "batch", None)
    if batch is None:
        return [call_reward(fn, p, r, e, name, i) for i, (p, r, e) in enumerate(zip(prompts, responses, extras))]
    try:
        values = list(batch(list(prompts), list(responses), [dict(e) for e in extras]))
    except PosttrainError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PosttrainError(f"reward function '{name}' failed: {type(exc).__name__}: {exc}") from exc
    if len(values) != len(responses):
        raise PosttrainError(f"reward function '{name}' returned {len(values)} scores for {len(responses)} rows")
    return [_checked(v, name, i) for i, v in enumerate(values)]


def weighted_sum(weights: Mapping[str | RewardFn, float]) -> RewardFn:
    """One reward `sum_i w_i * f_i(prompt, response, **extra)` from several. Its Score's reason
    lists the components that fell short: "math: expected 12, got 13; answer_format: ..."."""
    if not weights:
        raise PosttrainError("weighted_sum needs at least one reward function")
    parts = [(resolve_reward(spec), float(w), spec if isinstance(spec, str) else _name(spec))
             for spec, w in weights.items()]

    def combine(columns: list[list[float]]) -> list[Score]:
        out = []
        for values in zip(*columns):
            total = sum(w * v for (_, w, _), v in zip(parts, values))
            why = [f"{name}: {v.reason}" for (_, _, name), v in zip(parts, values) if getattr(v, "reason", None)]
            score = Score(total, "; ".join(why) or None)
            flagged = [v for v in values if hasattr(v, "blocked")]
            if flagged:  # keep the sandbox's verdict on escape attempts through the sum
                score.blocked = next((v.blocked for v in flagged if v.blocked), None)
            out.append(score)
        return out

    def reward(prompt: str, response: str, **extra: Any) -> Score:
        return combine([[call_reward(fn, prompt, response, extra, name)] for fn, _, name in parts])[0]

    def batch(prompts, responses, extras) -> list[Score]:
        return combine([_score_all(fn, name, prompts, responses, extras) for fn, _, name in parts])

    reward.batch = batch
    reward.components = {name: (fn, w) for fn, w, name in parts}
    reward.__name__ = "weighted_sum(" + ", ".join(f"{w:g}*{name}" for _, w, name in parts) + ")"
    return reward


@dataclass
class BatchScores:
    """Scores for a batch: `total[i] = sum_f weight_f * scores[f][i]`; reasons where set; seconds
    spent in each function."""

    total: list[float]
    scores: dict[str, list[float]]
    reasons: dict[str, list[str | None]]
    seconds: dict[str, float]
    weights: dict[str, float] = field(default_factory=dict)
    # Rows where the code sandbox blocked an escape or forgery attempt; None when no code reward ran.
    sandbox_violations: int | None = None

    @classmethod
    def concat(cls, parts: Sequence[BatchScores]) -> BatchScores:
        """The scores of several batches as one, rows in order (e.g. a step's sampling rounds)."""
        first = parts[0]
        violations = [p.sandbox_violations for p in parts if p.sandbox_violations is not None]
        return cls(total=[v for p in parts for v in p.total],
                   scores={name: [v for p in parts for v in p.scores[name]] for name in first.scores},
                   reasons={name: [r for p in parts for r in p.reasons[name]] for name in first.reasons},
                   seconds={name: sum(p.seconds[name] for p in parts) for name in first.seconds},
                   weights=dict(first.weights), sandbox_violations=sum(violations) if violations else None)

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Means and timings, ready for metrics.jsonl."""
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        out = {f"{prefix}/total": mean(self.total)}
        for name, values in self.scores.items():
            out[f"{prefix}/{name}"] = mean(values)
            out[f"{prefix}/{name}_seconds"] = self.seconds[name]
        if self.sandbox_violations is not None:
            out[f"{prefix}/sandbox_violations"] = self.sandbox_violations / max(len(self.total), 1)
        return out


def _row_fields(row: Mapping[str, Any], index: int) -> tuple[str, str, dict[str, Any]]:
    if "response" not in row:
        raise PosttrainError(f"row {index}: no 'response' field to score")
    prompt = row.get("prompt", "")
    if isinstance(prompt, list):
        prompt = prompt_text(prompt)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "response")}
    return str(prompt), str(row["response"]), extra


def score_batch(fns: Mapping[str, str | RewardFn] | Sequence[str], rows: Sequence[Mapping[str, Any]],
                weights: Mapping[str, float] | None = None) -> BatchScores:
    """Score every row with every function.

    fns: {name: function or spec} or a list of specs (the spec is the name). rows: dicts with
    `response`, usually `prompt` (text or messages), and the fields the functions read.
    weights: per-name weights for `total` (default 1 each).
    """
    named = dict(fns) if isinstance(fns, Mapping) else {spec: spec for spec in fns}
    given = dict(weights or {})
    unknown = set(given) - set(named)
    if unknown:
        raise PosttrainError(f"weights name unknown reward functions: {', '.join(sorted(unknown))}")
    weights = {name: float(given.get(name, 1.0)) for name in named}
    prompts, responses, extras = zip(*[_row_fields(row, i) for i, row in enumerate(rows)]) if rows else ((), (), ())
    scores, reasons, seconds = {}, {}, {}
    blocked: set[int] | None = None  # rows with a blocked sandbox action (None: no code reward ran)
    for name, spec in named.items():
        start = time.perf_counter()
        values = _score_all(resolve_reward(spec), name, prompts, responses, extras)
        seconds[name] = time.perf_counter() - start
        scores[name] = [float(v) for v in values]
        reasons[name] = [getattr(v, "reason", None) for v in values]
        if any(hasattr(v, "blocked") for v in values):
            blocked = (blocked or set()) | {i for i, v in enumerate(values) if getattr(v, "blocked", None)}
    total = [sum(weights[name] * scores[name][i] for name in named) for i in range(len(rows))]
    return BatchScores(total, scores, reasons, seconds, weights, None if blocked is None else len(blocked))
