"""Rewards for the online recipes: config specs -> one scorer over generations.

A reward spec names one reward function and, optionally, its weight:

    math                      a built-in verifier (posttrain.rollout.rewards.BUILTIN_REWARDS)
    math:1.0                  ... with weight 1.0
    my_pkg.rewards:brevity    a user function `fn(prompt, response, **extra) -> float`
    my_pkg.rewards:brevity:0.2
    path/to/rewards.py:fn:0.5
    rm:runs/rm                a trained reward model directory (`posttrain rm`), weight 1
    runs/rm:0.5               an existing directory is a reward model too

The total reward of a response is sum_i w_i * f_i(prompt, response, **extra). A spec is
split at its *last* colon when what follows parses as a number, so `module:function` and
`name:weight` never collide (a function named like a number would be odd).

Reward models score the whole conversation, so they receive the prompt as messages: every
row handed to the scorer carries `prompt_messages` among its extra fields (user functions
with `**extra` see it too and may ignore it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, PosttrainError
from ..records import Message
from ..rollout.rewards import BUILTIN_REWARDS, resolve_reward, score_batch

RM_PREFIX = "rm:"


@dataclass
class RewardSpec:
    name: str  # the spec without its weight: "math", "pkg.mod:fn", "rm:runs/rm"
    weight: float = 1.0


def parse_reward_spec(text: str) -> RewardSpec:
    """'math:0.5' -> RewardSpec('math', 0.5); 'pkg.mod:fn' -> RewardSpec('pkg.mod:fn', 1.0)."""
    text = str(text).strip()
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return RewardSpec(text)
        if not math.isfinite(weight):
            raise ConfigError("reward", f"'{text}': the weight must be a finite number")
        return RewardSpec(head, weight)
    return RewardSpec(text)


def parse_reward_specs(specs: Sequence[str], weights: Mapping[str, float] | None = None) -> list[RewardSpec]:
    """Flag specs (`--reward math:1 length:0.1`) plus a YAML mapping (`reward_weights: {math: 1}`)."""
    parsed = [parse_reward_spec(s) for s in specs if str(s).strip()]
    for name, weight in (weights or {}).items():
        try:
            parsed.append(RewardSpec(str(name), float(weight)))
        except (TypeError, ValueError):
            raise ConfigError("reward_weights", f"'{name}': weight {weight!r} is not a number") from None
    names = [p.name for p in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError("reward", f"reward {', '.join(duplicates)} is given more than once")
    if not parsed:
        raise ConfigError("reward", "give at least one reward (e.g. --reward math, --reward pkg.module:function, "
                                    "--reward rm:RUN_DIR) or a shipped --task")
    return parsed


# --------------------------------------------------------------------------- reward models


def scorer_reward(scorer: Any, name: str = "reward_model") -> Callable[..., float]:
    """Adapt a reward-model scorer to the reward-function interface (with a `.batch`).

    `scorer` is any of:
    - an object with `score_batch(prompts, responses) -> list[float]` (prompts as message lists),
    - an object with `score(prompts, responses) -> list[float]` (the same, batched),
    - a callable `scorer(prompt_messages, response) -> float` (one at a time).
    """
    batched = getattr(scorer, "score_batch", None) or getattr(scorer, "score", None)
    single = None if batched is not None else scorer
    if batched is None and not callable(scorer):
        raise PosttrainError(f"reward '{name}': the scorer has no score_batch/score method and is not callable")

    def messages_of(prompt: str, extra: Mapping[str, Any]) -> list[Message]:
        messages = extra.get("prompt_messages")
        return list(messages) if messages else [{"role": "user", "content": prompt}]

    def batch(prompts: Sequence[str], responses: Sequence[str], extras: Sequence[Mapping[str, Any]]) -> list[float]:
        conversations = [messages_of(p, e) for p, e in zip(prompts, extras)]
        if single is not None:
            return [float(single(c, r)) for c, r in zip(conversations, responses)]
        return [float(v) for v in batched(conversations, list(responses))]

    def reward(prompt: str, response: str, **extra: Any) -> float:
        return batch([prompt], [response], [extra])[0]

    reward.batch = batch
    reward.__name__ = name
    return reward


def load_scorer(path: str) -> Any:
    """A trained reward model directory -> `posttrain.rollout.score.RewardScorer` (loaded lazily)."""
    from ..rollout.score import RewardScorer

    if not Path(path).exists():
        raise ConfigError("reward", f"reward model directory '{path}' not found")
    return RewardScorer(path)


# --------------------------------------------------------------------------- the combined scorer


def resolve_spec(spec: RewardSpec, scorer_loader: Callable[[str], Any] = load_scorer) -> Callable[..., float]:
    """One spec -> a reward function (built-in, user function, or reward model adapter)."""

    name = spec.name
    if name.startswith(RM_PREFIX):
        return scorer_reward(scorer_loader(name[len(RM_PREFIX):]), name)
    if name not in BUILTIN_REWARDS and Path(name).is_dir():
        return scorer_reward(scorer_loader(name), name)
    try:
        return resolve_reward(name)
    except PosttrainError as exc:
        raise ConfigError("reward", str(exc)) from None


class RewardScorerSet:
    """Several weighted reward functions scored together over rows.

    `score(rows)` -> `BatchScores` (posttrain.rollout.rewards): per-function scores, reasons,
    seconds, and `total = sum_i w_i * f_i`. Rows are dicts with `prompt` (messages),
    `response` and the prompt record's extra fields.
    """

    def __init__(self, specs: Sequence[RewardSpec], functions: Mapping[str, Callable[..., float]] | None = None,
                 scorer_loader: Callable[[str], Any] = load_scorer):
        self.specs = list(specs)
        given = dict(functions or {})
        self.functions = {s.name: given.get(s.name) or resolve_spec(s, scorer_loader) for s in self.specs}
        self.weights = {s.name: s.weight for s in self.specs}

    @classmethod
    def from_config(cls, specs: Sequence[str], weights: Mapping[str, float] | None = None) -> "RewardScorerSet":
        return cls(parse_reward_specs(specs, weights))

    def score(self, rows: Sequence[Mapping[str, Any]]):
        rows = [{**row, "prompt_messages": row.get("prompt")} for row in rows]
        return score_batch(self.functions, rows, self.weights)

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{n}" for n, w in self.weights.items())
