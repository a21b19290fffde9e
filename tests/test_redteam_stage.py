"""The `safety` pipeline stage on tiny-random: red-team -> pairs -> DPO -> red-team, and its report."""
from __future__ import annotations

import json

import pytest

from posttrain.errors import ConfigError
from posttrain.pipeline import load_pipeline, resolved_settings, run_pipeline
from posttrain.report.html import render_report
from posttrain.safety.stage import SafetyStageConfig, dpo_config

PIPELINE = """
name: safety-tiny
stages:
  - name: safety
    type: safety
    with:
      model: tiny-random
      families: [override, roleplay]
      limit: 4
      benign_limit: 2
      max_new_tokens: 4
      max_steps: 2
      batch_size: 2
      learning_rate: 0.001
      dpo: {eval_fraction: 0.0, save_every: 0}
  - name: probe
    type: redteam
    with: {target: "${safety.model}", families: [override], limit: 1, include_benign: false, max_new_tokens: 4}
"""


def test_safety_stage_runs_in_a_pipeline_and_reports_before_after(tmp_path):
    path = tmp_path / "safety.yaml"
    path.write_text(PIPELINE)
    record = run_pipeline(str(path), str(tmp_path / "run"), log=lambda text: None)
    assert [s["status"] for s in record["stages"]] == ["done", "done"]
    stage = tmp_path / "run" / "safety"
    summary = json.loads((stage / "safety.json").read_text())
    assert summary["dpo"]["steps"] == 2
    assert summary["pairs"]["pairs"] > 0 and (stage / "redteam_train" / "pairs.jsonl").is_file()
    before, after = summary["before"], summary["after"]
    assert before["split"] == after["split"] == "eval" and before["suite"] == after["suite"]
    train_topics = {json.loads(l)["topic"] for l in (stage / "redteam_train" / "transcript.jsonl").read_text().splitlines()}
    eval_topics = {json.loads(l)["topic"] for l in (stage / "before" / "transcript.jsonl").read_text().splitlines()}
    assert train_topics and eval_topics and not train_topics & eval_topics  # measured on held-out topics
    assert summary["comparison"]["same_suite"] is True
    assert "change" in summary["comparison"]["attack_success"]["all"]
    assert (stage / "dpo" / "final").is_dir()
    assert after["target"].endswith("dpo")
    page = render_report(tmp_path / "run")
    assert "<h2>Safety</h2>" in page and "safety/before" in page and "change safety/after − safety/before" in page


def test_stage_rejects_bad_dpo_options_before_running(tmp_path):
    with pytest.raises(ConfigError, match="unknown DPO option 'learning_rat'"):
        dpo_config(SafetyStageConfig(dpo={"learning_rat": 1.0}), "pairs.jsonl", "out")
    with pytest.raises(ConfigError, match="'data' is set by the safety stage"):
        dpo_config(SafetyStageConfig(dpo={"data": "x"}), "pairs.jsonl", "out")
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - {name: s, type: safety, with: {limt: 3}}\n")
    with pytest.raises(ConfigError, match="limt"):
        resolved_settings(load_pipeline(str(path)))
