"""Every shipped example pipeline runs end to end on tiny-random (tiny settings, same stages and wiring)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from posttrain.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

# Per-field caps that keep each stage to seconds on CPU, applied wherever the field exists.
SMALL = {"max_steps": 2, "limit": 4, "max_new_tokens": 6, "max_tokens": 6, "num_samples": 2, "n": 2, "epochs": 1,
         "prompts_per_step": 2, "batch_size": 2, "generation_batch_size": 4, "eval_limit": 2}


def shrink(stage: dict) -> dict:
    settings = dict(stage.get("with") or {})
    for key, value in SMALL.items():
        if key in settings:
            settings[key] = value
    if settings.get("model") == "smollm2-135m":
        settings["model"] = "tiny-random"
    if "threshold" in settings:
        settings["threshold"] = 0.0  # tiny-random is never right; keep every best sample
    if stage["type"] == "best-of-n":
        settings["keep_truncated"] = True  # 6 new tokens never finish an answer
    if stage["type"] in ("sft", "dpo", "rm", "kto", "grpo", "rloo", "ppo"):
        settings["max_steps"] = 2
        settings["progress"] = False
    return {**stage, "with": settings}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_pipeline_runs_on_tiny_random(example, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name shipped data by repository-relative paths
    spec = yaml.safe_load(example.read_text())
    spec["defaults"] = {**(spec.get("defaults") or {}), "model": "tiny-random"}
    spec["stages"] = [shrink(stage) for stage in spec["stages"]]
    small = tmp_path / example.name
    small.write_text(yaml.safe_dump(spec))
    record = run_pipeline(str(small), output_dir=str(tmp_path / "run"), log=lambda message: None)
    assert [s["status"] for s in record["stages"]] == ["done"] * len(spec["stages"])
    assert (tmp_path / "run" / "pipeline.json").exists()
