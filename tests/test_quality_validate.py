"""`data validate`: completeness, consistency, diversity and balance on hand-built files."""
import json

import pytest

from posttrain.cli import main
from posttrain.quality.validate import balance, completeness, consistency, distinct_n, item_outcome


def _rows(items):
    return [(i + 1, row) for i, row in enumerate(items)]


def test_distinct_n_by_hand():
    # unigrams: a b a c | a -> 5 total, 3 distinct; bigrams: (a b)(b a)(a c) -> 3 of 3
    assert distinct_n(["a b a c", "a"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a c", "a"], 2) == pytest.approx(1.0)
    assert distinct_n([""], 1) is None


def test_completeness_counts_missing_and_empty():
    rows = _rows([{"prompt": "p", "chosen": "c", "rejected": "r", "meta": {}},
                  {"prompt": "  ", "chosen": "", "rejected": "r"},
                  {"prompt": "p", "chosen": "c"}])
    result = completeness(rows)
    assert result["fields"]["meta"] == {"present": 1, "missing": 2, "empty": 1}
    assert result["fields"]["rejected"] == {"present": 2, "missing": 1, "empty": 0}
    assert result["fields"]["prompt"]["empty"] == 1
    assert result["lines_without_prompt"] == [2] and result["lines_with_empty_response"] == [2]


def test_consistency_detects_conflicts_across_shapes():
    rows = _rows([
        {"prompt": "q1", "chosen": "x", "rejected": "y"},
        {"prompt": "Q1!", "chosen": "y", "rejected": "x"},                       # flipped: conflict
        {"prompt": "q2", "response_a": "x", "response_b": "y", "winner": "A"},
        {"prompt": "q2", "response_a": "y", "response_b": "x", "winner": "B"},   # same preference, swapped order
        {"prompt": "q3", "response_a": "x", "response_b": "y", "winner": "tie"},
        {"prompt": "q3", "response_a": "x", "response_b": "y", "winner": "A"},   # tie vs winner: conflict
        {"prompt": "q4", "completion": "z", "label": True},
        {"prompt": "q4", "completion": "z", "label": True},                      # identical row, consistent
        {"prompt": "q5", "response_a": "x", "response_b": "y", "winner": "A", "annotator": "u"},
        {"prompt": "q5", "response_a": "x", "response_b": "y", "winner": "B", "annotator": "v"},  # 2 annotators: ok
        {"prompt": "q6", "completion": "no label"},
    ])
    result = consistency(rows)
    assert result["conflicting_items"] == 2
    assert [c["lines"] for c in result["conflicts"]] == [[1, 2], [5, 6]]
    assert result["repeated_items"] == 4 and result["identical_rows"] == 1
    assert item_outcome({"prompt": "q", "completion": "c"}) is None


def test_balance_labels_positions_and_lengths():
    rows = _rows([
        {"prompt": "one two", "response_a": "a a a", "response_b": "b", "winner": "A", "swapped": False},
        {"prompt": "one", "response_a": "a", "response_b": "b b", "winner": "A", "swapped": True},
        {"prompt": "one", "response_a": "a", "response_b": "b", "winner": "tie", "first": "B"},
        {"prompt": "x", "chosen": "long long answer", "rejected": "short"},
    ])
    result = balance(rows)
    assert result["labels"] == {"A": 2, "tie": 1}
    assert result["shown_first"] == {"A": 1, "B": 2}
    assert result["prompt_words"]["max"] == 2 and result["prompt_words"]["mean"] == pytest.approx(1.25)
    # preferred longer: row 1 yes, row 2 no (a beat b b), row 4 yes -> 2 of 3
    assert result["preferred_is_longer"] == pytest.approx(2 / 3)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_table_json_and_strict(tmp_path, capsys):
    rows = [{"prompt": f"Explain topic number {i} in simple words for a curious ten year old child", "chosen": f"Answer {i}", "rejected": "no"}
            for i in range(6)]
    rows += [{"prompt": "Explain topic number 1 in simple words for a curious ten year old child", "chosen": "no", "rejected": "Answer 1"}]
    data = _write(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "report.json"
    assert main(["data", "validate", data, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "completeness" in printed and "distinct-2" in printed and "items with conflicting labels" in printed
    report = json.loads(out.read_text())
    assert report["consistency"]["conflicting_items"] == 1
    assert report["diversity"]["prompts"]["unique"] == 6
    assert report["diversity"]["near_duplicate_prompt_pairs"] > 0  # "topic number 1" vs "topic number 2" ...
    assert report["balance"]["preferred_is_longer"] is not None
    assert main(["data", "validate", data, "--strict"]) == 1
    assert "problem: 1 items labelled inconsistently" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    data = _write(tmp_path / "bad.jsonl", [{"prompt": "p", "response_a": "x", "response_b": "y", "winner": "left"}])
    assert main(["data", "validate", data]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1: field 'winner': expected 'A', 'B' or 'tie', got 'left'" in err and err.count("\n") == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["data", "validate", str(empty)]) == 2
    assert "empty.jsonl" in capsys.readouterr().err
