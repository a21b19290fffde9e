"""The red-team loop: (rewrite) -> run the target turn by turn -> judge -> transcript rows.

    rows = run_redteam(attacks, target, KeywordJudge())

1. Optional attacker: a chat model rewrites the last user turn of every harmful attack
   (`rewrite_attacks`). A rewrite that is empty, refuses, drops the encoded payload of an
   encoding attack, or changes length wildly is not used; the templated turn is kept and
   `attacker_status` says why, so a timid attacker model cannot silently weaken the suite.
2. The target answers (`run_target`). Turn k of every attack that has a k-th turn goes out
   in one batched `complete` call; each reply is appended to its conversation before turn k+1
   is sent. A single-turn attack therefore costs one target call, a three-turn escalation
   three calls on a growing conversation. A failed call (reply None, e.g. a prompt longer
   than the model's context) ends that attack: `status` "failed", left out of the rates.
3. The judge labels each final reply (`classify.KeywordJudge` or `LLMSafetyJudge`).

Every participant is a `posttrain.judge.ChatBackend` (`complete(conversations, max_tokens=,
temperature=)`): a local model, an OpenAI-compatible server, or a Python function in tests.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable, Sequence

from ..records import Message
from .attacks import Attack, AttackLibrary
from .classify import JudgeItem, refusal_phrase

Log = Callable[[str], None]
CHUNK = 32  # conversations per backend call, so progress shows between calls

_REWRITE_LABEL = re.compile(r"^\s*(?:\*\*)?(?:rewritten|new|revised|paraphrased)?\s*(?:test )?prompt(?:\*\*)?\s*:\s*",
                            re.IGNORECASE)


def _complete(backend, conversations: list[list[Message]], max_tokens: int, temperature: float, log: Log,
              what: str) -> list[str | None]:
    replies: list[str | None] = []
    started = time.perf_counter()
    for start in range(0, len(conversations), CHUNK):
        replies += backend.complete(conversations[start:start + CHUNK], max_tokens=max_tokens, temperature=temperature)
        log(f"{what}: {len(replies)}/{len(conversations)} in {time.perf_counter() - started:.1f}s")
    return replies


# ------------------------------------------------------------------------------------ attacker

def check_rewrite(original: str, reply: str | None, payload: str | None = None) -> tuple[str | None, str]:
    """(usable rewrite or None, status) for an attacker reply to `original`."""
    if reply is None:
        return None, "kept template: attacker call failed"
    text = _REWRITE_LABEL.sub("", reply.strip(), count=1).strip().strip('"').strip()
    if not text:
        return None, "kept template: empty rewrite"
    if refusal_phrase(text):
        return None, "kept template: attacker refused"
    if payload and payload not in text:
        return None, "kept template: encoded payload lost"
    if not 0.3 <= len(text) / max(1, len(original)) <= 4.0:
        return None, "kept template: length changed too much"
    return text, "rewritten"


def rewrite_attacks(attacks: Sequence[Attack], attacker, library: AttackLibrary, max_tokens: int = 256,
                    temperature: float = 0.7, log: Log = lambda text: None) -> dict[str, int]:
    """Let `attacker` reword the last user turn of each harmful attack, in place; returns status counts."""
    harmful = [a for a in attacks if a.kind == "harmful"]
    system = [{"role": "system", "content": library.attacker_system}] if library.attacker_system else []
    conversations = [system + [{"role": "user", "content": library.attacker_user.format(prompt=a.turns[-1])}]
                     for a in harmful]
    replies = _complete(attacker, conversations, max_tokens, temperature, log, "attacker")
    counts: dict[str, int] = {}
    for attack, reply in zip(harmful, replies):
        text, status = check_rewrite(attack.turns[-1], reply, attack.extra.get("payload"))
        attack.extra["attacker_status"] = status
        if text is not None:
            attack.extra["templated_turn"] = attack.turns[-1]
            attack.turns[-1] = text
        counts[status] = counts.get(status, 0) + 1
    return counts


# -------------------------------------------------------------------------------------- target

def run_target(attacks: Sequence[Attack], target, max_tokens: int = 128, temperature: float = 0.0,
               log: Log = lambda text: None) -> tuple[list[list[Message]], list[list[str]], dict[int, int]]:
    """Run every attack on `target`, one batched call per turn index.

    Returns (conversations, replies per attack, {attack index: turn number that failed}).
    A conversation ends with the target's last reply (an assistant message) unless it failed.
    """
    conversations = [list(a.prefix) for a in attacks]
    replies: list[list[str]] = [[] for _ in attacks]
    failed: dict[int, int] = {}
    for turn in range(max((len(a.turns) for a in attacks), default=0)):
        active = [i for i, a in enumerate(attacks) if turn < len(a.turns) and i not in failed]
        if not active:
            break
        for i in active:
            conversations[i].append({"role": "user", "content": attacks[i].turns[turn]})
        answers = _complete(target, [conversations[i] for i in active], max_tokens, temperature, log,
                            f"target turn {turn + 1}")
        for i, answer in zip(active, answers):
            if answer is None:
                failed[i] = turn + 1
                continue
            answer = answer.strip()
            conversations[i].append({"role": "assistant", "content": answer})
            replies[i].append(answer)
    return conversations, replies, failed


# ---------------------------------------------------------------------------------------- loop

def transcript_row(attack: Attack, conversation: list[Message], replies: list[str], failed_turn: int | None,
                   target_name: str) -> dict[str, Any]:
    """One transcript row (before judging): the attack, what the target saw, and its replies."""
    ok = failed_turn is None
    row: dict[str, Any] = {
        "id": attack.id, "template": attack.template, "family": attack.family, "topic": attack.topic,
        "category": attack.category, "kind": attack.kind, "request": attack.request,
        "prompt": conversation[:-1] if ok else conversation, "response": replies[-1] if ok else None,
        "turns": len(attack.turns), "status": "ok" if ok else "failed", "target": target_name}
    if len(attack.turns) > 1:
        row["turn_responses"] = replies
    if not ok:
        row["failed_at_turn"] = failed_turn
    return {**row, **{k: v for k, v in attack.extra.items() if k not in row}}


def run_redteam(attacks: Sequence[Attack], target, judge, *, attacker=None, library: AttackLibrary | None = None,
                max_tokens: int = 128, temperature: float = 0.0, attacker_max_tokens: int = 256,
                attacker_temperature: float = 0.7, log: Log = lambda text: None) -> list[dict[str, Any]]:
    """Rewrite (with an attacker), run the target, judge; returns labelled transcript rows."""
    attacks = list(attacks)
    if attacker is not None:
        if library is None:
            raise ValueError("an attacker needs the attack library (its rewrite prompt)")
        counts = rewrite_attacks(attacks, attacker, library, attacker_max_tokens, attacker_temperature, log)
        log("attacker: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    conversations, replies, failed = run_target(attacks, target, max_tokens, temperature, log)
    rows = [transcript_row(a, c, r, failed.get(i), getattr(target, "name", "target"))
            for i, (a, c, r) in enumerate(zip(attacks, conversations, replies))]
    return label_rows(rows, judge)


def label_rows(rows: list[dict[str, Any]], judge) -> list[dict[str, Any]]:
    """Label (or label again) every finished transcript row with `judge`, in place."""
    done = [row for row in rows if row.get("status", "ok") == "ok"]
    items = [JudgeItem(r["kind"], r.get("request") or _last_user(r["prompt"]), r["prompt"], r["response"]) for r in done]
    for row, verdict in zip(done, judge.label(items)):
        row.update(label=verdict.label, judge=judge.name, judge_reasoning=verdict.reasoning,
                   label_source=verdict.source)
    for row in rows:
        row.setdefault("label", None)
    return rows


def _last_user(messages: list[Message]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
