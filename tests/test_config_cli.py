"""The command line behaves the same way in every command (posttrain.config and its users).

- flags must be spelt in full (no argparse abbreviations);
- list flags add up over repeats, and a flag replaces the YAML list;
- mapping fields have a flag form (KEY=VALUE pairs);
- one spelling per concept, the old spellings kept as aliases (flags and YAML keys);
- dpo/kto take several data files, like sft/rm; a YAML string is a one-element list;
- sft/rm/dpo/kto check their data before they make a run directory;
- best-of-n and generate print a progress line per generation batch.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.config import build_parser, from_mapping, help_field, parse_config
from posttrain.errors import ConfigError, PosttrainError


def write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@dataclass
class Toy:
    data: list[str] = help_field([], "files")
    learning_rate: float = help_field(1e-5, "peak learning rate")
    lr_scheduler: str = help_field("cosine", "schedule")
    max_new_tokens: int = help_field(16, "longest response", aliases=["max_tokens"])
    weights: dict[str, float] | None = help_field(None, "weights")


# --------------------------------------------------------------------------- 1. no abbreviations


def test_an_abbreviated_flag_is_an_error_not_a_prefix_match():
    # With argparse's default, `--learning` would set learning_rate and `--lr` lr_scheduler.
    for flag in ("--learning", "--lr"):
        with pytest.raises(PosttrainError, match=f"unrecognized arguments: {flag} 0.1"):
            parse_config(Toy, [flag, "0.1"])


def test_an_unknown_flag_names_the_closest_ones(capsys):
    err = one_line_error(capsys, ["sft", "--learnin-rate", "1e-4"])
    assert err == ("posttrain sft: error: unrecognized arguments: --learnin-rate 1e-4 "
                   "(did you mean --learning-rate?)")


# --------------------------------------------------------------------------- 2. list flags


def test_repeated_list_flags_add_up():
    assert parse_config(Toy, ["--data", "a", "--data", "b", "c"]).data == ["a", "b", "c"]
    assert parse_config(Toy, ["--data=a", "--data", "b"]).data == ["a", "b"]


def test_a_list_flag_replaces_the_yaml_list(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: [y1.jsonl, y2.jsonl]\n")
    assert parse_config(Toy, ["--config", str(config)]).data == ["y1.jsonl", "y2.jsonl"]
    assert parse_config(Toy, ["--config", str(config), "--data", "a", "--data", "b"]).data == ["a", "b"]


def test_repeated_reward_flags_reach_the_rl_config():
    from posttrain.rl.grpo import GRPOConfig

    cfg = parse_config(GRPOConfig, ["--reward", "math", "--reward", "length:0.1", "--stop", "A", "--stop", "B"])
    assert (cfg.reward, cfg.stop) == (["math", "length:0.1"], ["A", "B"])


# --------------------------------------------------------------------------- 3. mapping flags


def test_a_mapping_flag_takes_key_value_pairs():
    cfg = parse_config(Toy, ["--weights", "math=1", "rm:runs/rm=0.5", "--weights", "x=2"])
    assert cfg.weights == {"math": 1.0, "rm:runs/rm": 0.5, "x": 2.0}
    with pytest.raises(ConfigError, match="field 'weights': expected KEY=VALUE, got 'math'"):
        parse_config(Toy, ["--weights", "math"])
    with pytest.raises(ConfigError, match=r"field 'weights.math': expected a number, got 'high'"):
        parse_config(Toy, ["--weights", "math=high"])


def test_reward_weights_on_the_command_line_equal_the_yaml_mapping(tmp_path):
    from posttrain.rl.grpo import GRPOConfig
    from posttrain.rl.rewards import parse_reward_specs

    config = tmp_path / "grpo.yaml"
    config.write_text("reward_weights:\n  answer_format: 0.1\n  'rm:runs/rm': 0.5\n")
    from_yaml = parse_config(GRPOConfig, ["--config", str(config)])
    from_flags = parse_config(GRPOConfig, ["--reward-weights", "answer_format=0.1", "rm:runs/rm=0.5"])
    assert from_flags.reward_weights == from_yaml.reward_weights == {"answer_format": 0.1, "rm:runs/rm": 0.5}
    specs = parse_reward_specs(from_flags.reward, from_flags.reward_weights)
    assert [(s.name, s.weight) for s in specs] == [("answer_format", 0.1), ("rm:runs/rm", 0.5)]


def test_a_bad_mapping_flag_is_one_line(capsys):
    err = one_line_error(capsys, ["grpo", "--reward-weights", "math"])
    assert err == "posttrain grpo: error: config field 'reward_weights': expected KEY=VALUE, got 'math'"


def test_every_field_of_every_command_is_a_flag_of_its_type():
    """No field is YAML-only: a mapping is KEY=VALUE pairs; other types are str/int/float/bool/list."""
    for cls in _command_configs():
        parser = build_parser(cls, "x")
        flags = {s for a in parser._actions for s in a.option_strings}
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in flags, (cls.__name__, f.name)
            assert "YAML only" not in f.metadata.get("help", ""), (cls.__name__, f.name)


# --------------------------------------------------------------------------- 4. one spelling per concept


# old spelling -> canonical field name, for the concepts the commands share
RENAMED = {"max_tokens": "max_new_tokens", "judge_max_tokens": "judge_max_new_tokens",
           "attacker_max_tokens": "attacker_max_new_tokens", "critique_max_tokens": "critique_max_new_tokens",
           "n": "num_samples", "samples": "num_samples", "judge": "judge_model", "cliprange": "epsilon",
           "cliprange_high": "epsilon_high", "mu": "ppo_epochs"}


def _command_configs() -> list[type]:
    from posttrain.commands.cai import CaiConfig
    from posttrain.commands.generate import GenerateConfig
    from posttrain.evaluate.run import EvalConfig
    from posttrain.judge.command import JudgeConfig
    from posttrain.rl.best_of_n import BestOfNConfig
    from posttrain.rl.grpo import GRPOConfig, RLOOConfig
    from posttrain.rl.ppo import PPOConfig
    from posttrain.safety.command import RedteamConfig, SafetyPairsConfig
    from posttrain.safety.stage import SafetyStageConfig
    from posttrain.serve.commands import ServeConfig
    from posttrain.train.dpo import DPOConfig
    from posttrain.train.kto import KTOConfig
    from posttrain.train.reward import RMConfig
    from posttrain.train.sft import SFTConfig

    return [CaiConfig, EvalConfig, GenerateConfig, JudgeConfig, BestOfNConfig, GRPOConfig, RLOOConfig, PPOConfig,
            RedteamConfig, SafetyPairsConfig, SafetyStageConfig, ServeConfig, DPOConfig, KTOConfig, RMConfig, SFTConfig]


def test_no_command_uses_an_old_spelling_as_a_field_name():
    for cls in _command_configs():
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & set(RENAMED), (cls.__name__, names & set(RENAMED))
        for old, new in RENAMED.items():  # where the concept exists, the old name still works
            if new in names:
                assert from_mapping(cls, {old: 3 if new != "judge_model" else "m"}) == \
                    from_mapping(cls, {new: 3 if new != "judge_model" else "m"}), (cls.__name__, old)


@pytest.mark.parametrize("command, cls, old, new, field, value", [
    ("judge", "posttrain.judge.command:JudgeConfig", "--max-tokens", "--max-new-tokens", "max_new_tokens", 7),
    ("eval", "posttrain.evaluate.run:EvalConfig", "--samples", "--num-samples", "num_samples", 4),
    ("generate", "posttrain.commands.generate:GenerateConfig", "--n", "--num-samples", "num_samples", 3),
    ("grpo", "posttrain.rl.grpo:GRPOConfig", "--beta", "--kl-coef", "kl_coef", 0.5),
    ("grpo", "posttrain.rl.grpo:GRPOConfig", "--mu", "--ppo-epochs", "ppo_epochs", 2),
    ("ppo", "posttrain.rl.ppo:PPOConfig", "--cliprange", "--epsilon", "epsilon", 0.1),
    ("redteam", "posttrain.safety.command:RedteamConfig", "--judge", "--judge-model", "judge_model", "m"),
])
def test_old_and_new_flags_set_the_same_field(command, cls, old, new, field, value):
    import importlib

    module, name = cls.split(":")
    config_class = getattr(importlib.import_module(module), name)
    a = parse_config(config_class, [old, str(value)])
    b = parse_config(config_class, [new, str(value)])
    assert getattr(a, field) == getattr(b, field) == value and a == b


def test_dpo_beta_is_not_the_rl_kl_coefficient():
    """Different concepts keep different names: DPO's beta is the implicit reward's temperature."""
    from posttrain.train.dpo import DPOConfig

    assert parse_config(DPOConfig, ["--beta", "0.3"]).beta == 0.3
    with pytest.raises(PosttrainError, match="unrecognized arguments: --kl-coef"):
        parse_config(DPOConfig, ["--kl-coef", "0.3"])


def test_yaml_takes_old_keys_but_not_both_spellings(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_tokens: 5\n")
    assert parse_config(Toy, ["--config", str(config)]).max_new_tokens == 5
    assert parse_config(Toy, ["--config", str(config), "--max-new-tokens", "9"]).max_new_tokens == 9
    with pytest.raises(ConfigError, match="field 'max_new_tokens': given twice, as 'max-tokens' and as 'max_new_tokens'"):
        from_mapping(Toy, {"max-tokens": 5, "max_new_tokens": 6})


def test_the_help_names_the_canonical_flag_and_its_aliases(capsys):
    assert main(["judge", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-new-tokens MAX_NEW_TOKENS" in out and "(also --max-tokens)" in " ".join(out.split())
    assert "--max-tokens MAX" not in out  # listed once, under the canonical flag


def test_pipeline_defaults_and_stage_settings_under_either_spelling(tmp_path):
    from posttrain.pipeline import load_pipeline, stage_config

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("defaults: {n: 3, model: tiny-random}\nstages:\n"
                        "  - {name: a, type: best-of-n, with: {prompts: p.jsonl}}\n"
                        "  - {name: b, type: best-of-n, with: {prompts: p.jsonl, num_samples: 2}}\n"
                        "  - {name: c, type: generate, with: {prompts: p.jsonl, samples: 5}}\n")
    loaded = load_pipeline(str(pipeline))
    configs = [stage_config(s, s.settings, tmp_path / s.name, str(pipeline)) for s in loaded.stages]
    assert [c.num_samples for c in configs] == [3, 2, 5]


# --------------------------------------------------------------------------- 5. dpo/kto take several files


@pytest.mark.parametrize("module, cls", [("posttrain.train.dpo", "DPOConfig"), ("posttrain.train.kto", "KTOConfig")])
def test_dpo_and_kto_data_is_a_list_and_a_yaml_string_is_one_file(tmp_path, module, cls):
    import importlib

    config_class = getattr(importlib.import_module(module), cls)
    assert parse_config(config_class, ["--data", "a.jsonl", "--data", "b.jsonl"]).data == ["a.jsonl", "b.jsonl"]
    config = tmp_path / "c.yaml"
    config.write_text("data: a.jsonl\n")
    assert parse_config(config_class, ["--config", str(config)]).data == ["a.jsonl"]


def test_dpo_trains_on_several_files_concatenated(tmp_path, capsys, preference_file):
    first, second = preference_file(n=3, seed=1, name="a.jsonl"), preference_file(n=5, seed=2, name="b.jsonl")
    out = tmp_path / "run"
    code = main(["dpo", "--model", "tiny-random", "--data", str(first), "--data", str(second), "--output-dir", str(out),
                 "--no-progress", "--batch-size", "2", "--max-steps", "1", "--max-length", "64"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "data_report.json").read_text())
    assert [(report[k]["path"], report[k]["examples"]) for k in ("train/1", "train/2")] == [(str(first), 3), (str(second), 5)]
    assert "3 rows -> 3 examples" in capsys.readouterr().out


def test_load_data_concatenates_in_order_with_per_file_indices(preference_file):
    from types import SimpleNamespace

    from posttrain.data import get_template
    from posttrain.models import load_tokenizer
    from posttrain.train.preference_data import load_data, load_pairs

    tokenizer = load_tokenizer("tiny-random", padding_side="right")
    paths = [str(preference_file(n=2, seed=1, name="a.jsonl")), str(preference_file(n=3, seed=2, name="b.jsonl"))]
    cfg = SimpleNamespace(data=paths, eval_data=None, eval_fraction=0.0, limit=0, max_length=64, length_policy="drop",
                          invalid_rows="error", seed=0)
    train, held_out, files, _ = load_data(cfg, tokenizer, get_template("auto", tokenizer), load_pairs)
    assert [e.source.rsplit(":", 1)[0] for e in train] == [paths[0]] * 2 + [paths[1]] * 3
    assert [e.index for e in train] == [0, 1, 0, 1, 2]  # each file's rows index its own reference cache
    assert [(p, len(examples)) for p, examples in files] == [(paths[0], 2), (paths[1], 3)] and held_out == []


# --------------------------------------------------------------------------- 6. inputs before the run directory


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "kto"])
def test_a_missing_data_file_leaves_no_run_directory(tmp_path, capsys, command):
    out = tmp_path / "run"
    missing = tmp_path / "missing.jsonl"
    err = one_line_error(capsys, [command, "--model", "tiny-random", "--data", str(missing), "--output-dir", str(out)])
    assert err == f"posttrain {command}: error: {missing}: file not found"
    assert not out.exists()


@pytest.mark.parametrize("command", ["sft", "rm"])
def test_a_bad_row_leaves_no_run_directory(tmp_path, capsys, command):
    out = tmp_path / "run"
    data = write(tmp_path / "bad.jsonl", [{"no_known_field": 1}])
    err = one_line_error(capsys, [command, "--model", "tiny-random", "--data", data, "--output-dir", str(out),
                                  "--no-progress"])
    assert err.startswith(f"posttrain {command}: error: {data}:1")
    assert not out.exists()


# --------------------------------------------------------------------------- 7. progress while sampling


def _prompts(tmp_path: Path, count: int) -> str:
    return write(tmp_path / "prompts.jsonl", [{"prompt": f"Say something {i}"} for i in range(count)])


def test_best_of_n_prints_a_progress_line_per_generation_batch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["best-of-n", "--model", "tiny-random", "--prompts", _prompts(tmp_path, 3), "--reward", "answer_format",
            "--num-samples", "2", "--max-new-tokens", "4", "--generation-batch-size", "2", "--keep-truncated"]
    assert main(argv + ["--output-dir", str(tmp_path / "a")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("generate round 1:")]
    assert [line.split(",")[0:2] for line in lines] == [["generate round 1: 2/3 prompts", " 4 responses"],
                                                         ["generate round 1: 3/3 prompts", " 6 responses"]]
    assert all(line.endswith("tokens/s") for line in lines)
    assert main(argv + ["--output-dir", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "generate round" not in capsys.readouterr().err


def test_generate_prints_a_progress_line_per_batch(tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--model", "tiny-random", "--prompts", _prompts(tmp_path, 3), "--n", "2",
                 "--max-new-tokens", "3", "--batch-size", "2", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "generate tiny-random: 2/3 prompts, 4 responses" in err and "generate tiny-random: 3/3 prompts, 6 responses" in err
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.parametrize("flag, suggestion", [
    ("--lr", "--learning-rate"),
    ("--bs", "--batch-size"),
])  # (TRL's full names, --num_train_epochs and the like, are aliases: tests/test_habits_trl_names.py)
def test_names_from_other_tools_get_the_posttrain_spelling_suggested(flag, suggestion, capsys):
    assert main(["sft", flag, "2", "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"posttrain sft: error: unrecognized arguments: {flag} 2 (did you mean {suggestion}")
    assert len(err.splitlines()) == 1
