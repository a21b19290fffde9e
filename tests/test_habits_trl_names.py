"""A TRL user's command line and YAML run with the same meaning (posttrain/trl_names.py).

- TRL / TrainingArguments names are aliases of posttrain's options (`--num_train_epochs`);
- value translations (`--bf16` -> mixed precision bf16, `--use_peft` -> LoRA);
- underscore spellings of posttrain's own flags, and bool flags with a value (`--packing True`);
- a TRL-style YAML works with --config;
- a name without an equivalent is one line naming it and what to use instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.config import from_mapping, parse_config
from posttrain.errors import ConfigError
from posttrain.rl.grpo import GRPOConfig
from posttrain.train.dpo import DPOConfig
from posttrain.train.sft import SFTConfig

TRL_SFT_ARGV = [
    "--model_name_or_path", "tiny-random", "--dataset_name", "a.jsonl", "b.jsonl", "--learning_rate", "1e-4",
    "--num_train_epochs", "3", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
    "--output_dir", "runs/x", "--logging_steps", "5", "--save_steps", "10", "--eval_steps", "20",
    "--report_to", "none", "--max_length", "512", "--warmup_ratio", "0.1", "--lr_scheduler_type", "linear",
    "--seed", "3", "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--packing", "True",
    "--gradient_checkpointing", "false", "--save_total_limit", "5", "--bf16", "False",
]


def test_a_trl_sft_command_line_sets_the_same_options():
    cfg = parse_config(SFTConfig, TRL_SFT_ARGV)
    assert (cfg.model, cfg.data, cfg.learning_rate, cfg.epochs) == ("tiny-random", ["a.jsonl", "b.jsonl"], 1e-4, 3.0)
    assert (cfg.batch_size, cfg.grad_accum, cfg.output_dir) == (4, 2, "runs/x")
    assert (cfg.log_every, cfg.save_every, cfg.eval_every, cfg.keep_last) == (5, 10, 20, 5)
    assert (cfg.report_to, cfg.max_length, cfg.warmup_ratio, cfg.lr_scheduler, cfg.seed) == ([], 512, 0.1, "linear", 3)
    assert (cfg.peft, cfg.lora_r, cfg.lora_alpha) == ("lora", 8, 16.0)
    assert (cfg.packing, cfg.gradient_checkpointing, cfg.mixed_precision) == (True, False, "no")


def test_the_same_options_from_a_trl_style_yaml(tmp_path):
    config = tmp_path / "trl.yaml"
    config.write_text("model_name_or_path: tiny-random\ndataset_name: a.jsonl\nnum_train_epochs: 2\n"
                      "per_device_train_batch_size: 2\ngradient_accumulation_steps: 4\nbf16: true\n"
                      "use_peft: true\nlr_scheduler_type: constant_with_warmup\nreport_to: none\n"
                      "load_best_model_at_end: true\nmetric_for_best_model: eval_loss\ngreater_is_better: false\n"
                      "eval_strategy: steps\nsave_strategy: 'no'\noptim: adamw_torch\n", encoding="utf-8")
    cfg = parse_config(SFTConfig, ["--config", str(config), "--learning_rate", "3e-4"])
    assert (cfg.model, cfg.data, cfg.epochs, cfg.batch_size, cfg.grad_accum) == ("tiny-random", ["a.jsonl"], 2.0, 2, 4)
    assert (cfg.mixed_precision, cfg.peft, cfg.lr_scheduler, cfg.report_to) == ("bf16", "lora", "constant", [])
    assert (cfg.keep_best, cfg.early_stopping_metric, cfg.early_stopping_mode) == (True, "eval/loss", "min")
    assert (cfg.save_every, cfg.optimizer, cfg.learning_rate) == (0, "adamw", 3e-4)


def test_dpo_and_grpo_names():
    dpo = parse_config(DPOConfig, ["--beta", "0.2", "--loss_type", "ipo", "--max_length", "256"])
    assert (dpo.beta, dpo.loss, dpo.max_length) == (0.2, ["ipo"], 256)
    grpo = parse_config(GRPOConfig, ["--num_generations", "4", "--max_completion_length", "32", "--beta", "0.01"])
    assert (grpo.num_samples, grpo.max_new_tokens, grpo.kl_coef) == (4, 32, 0.01)


def test_underscore_spellings_of_posttrain_flags():
    cfg = parse_config(SFTConfig, ["--grad_accum", "3", "--eval_fraction", "0.2", "--lora_target_modules", "q_proj",
                                   "--no_progress", "--padding_free"])
    assert (cfg.grad_accum, cfg.eval_fraction, cfg.lora_target_modules, cfg.progress, cfg.padding_free) == (
        3, 0.2, ["q_proj"], False, True)


@pytest.mark.parametrize("argv, expected", [
    (["--push_to_hub"], "posttrain sft: error: config field 'push_to_hub': no posttrain equivalent: upload the run's "
                        "final/ directory yourself (huggingface-cli upload REPO runs/NAME/final)"),
    (["--lr_scheduler_type", "polynomial"], "posttrain sft: error: config field 'lr_scheduler_type': 'polynomial' has no "
                                            "equivalent: posttrain has --lr-scheduler cosine, linear and constant "
                                            "(each after --warmup-steps)"),
    (["--save_strategy", "epoch"], "posttrain sft: error: config field 'save_strategy': 'epoch' has no equivalent: "
                                   "posttrain checkpoints every N optimizer steps (--save-every N)"),
])
def test_a_name_without_equivalent_is_one_line(argv, expected, capsys):
    assert main(["sft", *argv, "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == expected and err.count("\n") == 1


def test_a_yaml_name_without_equivalent_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"trl.yaml.*deepspeed.*--distributed zero2 or zero3"):
        from_mapping(SFTConfig, {"deepspeed": "ds.json"}, source=str(tmp_path / "trl.yaml"))


def test_ignored_names_say_so(capsys):
    cfg = parse_config(SFTConfig, ["--do_train", "--seed", "4"])
    assert cfg.seed == 4
    assert "note: do_train is ignored (the command trains)" in capsys.readouterr().err


def test_a_trl_name_the_command_lacks_is_an_unknown_flag(capsys):
    # --beta is DPO's; sft has no such option.
    assert main(["sft", "--beta", "0.1", "--data", "x.jsonl"]) == 2
    assert capsys.readouterr().err.startswith("posttrain sft: error: unrecognized arguments: --beta 0.1")


def test_a_trl_command_line_trains(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    assert main(["sft", "--model_name_or_path", "tiny-random", "--dataset_name", str(data), "--output_dir", str(out),
                 "--per_device_train_batch_size", "4", "--max_steps", "2", "--logging_steps", "1",
                 "--report_to", "none", "--no_progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert Path(out / "final" / "config.json").is_file()


def test_trl_bf16_on_a_cpu_trains_under_bf16_autocast(tmp_path):
    """TRL (with use_cpu) trains in bf16 autocast on a CPU; `--bf16 true` must do the same here,
    not stop with "needs a GPU". The loss differs from float32's (autocast is really on) but
    only in the digits bf16 rounds."""
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i} b{i}"}) + "\n" for i in range(8)))
    losses = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        assert main(["sft", "--model_name_or_path", "tiny-random", "--dataset_name", str(data), "--output_dir", str(out),
                     "--per_device_train_batch_size", "4", "--max_steps", "2", "--bf16", flag, "--no_progress"]) == 0
        losses[flag] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
    assert len(losses["true"]) == len(losses["false"]) == 2
    assert losses["true"] != losses["false"]
    assert losses["true"] == pytest.approx(losses["false"], rel=0.02)


def test_fp16_on_a_cpu_is_one_line_before_anything_is_loaded_or_written(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    out = tmp_path / "run"
    assert main(["sft", "--model_name_or_path", "tiny-random", "--dataset_name", str(tmp_path / "absent.jsonl"),
                 "--output_dir", str(out), "--fp16"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("posttrain sft: error: config field 'mixed_precision': fp16 needs a GPU; "
                           "use 'bf16', 'no' or 'auto' on CPU")
    assert not out.exists()


def test_docs_coming_from_trl_lists_every_name():
    from posttrain import trl_names

    text = (Path(__file__).resolve().parent.parent / "docs" / "coming-from-trl.md").read_text(encoding="utf-8")
    names = [*trl_names.RENAMES, *trl_names.TRANSLATIONS, *trl_names.NO_EQUIVALENT, *trl_names.IGNORED]
    assert [name for name in names if f"`--{name}" not in text] == []
