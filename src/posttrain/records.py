"""Typed records that every stage reads and writes.

All records are plain dataclasses with `to_dict()` / `from_dict()` so they travel
as JSONL. Messages are `{"role": ..., "content": ...}` dicts (the shape chat
templates take). `source` is `"FILE:LINE"` of where a record was read, so later
errors can still point at the input; it is not written back out.

Prompts are message lists everywhere (a plain-text prompt becomes one user turn);
responses are the assistant's text. `extra` keeps the input row's other fields
(answers for verifiers, ids, metadata) untouched.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


def user_prompt(text: str, system: str | None = None) -> list[Message]:
    """A prompt as messages: an optional system turn and one user turn."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


def prompt_text(prompt: list[Message]) -> str:
    """The last user turn's text (for display, judges and verifiers)."""
    for message in reversed(prompt):
        if message["role"] == "user":
            return message["content"]
    return prompt[-1]["content"] if prompt else ""


@dataclass
class Record:
    source: str | None = field(default=None, kw_only=True, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("source", "extra")}
        row = {k: v for k, v in row.items() if v is not None}
        return {**self.extra, **row}

    @classmethod
    def from_dict(cls, row: dict[str, Any], source: str | None = None):
        names = {f.name for f in dataclasses.fields(cls)} - {"source", "extra"}
        known = {k: v for k, v in row.items() if k in names}
        extra = {k: v for k, v in row.items() if k not in names}
        return cls(**known, source=source, extra=extra)


@dataclass
class Prompt(Record):
    """A prompt to answer (generation, judging, RL); `extra` keeps e.g. the reference answer."""

    prompt: list[Message]


@dataclass
class Conversation(Record):
    """An SFT example: messages ending with (and containing) assistant turns to learn."""

    messages: list[Message]


@dataclass
class Text(Record):
    """Raw text for language modelling / continued pre-training: every token is trained on."""

    text: str


@dataclass
class PreferencePair(Record):
    """A prompt with a preferred and a dispreferred response (optional margin from the data)."""

    prompt: list[Message]
    chosen: str
    rejected: str
    margin: float | None = None


@dataclass
class Ranked(Record):
    """K responses to one prompt, ordered best first by `ranking` (indices) or scored by `scores`."""

    prompt: list[Message]
    responses: list[str]
    ranking: list[int] | None = None
    scores: list[float] | None = None

    def order(self) -> list[int]:
        """Indices of `responses` from best to worst."""
        if self.ranking is not None:
            return list(self.ranking)
        assert self.scores is not None
        return sorted(range(len(self.responses)), key=lambda i: -self.scores[i])


@dataclass
class Unpaired(Record):
    """A KTO example: one response labelled desirable (True) or undesirable (False)."""

    prompt: list[Message]
    completion: str
    label: bool


@dataclass
class Judgement(Record):
    """A judge's verdict on a pair (winner 'A', 'B' or 'tie') or a pointwise score."""

    prompt: list[Message]
    response_a: str
    response_b: str | None = None
    winner: str | None = None
    score: float | None = None
    reasoning: str | None = None
    judge: str | None = None


@dataclass
class Annotation(Record):
    """A human label on a pairwise item, with per-criterion choices."""

    item_id: str
    annotator: str
    prompt: list[Message]
    response_a: str
    response_b: str
    choice: str
    criteria: dict[str, str] | None = None
    reasoning: str | None = None
    confidence: int | None = None
    swapped: bool | None = None
