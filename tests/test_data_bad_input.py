"""Malformed data that used to pass silently (or hang, or eat gigabytes) is refused with one located line.

Each case is checked in the library (the exact message) and the main ones through the CLI (exit 2,
one line on stderr, no traceback). `data check` and training share `formats.parse_row`, so a row
`data check` passes is one training accepts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import pytest

from data_files import write_jsonl
from posttrain.cli import main
from posttrain.data import read_rows
from posttrain.data.formats import parse_row
from posttrain.data.prompts import load_prompts
from posttrain.data.tokenize import ENCODE_CHUNK_CHARS, encode
from posttrain.errors import InputError

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def error_of(function, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def row_error(row, kind=None) -> str:
    return error_of(parse_row, row, "d.jsonl:4", kind)


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, err


# --- an over-long line -------------------------------------------------------------------------------


def test_over_long_line_is_refused_with_its_size_in_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_MAX_LINE_BYTES", str(1024 * 1024))
    path = tmp_path / "big.jsonl"
    row = json.dumps({"prompt": "p", "completion": "x" * (30 * 1024 * 1024)})
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + row + "\n")
    tracemalloc.start()
    try:
        message = error_of(lambda: list(read_rows(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = len(row) + 1
    assert message == (f"{path}:2: line is {size:,} bytes, over the limit of 1,048,576 bytes "
                       "(raise it with --max-line-bytes or POSTTRAIN_MAX_LINE_BYTES)")
    assert peak < 8 * 1024 * 1024  # the 30 MB line was never held in memory


def test_limit_from_the_flag_wins_and_applies_to_fields_of_whole_file_formats(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a" * 500, "completion": "b"}])
    assert len(list(read_rows(path, max_line_bytes=1000))) == 1
    assert "line is 534 bytes, over the limit of 100 bytes" in error_of(lambda: list(read_rows(path, max_line_bytes=100)))
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps([{"prompt": "a" * 500, "completion": "b"}], indent=1))
    assert error_of(lambda: list(read_rows(as_json, max_line_bytes=100))) == (
        f"{as_json}:1: field 'prompt': field is 500 bytes, over the limit of 100 bytes "
        "(raise it with --max-line-bytes or POSTTRAIN_MAX_LINE_BYTES)")


def test_cli_over_long_line_stops_sft_and_data_check_before_any_tokenising(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "x" * 5000}])
    code, err = cli(capsys, "data", "check", path, "--max-line-bytes", "4096", "--tokenizer", "tiny-random")
    assert code == 2 and err.startswith(f"posttrain data check: error: {path}:1: line is 5,034 bytes") and err.count("\n") == 1
    code, err = cli(capsys, "sft", "--model", "tiny-random", "--data", path, "--max-line-bytes", "4096",
                    "--output-dir", tmp_path / "run")
    assert code == 2 and f"{path}:1: line is 5,034 bytes, over the limit of 4,096 bytes" in err
    assert not (tmp_path / "run").exists()


class CountingTokenizer:
    """Wraps a tokenizer and records the length of every text it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def __call__(self, text, **kwargs):
        self.calls.append(len(text))
        return self.tokenizer(text, **kwargs)


def test_long_texts_are_tokenised_in_bounded_pieces_with_the_same_ids():
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-random")
    text = ("lorem ipsum dolor sit amet\n" * ((3 * ENCODE_CHUNK_CHARS) // 27))[:-1]
    counting = CountingTokenizer(tokenizer)
    ids = encode(counting, text)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(counting.calls) >= 3 and max(counting.calls) <= ENCODE_CHUNK_CHARS


# --- data check applies the training rules --------------------------------------------------------------


@pytest.mark.parametrize("row,kind,expected", [
    ({"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Yes?"}]}, "sft",
     "d.jsonl:4: field 'messages[0]': the conversation starts with an assistant turn; it should start with the user's "
     "turn (after any system message)"),
    ({"prompt": "Q", "responses": ["a", "b"], "scores": [float("nan"), 1.0]}, "ranked",
     "d.jsonl:4: field 'scores': expected finite numbers, got nan in [nan, 1.0]"),
    ({"prompt": "Q", "responses": ["a", "b"], "scores": [2, 2]}, "ranked",
     "d.jsonl:4: field 'scores': all scores are equal (2): no response is better than another"),
    ({"prompt": "Q", "responses": ["same", "other", "same "], "ranking": [0, 1, 2]}, "ranked",
     "d.jsonl:4: field 'responses[2]': is identical to responses[0] (a tie teaches nothing; keep one copy)"),
    ({"prompt": "Q", "responses": ["a", "b"], "scores": [float("inf"), float("-inf")]}, "ranked",
     "d.jsonl:4: field 'scores': expected finite numbers, got inf in [inf, -inf]"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"},
                   {"role": "assistant", "content": "Yes"}]}, "sft",
     "d.jsonl:4: field 'messages[1]': two user turns in a row (messages[0] and messages[1]); turns must alternate "
     "user/assistant (merge the two messages into one)"),
    ({"prompt": "Q", "chosen": "Paris.", "rejected": "  Paris.\n"}, "preference",
     "d.jsonl:4: field 'rejected': is identical to 'chosen' apart from leading/trailing whitespace"),
    ({"prompt": "Q?", "question": "Other?", "completion": "A"}, None,
     "d.jsonl:4: field 'question': the row has both 'prompt' and 'question'; which is the prompt is ambiguous "
     "(drop one, or choose with --columns prompt=question)"),
], ids=["assistant first", "NaN score", "equal scores", "duplicate responses", "infinite scores",
        "not alternating", "whitespace-identical pair", "prompt and question"])
