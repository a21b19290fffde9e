"""LLM-as-judge: pairwise verdicts with optional position swap, and pointwise scores.

Pairwise with `swap=True` asks the judge twice per pair, once in each order:

    order "ab": answer A shown first      order "ba": answer B shown first

and maps each positional verdict back to the original labels (in order "ba" the
judge's "A" means the original B). Then:

  - both verdicts agree            -> that verdict        (judge_consistent: true)
  - they disagree                  -> "tie"               (judge_consistent: false)
  - either call failed (HTTP)      -> winner null, judge_status "failed"
  - either reply is unparseable    -> winner null, judge_status "unparseable"

Failed and unparseable items are never turned into ties; `summarize` counts them.
Position consistency = consistent pairs / pairs with both orders parsed.

Every output record is a `Judgement`; the judge's details go in its `extra`:
`judge_status`, `judge_consistent`, `judge_orders` (per order: the positional
verdict and the mapped winner), `judge_template`, and for swapped runs
`judge_reasoning_swapped` (the reply in order "ba"; `reasoning` holds order "ab").
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..records import Judgement, Message
from ..rollout.chat.backends import ChatBackend
from .parse import parse_pairwise, parse_score
from .templates import JudgeTemplate

_SWAP_LABEL = {"A": "B", "B": "A", "tie": "tie"}


@dataclass
class PairItem:
    """One pair to judge; `extra` is carried into the output record."""

    prompt: list[Message]
    response_a: str
    response_b: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PointItem:
    """One response to score; `extra` is carried into the output record."""

    prompt: list[Message]
    response: str
    extra: dict[str, Any] = field(default_factory=dict)


def format_question(prompt: list[Message]) -> str:
    """The text a judge sees as "the question": the user turn, or the whole dialogue if multi-turn."""
    turns = [m for m in prompt if m.get("role") != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def order_result(reply: str | None, order: str) -> dict[str, Any]:
    """One order's outcome: positional verdict, winner in original labels, status."""
    if reply is None:
        return {"order": order, "verdict": None, "winner": None, "status": "failed"}
    verdict = parse_pairwise(reply)
    if verdict is None:
        return {"order": order, "verdict": None, "winner": None, "status": "unparseable"}
    winner = _SWAP_LABEL[verdict] if order == "ba" else verdict
    return {"order": order, "verdict": verdict, "winner": winner, "status": "ok"}


def combine_orders(orders: Sequence[dict[str, Any]]) -> tuple[str | None, str, bool | None]:
    """(winner, status, consistent) from one or two order results (see module docstring)."""
    statuses = {o["status"] for o in orders}
    if "failed" in statuses:
        return None, "failed", None
    if "unparseable" in statuses:
        return None, "unparseable", None
    winners = [o["winner"] for o in orders]
    if len(winners) == 1:
        return winners[0], "ok", None
    return (winners[0], "ok", True) if winners[0] == winners[1] else ("tie", "ok", False)


class LLMJudge:
    """Asks a `ChatBackend` to judge pairs or score responses with a `JudgeTemplate`."""

    def __init__(self, backend: ChatBackend, template: JudgeTemplate, *, swap: bool = False,
                 rubric: str | None = None, max_tokens: int = 512, temperature: float = 0.0):
        self.backend, self.template, self.swap, self.rubric = backend, template, swap, rubric
        self.max_tokens, self.temperature = max_tokens, temperature

    def _ask(self, conversations: list[list[Message]]) -> list[str | None]:
        return self.backend.complete(conversations, max_tokens=self.max_tokens, temperature=self.temperature)

    def judge_pairs(self, items: Sequence[PairItem]) -> list[Judgement]:
        """One `Judgement` per pair; all calls (both orders) go to the backend as one batch."""
        orders = ["ab", "ba"] if self.swap else ["ab"]
        conversations = []
        for item in items:
            question = format_question(item.prompt)
            for order in orders:
                first, second = (item.response_a, item.response_b) if order == "ab" else (item.response_b, item.response_a)
                conversations.append(self.template.render_pairwise(question, first, second, self.rubric))
        replies = self._ask(conversations)
        out = []
        for i, item in enumerate(items):
            item_replies = replies[i * len(orders):(i + 1) * len(orders)]
            results = [order_result(r, o) for r, o in zip(item_replies, orders)]
            winner, status, consistent = combine_orders(results)
            extra = {**item.extra, "judge_status": status, "judge_consistent": consistent,
                     "judge_orders": results, "judge_template": self.template.name}
            if self.swap:
                extra["judge_reasoning_swapped"] = item_replies[1]
            out.append(Judgement(prompt=item.prompt, response_a=item.response_a, response_b=item.response_b,
                                 winner=winner, reasoning=item_replies[0], judge=self.backend.name, extra=extra))
        return out

    def judge_points(self, items: Sequence[PointItem]) -> list[Judgement]:
        """One `Judgement` per response, with `score` in the template's [min_score, max_score]."""
        conversations = [self.template.render_pointwise(format_question(it.prompt), it.response, self.rubric)
                         for it in items]
        out = []
        for item, reply in zip(items, self._ask(conversations)):
            score = parse_score(reply, self.template.min_score, self.template.max_score)
            status = "failed" if reply is None else ("unparseable" if score is None else "ok")
            extra = {**item.extra, "judge_status": status, "judge_template": self.template.name}
            out.append(Judgement(prompt=item.prompt, response_a=item.response, score=score, reasoning=reply,
                                 judge=self.backend.name, extra=extra))
        return out


def summarize(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Counts over output rows (Judgement dicts), so resumed rows are counted too."""
    statuses = Counter(r.get("judge_status", "ok") for r in rows)
    summary: dict[str, Any] = {"mode": mode, "judgements": len(rows), "ok": statuses["ok"],
                               "unparseable": statuses["unparseable"], "failed": statuses["failed"]}
    if mode == "pointwise":
        scores = [r["score"] for r in rows if r.get("score") is not None]
        summary["mean_score"] = sum(scores) / len(scores) if scores else None
        summary["score_counts"] = {str(k): v for k, v in sorted(Counter(scores).items())}
        return summary
    winners = Counter(r.get("winner") for r in rows)
    summary.update({"A": winners["A"], "B": winners["B"], "tie": winners["tie"]})
    both = [r for r in rows if r.get("judge_consistent") is not None]
    summary["swapped_pairs"] = len(both)
    summary["position_consistency"] = (sum(r["judge_consistent"] for r in both) / len(both)) if both else None
    # Position bias at a glance: how often the answer shown first wins a decisive verdict.
    decisive = [o["verdict"] for r in rows for o in r.get("judge_orders", []) if o.get("verdict") in ("A", "B")]
    summary["first_shown_win_rate"] = decisive.count("A") / len(decisive) if decisive else None
    labelled = [r for r in rows if r.get("reference_winner") in ("A", "B") and r.get("winner") is not None]
    if labelled:
        summary["reference_agreement"] = sum(r["winner"] == r["reference_winner"] for r in labelled) / len(labelled)
        summary["reference_pairs"] = len(labelled)
    return summary
