"""`posttrain data check`: the report on good files, and exit 2 with one line (no traceback) on bad ones."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data_files import data_check, write_jsonl

GOOD = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]},
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a colour.", "output": "Blue"}]


def test_report_counts_shapes_and_lengths(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD)
    code, out, err = data_check(capsys, path)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{path}: 3 rows, all valid"
    assert lines[1] == "  shapes: alpaca 2, messages 1"
    assert lines[2] == "  kinds: sft 3"
    # chars = prompt + response: "Hi"+"Hello there" = 13, "Add.\n\n2 and 3"+"5" = 14, "Name a colour."+"Blue" = 18
    assert lines[3] == "  characters (prompt + longest response): min 13  mean 15.0  p50 14  p95 18  max 18"


def test_report_tokens_with_tokenizer_and_max_length(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD[:1])
    code, out, _ = data_check(capsys, path, "--tokenizer", "tiny-random", "--template", "basic", "--max-length", "10")
    assert code == 0
    # basic template, byte tokenizer: "Hi\n" (3) + "Hello there<|im_end|>" (11 + 1) = 15 tokens
    assert "  tokens (tiny-random, template basic): min 15  mean 15.0  p50 15  p95 15  max 15" in out
    assert "  over max_length 10: 1 of 1" in out


def test_kind_filter_and_prompt_files(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2+2?", "answer": "4"}])
    code, out, _ = data_check(capsys, path)
    assert code == 0 and "shapes: prompt 1" in out and "kinds: prompt 1" in out


# --- bad input: exit 2, one line, no traceback --------------------------------------------------


def bad(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


CASES = {
    "malformed JSON line": ("d.jsonl", json.dumps(GOOD[0]) + '\n{"messages": [\n', [], "{path}:2: malformed JSON: "),
    "missing field": ("d.jsonl", json.dumps({"instruction": "Add."}) + "\n", [], "{path}:1: field 'output': missing"),
    "empty field": ("d.jsonl", json.dumps({"prompt": "", "completion": "x"}) + "\n", [], "{path}:1: field 'prompt': is empty"),
    "wrong type": ("d.jsonl", json.dumps({"prompt": "q", "completion": "a", "label": "maybe"}) + "\n", [],
                   "{path}:1: field 'label': expected true or false, got 'maybe'"),
    "unknown shape": ("d.jsonl", json.dumps({"body": "x"}) + "\n", [], "{path}:1: unknown shape (fields: body); known shapes: "),
    "empty file": ("d.jsonl", "", [], "{path}: file is empty (no rows)"),
    "unreadable file": ("d.jsonl", b"\x80\x81\x82\n", [], "{path}:1: not valid UTF-8 (byte 0x80 at byte 1 of the line)"),
    "wrong kind": ("d.jsonl", json.dumps(GOOD[0]) + "\n", ["--kind", "preference"],
                   "{path}:1: row has the messages shape (sft data), but preference data is needed: "),
    "over-long under the error policy": (
        "d.jsonl", json.dumps(GOOD[0]) + "\n", ["--tokenizer", "tiny-random", "--template", "basic", "--max-length", "10",
                                                "--length-policy", "error"],
        "{path}:1: field 'messages': example is 15 tokens, longer than max_length 10 (use the 'truncate' or 'drop' "
        "length policy, or raise max_length)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    name, text, flags, expected = CASES[case]
    path = bad(tmp_path, name, text)
    code, out, err = data_check(capsys, path, *flags)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("posttrain data check: error: " + expected.format(path=path))


def test_missing_file_exits_2(tmp_path, capsys):
    code, _, err = data_check(capsys, tmp_path / "nope.jsonl")
    assert code == 2
    assert err == f"posttrain data check: error: {tmp_path / 'nope.jsonl'}: file not found\n"


def test_bad_flag_names_the_field(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD)
    code, _, err = data_check(capsys, path, "--kind", "chat")
    assert code == 2
    assert err == "posttrain data check: error: config field 'kind': 'chat' is not one of sft, preference, ranked, unpaired, prompt, text\n"
    code, _, err = data_check(capsys, path, "--max-length", "10")
    assert code == 2 and "config field 'max_length': counting rows over a max length needs --tokenizer" in err


def test_real_process_prints_no_traceback(tmp_path):
    path = bad(tmp_path, "d.jsonl", '{"messages": oops}\n')
    done = subprocess.run([sys.executable, "-m", "posttrain", "data", "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"posttrain data check: error: {path}:1: malformed JSON: ")
    assert done.stderr.count("\n") == 1
