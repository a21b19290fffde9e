"""Rejection sampling (posttrain best-of-n): selection, written rows, rounds with SFT / DPO."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import rl_toy
from posttrain.cli import main as cli
from posttrain.records import Prompt, user_prompt
from posttrain.rl.best_of_n import BestOfNConfig, build_round_data, run_best_of_n, select_best, select_threshold
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
TOY = str(Path(rl_toy.__file__).resolve())


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_selection_rules():
    assert select_best([0.1, 0.9, 0.5]) == [1]
    assert select_best([0.5, 0.5]) == [0]  # ties: the first
    assert select_best([0.1, 0.2], threshold=0.5) == []
    assert select_threshold([0.1, 0.9, 0.5], 0.5) == [1, 2]


def test_round_data_rows(tmp_path):
    prompts = [Prompt(prompt=user_prompt("p0"), extra={"answer": 1}), Prompt(prompt=user_prompt("p1"), extra={})]
    texts = [["a", "b", "c"], ["x", "x", "y"]]
    scores = [[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]]
    components = [[{"f": s} for s in row] for row in scores]
    cfg = BestOfNConfig(prompts="unused")
    data = build_round_data(prompts, texts, scores, components, cfg)
    assert data.sft == [
        {"answer": 1, "messages": user_prompt("p0") + [{"role": "assistant", "content": "b"}], "reward": 0.9},
        {"messages": user_prompt("p1") + [{"role": "assistant", "content": "x"}], "reward": 0.7}]
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in data.pairs] == [("b", "a", 0.9 - 0.1), ("x", "y", 0.7 - 0.2)]
    assert [s["selected"] for s in data.samples] == [False, True, False, True, False, False]
    assert data.summary["best_of_n_reward"] == pytest.approx((0.9 + 0.7) / 2)
    assert data.summary["mean_reward"] == pytest.approx(sum(scores[0] + scores[1]) / 6)

    kept = build_round_data(prompts, texts, scores, components, BestOfNConfig(prompts="u", select="threshold", threshold=0.5))
    # dedup: the second "x" is the same response to the same prompt
    assert [r["messages"][-1]["content"] for r in kept.sft] == ["b", "c", "x"]

    # A truncated response is never kept or chosen, but may be rejected; equal scores give no pair.
    finish = [["eos", "length", "eos"], ["eos", "eos", "eos"]]
    cut = build_round_data(prompts, texts, [[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]], components, cfg, finish)
    assert [r["messages"][-1]["content"] for r in cut.sft] == ["c", "x"]
    assert [(p["chosen"], p["rejected"]) for p in cut.pairs] == [("c", "a")]
    assert [s["finish_reason"] for s in cut.samples][:3] == ["eos", "length", "eos"]
    margin = build_round_data(prompts, texts, scores, components, BestOfNConfig(prompts="u", pair_min_margin=0.6))
    assert [p["chosen"] for p in margin.pairs] == ["b"]  # 0.9 - 0.1 > 0.6; 0.7 - 0.2 is not


def test_best_of_n_writes_the_best_sample_per_prompt(tmp_path):
    prompts = rl_toy.write_prompts(tmp_path, count=6)
    out = tmp_path / "bon"
    code = cli(["best-of-n", "--model", "tiny-random", "--prompts", str(prompts), "--reward", f"{TOY}:lowercase",
                "--n", "4", "--max-new-tokens", "10", "--output-dir", str(out), "--no-progress",
                "--keep-truncated"])  # tiny-random rarely stops before max_new_tokens
    assert code == 0
    samples, sft, pairs = (_lines(out / "round-1" / name) for name in ("samples.jsonl", "sft.jsonl", "pairs.jsonl"))
    assert len(samples) == 6 * 4 and len(sft) == 6
    for i in range(6):
        mine = [s for s in samples if s["id"] == i]
        best = max(s["reward"] for s in mine)
        row = next(r for r in sft if r["id"] == i)
        assert row["reward"] == best
        assert row["messages"][-1]["content"] in [s["response"] for s in mine if s["reward"] == best]
        assert row["messages"][0] == {"role": "user", "content": f"Say something {i}"}
        assert sum(s["selected"] for s in mine) == 1
    for pair in pairs:
        mine = [s["reward"] for s in samples if s["id"] == pair["id"]]
        assert (pair["chosen_reward"], pair["rejected_reward"]) == (max(mine), min(mine))
    assert not (out / "round-1" / "sft").exists()  # one round, nothing to train


@pytest.mark.parametrize("kind, recipe", [("sft", "posttrain.train.sft.train_sft"), ("dpo", "posttrain.train.dpo.train_dpo")])
def test_iterations_alternate_sampling_and_training(tmp_path, monkeypatch, kind, recipe):
    calls = []

    def fake_train(cfg):
        calls.append(cfg)
        return SimpleNamespace(final_dir="tiny-random")  # the "trained" model of the round

    module, name = recipe.rsplit(".", 1)
    monkeypatch.setattr(__import__(module, fromlist=[name]), name, fake_train)
    cfg = BestOfNConfig(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path, count=4)),
                        output_dir=str(tmp_path / "bon"), num_samples=3, max_new_tokens=8, iterations=2, train=kind,
                        train_learning_rate=1e-4, progress=False, keep_truncated=True)
    result = run_best_of_n(cfg, {"lowercase": rl_toy.lowercase})
    assert len(calls) == 2
    data_file = "sft.jsonl" if kind == "sft" else "pairs.jsonl"
    for k, call in enumerate(calls, start=1):
        data = call.data[0]  # sft and dpo both take a list of files
        assert data == str(tmp_path / "bon" / f"round-{k}" / data_file)
        assert call.output_dir == str(tmp_path / "bon" / f"round-{k}" / kind)
        assert call.learning_rate == 1e-4
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert json.loads((tmp_path / "bon" / "summary.json").read_text())["final_model"] == "tiny-random"


def test_real_sft_round_then_resume_reuses_it(tmp_path):
    prompts = str(rl_toy.write_prompts(tmp_path, count=4))
    cfg = BestOfNConfig(model="tiny-random", prompts=prompts, output_dir=str(tmp_path / "bon"), num_samples=2, max_new_tokens=8,
                        iterations=1, train="sft", train_batch_size=2, train_learning_rate=1e-3, progress=False,
                        eval_prompts=prompts, eval_limit=3, keep_truncated=True)
    first = run_best_of_n(cfg, {"lowercase": rl_toy.lowercase})
    model = Path(first["final_model"])
    assert model == tmp_path / "bon" / "round-1" / "sft" / "final" and (model / "config.json").is_file()
    assert len(_lines(tmp_path / "bon" / "round-1" / "eval_before.jsonl")) == 3
    final = _lines(tmp_path / "bon" / "eval_final.jsonl")
    assert sum(r["reward"] for r in final) / 3 == pytest.approx(first["eval_final"]["reward"])
    # Reuse means no file of the finished round is written again: record every file's mtime
    # and bytes, resume, and compare (a retrained round rewrites final/ and its metrics).
    round_dir = tmp_path / "bon" / "round-1"
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in round_dir.rglob("*") if path.is_file()}
    assert any(path.name == "model.safetensors" for path in before) and len(before) > 5
    cfg.resume = True
    again = run_best_of_n(cfg, {"lowercase": rl_toy.lowercase})
    assert again["final_model"] == first["final_model"]
    after = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in round_dir.rglob("*") if path.is_file()}
    assert after == before


def test_threshold_without_a_value_is_an_error(tmp_path, capsys):
    code = cli(["best-of-n", "--model", "tiny-random", "--prompts", str(rl_toy.write_prompts(tmp_path)),
                "--reward", f"{TOY}:lowercase", "--select", "threshold", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("posttrain best-of-n: error:") and "threshold" in err
    assert not (tmp_path / "x").exists()
