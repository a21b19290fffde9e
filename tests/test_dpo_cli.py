"""`posttrain dpo` on bad input: one line naming file, line and field, exit code 2; the drop
policies count what they drop and say so."""
from __future__ import annotations

import json

import pytest

from posttrain.cli import main

BASE = ["--model", "tiny-random", "--no-progress", "--batch-size", "2", "--max-steps", "1", "--max-length", "64"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def good(i):
    return {"prompt": f"question {i}", "chosen": f"YES {i}", "rejected": f"NO {i}"}


def run_cli(capsys, *args):
    code = main(["dpo", *args])
    return code, capsys.readouterr()


def one_line_error(capsys, tmp_path, rows, *extra):
    data = write(tmp_path / "bad.jsonl", rows)
    code, out = run_cli(capsys, "--data", data, "--output-dir", str(tmp_path / "run"), *BASE, *extra)
    assert code == 2
    assert out.err.count("\n") == 1 and "Traceback" not in out.err
    return out.err.strip()


def test_identical_chosen_and_rejected(capsys, tmp_path):
    err = one_line_error(capsys, tmp_path, [good(1), {"prompt": "q", "chosen": "same", "rejected": "same"}])
    assert err == f"posttrain dpo: error: {tmp_path}/bad.jsonl:2: field 'rejected': is identical to 'chosen'"


def test_empty_response(capsys, tmp_path):
    err = one_line_error(capsys, tmp_path, [good(1), good(2), {"prompt": "q", "chosen": "  ", "rejected": "no"}])
    assert err == f"posttrain dpo: error: {tmp_path}/bad.jsonl:3: field 'chosen': is empty"


def test_prompt_longer_than_max_length_under_the_error_policy(capsys, tmp_path):
    rows = [good(1), {"prompt": "x" * 200, "chosen": "a", "rejected": "b"}]
    err = one_line_error(capsys, tmp_path, rows, "--length-policy", "error")
    assert err.startswith(f"posttrain dpo: error: {tmp_path}/bad.jsonl:2: field 'prompt': example is ")
    assert "longer than max_length 64" in err


def test_pair_identical_after_truncation(capsys, tmp_path):
    # The responses differ only after the cut: nothing left to prefer.
    rows = [good(1), {"prompt": "q", "chosen": "y" * 100 + "A", "rejected": "y" * 100 + "B"}]
    err = one_line_error(capsys, tmp_path, rows, "--length-policy", "truncate")
    assert "bad.jsonl:2: field 'rejected': is the same as 'chosen' once cut to max_length 64" in err


def test_drop_policies_count_and_report(capsys, tmp_path):
    rows = [good(i) for i in range(4)] + [
        {"prompt": "q", "chosen": "same", "rejected": "same"},      # line 5: invalid
        {"prompt": "x" * 200, "chosen": "a", "rejected": "b"},      # line 6: too long
        {"prompt": "q", "chosen": "", "rejected": "b"},             # line 7: invalid
    ]
    data = write(tmp_path / "mixed.jsonl", rows)
    code, out = run_cli(capsys, "--data", data, "--output-dir", str(tmp_path / "run"), *BASE,
                        "--length-policy", "drop", "--invalid-rows", "drop")
    assert code == 0
    assert "7 rows -> 4 examples" in out.out and "1 dropped as too long, 2 dropped as invalid" in out.out
    assert f"dropped: {data}:5: field 'rejected': is identical to 'chosen'" in out.out
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())["train"]
    assert (report["rows"], report["examples"], report["dropped"], report["dropped_invalid"]) == (7, 4, 1, 2)
    assert report["invalid"][1].startswith(f"{data}:7: field 'chosen'")


@pytest.mark.parametrize("args, message", [
    (["--loss", "sigmoid", "hinge", "--loss-weights", "1"], "config field 'loss_weights': 1 weights for 2 losses"),
    (["--loss", "dpo"], "config field 'loss': 'dpo' is not one of sigmoid"),
    (["--reference", "adapter"], "config field 'reference': 'adapter' needs a PEFT adapter"),
    (["--prefix-sharing", "--attn-implementation", "flash_attention_2"], "config field 'attn_implementation'"),
])
def test_bad_options(capsys, tmp_path, args, message):
    data = write(tmp_path / "ok.jsonl", [good(i) for i in range(4)])
    code, out = run_cli(capsys, "--data", data, "--output-dir", str(tmp_path / "run"), *BASE, *args)
    assert code == 2 and out.err.count("\n") == 1
    assert message in out.err


def test_missing_data_file(capsys, tmp_path):
    code, out = run_cli(capsys, "--data", str(tmp_path / "nope.jsonl"), "--output-dir", str(tmp_path / "run"), *BASE)
    assert not (tmp_path / "run").exists()  # nothing written before the error
    assert code == 2 and "nope.jsonl" in out.err and out.err.count("\n") == 1
