"""The data options every command that reads data shares: `--split`, `--columns`, `--max-line-bytes`.

Commands mix `DataArgs` into their config dataclass (the training commands get it through
`train.args.RunArgs`), so each option is a flag and a YAML key everywhere, pipelines included:

    posttrain dpo --data h4_ultrafeedback/ --split train_prefs --eval-data h4_ultrafeedback/:test_prefs
    posttrain sft --data qa.csv --columns prompt=question completion=reply
    columns: {prompt: question, chosen: better, rejected: worse}      # the same in YAML

Library code passes them on with `read_kwargs(cfg)`:

    load_records(path, kind="sft", **read_kwargs(cfg))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import help_field
from ..errors import ConfigError
from .readers import parse_columns


@dataclass
class DataArgs:
    """How to read the data files: which split, which columns, how long a line may be."""

    split: str | None = help_field(None, "split of the data when it is a dataset directory, a folder of split files "
                                   "(train_prefs-00000-of-00001.parquet) or a hub dataset (default: train, or the only "
                                   "split); for one file among several, or for eval data, write PATH:SPLIT")
    columns: dict[str, str] = help_field({}, "read the file's columns as these fields, FIELD=COLUMN ... "
                                         "(e.g. prompt=question chosen=better rejected=worse)")
    max_line_bytes: int = help_field(0, "refuse data lines and fields longer than this many bytes "
                                     "(0: $POSTTRAIN_MAX_LINE_BYTES, else 16 MiB)")


def read_kwargs(cfg: Any, split: bool = True) -> dict[str, Any]:
    """`split`, `columns` and `max_line_bytes` of a config, as keyword arguments for `read_rows`,
    `load_records`, `iter_records` and `load_prompts`. `split=False` leaves the split out (for
    eval data, which names its own split as PATH:SPLIT)."""
    limit = getattr(cfg, "max_line_bytes", 0) or 0
    if limit < 0:
        raise ConfigError("max_line_bytes", f"must be 0 (the default limit) or a positive number of bytes, got {limit}")
    kwargs: dict[str, Any] = {"columns": parse_columns(getattr(cfg, "columns", None)), "max_line_bytes": limit or None}
    if split:
        kwargs["split"] = getattr(cfg, "split", None)
    return kwargs
