"""Constitutional AI, the supervised stage: respond, then critique and revise by principle.

For each prompt (Bai et al. 2022, "Constitutional AI", section 3):

    response_0 = model(prompt)
    for each round, for each chosen principle p:
        critique_i = model(prompt, response_{i-1}, p.critique)             # what is wrong?
        revision_i = model(prompt, response_{i-1}, p.critique, critique_i, p.revision)
        response_i = revision_i   (unless it is empty or unchanged)

The requests continue one conversation, so the model sees its own response and critique:

    [system], user: prompt, assistant: response, user: critique request,
                            assistant: critique, user: revision request  -> revision

All model calls go through a `ChatBackend` (`posttrain.rollout.chat`): a local Hugging
Face model, an OpenAI-compatible server, or a Python function. Calls are batched
across prompts, one batch per stage: all initial responses, then the critiques
for every prompt's first principle, then their revisions, then the second
principle, and so on (with sampled principles, a batch mixes principles).

Failures are kept visible rather than hidden:
  - a `None` reply (a request that failed) ends that prompt: its trace says where
    (`failed_at`), and it gives no SFT row and no pair;
  - a revision that is empty, the same as the response it revises, or stuck in a
    loop (see `is_repetitive`) is recorded as `empty` / `unchanged` / `repetitive`
    and does not replace the response.

`Trace` holds everything for one prompt; `to_dict()` is one row of `--trace-output`.
`sft_rows` / `revision_pairs` turn finished traces into SFT rows and RLAIF pairs. The
command, with judged pairs, is posttrain/commands/cai.py.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..records import Message
from .constitution import Constitution, Principle

# Small models often label their rewrite ("Revised response: ..."); the label is not part of it.
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:revised response|revised answer|revision|rewritten response|"
                    r"new response|improved response)(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.IGNORECASE)


def clean_revision(text: str) -> str:
    """The revision text without surrounding whitespace or a leading 'Revision:'-style label."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def is_repetitive(text: str, n: int = 4, min_ngrams: int = 12, min_distinct: float = 0.5) -> bool:
    """True when the text loops: fewer than `min_distinct` of its word n-grams are distinct.

    Small models under greedy or low-temperature decoding often fall into a loop ("I'm
    unsure of a claim I made. I'm unsure of a claim I made. ..."); ordinary prose has
    nearly all 4-grams distinct. Texts with fewer than `min_ngrams` n-grams are never flagged.
    """
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) >= min_ngrams and len(set(grams)) / len(grams) < min_distinct


def revision_status(revision: str, current: str) -> str:
    """'empty', 'unchanged', 'repetitive' or 'revised' for a cleaned revision of `current`."""
    if not revision:
        return "empty"
    if revision == current.strip():
        return "unchanged"
    if is_repetitive(revision):
        return "repetitive"
    return "revised"


@dataclass
class Trace:
    """Everything that happened to one prompt."""

    index: int
    prompt: list[Message]
    extra: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    initial: str | None = None
    current: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    failed_at: str | None = None   # "initial", or "round R principle NAME critique|revision"

    @property
    def ok(self) -> bool:
        return self.failed_at is None

    @property
    def revised(self) -> bool:
        """At least one revision replaced the response."""
        return any(step["status"] == "revised" for step in self.steps)

    def principles(self) -> list[str]:
        return [step["principle"] for step in self.steps if step["status"] == "revised"]

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "prompt": self.prompt, "source": self.source,
                "status": "ok" if self.ok else "failed", "failed_at": self.failed_at,
                "initial": self.initial, "steps": self.steps, "final": self.current if self.ok else None,
                "revised": self.ok and self.revised}


def base_conversation(trace: Trace, system: str | None) -> list[Message]:
    prompt = list(trace.prompt)
    if system and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system}] + prompt
    return prompt


def critique_conversation(trace: Trace, principle: Principle, system: str | None) -> list[Message]:
    return base_conversation(trace, system) + [{"role": "assistant", "content": trace.current},
                                               {"role": "user", "content": principle.critique}]


def revision_conversation(trace: Trace, principle: Principle, critique: str, system: str | None) -> list[Message]:
    return critique_conversation(trace, principle, system) + [{"role": "assistant", "content": critique},
                                                              {"role": "user", "content": principle.revision}]


@dataclass
class CaiSettings:
    max_tokens: int = 256            # initial responses and revisions
    critique_max_tokens: int = 256
    temperature: float = 0.0


