"""Numeric settings are range-checked once, in the config layer, for every command (issue 16).

A value out of range (or NaN) is one line naming the field, exit 2, and nothing in the run
directory. Every numeric field of every command's config declares its range, so a new field
cannot forget to.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest

from cli_docs_script import load as load_cli_docs
from posttrain.cli import COMMANDS
from posttrain.cli import main as cli_main
from posttrain.config import AT_LEAST_1, FRACTION, POSITIVE, Range, field_range, from_mapping, is_numeric, parse_config
from posttrain.errors import ConfigError
from posttrain.train.dpo import DPOConfig
from posttrain.train.sft import SFTConfig


def command_configs() -> dict[str, type]:
    """Each command's config dataclass, found the way docs/cli.md finds it."""
    cli_docs = load_cli_docs()
    found = {}
    for name in sorted(COMMANDS):
        config = cli_docs.command_spec(name).config
        if config is not None:
            found[name] = config
    return found


def test_every_numeric_field_of_every_command_declares_a_range():
    configs = command_configs()
    assert {"sft", "dpo", "kto", "rm", "grpo", "ppo", "eval", "generate", "data filter"} <= set(configs)
    missing = [f"{command}: {cls.__name__}.{f.name}" for command, cls in configs.items()
               for f in dataclasses.fields(cls)
               if is_numeric(typing.get_type_hints(cls)[f.name]) and field_range(cls, f) is None]
    assert missing == [], "declare a range (help_field(range=...) or config.FIELD_RANGES) for: " + ", ".join(missing)


def test_every_default_is_inside_its_range():
    """A default outside its own range would make the command unusable without the flag."""
    outside = []
    for command, cls in command_configs().items():
        for f in dataclasses.fields(cls):
            if not is_numeric(typing.get_type_hints(cls)[f.name]) or f.default in (None, dataclasses.MISSING):
                continue
            allowed = field_range(cls, f)  # a field without one fails the test above
            if allowed is not None and allowed.problem(f.default):
                outside.append(f"{command}: {f.name}={f.default}")
    assert outside == []


def test_a_subclass_that_redeclares_a_field_keeps_its_base_range():
    learning_rate = next(f for f in dataclasses.fields(SFTConfig) if f.name == "learning_rate")
    assert "range" not in learning_rate.metadata  # sft.py redeclares it with another help text
    assert field_range(SFTConfig, learning_rate) is POSITIVE


@pytest.mark.parametrize("allowed, value, problem", [
    (AT_LEAST_1, 0, "must be at least 1, got 0"),
    (AT_LEAST_1, 1, None),
    (POSITIVE, 0.0, "must be more than 0, got 0"),
    (POSITIVE, 1e30, None),
    (FRACTION, 1.0, None),
    (FRACTION, 2.0, "must be between 0 and 1, got 2"),
    (Range(0, 1, low_open=True), 0.0, "must be in (0, 1], got 0"),
    (Range(0, 1, high_open=True), 1.0, "must be in [0, 1), got 1"),
    (Range(0, 1, low_open=True, high_open=True), 1.0, "must be strictly between 0 and 1, got 1"),
    (Range(), math.nan, "must be a finite number, got nan"),
    (Range(), -math.inf, "must be a finite number, got -inf"),
])
def test_range_problem_messages(allowed, value, problem):
    assert allowed.problem(value) == problem


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1", "completion": str(i + 1)}) + "\n" for i in range(8)))
    return path


BAD_SFT_SETTINGS = [
    (["--batch-size", "0"], "batch_size", "must be at least 1, got 0"),
    (["--grad-accum", "0"], "grad_accum", "must be at least 1, got 0"),
    (["--learning-rate", "-1e-4"], "learning_rate", "must be more than 0, got -0.0001"),
    (["--learning-rate", "nan"], "learning_rate", "must be a finite number, got nan"),
    (["--max-steps", "-1"], "max_steps", "must be 0 or more, got -1"),
    (["--epochs", "0"], "epochs", "must be more than 0, got 0"),
    (["--warmup-ratio", "2.0"], "warmup_ratio", "must be between 0 and 1, got 2"),
]


@pytest.mark.parametrize("flags, field, problem", BAD_SFT_SETTINGS, ids=[" ".join(case[0]) for case in BAD_SFT_SETTINGS])
def test_bad_sft_setting_is_one_line_exit_2_and_writes_nothing(flags, field, problem, sft_file, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli_main(["sft", "--model", "tiny-random", "--data", str(sft_file), "--output-dir", str(run),
                     "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"posttrain sft: error: config field '{field}': {problem}\n"
    assert not run.exists()


def test_dpo_batch_size_0_is_one_line_exit_2(preference_file, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli_main(["dpo", "--model", "tiny-random", "--data", str(preference_file()), "--output-dir", str(run),
                     "--batch-size", "0"])
    assert code == 2
    assert capsys.readouterr().err == "posttrain dpo: error: config field 'batch_size': must be at least 1, got 0\n"
    assert not run.exists()


def test_a_bad_yaml_value_names_the_file_and_a_flag_can_replace_it(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("batch_size: 0\nlearning_rate: 1e-4\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(SFTConfig, ["--config", str(config)])
    assert str(caught.value) == f"{config}: config field 'batch_size': must be at least 1, got 0"
    assert parse_config(SFTConfig, ["--config", str(config), "--batch-size", "2"]).batch_size == 2


def test_a_bad_flag_over_a_good_yaml_is_not_blamed_on_the_file(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("batch_size: 4\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(SFTConfig, ["--config", str(config), "--grad-accum", "0"])
    assert str(caught.value) == "config field 'grad_accum': must be at least 1, got 0"


def test_pipeline_stages_and_list_items_are_checked_too():
    """`from_mapping` is how pipeline stages build their configs."""
    with pytest.raises(ConfigError, match="stage 'dpo': config field 'loss_weights': must be 0 or more, got -1"):
        from_mapping(DPOConfig, {"loss": ["sigmoid", "ipo"], "loss_weights": [1, -1]}, source="stage 'dpo'")
    with pytest.raises(ConfigError, match="config field 'beta': must be more than 0, got 0"):
        from_mapping(DPOConfig, {"beta": 0})
    assert from_mapping(DPOConfig, {"beta": None}).beta is None  # optional: unset is fine


def test_negative_numbers_in_scientific_notation_are_values_not_flags():
    cfg = parse_config(DPOConfig, ["--loss", "sigmoid", "ipo", "--loss-weights", "1", "2.5e-1"])
    assert cfg.loss_weights == [1.0, 0.25]
    with pytest.raises(ConfigError, match="config field 'warmup_ratio': must be between 0 and 1, got -1e-06"):
        parse_config(SFTConfig, ["--warmup-ratio", "-1E-6"])
    with pytest.raises(ConfigError, match="config field 'learning_rate': must be a finite number, got -inf"):
        parse_config(SFTConfig, ["--learning-rate", "-inf"])
