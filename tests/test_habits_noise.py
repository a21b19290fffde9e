"""Output noise: generation does not print transformers' `past_key_values` FutureWarning, and a
failing reward's reason is one short line (rollout logs keep one per sample)."""
from __future__ import annotations

import json
import warnings

from posttrain.cli import main
from posttrain.rollout.verifiers import REASON_MAX_CHARS, Score


def test_generation_with_a_shared_prompt_cache_warns_nothing_about_past_key_values(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Tell me a story."}) + "\n")
    out = tmp_path / "gen.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # n > 1: the prompt is computed once and handed to generate as a cache (the warning's trigger).
        assert main(["generate", "--model", "tiny-random", "--prompts", str(prompts), "--n", "3",
                     "--max-new-tokens", "4", "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert [str(w.message) for w in caught if "past_key_values" in str(w.message)] == []


def test_a_long_failure_reason_becomes_one_short_line():
    traceback = "Traceback (most recent call last):\n" + "  File 'x.py', line 3, in f\n" * 40 + "ValueError: boom"
    reason = Score(0.0, traceback).reason
    assert "\n" not in reason and len(reason) == REASON_MAX_CHARS and reason.endswith("…")
    assert reason.startswith("Traceback (most recent call last): File 'x.py', line 3, in f File")
    assert Score(0.0, "expected 4, got 5").reason == "expected 4, got 5"
    assert Score(1.0).reason is None
