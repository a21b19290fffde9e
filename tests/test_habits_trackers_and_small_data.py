"""Trackers and tiny training sets, as TRL users expect them:

- `--report-to tensorboard` writes event files (after `pip install 'posttrain[tracking]'`);
- a tracker that is not installed is one line, before any data or model is loaded, with
  nothing written;
- a training set smaller than one global batch trains, with one warning line (with packing,
  in packs and rows).
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from posttrain.cli import main


def chat_file(tmp_path, rows=8):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(rows)))
    return str(data)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="pip install 'posttrain[tracking]'")
def test_report_to_tensorboard_writes_events(tmp_path):
    out = tmp_path / "run"
    assert main(["sft", "--model", "tiny-random", "--data", chat_file(tmp_path), "--output-dir", str(out),
                 "--batch-size", "4", "--max-steps", "2", "--report-to", "tensorboard", "--no-progress"]) == 0
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_a_missing_tracker_is_reported_before_anything_is_loaded(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real_find_spec(name, *a))
    out = tmp_path / "run"
    # The data file does not exist either: the tracker is checked first, when the command line is read.
    assert main(["sft", "--data", str(tmp_path / "missing.jsonl"), "--output-dir", str(out),
                 "--report-to", "tensorboard"]) == 2
    assert capsys.readouterr().err == ("posttrain sft: error: config field 'report_to': tensorboard is not installed "
                                       "(pip install 'posttrain[tracking]')\n")
    assert not out.exists()


def test_a_training_set_smaller_than_a_batch_trains_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sft", "--model", "tiny-random", "--data", chat_file(tmp_path, rows=3), "--output-dir", str(out),
                 "--batch-size", "8", "--max-steps", "2", "--no-progress"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")]
    assert warnings == ["WARNING: the training set (3 examples) is smaller than one global batch (8 x 1 accumulation "
                        "x 1 processes = 8); each step uses 3 of them (batch size 3 x 1 accumulation)"]
    assert (out / "final" / "config.json").is_file()


def test_with_packing_the_warning_counts_packs_and_rows(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sft", "--model", "tiny-random", "--data", chat_file(tmp_path, rows=6), "--output-dir", str(out),
                 "--batch-size", "4", "--max-steps", "1", "--packing", "--max-length", "64", "--no-progress"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: the training set (")
    assert " packs holding 6 rows) is smaller than one global batch (4 x 1 accumulation x 1 processes = 4)" in warnings[0]
