"""`posttrain --help` and `posttrain CMD --help` do not import torch or transformers
(their import alone takes seconds), so help appears at once. Not a timed test: it checks
what got imported, in a fresh interpreter."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from posttrain.cli import COMMANDS
from posttrain.losses import (
    GROUP_ADVANTAGES,
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    PREFERENCE_LOSSES,
    RANKING_LOSSES,
    REDUCTIONS,
)
from posttrain.rl import configs as rl_configs
from posttrain.rl.rollouts import ROLLOUT_LAYOUTS
from posttrain.train import configs as train_configs
from posttrain.train.preference_batch import LAYOUT_CHOICES
from posttrain.train.reference import STRATEGIES
from posttrain.train.reward_batch import LAYOUTS as REWARD_LAYOUTS

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


# Commands allowed to import torch for --help: none. The recipes whose module imports torch at
# its top (dpo, kto, rm, grpo, rloo, ppo, best-of-n) parse their flags with a config class kept
# in a light module (train/configs.py, rl/configs.py) and import the recipe only to run it.
STILL_HEAVY: set[str] = set()


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


BAD_FLAG = """
import contextlib, io, sys
from posttrain.cli import main
with contextlib.redirect_stderr(io.StringIO()) as err:
    code = main({argv!r})
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
print(code, len(err.getvalue().strip().splitlines()), ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("argv", [["dpo", "--batch-size", "0"], ["grpo", "--advantage", "nope"],
                                  ["ppo", "--kl-controller", "nope"], ["rm", "--loss", "nope"]])
def test_a_bad_flag_is_one_line_without_torch(argv):
    """A flag the config refuses is one line and exit 2 before the recipe (and torch) loads."""
    result = subprocess.run([sys.executable, "-c", BAD_FLAG.format(argv=argv)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "1", "-"]


def _choices(config, name: str) -> tuple:
    return tuple(next(f for f in dataclasses.fields(config) if f.name == name).metadata["choices"])


def test_light_choices_name_the_tables_they_pick_from():
    """The light configs spell out choices whose tables live in torch modules; they must agree
    (same names, same order, so --help and docs/cli.md list them as the tables do)."""
    pairs = {
        "PREFERENCE_LOSS_CHOICES": (train_configs.PREFERENCE_LOSS_CHOICES, PREFERENCE_LOSSES),
        "RANKING_LOSS_CHOICES": (train_configs.RANKING_LOSS_CHOICES, RANKING_LOSSES),
        "REFERENCE_CHOICES": (train_configs.REFERENCE_CHOICES, STRATEGIES),
        "PREFERENCE_LAYOUT_CHOICES": (train_configs.PREFERENCE_LAYOUT_CHOICES, LAYOUT_CHOICES),
        "REWARD_LAYOUT_CHOICES": (train_configs.REWARD_LAYOUT_CHOICES, REWARD_LAYOUTS),
        "ADVANTAGE_CHOICES": (rl_configs.ADVANTAGE_CHOICES, GROUP_ADVANTAGES),
        "REDUCTION_CHOICES": (rl_configs.REDUCTION_CHOICES, REDUCTIONS),
        "KL_ESTIMATOR_CHOICES": (rl_configs.KL_ESTIMATOR_CHOICES, KL_ESTIMATORS),
        "KL_CONTROLLER_CHOICES": (rl_configs.KL_CONTROLLER_CHOICES, KL_CONTROLLERS),
        "ROLLOUT_LAYOUT_CHOICES": (rl_configs.ROLLOUT_LAYOUT_CHOICES, ROLLOUT_LAYOUTS),
    }
    for name, (light, table) in pairs.items():
        assert light == tuple(table), f"{name} {light} != the table's {tuple(table)}: add the new entry there too"
    assert _choices(train_configs.DPOConfig, "loss") == train_configs.PREFERENCE_LOSS_CHOICES
    assert _choices(rl_configs.PPOConfig, "kl_controller") == rl_configs.KL_CONTROLLER_CHOICES
