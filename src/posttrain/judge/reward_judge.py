"""A reward model (or any scoring function) as a judge.

The scorer is a callable `score(prompt_messages, response_text) -> float`, or a
batched `score_batch(prompts, responses) -> list[float]`. Pairwise, the higher
score wins; a difference within `tie_threshold` is a tie:

    winner = "A" if s_a - s_b >  tie_threshold
             "B" if s_b - s_a >  tie_threshold
             "tie" otherwise

Scores do not depend on the order the answers are shown in, so position swap does
not apply (the records say `judge_consistent: null`). A trained reward model from
`posttrain rm` plugs in as a scorer; see docs/judge.md.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..records import Judgement, Message

Scorer = Callable[[list[Message], str], float]
BatchScorer = Callable[[Sequence[list[Message]], Sequence[str]], Sequence[float]]


def pairwise_winner(score_a: float, score_b: float, tie_threshold: float = 0.0) -> str:
    """'A', 'B' or 'tie' from two scores (see the module docstring)."""
    if score_a - score_b > tie_threshold:
        return "A"
    if score_b - score_a > tie_threshold:
        return "B"
    return "tie"


class RewardJudge:
    """Judges pairs and single responses with a scoring function instead of an LLM."""

    def __init__(self, scorer: Scorer | None = None, *, score_batch: BatchScorer | None = None,
                 tie_threshold: float = 0.0, name: str = "reward-model"):
        if (scorer is None) == (score_batch is None):
            raise ValueError("give exactly one of scorer or score_batch")
        if tie_threshold < 0:
            raise ValueError("tie_threshold must be >= 0")
        self._score_batch = score_batch or (lambda ps, rs: [scorer(p, r) for p, r in zip(ps, rs)])
        self.tie_threshold, self.name = tie_threshold, name

    def scores(self, prompts: Sequence[list[Message]], responses: Sequence[str]) -> list[float]:
        values = [float(v) for v in self._score_batch(list(prompts), list(responses))]
        if len(values) != len(responses):
            raise ValueError(f"scorer returned {len(values)} scores for {len(responses)} responses")
        return values

    def judge_pairs(self, items: Sequence[tuple[list[Message], str, str]]) -> list[Judgement]:
        """`items` are (prompt, response_a, response_b); both sides are scored in one batch."""
        prompts = [p for p, _, _ in items] * 2
        responses = [a for _, a, _ in items] + [b for _, _, b in items]
        values = self.scores(prompts, responses)
        n = len(items)
        out = []
        for i, (prompt, a, b) in enumerate(items):
            score_a, score_b = values[i], values[n + i]
            out.append(Judgement(prompt=prompt, response_a=a, response_b=b,
                                 winner=pairwise_winner(score_a, score_b, self.tie_threshold),
                                 reasoning=f"score A = {score_a:.4g}, score B = {score_b:.4g}", judge=self.name,
                                 extra={"score_a": score_a, "score_b": score_b, "judge_status": "ok",
                                        "judge_consistent": None}))
        return out

    def judge_points(self, items: Sequence[tuple[list[Message], str]]) -> list[Judgement]:
        """`items` are (prompt, response); the score is the scorer's raw value."""
        values = self.scores([p for p, _ in items], [r for _, r in items])
        return [Judgement(prompt=p, response_a=r, score=v, judge=self.name, extra={"judge_status": "ok"})
                for (p, r), v in zip(items, values)]
