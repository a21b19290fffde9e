"""Readers: every format yields ("FILE:N", row) with the right N, and bad files give one-line InputErrors."""
from __future__ import annotations

import json

import pytest

from posttrain.data.readers import read_rows, split_location
from posttrain.errors import InputError, PosttrainError

ROWS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def rows_of(path, **kwargs):
    return list(read_rows(path, **kwargs))


def test_jsonl_numbers_are_file_lines_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert rows_of(path) == [(f"{path}:1", ROWS[0]), (f"{path}:3", ROWS[1])]


def test_json_list_and_object_holding_one_list(tmp_path):
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps(ROWS, indent=2))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 1, "data": ROWS}))
    assert rows_of(plain) == [(f"{plain}:1", ROWS[0]), (f"{plain}:2", ROWS[1])]
    assert [row for _, row in rows_of(wrapped)] == ROWS


def test_json_file_holding_jsonl_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    assert [row for _, row in rows_of(path)] == ROWS


def test_csv_numbers_are_file_lines_even_with_multiline_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"two\nlines",x\nc,d\n')
    rows = rows_of(path)
    assert rows == [(f"{path}:2", {"prompt": "two\nlines", "completion": "x"}),
                    (f"{path}:4", {"prompt": "c", "completion": "d"})]


def test_csv_decodes_structured_columns_only(tmp_path):
    path = tmp_path / "d.csv"
    messages = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    path.write_text("messages,label,margin,note\n" + f'"{messages.replace(chr(34), chr(34) * 2)}",true,1.5,[1]\n')
    (_, row), = rows_of(path)
    assert row == {"messages": json.loads(messages), "label": True, "margin": 1.5, "note": "[1]"}


def test_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("prompt\tcompletion\na\tb\n")
    assert rows_of(path) == [(f"{path}:2", ROWS[0])]


def test_parquet_numbers_are_record_indices(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert rows_of(path) == [(f"{path}:1", ROWS[0]), (f"{path}:2", ROWS[1])]


def test_saved_dataset_directory_and_dataset_dict_splits(tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(single))
    assert rows_of(single) == [(f"{single}:1", ROWS[0]), (f"{single}:2", ROWS[1])]

    several = tmp_path / "several"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                          "test": datasets.Dataset.from_list(ROWS[1:])}).save_to_disk(str(several))
    assert [r for _, r in rows_of(several)] == ROWS[:1]  # train by default
    assert [r for _, r in rows_of(several, split="test")] == ROWS[1:]
    with pytest.raises(InputError, match=r"split 'dev' not found \(splits: train, test\)"):
        rows_of(several, split="dev")


def test_hub_id_offline_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PosttrainError) as info:
        rows_of("someone/some-dataset")
    assert str(info.value) == ("someone/some-dataset: no such file, and hub datasets cannot be loaded offline "
                               "(HF_HUB_OFFLINE is set)")


# --- bad input ------------------------------------------------------------------------------


def error_of(path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        rows_of(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"


@pytest.mark.parametrize("name,text", [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.json", "[]"), ("e.csv", "a,b\n")])
def test_empty_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert error_of(path) == f"{path}: file is empty (no rows)"


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n')
    assert error_of(path).startswith(f"{path}:2: malformed JSON: ")


def test_non_object_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n[1, 2]\n')
    assert error_of(path) == f"{path}:2: expected a JSON object, got list"


def test_json_list_with_a_non_object(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([ROWS[0], "text"]))
    assert error_of(path) == f"{path}:2: expected a JSON object, got str"


def test_json_object_with_two_lists(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"a": ROWS, "b": ROWS}))
    assert error_of(path) == f"{path}: expected a JSON list of objects, or an object holding exactly one list (found 2 lists)"


def test_unreadable_binary_file(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert error_of(path) == f"{path}:1: not valid UTF-8 (byte 0xff at byte 1 of the line)"


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    assert error_of(path).startswith(f"{path}: cannot read Parquet file: ")


def test_directory_that_is_not_a_dataset(tmp_path):
    assert "is a directory but neither a dataset saved with save_to_disk" in error_of(tmp_path)


def test_csv_row_with_wrong_column_count(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,completion\na,b\nc\n")
    assert error_of(path) == f"{path}:3: expected 2 columns (as in the header), got 1"


def test_split_location():
    assert split_location("dir:with:colons/f.jsonl:12") == ("dir:with:colons/f.jsonl", 12)
    assert split_location("f.jsonl") == ("f.jsonl", None)
    assert split_location(None) == (None, None)
