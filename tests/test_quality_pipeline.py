"""Quality commands on the output of `posttrain judge` (a scripted judge backend): the bias test
finds a judge that always prefers the first-shown answer, and a pointwise judge's scores feed
`data filter --score-field`."""
import json

import pytest

from posttrain.cli import main

judge = pytest.importorskip("posttrain.judge.command")
from posttrain.rollout.chat import CallableBackend  # noqa: E402


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bias_detects_first_position_judge(tmp_path, capsys):
    pairs = [{"prompt": f"Question {i}?", "response_a": f"answer a {i}", "response_b": f"answer b {i} longer",
              "model_a": "small", "model_b": "big"} for i in range(20)]
    source = _write(tmp_path / "pairs.jsonl", pairs)
    cfg = judge.JudgeConfig(input=source, mode="pairwise", swap=True)
    judge.run_judge(cfg, backend=CallableBackend(lambda messages: "[[A]]", name="first-picker"), log=lambda *a: None)
    judged = tmp_path / "pairs.judged.jsonl"
    rows = [json.loads(line) for line in judged.open()]
    assert all(r["winner"] == "tie" for r in rows)  # swap turns the disagreement into ties...
    out = tmp_path / "bias.json"
    assert main(["data", "bias", str(judged), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    position = report["position"]
    # ...but each order is a first-shown win: 40 of 40
    assert (position["n"], position["successes"]) == (40, 40) and position["p_value"] < 1e-10
    assert report["model"]["big"]["ties"] == 20
    capsys.readouterr()


def test_filter_on_pointwise_judge_scores(tmp_path, capsys):
    rows = [{"prompt": f"Explain idea {i}", "response": f"Idea {i} is explained here in a short sentence."}
            for i in range(6)]
    source = _write(tmp_path / "responses.jsonl", rows)
    cfg = judge.JudgeConfig(input=source, mode="pointwise")

    def scorer(messages):
        text = messages[-1]["content"]
        return "Score: 9" if any(f"idea {i}" in text.lower() for i in (0, 2, 4)) else "Score: 2"

    judge.run_judge(cfg, backend=CallableBackend(scorer, name="scorer"), log=lambda *a: None)
    judged = tmp_path / "responses.judged.jsonl"
    kept = tmp_path / "kept.jsonl"
    assert main(["data", "filter", str(judged), "--output", str(kept), "--score-field", "score",
                 "--min-score", "5"]) == 0
    prompts = [json.loads(line)["prompt"][0]["content"] for line in kept.open()]
    assert prompts == ["Explain idea 0", "Explain idea 2", "Explain idea 4"]
    capsys.readouterr()
