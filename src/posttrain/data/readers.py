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

Everything a person can fix (a missing file, an empty file, a malformed line, a
key given twice, invalid UTF-8, a FIFO or a symlink loop, a line or field over
the size limit) is an `InputError` with a one-line message naming the file and line.

Two options apply to every source (see docs/data-formats.md):
- a split: `split=` or `PATH:SPLIT` picks one split of a `DatasetDict` folder,
  a folder of split files (`train_prefs-00000-of-00001.parquet`, `test.jsonl`)
  or a hub dataset (default: "train", or the only split there is);
- a column mapping, `columns={"prompt": "question"}` (field the data layer
  reads -> column the file has), applied to every row before anything else.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import jsonl
from ..errors import ConfigError, InputError, PosttrainError, first_line
from ..jsonl import (
    SURROGATE_ESCAPE,
    DuplicateKeyError,
    check_data_file,
    check_no_surrogates,
    duplicate_key_message,
    iter_lines,
    loads_strict,
    open_data_file,
    read_jsonl,
    too_long_message,
)

Row = dict[str, Any]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
FILE_SUFFIXES = JSONL_SUFFIXES + (".json", ".csv", ".tsv", ".parquet", ".gz")

# CSV cells are strings. These columns hold structured values in every shape we
# know, so a cell that is JSON of the right kind is decoded (see `_csv_cell`).
CSV_JSON_COLUMNS = {"messages", "conversations", "prompt", "completion", "chosen", "rejected",
                    "responses", "ranking", "scores"}
# The 0/1 labels of SHP (`labels`) and PKU-SafeRLHF (`*_response_id`) arrive as "1" from a CSV copy.
CSV_NUMBER_COLUMNS = {"margin", "score", "labels", "better_response_id", "safer_response_id"}
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
    """Raise read_rows' "file not found" (or FIFO, symlink loop, ...) for a source that is neither
    a readable file, a directory nor a hub id, without reading anything: commands call it before
    loading a model or making a run directory, so a typo in a path costs nothing."""
    for source in sources:
        path, _ = resolve_split(str(source), None)
        if os.path.isdir(path) or (not os.path.lexists(path) and _looks_like_hub_id(path)):
            continue
        check_data_file(path)


def resolve_split(source: str, split: str | None) -> tuple[str, str | None]:
    """`"data/prefs:test_prefs"` -> `("data/prefs", "test_prefs")` when `data/prefs` exists (or is a
    hub id) and the whole string does not; otherwise `(source, split)`. The suffix wins over `split`."""
    if os.path.lexists(source):
        return source, split
    head, sep, tail = source.rpartition(":")
    if sep and head and tail and "/" not in tail and (os.path.lexists(head) or _looks_like_hub_id(head)):
        return head, tail
    return source, split


def read_rows(source: str | os.PathLike, split: str | None = None, columns: dict[str, str] | None = None,
              max_line_bytes: int | None = None) -> Iterator[tuple[str, Row]]:
    """Yield `("FILE:N", row)` for every row of `source`.

    `source` is a data file (by suffix: .jsonl/.ndjson, .json, .csv/.tsv,
    .parquet), a directory written by `datasets.Dataset.save_to_disk`, a
    directory of split files, or a Hugging Face hub dataset id (only when
    online); `PATH:SPLIT` names a split. `split` picks a split of a directory
    or hub dataset (default: "train" when present, or the only one).
    `columns` maps field names to the file's column names (see `rename_columns`).
    Lines and fields longer than `max_line_bytes` (default: `jsonl.max_line_bytes()`)
    are refused. A file with no rows is an error.
    """
    path, split = resolve_split(str(source), split)
    limit = line_limit(max_line_bytes)  # the parameter hides jsonl.max_line_bytes here
    # CSV cells are decoded by the field they are read as (a mapped `better` column holding a list is `chosen`).
    decode_as = {column: field for field, column in (columns or {}).items()}
    rows = _rows(path, split, limit, decode_as)
    for where, row in _non_empty(path, rows):
        yield where, rename_columns(row, columns, where) if columns else row


