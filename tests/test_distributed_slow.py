"""Slower multi-process checks on CPU (gloo), all against one process with the same global batch:

- DDP for dpo, kto and rm (SFT's DDP check is in test_sft.py);
- FSDP with --cpu-offload, and a LoRA policy whose reference is the adapter switched off;
- `posttrain launch --nproc 2 --distributed fsdp sft ...` end to end;
- the shipped fsdp.yaml: the environment `accelerate launch` derives from it, given to a
  torchrun launch with --distributed auto (accelerate launch itself starts only one process
  on a machine without GPUs).
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from distributed_worker import (
    ROOT,
    accelerate_launch_env,
    final_weights,
    launch,
    recipe_commands,
    train_losses,
    write_data,
)
from posttrain.cli import main as cli_main

pytestmark = pytest.mark.slow

LORA = ["--peft", "lora", "--lora-r", "4", "--lora-dropout", "0", "--reference", "adapter"]


def lora_dpo(data, out, extra):
    [argv] = recipe_commands(data, out, extra, recipes=("dpo",))
    argv = [a if a != "copy" else "adapter" for a in argv]
    output = argv.index("--output-dir")
    argv[output + 1] += "-lora"
    return argv + LORA[:-2]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single-slow")
    data = write_data(root / "data")
    for argv in [*recipe_commands(data, root / "runs", ["--grad-accum", "2"]), lora_dpo(data, root / "runs", ["--grad-accum", "2"])]:
        assert cli_main(argv) == 0, argv
    yield root / "runs"
    shutil.rmtree(root, ignore_errors=True)


def assert_same_run(one, two, label):
    a, b = final_weights(one), final_weights(two)
    assert a.keys() == b.keys(), label
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=5e-5, msg=lambda m: f"{label} {name}: {m}")
    assert train_losses(two) == pytest.approx(train_losses(one), rel=1e-5), label


def test_ddp_two_processes_match_one_process_for_dpo_kto_rm(single, tmp_path):
    data, runs = write_data(tmp_path / "data"), tmp_path / "runs"
    result = launch(recipe_commands(data, runs, ["--grad-accum", "1", "--distributed", "ddp"], recipes=("dpo", "kto", "rm")), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("distributed: DDP (whole model on every process); 2 processes") == 3
    for recipe in ("dpo", "kto", "rm"):
        assert_same_run(single / recipe, runs / recipe, recipe)


def test_fsdp_cpu_offload_and_lora_with_adapter_reference_match_one_process(single, tmp_path):
    data, runs = write_data(tmp_path / "data"), tmp_path / "runs"
    fsdp = ["--grad-accum", "1", "--distributed", "fsdp"]
    commands = [*recipe_commands(data, runs, [*fsdp, "--cpu-offload"], recipes=("sft",)), lora_dpo(data, runs, fsdp)]
    result = launch(commands, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "distributed: FSDP2 full shard; 2 processes (cpu, gloo backend); CPU offload" in result.stdout
    assert_same_run(single / "sft", runs / "sft", "sft offload")
    assert_same_run(single / "dpo-lora", runs / "dpo-lora", "dpo lora")
    assert (runs / "dpo-lora" / "final" / "adapter_model.safetensors").is_file()


def test_posttrain_launch_runs_fsdp_end_to_end(single, tmp_path):
    data = write_data(tmp_path / "data")
    [sft] = recipe_commands(data, tmp_path / "runs", ["--grad-accum", "1"], recipes=("sft",))
    result = subprocess.run([sys.executable, "-m", "posttrain.cli", "launch", "--nproc", "2", "--distributed", "fsdp", *sft],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("distributed: FSDP2 full shard; 2 processes") == 1
    assert_same_run(single / "sft", tmp_path / "runs" / "sft", "launch sft")


def test_shipped_fsdp_config_drives_an_auto_run(single, tmp_path):
    from posttrain.distributed.configs import config_path

    env = accelerate_launch_env(config_path("fsdp"))
    env["ACCELERATE_MIXED_PRECISION"] = "no"  # the config says bf16 for GPUs; CPU runs in fp32
    data = write_data(tmp_path / "data")
    result = launch(recipe_commands(data, tmp_path / "runs", ["--grad-accum", "1", "--mixed-precision", "no"],
                                    recipes=("sft",)), tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "distributed: FSDP2 full shard; 2 processes" in result.stdout
    assert_same_run(single / "sft", tmp_path / "runs" / "sft", "accelerate-config sft")