def test_row_rules(row, kind, expected):
    assert row_error(row, kind) == expected


def test_system_and_tool_messages_do_not_break_alternation():
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                        {"role": "assistant", "content": "Let me look."}, {"role": "tool", "content": "sunny"},
                        {"role": "assistant", "content": "Sunny."}]}
    assert parse_row(row, "d.jsonl:1", "sft")[0] == "messages"


def test_prompt_and_question_in_rl_prompts_and_the_columns_way_out(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Formatted: 2+2?", "question": "2+2?", "answer": "4"}])
    assert "field 'question': the row has both 'prompt' and 'question'" in error_of(load_prompts, path)
    (prompt,) = load_prompts(path, columns={"prompt": "question"})
    assert prompt.prompt == [{"role": "user", "content": "2+2?"}]


def test_kto_data_with_one_label_is_refused_by_data_check_and_kto(tmp_path, capsys):
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Q1", "completion": "good", "label": True},
                                                {"prompt": "Q2", "completion": "fine", "label": True}])
    expected = (f"{path}: field 'label': every example is desirable (2 rows); KTO needs undesirable examples too "
                "(label false)")
    code, err = cli(capsys, "data", "check", path)
    assert code == 2 and err == f"posttrain data check: error: {expected}\n"
    code, err = cli(capsys, "kto", "--model", "tiny-random", "--data", path, "--output-dir", tmp_path / "run")
    assert code == 2 and err.endswith(f"error: {expected}\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("row", [
    {"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Yes?"}]},
    {"messages": [*CHAT, {"role": "assistant", "content": "And more"}]},
], ids=["assistant first", "two assistant turns"])
def test_what_data_check_refuses_sft_refuses_with_the_same_line(tmp_path, capsys, row):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}, row])
    code, check_err = cli(capsys, "data", "check", path)
    assert code == 2
    code, sft_err = cli(capsys, "sft", "--model", "tiny-random", "--data", path, "--output-dir", tmp_path / "run")
    assert code == 2
    assert check_err.split("error: ", 1)[1] == sft_err.split("error: ", 1)[1]
    assert f"{path}:2: field 'messages[" in sft_err


# --- files ---------------------------------------------------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    assert error_of(lambda: list(read_rows(fifo))) == f"{fifo}: is a FIFO (named pipe), not a regular data file"
    code, err = cli(capsys, "sft", "--model", "tiny-random", "--data", fifo, "--output-dir", tmp_path / "run")
    assert code == 2 and err.endswith(f"{fifo}: is a FIFO (named pipe), not a regular data file\n")


def test_symlink_loop_is_not_file_not_found(tmp_path):
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)
    assert error_of(lambda: list(read_rows(loop))) == f"{loop}: symlink loop (the link points back to itself)"
    dangling = tmp_path / "dangling.jsonl"
    os.symlink(tmp_path / "gone.jsonl", dangling)
    assert error_of(lambda: list(read_rows(dangling))) == f"{dangling}: broken symlink (to {tmp_path / 'gone.jsonl'})"


def test_duplicate_json_keys_are_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "first", "completion": "x", "prompt": "second"}\n')
    assert error_of(lambda: list(read_rows(path))) == (
        f"{path}:2: field 'prompt': key 'prompt' appears twice in one JSON object (the last value would silently win)")


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    assert error_of(lambda: list(read_rows(path))) == f"{path}:2: not valid UTF-8 (byte 0xe9 at byte 16 of the line)"
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b'prompt,completion\na,b\n"caf\xe9",b\n')
    assert error_of(lambda: list(read_rows(csv_path))) == f"{csv_path}:3: not valid UTF-8 (byte 0xe9 at byte 5 of the line)"


def test_split_given_for_a_single_file_is_an_error_not_ignored(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}])
    assert error_of(lambda: list(read_rows(path, split="test"))) == (
        f"{path}: is a single file (one split, 'train'); split 'test' applies only to a dataset directory, a "
        "directory of split files or a hub dataset")
    assert len(list(read_rows(path, split="train"))) == 1  # TRL's default --dataset_train_split


def test_real_process_one_line_exit_2(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "x", "chosen": "a", "rejected": "a "}\n')
    done = subprocess.run([sys.executable, "-m", "posttrain", "data", "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr == (f"posttrain data check: error: {path}:1: field 'rejected': is identical to 'chosen' apart "
                           "from leading/trailing whitespace\n")