def _rows(path: str, split: str | None, limit: int, decode_as: dict[str, str]) -> Iterator[tuple[str, Row]]:
    if os.path.isdir(path):
        if _is_saved_dataset(path):
            return _checked(_read_saved_dataset(path, split), limit)
        return _read_split_files(path, split, limit, decode_as)
    if not os.path.lexists(path) and _looks_like_hub_id(path):
        return _checked(_read_hub_dataset(path, split), limit)
    check_data_file(path)
    # A single file is one split, "train" (what TRL's --dataset_train_split defaults to); asking
    # for another split of it is a mistake worth naming rather than ignoring.
    if split not in (None, "train"):
        raise InputError(path, None, None, f"is a single file (one split, 'train'); split {split!r} applies only to "
                         "a dataset directory, a directory of split files or a hub dataset")
    return _read_file(path, limit, decode_as)


def data_suffix(path: str) -> str:
    """The format suffix of a data file, looking through a .gz: `train.jsonl.gz` -> `.jsonl`."""
    name = path.lower().removesuffix(".gz")
    return Path(name).suffix


def _read_file(path: str, limit: int, decode_as: dict[str, str] | None = None) -> Iterator[tuple[str, Row]]:
    suffix = data_suffix(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, limit, decode_as or {})
    if suffix == ".json":
        return _checked(_read_json(path, limit), limit)
    if suffix == ".parquet":
        return _checked(_read_parquet(path), limit)
    # .jsonl/.ndjson, and an unknown suffix, which is most often JSONL under another name (.txt, .data).
    return _read_jsonl(path, limit)


def rename_columns(row: Row, columns: dict[str, str], where: str) -> Row:
    """Apply a column mapping `{field: column}`: the row's `column` is read as `field`.

    `{"prompt": "question", "chosen": "better"}` turns `{"question", "better", ...}` into
    `{"prompt", "chosen", ...}`; other columns are kept. A mapped column the row lacks is
    an error naming it.
    """
    missing = [column for column in columns.values() if column not in row]
    if missing:
        path, line = split_location(where)
        target = next(field for field, column in columns.items() if column == missing[0])
        have = ", ".join(sorted(map(str, row))) or "none"
        raise InputError(path, line, missing[0], f"missing; the column mapping reads it as '{target}' "
                         f"(columns in this row: {have})")
    sources = set(columns.values())
    renamed = {key: value for key, value in row.items() if key not in sources}
    renamed.update({field: row[column] for field, column in columns.items()})
    return renamed


def parse_columns(items: dict[str, str] | None, source: str | None = None) -> dict[str, str]:
    """Check a `columns` mapping from a config (`{"prompt": "question"}`); ConfigError names a bad entry."""
    columns = dict(items or {})
    for field, column in columns.items():
        if not str(field).strip() or not isinstance(column, str) or not column.strip():
            raise ConfigError("columns", f"expected FIELD=COLUMN pairs such as prompt=question, got "
                              f"{field!s}={column!s}", source)
    return columns


def line_limit(value: int | None = None) -> int:
    """The line/field size limit in bytes: `value`, else $POSTTRAIN_MAX_LINE_BYTES, else 16 MiB."""
    return jsonl.max_line_bytes(value)


def _non_empty(path: str, rows: Iterator[tuple[str, Row]]) -> Iterator[tuple[str, Row]]:
    seen = False
    for item in rows:
        seen = True
        yield item
    if not seen:
        raise InputError(path, None, None, "file is empty (no rows)")


def _checked(rows: Iterator[tuple[str, Row]], limit: int) -> Iterator[tuple[str, Row]]:
    """Formats read whole (JSON, Parquet, datasets) cannot refuse a long line before reading it;
    refuse a long field right after, so it goes no further (tokenising it would cost far more)."""
    for where, row in rows:
        _check_field_sizes(row, where, limit)
        yield where, row


def _check_field_sizes(row: Row, where: str, limit: int) -> None:
    for key, value in row.items():
        size = _text_size(value)
        if size > limit:
            path, line = split_location(where)
            raise InputError(path, line, str(key), too_long_message(size, limit, what="field"))


