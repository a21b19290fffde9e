"""A reward model (or any scoring function) as a judge.

The scorer is a callable `score(prompt_messages, response_text) -> float`, or a
batched `score_batch(prompts, responses) -> list[float]` (for example
`posttrain.rollout.score.RewardScorer(model_dir).score`). Pairwise, the higher
score wins; a difference within `tie_threshold` is a tie:

    winner = "A" if s_a - s_b >  tie_threshold
             "B" if s_b - s_a >  tie_threshold
             "tie" otherwise

Scores do not depend on the order the answers are shown in, so position swap does
not apply (the records say `judge_consistent: null`). `judge_pairs` / `judge_points`
take the same items and return the same records as `LLMJudge`'s.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..records import Judgement, Message
from ..rollout.chat.backends import BackendStats
from .judging import PairItem, PointItem

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
        self.stats = BackendStats()  # "requests" = responses scored, so summaries read the same as for LLMs

    def scores(self, prompts: Sequence[list[Message]], responses: Sequence[str]) -> list[float]:
        values = [float(v) for v in self._score_batch(list(prompts), list(responses))]
        if len(values) != len(responses):
            raise ValueError(f"scorer returned {len(values)} scores for {len(responses)} responses")
        self.stats.add(requests=len(values), completed=len(values))
        return values

    def judge_pairs(self, items: Sequence[PairItem]) -> list[Judgement]:
        """One record per pair; all answers are scored in one batch (A sides, then B sides)."""
        values = self.scores([it.prompt for it in items] * 2,
                             [it.response_a for it in items] + [it.response_b for it in items])
        out = []
        for item, score_a, score_b in zip(items, values[:len(items)], values[len(items):]):
            out.append(Judgement(prompt=item.prompt, response_a=item.response_a, response_b=item.response_b,
                                 winner=pairwise_winner(score_a, score_b, self.tie_threshold),
                                 reasoning=f"score A = {score_a:.4g}, score B = {score_b:.4g}", judge=self.name,
                                 extra={**item.extra, "score_a": score_a, "score_b": score_b,
                                        "judge_status": "ok", "judge_consistent": None}))
        return out

    def judge_points(self, items: Sequence[PointItem]) -> list[Judgement]:
        """One record per response; `score` is the scorer's raw value."""
        values = self.scores([it.prompt for it in items], [it.response for it in items])
        return [Judgement(prompt=it.prompt, response_a=it.response, score=v, judge=self.name,
                          extra={**it.extra, "judge_status": "ok"}) for it, v in zip(items, values)]
