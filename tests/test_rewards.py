"""Reward plumbing: loading user functions, built-ins, weighted sums, batch scoring, shipped tasks."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posttrain.errors import PosttrainError
from posttrain.rollout.rewards import (
    BUILTIN_REWARDS,
    TASKS,
    Score,
    load_reward_function,
    resolve_reward,
    score_batch,
    task_file,
    weighted_sum,
)
from posttrain.rollout.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    source = textwrap.dedent("""
        def brevity(prompt, response, **extra):
            return 1.0 if len(response) <= extra.get("max_chars", 10) else 0.0

        def needs_answer_only(prompt, response, answer):
            return float(response.strip() == str(answer))

        def broken(prompt, response, **extra):
            raise ValueError("oops")

        def not_a_number(prompt, response, **extra):
            return "high"

        NOT_CALLABLE = 3
    """)
    (tmp_path / "my_rewards.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_load_reward_function_from_module_and_file(user_module):
    assert load_reward_function("my_rewards:brevity")("p", "short") == 1.0
    from_file = load_reward_function(f"{user_module / 'my_rewards.py'}:brevity")
    assert from_file("p", "a much longer response") == 0.0


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "reward function 'no_colon' must look like 'module:function'"),
    ("missing_module_xyz:f", "reward function 'missing_module_xyz:f': cannot import 'missing_module_xyz': "
                             "No module named 'missing_module_xyz'"),
    ("my_rewards:nope", "reward function 'my_rewards:nope': 'my_rewards' has no attribute 'nope'"),
    ("my_rewards:NOT_CALLABLE", "reward function 'my_rewards:NOT_CALLABLE': 'NOT_CALLABLE' is not callable"),
    ("/no/such/file.py:f", "reward function '/no/such/file.py:f': file '/no/such/file.py' not found"),
])
def test_load_reward_function_errors_are_one_line(user_module, spec, message):
    with pytest.raises(PosttrainError) as info:
        load_reward_function(spec)
    assert str(info.value) == message and "\n" not in str(info.value)


def test_resolve_reward():
    assert resolve_reward("math") is BUILTIN_REWARDS["math"]
    assert set(BUILTIN_REWARDS) == {"math", "exact", "regex", "json_schema", "code", "sort", "answer_format",
                                    "math_lenient", "sort_lenient", "answer_format_lenient"}
    fn = lambda prompt, response: 1.0  # noqa: E731
    assert resolve_reward(fn) is fn
    with pytest.raises(PosttrainError, match=r"unknown reward 'maths' \(built-ins: answer_format, answer_format_lenient, code, exact"):
        resolve_reward("maths")


def test_weighted_sum_combines_values_and_reasons():
    reward = weighted_sum({"math": 1.0, "answer_format": 0.25})
    assert reward("q", "Answer: 12", answer=12) == 1.25
    low = reward("q", "it is 13", answer=12)
    assert low == 0.0 and low.reason == "math: no 'Answer: ...' line; answer_format: no 'Answer: ...' line"
    mixed = reward("q", "Answer: 13", answer=12)
    assert mixed == 0.25 and mixed.reason == "math: expected 12, got 13"
    with pytest.raises(PosttrainError, match="at least one"):
        weighted_sum({})


def test_score_batch_per_function_total_reasons_and_timing(user_module):
    rows = [
        {"prompt": "What is 2+2?", "response": "Answer: 4", "answer": 4, "max_chars": 20},
        {"prompt": [{"role": "user", "content": "What is 3+3?"}], "response": "I believe it is\nAnswer: 7", "answer": 6},
    ]
    result = score_batch({"correct": "math", "short": "my_rewards:brevity"}, rows, weights={"short": 0.5})
    assert result.scores == {"correct": [1.0, 0.0], "short": [1.0, 0.0]}
    assert result.total == [1.5, 0.0]
    assert result.reasons["correct"] == [None, "expected 6, got 7"]
    assert set(result.seconds) == {"correct", "short"} and all(s >= 0 for s in result.seconds.values())
    metrics = result.metrics()
    assert metrics["reward/total"] == 0.75 and metrics["reward/correct"] == 0.5
    # a list of specs names each function by its spec
    assert score_batch(["math"], rows).scores == {"math": [1.0, 0.0]}


def test_score_batch_passes_only_accepted_fields(user_module):
    rows = [{"prompt": "p", "response": "5", "answer": 5, "unrelated": "x"}]
    assert score_batch({"f": "my_rewards:needs_answer_only"}, rows).total == [1.0]


def test_score_batch_errors_name_the_function_and_row(user_module):
    rows = [{"prompt": "p", "response": "r"}]
    with pytest.raises(PosttrainError, match="reward function 'b' failed on row 0: ValueError: oops"):
        score_batch({"b": "my_rewards:broken"}, rows)
    with pytest.raises(PosttrainError, match="reward function 'n' returned 'high' for row 0; expected a finite number"):
        score_batch({"n": "my_rewards:not_a_number"}, rows)
    with pytest.raises(PosttrainError, match="row 0: no 'response' field"):
        score_batch(["math"], [{"prompt": "p", "answer": 1}])
    with pytest.raises(PosttrainError, match="weights name unknown reward functions: typo"):
        score_batch(["math"], rows, weights={"typo": 1.0})
    with pytest.raises(PosttrainError, match="the 'math' reward needs a 'answer' field"):
        score_batch(["math"], rows)


def test_score_batch_uses_the_concurrent_code_path():
    rows = [{"prompt": "p", "response": f"```python\ndef f():\n    return {v}\n```", "tests": ["assert f() == 1"]}
            for v in (1, 2, 1)]
    result = score_batch({"code": "code"}, rows)
    assert result.scores["code"] == [1.0, 0.0, 1.0]
    assert result.reasons["code"][1] == "1 of 1 tests failed; first: assert f() == 1: expected 1, got 2"
    combined = score_batch({"both": weighted_sum({"code": 1.0, "answer_format": 1.0})}, rows)
    assert combined.scores["both"] == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------------- shipped tasks

def read(name, split):
    return [json.loads(line) for line in task_file(name, split).read_text().splitlines()]


def fields(row):
    return {k: v for k, v in row.items() if k != "prompt"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shipped_tasks_have_disjoint_splits_and_verifier_fields(name):
    train, test = read(name, "train"), read(name, "test")
    assert train and test
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len({r["id"] for r in train + test}) == len(train) + len(test)
    field = "tests" if name == "code" else "answer"
    assert all(r["task"] == name and field in r for r in train + test)


def test_shipped_arithmetic_and_sorting_answers_are_right_and_verifiable():
    for row in read("arithmetic", "test"):
        assert row["expression"] in row["prompt"]
        assert eval(row["expression"]) == row["answer"]  # noqa: S307 - our own shipped digits
        assert BUILTIN_REWARDS["math"](row["prompt"], f"Answer: {row['answer']}", **fields(row)) == 1.0
        assert BUILTIN_REWARDS["math"](row["prompt"], f"Answer: {row['answer'] + 1}", **fields(row)) == 0.0
    for row in read("sorting", "test"):
        shown = ", ".join(map(str, row["numbers"]))
        assert shown in row["prompt"] and sorted(row["numbers"]) == row["answer"]
        good = "Answer: " + ", ".join(map(str, row["answer"]))
        assert BUILTIN_REWARDS["sort"](row["prompt"], good, **fields(row)) == 1.0
        assert BUILTIN_REWARDS["sort"](row["prompt"], "Answer: " + shown, **fields(row)) == float(shown == good[8:])


def test_shipped_code_problems_are_solvable_and_not_trivially_passed():
    rows = read("code", "train") + read("code", "test")
    box = Sandbox()
    good = box.run_many([(r["solution"], r["tests"]) for r in rows], max_workers=4)
    assert all(r.passed for r in good), [r.reason for r in good if not r.passed]
    empty = box.run_many([("def unrelated():\n    return None", r["tests"]) for r in rows], max_workers=4)
    assert not any(r.passed for r in empty)


def test_make_tasks_is_deterministic_and_matches_the_shipped_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tasks.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for name in TASKS:
        for split in ("train", "test"):
            assert (tmp_path / f"{name}_{split}.jsonl").read_bytes() == task_file(name, split).read_bytes()


def test_task_file_errors():
    with pytest.raises(PosttrainError, match=r"unknown task 'chess' \(shipped tasks: arithmetic, code, sorting\)"):
        task_file("chess")
    with pytest.raises(PosttrainError, match="unknown split 'dev'"):
        task_file("sorting", "dev")


def test_score_type_is_exported():
    assert Score(1.0) == 1.0
