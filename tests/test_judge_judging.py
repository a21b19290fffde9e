"""Pairwise/pointwise judging logic, position swap, summaries, and the reward-model judge."""
from __future__ import annotations

import pytest

from posttrain.judge import (
    LLMJudge,
    PairItem,
    PointItem,
    RewardJudge,
    combine_orders,
    format_question,
    load_template,
    pairwise_winner,
    summarize,
)
from posttrain.judge.judging import order_result
from posttrain.records import user_prompt
from posttrain.rollout.chat import CallableBackend, HttpChatBackend

PAIRWISE = load_template("pairwise", "pairwise")
POINTWISE = load_template("pointwise", "pointwise")


def shown_answers(messages):
    """(first shown, second shown) answers, read back from the rendered default template."""
    text = messages[-1]["content"]
    a = text.split("### Answer A\n")[1].split("\n\n### Answer B")[0]
    b = text.split("### Answer B\n")[1].split("\n\n")[0]
    return a, b


def fair_judge(messages):
    """Prefers whichever answer contains GOOD, wherever it is shown."""
    first, second = shown_answers(messages)
    return "[[A]]" if "GOOD" in first else "[[B]]" if "GOOD" in second else "[[C]]"


def first_position_judge(messages):
    return "I always like the first one. [[A]]"


PAIRS = [PairItem(user_prompt("q1"), "GOOD one", "bad one", extra={"id": 1}),
         PairItem(user_prompt("q2"), "bad two", "GOOD two", extra={"id": 2}),
         PairItem(user_prompt("q3"), "meh", "meh too", extra={"id": 3})]


def test_swap_keeps_consistent_verdicts():
    judgements = LLMJudge(CallableBackend(fair_judge), PAIRWISE, swap=True).judge_pairs(PAIRS)
    assert [j.winner for j in judgements] == ["A", "B", "tie"]
    assert all(j.extra["judge_consistent"] is True for j in judgements)
    # order "ba" shows B first, so the fair judge's positional verdict flips
    assert [o["verdict"] for o in judgements[0].extra["judge_orders"]] == ["A", "B"]
    assert [o["winner"] for o in judgements[0].extra["judge_orders"]] == ["A", "A"]
    assert judgements[0].extra["id"] == 1 and judgements[0].extra["judge_template"] == "pairwise"
    summary = summarize([j.to_dict() for j in judgements], "pairwise")
    assert summary["position_consistency"] == 1.0 and summary["swapped_pairs"] == 3
    assert (summary["A"], summary["B"], summary["tie"]) == (1, 1, 1)


def test_swap_turns_position_bias_into_ties():
    backend = CallableBackend(first_position_judge)
    judgements = LLMJudge(backend, PAIRWISE, swap=True).judge_pairs(PAIRS)
    assert [j.winner for j in judgements] == ["tie", "tie", "tie"]
    assert all(j.extra["judge_consistent"] is False for j in judgements)
    assert backend.stats.requests == 6  # two orders per pair
    summary = summarize([j.to_dict() for j in judgements], "pairwise")
    assert summary["position_consistency"] == 0.0
    assert summary["first_shown_win_rate"] == 1.0
    # without swap the same biased judge would say A every time
    assert [j.winner for j in LLMJudge(backend, PAIRWISE).judge_pairs(PAIRS)] == ["A", "A", "A"]


@pytest.mark.parametrize("replies, expected", [
    (["[[A]]", "[[B]]"], ("A", "ok", True)),     # order ba: positional B = original A
    (["[[A]]", "[[A]]"], ("tie", "ok", False)),
    (["[[C]]", "[[C]]"], ("tie", "ok", True)),
    (["[[A]]", "gibberish"], (None, "unparseable", None)),
    (["[[A]]", None], (None, "failed", None)),
    (["junk", None], (None, "failed", None)),
])
def test_combine_orders(replies, expected):
    assert combine_orders([order_result(replies[0], "ab"), order_result(replies[1], "ba")]) == expected


