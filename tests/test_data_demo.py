"""The shipped demo data: reproducible, consistent between shapes, correct, and held-out prompts unseen."""
from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.data.formats import load_records
from posttrain.data.resources import DATA_DIR, demo_data_path

ROOT = Path(__file__).resolve().parent.parent


def test_script_regenerates_identical_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    names = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert names == sorted(p.name for p in DATA_DIR.glob("*.jsonl"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path, DATA_DIR, names, shallow=False)
    assert mismatch == [] and errors == []


def test_alpaca_and_chat_files_hold_the_same_examples():
    alpaca = load_records(demo_data_path("instruct_alpaca.jsonl"), kind="sft")
    chat = load_records(demo_data_path("instruct_chat.jsonl"), kind="sft")
    assert len(alpaca) == len(chat) >= 300
    assert [a.messages for a in alpaca] == [c.messages for c in chat]
    assert sum(1 for a in alpaca if a.extra["input"]) > 30  # the input field is really used


def test_every_answer_is_the_json_format_and_arithmetic_is_right():
    checked = 0
    for record in load_records(demo_data_path("instruct_chat.jsonl"), kind="sft"):
        question, reply = record.messages[0]["content"], record.messages[1]["content"]
        answer = json.loads(reply)
        assert list(answer) == ["answer", "reason"] and all(isinstance(v, str) and v for v in answer.values())
        assert len(question) + len(reply) < 300  # short: well under 120 tokens with any real tokenizer
        numbers = [int(n) for n in re.findall(r"\d+", question)]
        if re.search(r"\bplus\b|\+|^Add", question):
            assert int(answer["answer"]) == sum(numbers)
            checked += 1
        elif re.search(r"\bminus\b| - ", question):
            assert int(answer["answer"]) == numbers[0] - numbers[1]
            checked += 1
        elif question.startswith("Subtract"):
            assert int(answer["answer"]) == numbers[1] - numbers[0]
            checked += 1
        elif re.search(r"\btimes\b|multiplied| x ", question):
            assert int(answer["answer"]) == numbers[0] * numbers[1]
            checked += 1
    assert checked > 50


def test_heldout_prompts_are_not_in_training():
    from posttrain.data.prompts import load_prompts

    prompts = load_prompts(demo_data_path("instruct_heldout.jsonl"))
    assert len(prompts) == 20 and all(p.extra["answer"] for p in prompts)
    training = {r.messages[0]["content"] for r in load_records(demo_data_path("instruct_chat.jsonl"))}
    assert not {p.prompt[0]["content"] for p in prompts} & training
    assert len({p.extra["answer"] for p in prompts}) == 20


@pytest.mark.parametrize("name,kind,count", [
    ("sample_prompt_completion.jsonl", "sft", 40),
    ("sample_preference.jsonl", "preference", 120),
    ("sample_preference_chat.jsonl", "preference", 12),
    ("sample_ranked.jsonl", "ranked", 40),
    ("sample_unpaired.jsonl", "unpaired", 80),
])
def test_sample_files_load_as_their_kind(name, kind, count):
    records = load_records(demo_data_path(name), kind=kind)
    assert len(records) == count


def test_ranked_samples_put_the_json_answer_first():
    for record in load_records(demo_data_path("sample_ranked.jsonl"), kind="ranked"):
        best = record.responses[record.order()[0]]
        assert json.loads(best)["reason"] != "This is my best guess."


def test_unknown_demo_file_lists_the_files():
    with pytest.raises(FileNotFoundError, match="instruct_chat.jsonl"):
        demo_data_path("nope.jsonl")
