"""LLM-as-judge: pairwise verdicts with position swap, pointwise rubric scores, reward-model judges.

    from posttrain.judge import LLMJudge, PairItem, load_template
    from posttrain.rollout.chat import HttpChatBackend

    with HttpChatBackend("http://localhost:8000/v1", "my-judge") as backend:
        judge = LLMJudge(backend, load_template("pairwise", "pairwise"), swap=True)
        [judgement] = judge.judge_pairs([PairItem(prompt, answer_a, answer_b)])

A judge talks to a model through a chat backend (anything with
`complete(conversations, *, max_tokens, temperature)`), from posttrain.rollout.chat:
`HttpChatBackend` (OpenAI-compatible servers), `LocalChatBackend` (a transformers
model), `CallableBackend` (a Python function). See docs/judge.md.
"""
from .judging import LLMJudge, PairItem, PointItem, combine_orders, format_question, summarize
from .parse import parse_pairwise, parse_score
from .reward_judge import RewardJudge, pairwise_winner
from .templates import JudgeTemplate, load_template, shipped_templates

__all__ = [
    "LLMJudge", "PairItem", "PointItem", "RewardJudge", "JudgeTemplate", "combine_orders", "format_question",
    "load_template", "pairwise_winner", "parse_pairwise", "parse_score", "shipped_templates", "summarize",
]