def _text_size(value: Any) -> int:
    """UTF-8 bytes of the text in a value (strings inside lists and objects too)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) if not value.isascii() else len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_size(v) for v in value)
    return 0


def _read_jsonl(path: str, limit: int) -> Iterator[tuple[str, Row]]:
    for number, row in read_jsonl(path, limit):
        yield location(path, number), row


def _read_json(path: str, limit: int) -> Iterator[tuple[str, Row]]:
    with open_data_file(path) as handle:
        try:
            data_bytes = handle.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(path, None, None, f"cannot decompress: {exc}") from None
    try:
        text = data_bytes.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data_bytes.count(b"\n", 0, exc.start) + 1
        raise InputError(path, line, None, f"not valid UTF-8 (byte 0x{data_bytes[exc.start]:02x})") from None
    del data_bytes
    if not text.strip():
        return
    try:
        data = loads_strict(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Several JSON values one per line: this is JSONL with a .json name.
            yield from _read_jsonl(path, limit)
            return
        raise InputError(path, exc.lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    except DuplicateKeyError as exc:
        raise InputError(path, None, exc.key, duplicate_key_message(exc.key)) from None
    except RecursionError:
        raise InputError(path, None, None, "malformed JSON: nested too deeply") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise InputError(path, None, None, "expected a JSON list of objects, or an object holding exactly one list"
                             f" (found {len(lists)} lists)")
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(path, None, None, f"expected a JSON list of objects, got {type(data).__name__}")
    escapes = SURROGATE_ESCAPE.search(text) is not None
    del text
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise InputError(path, number, None, f"expected a JSON object, got {type(row).__name__}")
        if escapes:
            check_no_surrogates(row, path, number)
        yield location(path, number), row


# pandas' to_csv writes its index as a first column with an empty name.
_INDEX_COLUMNS = ("", "Unnamed: 0")


def _read_csv(path: str, limit: int, decode_as: dict[str, str] | None = None) -> Iterator[tuple[str, Row]]:
    delimiter = "\t" if data_suffix(path) == ".tsv" else ","
    # csv's own field limit (128 KiB by default) is process-wide; lines are already bounded by
    # `limit`, so one field cannot be longer than that.
    csv.field_size_limit(max(csv.field_size_limit(), limit))
    lines = (text for _, text in iter_lines(path, limit))
    reader = csv.reader(lines, delimiter=delimiter)
    start = 1  # where the row being read starts
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        other = next((sep for sep in (";", "\t", "|") if sep != delimiter and len(header) == 1
                      and sep in header[0]), None)
        if other is not None:  # a European Excel export (;) or a TSV named .csv
            name = {";": "semicolons", "\t": "tabs", "|": "'|'"}[other]
            raise InputError(path, 1, None, f"the header is one column, {header[0]!r}: the file seems separated by "
                             f"{name}; posttrain reads comma-separated .csv and tab-separated .tsv files")
        repeated = next((name for i, name in enumerate(header) if name in header[:i]), None)
        if repeated is not None:  # the later column would silently replace the earlier one
            raise InputError(path, 1, repeated, "this column appears twice in the header (the last one would "
                             "silently win); rename or drop one")
        skip_index = header[0] in _INDEX_COLUMNS and len(header) > 1
        start = reader.line_num + 1
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                start = reader.line_num + 1
                continue
            if len(cells) != len(header):
                raise InputError(path, start, None,
                                 f"expected {len(header)} columns (as in the header), got {len(cells)}")
            row = {name: _csv_cell((decode_as or {}).get(name, name), cell) for name, cell in zip(header, cells)}
            if skip_index:
                row.pop(header[0])
            where = location(path, start)
            _check_field_sizes(row, where, limit)
            yield where, row
            start = reader.line_num + 1
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):  # a quoted field running over many lines
            raise InputError(path, start, None, f"a quoted field runs past line {reader.line_num} and over the "
                             f"limit of {csv.field_size_limit():,} bytes (an unclosed quote? raise the limit "
                             "with --max-line-bytes or POSTTRAIN_MAX_LINE_BYTES)") from None
        raise InputError(path, reader.line_num, None, f"malformed CSV: {exc}") from None


def _csv_cell(column: str, cell: str) -> Any:
    """Decode structured CSV cells: lists in list columns, numbers, booleans.

    A list cell may be JSON or a Python literal (pandas' `to_csv` writes lists as their
    `repr`, with single quotes); Python literals are read with `ast.literal_eval`, which
    accepts literals only and never runs code. Only known columns are decoded, so free text
    that happens to look like a list in other columns stays text. An empty cell in an
    optional number column is None.
    """
    stripped = cell.strip()
    if column in CSV_JSON_COLUMNS and stripped[:1] in ("[", "{"):
        return _structured_cell(stripped, cell)
    if column in CSV_NUMBER_COLUMNS:
        if not stripped:
            return None
        try:
            return float(stripped)
        except ValueError:
            return cell
    if column in CSV_BOOL_COLUMNS:
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes", "1.0"):
            return True
        if lowered in ("false", "0", "no", "0.0"):
            return False
    return cell


def _structured_cell(stripped: str, cell: str) -> Any:
    try:
        return json.loads(stripped)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return cell
    return value if isinstance(value, (list, dict)) else cell


def _read_parquet(path: str) -> Iterator[tuple[str, Row]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise InputError(path, None, None, f"cannot read Parquet file: {first_line(exc)}") from None
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=256):  # a batch at a time, not the whole table
            for row in batch.to_pylist():
                number += 1
                yield location(path, number), row
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, number + 1, None, f"cannot read Parquet file: {first_line(exc)}") from None


_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in _SAVED_MARKERS)


def _read_saved_dataset(path: str, split: str | None) -> Iterator[tuple[str, Row]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:
        raise InputError(path, None, None, f"cannot load saved dataset: {first_line(exc)}") from None
    dataset = _pick_split(path, loaded, split)
    for number, row in enumerate(dataset, start=1):
        yield location(path, number), dict(row)


# `train_prefs-00000-of-00001.parquet`, `test.jsonl`: the hub's file layout, also under data/.
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)(?:-\d{5}-of-\d{5})?(?P<suffix>\.(?:parquet|jsonl|ndjson|json|csv|tsv)(?:\.gz)?)$")


def split_files(directory: str) -> dict[str, list[str]]:
    """`{split: [files in order]}` for a directory of split files (or its `data/` folder)."""
    found: dict[str, list[str]] = {}
    for folder in (directory, os.path.join(directory, "data")):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            match = _SPLIT_FILE.match(name)
            if match and os.path.isfile(os.path.join(folder, name)):
                found.setdefault(match["split"], []).append(os.path.join(folder, name))
        if found:
            break
    return found


def _read_split_files(path: str, split: str | None, limit: int, decode_as: dict[str, str]
                      ) -> Iterator[tuple[str, Row]]:
    found = split_files(path)
    if not found:
        subsets = sorted(name for name in os.listdir(path)
                         if os.path.isdir(os.path.join(path, name)) and split_files(os.path.join(path, name)))
        if subsets:  # hh-rlhf: harmless-base/, helpful-base/, ... each with train/test files
            raise InputError(path, None, None, f"holds several data folders ({', '.join(subsets)}); pass one of "
                             f"them, e.g. {os.path.join(path, subsets[0])}")
        raise InputError(path, None, None, "is a directory but neither a dataset saved with save_to_disk (no "
                         "dataset_info.json, state.json or dataset_dict.json) nor a folder of split files "
                         "such as train-00000-of-00001.parquet or test.jsonl")
    for file in found[_choose_split(path, list(found), split)]:
        yield from _read_file(file, limit, decode_as)


def _choose_split(name: str, splits: list[str], split: str | None) -> str:
    chosen = split or ("train" if "train" in splits else (splits[0] if len(splits) == 1 else None))
    if chosen not in splits:
        wanted = f"split {split!r} not found" if split else "several splits and none chosen"
        raise InputError(name, None, None, f"{wanted} (splits: {', '.join(splits)}); choose one with "
                         f"--split NAME or {name}:NAME")
    return chosen


def _pick_split(name: str, loaded: Any, split: str | None) -> Any:
    """A `Dataset` from a `Dataset` or a `DatasetDict` (default split: train, or the only one)."""
    if not hasattr(loaded, "keys"):
        if split is not None:
            raise InputError(name, None, None, f"holds one dataset without splits; split {split!r} does not apply")
        return loaded
    return loaded[_choose_split(name, list(loaded.keys()), split)]


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
                             f"{first_line(exc)}") from None
    dataset = _pick_split(name, loaded, None if split and not hasattr(loaded, "keys") else split)
    for number, row in enumerate(dataset, start=1):
        yield location(name, number), dict(row)
