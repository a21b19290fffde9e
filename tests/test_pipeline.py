"""`posttrain run`: references between stages, caching, resume after a failure, bad pipeline files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main as cli_main
from posttrain.errors import ConfigError, PosttrainError
from posttrain.pipeline import load_pipeline, run_pipeline


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1", "completion": str(i + 1)}) + "\n" for i in range(16)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "2+1", "answer": "3"}\n{"prompt": "5+1", "answer": "6"}\n')
    return tmp_path, data, prompts


def write_pipeline(folder: Path, data: Path, prompts: Path, steps: int = 2, prompts_field: str | None = None) -> Path:
    text = f"""
name: tiny
output_dir: {folder / 'run'}
defaults: {{model: tiny-random, seed: 0}}
stages:
  - name: sft
    type: sft
    with: {{data: [{data}], max_steps: {steps}, batch_size: 4, progress: false}}
  - name: gen
    type: generate
    with: {{model: "${{sft.model}}", {prompts_field or 'prompts'}: {prompts}, max_new_tokens: 3}}
"""
    path = folder / "pipeline.yaml"
    path.write_text(text)
    return path


def test_stages_run_in_order_and_a_rerun_is_cached(files):
    folder, data, prompts = files
    pipeline = write_pipeline(folder, data, prompts)
    first = run_pipeline(str(pipeline), log=lambda m: None)
    assert [s["status"] for s in first["stages"]] == ["done", "done"]
    rows = [json.loads(l) for l in (folder / "run" / "gen" / "generations.jsonl").read_text().splitlines()]
    assert rows[0]["model"] == str((folder / "run" / "sft").resolve()) and rows[0]["answer"] == "3"
    second = run_pipeline(str(pipeline), log=lambda m: None)
    assert [s["cached"] for s in second["stages"]] == [True, True]
    assert json.loads((folder / "run" / "pipeline.json").read_text())["stages"][0]["hash"] == first["stages"][0]["hash"]


def test_changing_an_input_file_reruns_that_stage_and_the_ones_after(files):
    folder, data, prompts = files
    pipeline = write_pipeline(folder, data, prompts)
    run_pipeline(str(pipeline), log=lambda m: None)
    with open(prompts, "a") as f:
        f.write('{"prompt": "7+1"}\n')
    record = run_pipeline(str(pipeline), log=lambda m: None)
    assert [s["cached"] for s in record["stages"]] == [True, False]
    assert len((folder / "run" / "gen" / "generations.jsonl").read_text().splitlines()) == 3


def test_a_failed_stage_keeps_earlier_outputs_and_a_rerun_resumes_there(files, tmp_path):
    folder, data, prompts = files
    missing = tmp_path / "missing.jsonl"
    pipeline = write_pipeline(folder, data, missing)
    with pytest.raises(PosttrainError, match="stage 'gen' failed: .*missing.jsonl: file not found"):
        run_pipeline(str(pipeline), log=lambda m: None)
    sft_weights = next((folder / "run" / "sft" / "final").glob("*.safetensors"))
    before = sft_weights.stat().st_mtime_ns
    assert json.loads((folder / "run" / "gen" / "stage.json").read_text())["status"] == "failed"
    missing.write_text(prompts.read_text())
    record = run_pipeline(str(pipeline), log=lambda m: None)
    assert [s["cached"] for s in record["stages"]] == [True, False]
    assert sft_weights.stat().st_mtime_ns == before


def test_bad_pipeline_files_name_the_problem(files, tmp_path, capsys):
    folder, data, prompts = files
    bad_ref = tmp_path / "bad_ref.yaml"
    bad_ref.write_text("stages:\n  - {name: a, type: generate, with: {prompts: '${later.generations}'}}\n")
    with pytest.raises(PosttrainError, match="stage 'a' refers to .*later.*which is not an earlier stage"):
        load_pipeline(str(bad_ref))
    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text("stages:\n  - {name: a, type: train}\n")
    with pytest.raises(ConfigError, match="unknown stage type 'train'"):
        load_pipeline(str(bad_type))
    bad_field = write_pipeline(folder, data, prompts, prompts_field="promts")
    assert cli_main(["run", str(bad_field)]) == 2
    err = capsys.readouterr().err
    assert "stage 'gen'" in err and "config field 'promts': unknown field" in err and len(err.strip().splitlines()) == 1
