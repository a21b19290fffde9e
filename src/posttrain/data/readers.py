"""Read rows of data from files, `datasets` directories and (online) hub ids.

`read_rows(source)` yields `("FILE:N", row)` pairs, where `row` is a plain dict
and N locates the row for error messages:

=====================  ====================================================
format                 N is
=====================  ====================================================
JSONL (.jsonl, .ndjson) the line number in the file
CSV (.csv, .tsv)        the line number in the file where the row starts
                        (the header is line 1, so the first row is line 2)
JSON (.json)            the 1-based record number in the list
Parquet (.parquet)      the 1-based record number
`save_to_disk` folder   the 1-based record number in the chosen split
hub dataset id          the 1-based record number in the chosen split
=====================  ====================================================

Everything a person can fix (a missing file, an empty file, a malformed line)
is an `InputError` with a one-line message naming the file and line.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import InputError, PosttrainError
from ..jsonl import read_jsonl

Row = dict[str, Any]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
FILE_SUFFIXES = JSONL_SUFFIXES + (".json", ".csv", ".tsv", ".parquet")

# CSV cells are strings. These columns hold structured values in every shape we
# know, so a cell that is JSON of the right kind is decoded (see `_csv_cell`).
CSV_JSON_COLUMNS = {"messages", "conversations", "prompt", "completion", "chosen", "rejected",
                    "responses", "ranking", "scores"}
CSV_NUMBER_COLUMNS = {"margin", "score"}
CSV_BOOL_COLUMNS = {"label"}


def location(path: str | os.PathLike, number: int) -> str:
    """The `"FILE:N"` string stored in `Record.source`."""
    return f"{path}:{number}"


def split_location(source: str | None) -> tuple[str | None, int | None]:
    """`"FILE:N"` -> `("FILE", N)`; anything else -> `(source, None)`."""
    if source is None:
        return None, None
    path, sep, number = source.rpartition(":")
    if sep and number.isdigit():
        return path, int(number)
    return source, None


def check_sources(sources: Iterable[str | os.PathLike]) -> None:
    """Raise read_rows' "file not found" for a source that is neither a file, a directory nor a
    hub id, without reading anything: commands call it before loading a model or making a run
    directory, so a typo in a path costs nothing."""
    for source in sources:
        path = str(source)
        if not os.path.exists(path) and not _looks_like_hub_id(path):
            raise InputError(path, None, None, "file not found")


def read_rows(source: str | os.PathLike, split: str | None = None) -> Iterator[tuple[str, Row]]:
    """Yield `("FILE:N", row)` for every row of `source`.

    `source` is a data file (by suffix: .jsonl/.ndjson, .json, .csv/.tsv,
    .parquet), a directory written by `datasets.Dataset.save_to_disk`, or a
    Hugging Face hub dataset id (only when online). `split` picks a split of a
    `DatasetDict` directory or a hub dataset (default: "train" when present).
    A file with no rows is an error.
    """
    path = str(source)
    if os.path.isdir(path):
        yield from _non_empty(path, _read_saved_dataset(path, split))
        return
    if not os.path.exists(path):
        if _looks_like_hub_id(path):
            yield from _non_empty(path, _read_hub_dataset(path, split))
            return
        raise InputError(path, None, None, "file not found")
    suffix = Path(path).suffix.lower()
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
               ".tsv": _read_csv, ".parquet": _read_parquet}
    # An unknown suffix is most often JSONL under another name (.txt, .data).
    reader = readers.get(suffix, _read_jsonl)
    yield from _non_empty(path, reader(path))


def _non_empty(path: str, rows: Iterator[tuple[str, Row]]) -> Iterator[tuple[str, Row]]:
    seen = False
    for item in rows:
        seen = True
        yield item
    if not seen:
        raise InputError(path, None, None, "file is empty (no rows)")


def _open_text(path: str):
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(path, None, None, f"cannot read file: {exc.strerror}") from None


def _read_jsonl(path: str) -> Iterator[tuple[str, Row]]:
    for number, row in read_jsonl(path):
        yield location(path, number), row


def _read_json(path: str) -> Iterator[tuple[str, Row]]:
    with _open_text(path) as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError:
            raise InputError(path, None, None, "file is not valid UTF-8 text") from None
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Several JSON values one per line: this is JSONL with a .json name.
            yield from _read_jsonl(path)
            return
        raise InputError(path, exc.lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise InputError(path, None, None, "expected a JSON list of objects, or an object holding exactly one list"
                             f" (found {len(lists)} lists)")
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(path, None, None, f"expected a JSON list of objects, got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise InputError(path, number, None, f"expected a JSON object, got {type(row).__name__}")
        yield location(path, number), row


def _read_csv(path: str) -> Iterator[tuple[str, Row]]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with _open_text(path) as handle:
        try:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return
            header = [name.strip() for name in header]
            start = reader.line_num + 1
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    start = reader.line_num + 1
                    continue
                if len(cells) != len(header):
                    raise InputError(path, start, None,
                                     f"expected {len(header)} columns (as in the header), got {len(cells)}")
                yield location(path, start), {name: _csv_cell(name, cell) for name, cell in zip(header, cells)}
                start = reader.line_num + 1
        except UnicodeDecodeError:
            raise InputError(path, None, None, "file is not valid UTF-8 text") from None
        except csv.Error as exc:
            raise InputError(path, reader.line_num, None, f"malformed CSV: {exc}") from None


def _csv_cell(column: str, cell: str) -> Any:
    """Decode structured CSV cells: JSON lists in list columns, numbers, booleans.

    Only known columns are decoded, so free text that happens to look like JSON
    in other columns stays text. An empty cell in an optional column is None.
    """
    stripped = cell.strip()
    if column in CSV_JSON_COLUMNS and stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return cell
    if column in CSV_NUMBER_COLUMNS:
        if not stripped:
            return None
        try:
            return float(stripped)
        except ValueError:
            return cell
    if column in CSV_BOOL_COLUMNS:
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
    return cell


def _read_parquet(path: str) -> Iterator[tuple[str, Row]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise InputError(path, None, None, f"cannot read Parquet file: {_first_line(exc)}") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield location(path, number), row


def _read_saved_dataset(path: str, split: str | None) -> Iterator[tuple[str, Row]]:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any(os.path.exists(os.path.join(path, name)) for name in markers):
        raise InputError(path, None, None, "is a directory but not a dataset saved with save_to_disk"
                         " (no dataset_info.json, state.json or dataset_dict.json)")
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:
        raise InputError(path, None, None, f"cannot load saved dataset: {_first_line(exc)}") from None
    dataset = _pick_split(path, loaded, split)
    for number, row in enumerate(dataset, start=1):
        yield location(path, number), dict(row)


def _pick_split(name: str, loaded: Any, split: str | None) -> Any:
    """A `Dataset` from a `Dataset` or a `DatasetDict` (default split: train)."""
    if not hasattr(loaded, "keys"):
        return loaded
    splits = list(loaded.keys())
    chosen = split or ("train" if "train" in splits else (splits[0] if len(splits) == 1 else None))
    if chosen not in splits:
        wanted = f"split {split!r} not found" if split else "several splits and no --split given"
        raise InputError(name, None, None, f"{wanted} (splits: {', '.join(splits)})")
    return loaded[chosen]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_hub_id(path: str) -> bool:
    """`owner/name` or `name`, without a file suffix or path punctuation."""
    return bool(_HUB_ID.match(path)) and not path.lower().endswith(FILE_SUFFIXES) and "/" in path


def is_offline() -> bool:
    """True when the Hugging Face offline switches are set."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in flags)


def _read_hub_dataset(name: str, split: str | None) -> Iterator[tuple[str, Row]]:
    if is_offline():
        raise PosttrainError(f"{name}: no such file, and hub datasets cannot be loaded offline (HF_HUB_OFFLINE is set)")
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    except Exception as exc:  # network errors, missing repos, bad configs
        raise PosttrainError(f"{name}: no such file, and loading it as a hub dataset failed: "
                             f"{_first_line(exc)}") from None
    dataset = _pick_split(name, loaded, split)
    for number, row in enumerate(dataset, start=1):
        yield location(name, number), dict(row)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