class CritiqueReviser:
    """Runs the critique → revision loop over many prompts, one backend batch per stage."""

    def __init__(self, backend, constitution: Constitution, settings: CaiSettings | None = None, log=None):
        self.backend, self.constitution = backend, constitution
        self.settings = settings or CaiSettings()
        self.log = log or (lambda text: None)
        self.stage_seconds: dict[str, float] = {}
        self.batches = 0

    def _ask(self, stage: str, conversations: list[list[Message]], max_tokens: int) -> list[str | None]:
        if not conversations:
            return []
        started = time.perf_counter()
        replies = self.backend.complete(conversations, max_tokens=max_tokens, temperature=self.settings.temperature)
        if len(replies) != len(conversations):
            raise RuntimeError(f"backend {self.backend.name} returned {len(replies)} replies "
                               f"for {len(conversations)} conversations")
        seconds = time.perf_counter() - started
        self.batches += 1
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
        failed = sum(r is None for r in replies)
        self.log(f"{stage}: {len(conversations)} calls in {seconds:.1f}s" + (f", {failed} failed" if failed else ""))
        return replies

    def initial(self, traces: Sequence[Trace]) -> None:
        system = self.constitution.system
        replies = self._ask("initial", [base_conversation(t, system) for t in traces], self.settings.max_tokens)
        for trace, reply in zip(traces, replies):
            if reply is None:
                trace.failed_at = "initial"
            else:
                trace.initial = trace.current = reply.strip()

    def step(self, items: Sequence[tuple[Trace, Principle]], round_number: int, slot: int) -> None:
        """One principle slot for many prompts: a batch of critiques, then a batch of revisions."""
        system = self.constitution.system
        stage = f"round {round_number} principle #{slot + 1}"
        critiques = self._ask(f"{stage} critique", [critique_conversation(t, p, system) for t, p in items],
                              self.settings.critique_max_tokens)
        steps = []
        for (trace, principle), critique in zip(items, critiques):
            step = {"round": round_number, "principle": principle.name, "critique_request": principle.critique,
                    "critique": None if critique is None else critique.strip(),
                    "revision_request": principle.revision, "revision": None, "status": "failed"}
            trace.steps.append(step)
            if critique is None:
                trace.failed_at = f"round {round_number} principle {principle.name} critique"
            else:
                steps.append((trace, principle, step))
        revisions = self._ask(f"{stage} revision",
                              [revision_conversation(t, p, s["critique"], system) for t, p, s in steps],
                              self.settings.max_tokens)
        for (trace, principle, step), revision in zip(steps, revisions):
            if revision is None:
                trace.failed_at = f"round {round_number} principle {principle.name} revision"
                continue
            step["revision"] = clean_revision(revision)
            step["status"] = revision_status(step["revision"], trace.current)
            if step["status"] == "revised":
                trace.current = step["revision"]

    def run(self, traces: Sequence[Trace], plan: Sequence[Sequence[Sequence[Principle]]]) -> list[Trace]:
        """plan[i][r]: the principles of traces[i] in round r (see constitution.plan)."""
        self.initial(traces)
        rounds = max((len(p) for p in plan), default=0)
        for r in range(rounds):
            slots = max((len(plan[i][r]) for i in range(len(traces))), default=0)
            for slot in range(slots):
                items = [(t, plan[i][r][slot]) for i, t in enumerate(traces) if t.ok and slot < len(plan[i][r])]
                self.step(items, r + 1, slot)
        return list(traces)


def count(traces: Sequence[Trace]) -> dict[str, Any]:
    """Counts for the summary: prompts, failures, revision outcomes per step."""
    steps = Counter(step["status"] for t in traces for step in t.steps)
    failed = [t for t in traces if not t.ok]
    return {"prompts": len(traces), "failed_prompts": len(failed),
            "failed_at": dict(Counter(t.failed_at.rsplit(" ", 1)[-1] for t in failed)),  # initial/critique/revision
            "revised_prompts": sum(t.ok and t.revised for t in traces),
            "unrevised_prompts": sum(t.ok and not t.revised for t in traces),
            "steps": {name: steps[name] for name in ("revised", "empty", "unchanged", "repetitive", "failed")}}


# --------------------------------------------------------------------------- output rows

def assistant_turn(text: str) -> list[dict[str, str]]:
    """One assistant message, the shape of `chosen` / `rejected` in conversational pairs."""
    return [{"role": "assistant", "content": text}]


def sft_rows(traces: list[Trace]) -> list[dict[str, Any]]:
    """prompt + final revision as a chat, for every prompt that was revised at least once."""
    return [{**t.extra, "messages": t.prompt + assistant_turn(t.current), "cai_principles": t.principles()}
            for t in traces if t.ok and t.revised]


def revision_pairs(traces: list[Trace]) -> list[dict[str, Any]]:
    """RLAIF pairs: the final revision chosen over the initial response (TRL conversational shape)."""
    return [{**t.extra, "prompt": t.prompt, "chosen": assistant_turn(t.current), "rejected": assistant_turn(t.initial),
             "pair_mode": "revision", "cai_principles": t.principles()}
            for t in traces if t.ok and t.revised and t.current != t.initial]
