"""The `posttrain` dispatcher and every command's front door, in-process (fast).

Every COMMANDS entry must import, answer `--help` with its usage and exit 0, and turn a
missing required input into one line on stderr with exit code 2 (no traceback, no files).
A new command is covered automatically by the import and --help tests; the missing-input
test asks its author to say what a minimal failing invocation is (see REQUIRED_INPUT).
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

import cli_docs_script
from posttrain.cli import COMMANDS, main

NAMES = sorted(COMMANDS)
ROOT = Path(__file__).resolve().parent.parent


_gen_cli_docs = cli_docs_script.load


# Run with no arguments, each command must say which input is missing (a fragment of the message).
REQUIRED_INPUT: dict[str, str] = {
    "ab": "config field 'logs'",
    "best-of-n": "config field 'prompts'",
    "cai": "config field 'prompts'",
    "data agreement": "no input file given",
    "data bias": "no input file given",
    "data check": "config field 'file'",
    "data dedup": "no input file given",
    "data filter": "no input file given",
    "data validate": "no input file given",
    "dpo": "config field 'data'",
    "eval": "config field 'suite'",
    "export": "config field 'model'",
    "generate": "config field 'prompts'",
    "grpo": "config field 'prompts'",
    "judge": "config field 'input'",
    "kto": "config field 'data'",
    "launch": "config field 'command'",
    "pairs": "config field 'input'",
    "ppo": "config field 'prompts'",
    "report": "config field 'run_dir'",
    "rloo": "config field 'prompts'",
    "rm": "config field 'data'",
    "run": "config field 'pipeline'",
    "safety pairs": "config field 'transcript'",
    "score": "config field 'model'",
    "serve export": "config field 'output'",
    "serve import": "config field 'input'",
    "serve token": "config field 'annotator'",
    "sft": "config field 'data'",
}
# Commands that do real work with every option at its default: no "missing input" to test.
NO_REQUIRED_INPUT = {
    "serve": "starts the web app on serve.db",
    "redteam": "red-teams the default model with the shipped attacks",
}


def _one_line_error(capsys, name: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert "\n" not in err, f"expected one line, got:\n{err}"
    assert err.startswith(f"posttrain {name}: error: "), err
    return err


@pytest.mark.parametrize("name", NAMES)
def test_every_command_imports(name):
    target, help_line = COMMANDS[name]
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    assert callable(function)
    assert help_line and "\n" not in help_line and len(help_line) < 120


@pytest.mark.parametrize("name", NAMES)
def test_help_exits_0_and_lists_every_option(name, capsys):
    assert main([*name.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: posttrain {name} "), out[:200]
    config = _gen_cli_docs().command_spec(name).config
    if config is not None:  # the options shown are those of the config the command parses
        for f in dataclasses.fields(config):
            assert "--" + f.name.replace("_", "-") in out, f"--help of {name} does not show {f.name}"


def test_no_arguments_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: posttrain <command>")
    for name in NAMES:
        assert f"\n  {name} " in out, name
        assert COMMANDS[name][1] in out


def test_help_flag_and_version(capsys):
    assert main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out
    from posttrain import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_unknown_command_exits_2_with_the_command_list(capsys):
    assert main(["frobnicate", "--x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("posttrain: unknown command 'frobnicate --x'")
    assert "usage: posttrain <command>" in captured.err and "\n  sft " in captured.err


def test_unknown_word_in_a_group_suggests_the_group(capsys):
    assert main(["data", "chek", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("posttrain: unknown command 'data chek'")
    assert "did you mean: data agreement, data bias, data check" in first


def test_unknown_flag_is_one_line_naming_it(capsys):
    assert main(["sft", "--lerning-rate", "1e-4"]) == 2
    err = _one_line_error(capsys, "sft")
    assert "unrecognized arguments: --lerning-rate" in err


def test_ill_typed_flag_names_the_field(capsys):
    assert main(["sft", "--max-steps", "ten", "--data", "x.jsonl"]) == 2
    err = _one_line_error(capsys, "sft")
    assert "config field 'max_steps'" in err and "'ten'" in err


def test_every_command_is_classified():
    """A new command must be added to REQUIRED_INPUT (or NO_REQUIRED_INPUT, with a reason)."""
    unclassified = set(COMMANDS) - set(REQUIRED_INPUT) - set(NO_REQUIRED_INPUT)
    assert not unclassified, f"add these commands to tests/test_cli.py REQUIRED_INPUT: {sorted(unclassified)}"
    assert not (set(REQUIRED_INPUT) | set(NO_REQUIRED_INPUT)) - set(COMMANDS)


@pytest.mark.parametrize("name", sorted(REQUIRED_INPUT))
def test_missing_required_input_is_one_line_exit_2_and_writes_nothing(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(name.split()) == 2
    err = _one_line_error(capsys, name)
    assert REQUIRED_INPUT[name] in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["data", "check", "missing.jsonl"],
    ["pairs", "--input", "missing.jsonl"],
    ["ab", "missing.jsonl"],
    ["data", "validate", "missing.jsonl"],
    ["safety", "pairs", "missing.jsonl"],
    ["dpo", "--model", "tiny-random", "--data", "missing.jsonl"],
    ["generate", "--model", "tiny-random", "--prompts", "missing.jsonl"],
])
def test_a_missing_file_is_named(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    name = " ".join(argv[:2]) if argv[0] in ("data", "safety") else argv[0]
    err = _one_line_error(capsys, name)
    assert err.endswith("missing.jsonl: file not found")
