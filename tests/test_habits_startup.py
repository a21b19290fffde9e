"""`posttrain --help` and `posttrain CMD --help` do not import torch or transformers
(their import alone takes seconds), so help appears at once. Not a timed test: it checks
what got imported, in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys

import pytest

from posttrain.cli import COMMANDS

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


# Recipes whose module still imports torch at its top (their config class lives beside the
# training code). Every other command must stay light; shrinking this set is welcome.
STILL_HEAVY = {"dpo", "kto", "rm", "grpo", "rloo", "ppo", "best-of-n"}


ALL_HELP = """
import contextlib, io, sys
from posttrain.cli import main
for argv in {commands!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(argv)
    heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
    print(" ".join(argv[:-1]), code, "usage:" in out.getvalue(), ",".join(heavy) or "-", sep="|")
"""


def test_every_light_command_help_imports_no_torch():
    """One interpreter asks every light command for --help in turn; imports accumulate, so the
    first command that pulls torch in is the one named."""
    commands = [[*name.split(), "--help"] for name in sorted(set(COMMANDS) - STILL_HEAVY)]
    result = subprocess.run([sys.executable, "-c", ALL_HELP.format(commands=commands)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(commands)
    for line in lines:
        assert line.split("|")[1:] == ["0", "True", "-"], line
