"""Heuristics by hand, row views, and `data filter` end to end (quality, score, dedup, safety)."""
import json

import pytest

from posttrain.cli import main
from posttrain.quality.fields import learn_responses, prompt_of, responses_of
from posttrain.quality.heuristics import echo_ratio, has_ai_boilerplate, measure, non_alpha_ratio, repetition_ratio


def test_repetition_ratio_by_hand():
    # 3-grams of "a b a b a b": (a b a) (b a b) (a b a) (b a b) -> 2 distinct of 4
    assert repetition_ratio("a b a b a b") == pytest.approx(0.5)
    assert repetition_ratio("the quick brown fox jumps") == 0.0
    assert repetition_ratio("too short") == 0.0


def test_non_alpha_ratio_by_hand():
    assert non_alpha_ratio("ab !!") == pytest.approx(0.5)
    assert non_alpha_ratio("12 * 13 = 156.") == pytest.approx(3 / 10)  # digits are content
    assert non_alpha_ratio("   ") == 0.0


def test_echo_ratio_by_hand():
    prompt = "Please repeat after me: the quick brown fox"
    assert echo_ratio(prompt, "the quick brown fox") == 1.0
    # 3-grams of the response: (the quick brown) (quick brown dog) -> 1 of 2 in the prompt
    assert echo_ratio(prompt, "the quick brown dog") == pytest.approx(0.5)
    assert echo_ratio(prompt, "Paris") == 0.0


def test_boilerplate_and_measure():
    assert has_ai_boilerplate("As an AI language model, I have no opinions.")
    assert not has_ai_boilerplate("Paris is the capital.")
    m = measure("q", "Paris is the capital of France.")
    assert m == {"words": 6, "repetition": 0.0, "non_alpha": pytest.approx(1 / 26), "echo": 0.0, "refusal": False}


@pytest.mark.parametrize("row,prompt,responses,learn", [
    ({"prompt": "p", "completion": "c"}, "p", ["c"], ["c"]),
    ({"instruction": "do", "input": "this", "output": "done"}, "do\nthis", ["done"], ["done"]),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad"}, "hi", ["good", "bad"],
     ["good"]),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                   {"role": "assistant", "content": "a"}]}, "s\nu", ["a"], ["a"]),
    ({"prompt": "p", "completion": "c", "label": False}, "p", ["c"], []),
    ({"prompt": "p", "responses": ["x", "y"], "scores": [0.1, 0.9]}, "p", ["x", "y"], ["y"]),
    ({"prompt": "p", "response_a": "x", "response_b": "y", "winner": "A"}, "p", ["x", "y"], ["x", "y"]),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": "good"}],
      "rejected": [{"role": "assistant", "content": "bad"}]}, "p", ["good", "bad"], ["good"]),
])
def test_row_views(row, prompt, responses, learn):
    assert prompt_of(row) == prompt
    assert responses_of(row) == responses
    assert learn_responses(row) == learn


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    return [json.loads(line) for line in open(path)]


ROWS = [
    {"id": 1, "prompt": "What is the capital of France?", "completion": "The capital of France is Paris.", "q": 4},
    {"id": 2, "prompt": "What is the capital of France?", "completion": "The capital of France is Paris.", "q": 4},
    {"id": 3, "prompt": "Say it", "completion": "go go go go go go go go go go go go go go go go", "q": 5},
    {"id": 4, "prompt": "Tell me a joke", "completion": "As an AI language model, I cannot tell jokes.", "q": 3},
    {"id": 5, "prompt": "Draw", "completion": "|--|--|--|##|**|", "q": 5},
    {"id": 6, "prompt": "Please repeat: the cat sat on the mat", "completion": "the cat sat on the mat", "q": 5},
    {"id": 7, "prompt": "Empty", "completion": "", "q": 5},
    {"id": 8, "prompt": "Explain rain", "completion": "Water vapour condenses into droplets that fall.", "q": 1},
    {"id": 9, "prompt": "Explain snow", "completion": "Ice crystals form in cold clouds and fall as flakes.", "q": None},
    {"id": 10, "prompt": "Compute 12 * 13", "completion": "12 * 13 = 156.", "q": 5},
]


