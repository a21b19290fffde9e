"""Every shipped task's test split is held out: no problem of it is in the train split.

"Problem" is more than the prompt text: the same arithmetic expression, the same numbers to
sort, or the same code function in another wording is the same problem. The check is
posttrain's own contamination check (`posttrain data dedup --against`), run on the problem
keys (exact) and on the prompts (exact and near duplicates), so a regression in either the
generator or the check shows up here.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from posttrain.jsonl import read_jsonl
from posttrain.quality.dedup import contamination
from posttrain.rollout.rewards import TASKS, task_file

ROOT = Path(__file__).resolve().parent.parent


def _make_tasks():
    spec = importlib.util.spec_from_file_location("make_tasks", ROOT / "scripts" / "make_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(name: str, split: str) -> list[dict]:
    return [row for _, row in read_jsonl(task_file(name, split))]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_no_problem_of_the_test_split_is_in_the_train_split(name):
    problem_key = _make_tasks().problem_key
    train, test = _rows(name, "train"), _rows(name, "test")
    found = contamination([problem_key(r) for r in train], [problem_key(r) for r in test], near=False)
    assert found == {}, f"{len(found)} {name} test problems are in train, e.g. {problem_key(test[min(found)])}"
    # the dedup normaliser keeps arithmetic symbols, so "What is 5 + 1?" and "What is 5 - 1?" differ
    assert contamination([r["prompt"] for r in train], [r["prompt"] for r in test], near=False) == {}
    assert len({problem_key(r) for r in test}) == len(test)  # each held-out problem counted once


def test_the_check_finds_a_shared_expression_in_another_wording():
    problem_key = _make_tasks().problem_key
    train = [{"task": "arithmetic", "expression": "3 + 4", "prompt": "What is 3 + 4?"}]
    test = [{"task": "arithmetic", "expression": "8 - 1", "prompt": "Compute 8 - 1."},
            {"task": "arithmetic", "expression": "3 + 4", "prompt": "Compute 3 + 4."}]
    found = contamination([problem_key(r) for r in train], [problem_key(r) for r in test], near=False)
    assert found == {1: {"kind": "exact", "train_index": 0, "similarity": 1.0}}
    minus = [{"task": "arithmetic", "expression": "3 - 4", "prompt": "What is 3 - 4?"}]
    assert contamination([problem_key(r) for r in train], [problem_key(r) for r in minus], near=False) == {}
    sort_train = [{"task": "sorting", "answer": [1, 5, 9]}]
    sort_test = [{"task": "sorting", "answer": [1, 5, 9]}]  # shown as 9, 1, 5 vs 5, 9, 1: same problem
    assert set(contamination([problem_key(r) for r in sort_train], [problem_key(r) for r in sort_test],
                             near=False)) == {0}


def test_near_duplicate_prompts_of_held_out_problems_are_only_template_matches():
    """Near-duplicate prompts across the splits exist (one template), but never one that asks
    the same problem: every near match differs in its problem key."""
    problem_key = _make_tasks().problem_key
    for name in ("arithmetic", "sorting"):
        train, test = _rows(name, "train"), _rows(name, "test")
        found = contamination([r["prompt"] for r in train], [r["prompt"] for r in test], threshold=0.95)
        assert all(problem_key(test[j]) != problem_key(train[hit["train_index"]]) for j, hit in found.items())
