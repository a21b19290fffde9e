"""`posttrain --help` and `posttrain sft --help` do not import torch or transformers
(their import alone takes seconds), so help appears at once. Not a timed test: it checks
what got imported, in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import contextlib, io, sys
from posttrain.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main({argv!r})
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
print(code, "usage:" in out.getvalue(), ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("argv", [["--help"], ["sft", "--help"], ["sft", "-h"]])
def test_help_imports_no_torch(argv):
    result = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "True", "-"]
