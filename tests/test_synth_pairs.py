"""`posttrain pairs`: each strategy on a hand-checked fixture, thresholds, determinism, bad input."""
from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.data import load_records
from posttrain.synth.pairs import PairsConfig, run_pairs

# P1: four models, a clear best (a), two 7s that tie with each other, a clear worst (d).
# P2: two responses with the same score (a tie at threshold 0). P3: a single response.
ROWS = [
    {"prompt": "P1", "response": "a9", "model": "a", "score": 9},
    {"prompt": "P1", "response": "b7", "model": "b", "score": 7},
    {"prompt": "P1", "response": "c7", "model": "c", "score": 7},
    {"prompt": "P1", "response": "d3", "model": "d", "score": 3},
    {"prompt": "P2", "response": "x5", "model": "a", "score": 5},
    {"prompt": "P2", "response": "y5", "model": "b", "score": 5},
    {"prompt": "P3", "response": "z1", "model": "a", "score": 1},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read(path):
    return [json.loads(line) for line in open(path)]


def run(tmp_path, rows=ROWS, **settings):
    source = write(tmp_path / "responses.jsonl", rows)
    cfg = PairsConfig(input=source, output=str(tmp_path / "pairs.jsonl"), **settings)
    summary = run_pairs(cfg)
    return read(cfg.output), summary


def as_tuples(rows):
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def test_all_pairs_skip_ties_and_count_short_prompts(tmp_path, capsys):
    rows, summary = run(tmp_path, strategy=["all"])
    # Sorted best first (ties keep input order): a9, b7, c7, d3. (b7, c7) and (x5, y5) are ties.
    assert as_tuples(rows) == [("P1", "a9", "b7"), ("P1", "a9", "c7"), ("P1", "a9", "d3"),
                               ("P1", "b7", "d3"), ("P1", "c7", "d3")]
    assert [r["margin"] for r in rows] == [2.0, 2.0, 6.0, 4.0, 4.0]
    assert rows[0] == {"prompt": "P1", "chosen": "a9", "rejected": "b7", "score_chosen": 9.0, "score_rejected": 7.0,
                       "model_chosen": "a", "model_rejected": "b", "margin": 2.0, "strategy": "all"}
    tally = summary["strategies"]["all"]
    assert tally["pairs"] == 5 and tally["ties"] == 2 and tally["prompts_without_pair"] == 1
    assert summary["prompts"] == 3 and summary["prompts_with_fewer_than_2_responses"] == 1
    assert "all: 5 pairs" in capsys.readouterr().out
    assert json.loads((tmp_path / "pairs.summary.json").read_text()) == summary


def test_min_margin_and_tie_threshold(tmp_path):
    rows, summary = run(tmp_path, strategy=["all"], min_margin=3.0)
    # gaps: a-b 2, a-c 2 (below 3), a-d 6, b-d 4, c-d 4, b-c 0 (tie)
    assert as_tuples(rows) == [("P1", "a9", "d3"), ("P1", "b7", "d3"), ("P1", "c7", "d3")]
    assert summary["strategies"]["all"]["below_margin"] == 2 and summary["strategies"]["all"]["ties"] == 2
    rows, summary = run(tmp_path, strategy=["all"], tie_threshold=2.0)
    # now a gap of 2 is a tie as well: only gaps 4 and 6 remain
    assert as_tuples(rows) == [("P1", "a9", "d3"), ("P1", "b7", "d3"), ("P1", "c7", "d3")]
    assert summary["strategies"]["all"]["ties"] == 4 and summary["strategies"]["all"]["below_margin"] == 0


def test_best_vs_worst(tmp_path):
    rows, summary = run(tmp_path, strategy=["best-vs-worst"])
    assert as_tuples(rows) == [("P1", "a9", "d3")]
    assert summary["strategies"]["best-vs-worst"] == {"pairs": 1, "ties": 1, "below_margin": 0, "identical": 0,
                                                      "unranked_model": 0, "prompts_without_pair": 1}


def test_best_vs_random_is_seeded_and_draws_only_clear_losers(tmp_path):
    drawn = set()
    for seed in range(12):
        first, _ = run(tmp_path, strategy=["best-vs-random"], seed=seed)
        again, _ = run(tmp_path, strategy=["best-vs-random"], seed=seed)
        assert first == again  # same seed, same pairs
        assert len(first) == 1 and first[0]["chosen"] == "a9"
        drawn.add(first[0]["rejected"])
    assert drawn == {"b7", "c7", "d3"}  # every other response of P1 gets drawn for some seed
    # With a margin of 3 only d3 beats the threshold, whatever the seed.
    rows, summary = run(tmp_path, strategy=["best-vs-random"], min_margin=3.0, seed=5)
    assert as_tuples(rows) == [("P1", "a9", "d3")]
    assert summary["strategies"]["best-vs-random"]["below_margin"] == 2


def test_best_vs_random_does_not_depend_on_other_prompts(tmp_path):
    full, _ = run(tmp_path, strategy=["best-vs-random"], seed=3)
    extra = [{"prompt": f"Q{i}", "response": f"r{i}{j}", "score": j} for i in range(5) for j in range(3)]
    mixed, _ = run(tmp_path, rows=extra + list(reversed(ROWS)), strategy=["best-vs-random"], seed=3)
    assert [r for r in mixed if r["prompt"] == "P1"] == full


def test_stronger_vs_weaker_needs_no_scores(tmp_path):
    unscored = [{k: v for k, v in r.items() if k != "score"} for r in ROWS]
    rows, summary = run(tmp_path, rows=unscored, strategy=["stronger-vs-weaker"], model_order=["a,b", "c"])
    assert as_tuples(rows) == [("P1", "a9", "b7"), ("P1", "a9", "c7"), ("P1", "b7", "c7"), ("P2", "x5", "y5")]
    assert rows[0] == {"prompt": "P1", "chosen": "a9", "rejected": "b7", "model_chosen": "a", "model_rejected": "b",
                       "strategy": "stronger-vs-weaker"}  # no scores -> no score or margin fields
    assert summary["strategies"]["stronger-vs-weaker"]["unranked_model"] == 1  # d is not in the order


def test_several_strategies_write_each_pair_once(tmp_path):
    rows, summary = run(tmp_path, strategy=["best-vs-worst", "all"])
    assert len(rows) == 5 and rows[0]["strategy"] == "best-vs-worst"
    assert summary["duplicates_across_strategies"] == 1
    assert summary["strategies"]["all"]["pairs"] == 5 and summary["pairs"] == 5


def test_ranked_rows_messages_prompts_and_judge_records(tmp_path):
    messages = [{"role": "user", "content": "R"}]
    rows_in = [
        {"prompt": messages, "responses": ["r0", "r1", "r2"], "ranking": [2, 0, 1], "models": ["m0", "m1", "m2"]},
        # pointwise judge records: the response is in response_a; a failed verdict has no score
        {"prompt": "J", "response_a": "good", "score": 8, "model": "m1", "judge_status": "ok"},
        {"prompt": "J", "response_a": "bad", "score": 2, "model": "m2", "judge_status": "ok"},
        {"prompt": "J", "response_a": "lost", "model": "m3", "judge_status": "failed"},
        {"prompt": "S", "responses": ["s0", "s1"], "scores": [0.1, 0.7]},
    ]
    rows, summary = run(tmp_path, rows=rows_in, strategy=["best-vs-worst"])
    # ranking [2, 0, 1]: r2 best (score 2), r0 (1), r1 worst (0)
    assert rows[0] == {"prompt": messages, "chosen": [{"role": "assistant", "content": "r2"}],
                       "rejected": [{"role": "assistant", "content": "r1"}], "score_chosen": 2.0,
                       "score_rejected": 0.0, "model_chosen": "m2", "model_rejected": "m1", "margin": 2.0,
                       "strategy": "best-vs-worst"}
    assert as_tuples(rows[1:]) == [("J", "good", "bad"), ("S", "s1", "s0")]
    assert rows[2]["margin"] == pytest.approx(0.6)
    assert summary["unscored_responses"] == 1 and summary["responses"] == 8


def test_output_loads_as_preference_records(tmp_path):
    rows_in = ROWS + [{"prompt": [{"role": "user", "content": "M"}], "response": t, "score": s}
                      for t, s in (("m-high", 2), ("m-low", 1))]
    run(tmp_path, rows=rows_in, strategy=["all"])
    records = load_records(tmp_path / "pairs.jsonl", kind="preference")
    assert [(r.chosen, r.rejected, r.margin) for r in records][-1] == ("m-high", "m-low", 1.0)
    assert records[0].prompt == [{"role": "user", "content": "P1"}] and records[0].extra["model_chosen"] == "a"


def test_cli_writes_atomically_named_outputs(tmp_path, capsys):
    source = write(tmp_path / "scored.jsonl", ROWS)
    assert main(["pairs", source, "--strategy", "best-vs-worst", "--seed", "1"]) == 0
    assert as_tuples(read(tmp_path / "scored.pairs.jsonl")) == [("P1", "a9", "d3")]
    assert json.loads((tmp_path / "scored.pairs.summary.json").read_text())["pairs"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("rows, args, message", [
    ([ROWS[0], {"response": "no prompt", "score": 1}], [], "responses.jsonl:2: field 'prompt': missing"),
    ([{"prompt": "P", "response": "r"}], [], "responses.jsonl:1: field 'score': missing"),
    ([{"prompt": "P", "response": "r", "reward": "high"}], ["--score-field", "reward"],
     "responses.jsonl:1: field 'reward': expected a finite number, got 'high'"),
    ([{"prompt": "P", "score": 1}], [], "responses.jsonl:1: field 'response': missing"),
    ([{"prompt": "P", "responses": ["a", "b"], "scores": [1]}], [], "responses.jsonl:1: field 'scores': expected"),
    ([{"prompt": "P", "responses": ["a", "b"], "ranking": [0, 0]}], [], "responses.jsonl:1: field 'ranking':"),
    ([{"prompt": 7, "response": "r", "score": 1}], [], "responses.jsonl:1: field 'prompt': expected text"),
    (ROWS, ["--strategy", "best-vs-nothing"], "config field 'strategy': 'best-vs-nothing' is not one of"),
    (ROWS, ["--strategy", "stronger-vs-weaker"], "config field 'model_order': stronger-vs-weaker needs"),
    (ROWS, ["--strategy", "stronger-vs-weaker", "--model-order", "x,y"], "no response comes from a model in"),
    (ROWS, ["--tie-threshold", "-1"], "config field 'tie_threshold': must be 0 or more"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, rows, args, message):
    source = write(tmp_path / "responses.jsonl", rows)
    assert main(["pairs", "--input", source, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posttrain pairs: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "responses.pairs.jsonl").exists()