def test_unparseable_and_failed_are_counted_not_tied():
    replies = iter(["[[A]]", "no idea", RuntimeError("down")])

    def judge(messages):
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    judgements = LLMJudge(CallableBackend(judge), PAIRWISE).judge_pairs(PAIRS)
    assert [j.winner for j in judgements] == ["A", None, None]
    assert [j.extra["judge_status"] for j in judgements] == ["ok", "unparseable", "failed"]
    assert judgements[1].reasoning == "no idea" and judgements[2].reasoning is None
    summary = summarize([j.to_dict() for j in judgements], "pairwise")
    assert (summary["A"], summary["tie"], summary["unparseable"], summary["failed"]) == (1, 0, 1, 1)
    assert summary["position_consistency"] is None


def test_pointwise_scores_and_rubric():
    seen = []

    def judge(messages):
        seen.append(messages[-1]["content"])
        return {"short": "Score: 3/10", "long": "Solid. [[9]]", "odd": "Score: 42"}[messages[-1]["content"].split(
            "### Answer\n")[1].split("\n")[0]]

    items = [PointItem(user_prompt("q"), r, extra={"k": i}) for i, r in enumerate(["short", "long", "odd"])]
    judgements = LLMJudge(CallableBackend(judge), POINTWISE, rubric="Be strict.").judge_points(items)
    assert [j.score for j in judgements] == [3.0, 9.0, None]
    assert [j.extra["judge_status"] for j in judgements] == ["ok", "ok", "unparseable"]
    assert all("Be strict." in text for text in seen)
    summary = summarize([j.to_dict() for j in judgements], "pointwise")
    assert summary["mean_score"] == 6.0 and summary["unparseable"] == 1 and summary["score_counts"] == {"3.0": 1, "9.0": 1}


def test_judge_over_real_http_server(openai_stub):
    """The same swap logic end to end over HTTP, the stub reading the rendered prompt."""
    openai_stub.handler = lambda request: fair_judge(request["json"]["messages"])
    with HttpChatBackend(openai_stub.url, "stub-judge", concurrency=3) as backend:
        judgements = LLMJudge(backend, PAIRWISE, swap=True, max_tokens=64).judge_pairs(PAIRS)
    assert [j.winner for j in judgements] == ["A", "B", "tie"]
    assert len(openai_stub.requests) == 6 and judgements[0].judge == "stub-judge"
    assert all(r["json"]["max_tokens"] == 64 for r in openai_stub.requests)


def test_format_question():
    assert format_question(user_prompt("hello", system="be nice")) == "hello"
    dialogue = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
                {"role": "user", "content": "2+2?"}]
    assert format_question(dialogue) == "User: hi\n\nAssistant: hey\n\nUser: 2+2?"


def test_reward_judge_with_fake_scorer():
    scorer = lambda prompt, response: float(len(response))  # longer is "better"
    judge = RewardJudge(scorer, tie_threshold=1.0)
    items = [PairItem(user_prompt("q"), "a much longer answer", "short", extra={"id": 7}),
             PairItem(user_prompt("q"), "abc", "abcd"), PairItem(user_prompt("q"), "x", "xyz")]
    judgements = judge.judge_pairs(items)
    assert [j.winner for j in judgements] == ["A", "tie", "B"]  # |3 - 4| <= 1 is a tie
    assert judgements[0].extra["score_a"] == 20.0 and judgements[0].extra["score_b"] == 5.0
    assert judgements[0].extra["id"] == 7 and judge.stats.requests == 6
    points = judge.judge_points([PointItem(user_prompt("q"), "four")])
    assert points[0].score == 4.0
    batched = RewardJudge(score_batch=lambda prompts, responses: [len(r) for r in responses])
    assert [j.winner for j in batched.judge_pairs(items)] == ["A", "B", "B"]
    assert pairwise_winner(1.0, 1.0) == "tie" and pairwise_winner(0.2, 0.1, tie_threshold=0.05) == "A"
    with pytest.raises(ValueError, match="exactly one"):
        RewardJudge()
