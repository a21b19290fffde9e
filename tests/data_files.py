"""Small helpers the data tests share: write rows as a JSONL file, run `posttrain data check`."""
from __future__ import annotations

import json
from pathlib import Path

from posttrain.cli import main


def write_jsonl(path: Path, rows) -> Path:
    """`rows` as one JSON object per line at `path`; returns the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_check(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `posttrain data check ARGV...` run in this process."""
    code = main(["data", "check", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err