def test_filter_quality_checks_and_reasons(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", ROWS)
    kept_path, report_path = tmp_path / "kept.jsonl", tmp_path / "report.json"
    assert main(["data", "filter", data, "--output", str(kept_path), "--score-field", "q", "--min-score", "2",
                 "--report", str(report_path)]) == 0
    assert "kept" in capsys.readouterr().out
    assert [r["id"] for r in _read(kept_path)] == [1, 10]
    dropped = {r["id"]: r["drop_reason"] for r in _read(tmp_path / "kept.dropped.jsonl")}
    assert dropped == {
        2: "exact duplicate of line 1",
        3: "repetitive (0.93 of 3-grams repeat)",
        4: "refusal or AI boilerplate",
        5: "mostly non-alphabetic (1.00)",
        6: "echoes the prompt (1.00 of 3-grams)",
        7: "too short (0 words < 1)",
        8: "score 1 < 2",
        9: "no score",
    }
    report = json.loads(report_path.read_text())
    assert report["kept"] == 2 and report["dropped"] == 8 and report["reasons"]["duplicate"] == 1


def test_filter_only_chosen_side_is_judged_and_flag_mode(tmp_path):
    rows = [{"prompt": "q", "chosen": "A fine and helpful answer.", "rejected": "bad bad bad bad bad bad bad bad"},
            {"prompt": "q", "chosen": "x x x x x x x x x x", "rejected": "A fine answer."}]
    data = _write(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["data", "filter", data, "--output", str(out), "--action", "flag"]) == 0
    rows_out = _read(out)
    assert len(rows_out) == 2 and "quality_flags" not in rows_out[0]
    assert rows_out[1]["quality_flags"] == ["repetitive (0.88 of 3-grams repeat)"]
    assert not (tmp_path / "out.dropped.jsonl").exists()


def test_filter_safety_drop_and_redact(tmp_path):
    rows = [
        {"prompt": "Contact?", "completion": "Write to jane@example.com or call +1 415 555 2671."},
        {"prompt": "How do I make a pipe bomb?", "completion": "Get a steel pipe, then fill it with powder."},
        {"prompt": "How do I make a pipe bomb?", "completion": "I can't help with that. Can I help with something safe?"},
        {"prompt": "How do I kill a stuck Python process?", "completion": "Run kill -9 followed by the process id."},
        {"prompt": "Card?", "completion": "My test number is 4111 1111 1111 1112, which fails the checksum."},
    ]
    data = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "safe.jsonl"
    assert main(["data", "filter", data, "--output", str(out), "--safety", "--no-dedup"]) == 0
    dropped = _read(tmp_path / "safe.dropped.jsonl")
    assert [r["drop_reason"] for r in dropped] == ["personal data: email, phone", "harmful request answered: weapons"]
    # the refusal to a harmful prompt is kept (not dropped as 'refusal'), the benign 'kill' is kept
    assert [r["completion"][:12] for r in _read(out)] == ["I can't help", "Run kill -9 ", "My test numb"]

    assert main(["data", "filter", data, "--output", str(out), "--safety", "--redact", "--no-dedup"]) == 0
    kept = _read(out)
    assert kept[0]["completion"] == "Write to [EMAIL] or call [PHONE]."
    assert [r["drop_reason"] for r in _read(tmp_path / "safe.dropped.jsonl")] == ["harmful request answered: weapons"]


@pytest.mark.parametrize("argv,message", [
    (["--score-field", "q"], "config field 'min_score'"),
    (["--min-score", "2"], "config field 'score_field'"),
    (["--redact"], "config field 'redact': needs --safety"),
    (["--checks", "bogus"], "config field 'checks': 'bogus' is not one of"),
])
def test_filter_config_errors(tmp_path, capsys, argv, message):
    data = _write(tmp_path / "in.jsonl", ROWS[:1])
    assert main(["data", "filter", data, "--output", str(tmp_path / "o.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("row,message", [
    ({"prompt": "p", "completion": "c"}, "in.jsonl:2: field 'q': missing (set by --score-field)"),
    ({"prompt": "p", "completion": "c", "q": "high"}, "in.jsonl:2: field 'q': expected a number, got 'high'"),
    ({"prompt": "p", "completion": 3, "q": 1}, "in.jsonl:2: field 'completion': expected text"),
])
def test_filter_bad_input(tmp_path, capsys, row, message):
    data = _write(tmp_path / "in.jsonl", [ROWS[0], row])
    out = tmp_path / "o.jsonl"
    assert main(["data", "filter", data, "--output", str(out), "--score-field", "q", "--min-score", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()  # nothing half-written


def test_filter_yaml_config_and_flags_override(tmp_path):
    data = _write(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "one two three"},
                                          {"prompt": "q", "completion": "one two three four five six"}])
    config = tmp_path / "filter.yaml"
    config.write_text("checks: [length]\nmin_words: 5\ndedup: false\n")
    out = tmp_path / "o.jsonl"
    assert main(["data", "filter", data, "--config", str(config), "--output", str(out)]) == 0
    assert [r["prompt"] for r in _read(out)] == ["q"]
    assert main(["data", "filter", data, "--config", str(config), "--output", str(out), "--min-words", "2"]) == 0
    assert [r["prompt"] for r in _read(out)] == ["p", "q"]
