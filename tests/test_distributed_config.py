"""--distributed / --cpu-offload resolution, the shipped Accelerate configs, `posttrain launch` command lines,
and the small loop helpers (no processes are started here)."""
from __future__ import annotations

import shlex
import sys
from types import SimpleNamespace

import pytest
import torch

from distributed_worker import accelerate_launch_env
from posttrain.cli import main as cli_main
from posttrain.distributed.configs import SHIPPED, config_path
from posttrain.distributed.launch import LaunchConfig, build_argv, split_argv
from posttrain.distributed.plugins import deepspeed_plugin, launcher_mode, plan_distributed, resolve_mode
from posttrain.errors import ConfigError

LAUNCH_VARIABLES = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "FSDP_VERSION",
                    "FSDP_OFFLOAD_PARAMS", "WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables from the surrounding shell; tests set what they need."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def train_args(**overrides):
    base = dict(distributed="auto", cpu_offload=False, batch_size=4, max_grad_norm=1.0)
    return SimpleNamespace(**{**base, **overrides})


# --------------------------------------------------------------------------- modes


def test_auto_follows_the_launcher_and_an_explicit_mode_must_agree_with_it(clean_env):
    assert resolve_mode("auto") == "ddp"
    assert resolve_mode("fsdp") == "fsdp"
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    assert launcher_mode() == "fsdp" and resolve_mode("auto") == "fsdp"
    with pytest.raises(ConfigError, match="--distributed ddp but the accelerate config of this launch asks for fsdp"):
        resolve_mode("ddp")
    clean_env.delenv("ACCELERATE_USE_FSDP")
    clean_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    clean_env.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert resolve_mode("auto") == "zero3"


def test_fsdp_plan_is_fsdp2_full_shard_with_sharded_checkpoints(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    plugin = plan_distributed(train_args(distributed="fsdp")).kwargs["fsdp_plugin"]
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # the no-offload policy
    offloaded = plan_distributed(train_args(distributed="fsdp", cpu_offload=True)).kwargs["fsdp_plugin"]
    assert type(offloaded.cpu_offload).__name__ == "CPUOffloadPolicy"
    assert offloaded.cpu_offload.pin_memory == torch.cuda.is_available()


def test_fsdp_with_one_process_runs_unsharded_with_a_note(clean_env):
    plan = plan_distributed(train_args(distributed="fsdp"))
    assert plan.kwargs == {} and "needs several processes" in plan.note


def test_an_accelerate_config_asking_for_fsdp1_is_refused(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    clean_env.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP version 1; posttrain supports FSDP2 only"):
        plan_distributed(train_args())


def test_deepspeed_config_leaves_accumulation_and_clipping_to_posttrain():
    plugin = deepspeed_plugin(3, train_args(batch_size=4, max_grad_norm=0.5, cpu_offload=True))
    config = plugin.deepspeed_config
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["gradient_accumulation_steps"] == 1 and config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_clipping"] == 0.5
    zero2 = deepspeed_plugin(2, train_args(max_grad_norm=0)).deepspeed_config
    assert zero2["zero_optimization"]["stage"] == 2 and "offload_param" not in zero2["zero_optimization"]
    assert "gradient_clipping" not in zero2


@pytest.mark.parametrize("flags, message", [
    (["--distributed", "zero2"], "config field 'distributed': zero2 (DeepSpeed) needs CUDA GPUs; on CPU use ddp or fsdp"),
    (["--cpu-offload"], "config field 'cpu_offload': needs a sharded mode: --distributed fsdp, zero2 or zero3"),
    (["--distributed", "fsdp2"], "config field 'distributed': 'fsdp2' is not one of auto, ddp, fsdp, zero2, zero3"),
])
def test_impossible_choices_are_one_line_errors(tmp_path, capsys, clean_env, flags, message):
    if torch.cuda.is_available() and "zero2" in flags:
        pytest.skip("this machine has a GPU")
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]}\n' * 4)
    code = cli_main(["sft", "--model", "tiny-random", "--data", str(data), "--output-dir", str(tmp_path / "run"),
                     "--max-steps", "1", "--batch-size", "2", "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name, mode", [("ddp", None), ("fsdp", "fsdp"), ("fsdp_offload", "fsdp"),
                                        ("zero2", "zero2"), ("zero3", "zero3")])
def test_shipped_configs_launch_the_mode_they_name(clean_env, name, mode):
    assert set(SHIPPED) == {"ddp", "fsdp", "fsdp_offload", "zero2", "zero3"}
    env = accelerate_launch_env(config_path(name))
    for key, value in env.items():
        clean_env.setenv(key, value)
    clean_env.setenv("WORLD_SIZE", "2")
    assert launcher_mode() == mode
    if mode == "fsdp":
        plugin = plan_distributed(train_args()).kwargs["fsdp_plugin"]
        assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "SHARDED_STATE_DICT"
        assert type(plugin.cpu_offload).__name__ == ("CPUOffloadPolicy" if name == "fsdp_offload" else "OffloadPolicy")
    elif mode:
        plugin = deepspeed_plugin(int(mode[-1]), train_args(), from_environment=True)
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == int(mode[-1])
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == 1
        if mode == "zero3":
            assert plugin.zero3_save_16bit_model is True


def test_config_path_names_shipped_configs_and_rejects_missing_files(tmp_path):
    assert config_path("zero3").name == "zero3.yaml" and config_path("zero3").is_file()
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: FSDP\n")
    assert config_path(str(own)) == own
    with pytest.raises(ConfigError, match="nope.yaml: no such file, and not a shipped config"):
        config_path("nope.yaml")


# --------------------------------------------------------------------------- posttrain launch


def test_launch_options_end_at_the_command_word():
    assert split_argv(["--nproc", "2", "--cpu-offload", "sft", "--nproc", "9"]) == (
        ["--nproc", "2", "--cpu-offload"], ["sft", "--nproc", "9"])
    assert split_argv(["--distributed=fsdp", "dpo"]) == (["--distributed=fsdp"], ["dpo"])


def test_launch_builds_torchrun_and_accelerate_command_lines(capsys):
    single = build_argv(LaunchConfig(command=["sft", "--data", "x.jsonl"], nproc=2, distributed="fsdp", cpu_offload=True))
    assert single == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                      "-m", "posttrain.cli", "sft", "--data", "x.jsonl", "--distributed", "fsdp", "--cpu-offload"]
    multi = build_argv(LaunchConfig(command=["dpo"], nproc=8, nnodes=2, node_rank=1, main_address="10.0.0.1",
                                    distributed="zero3"))
    assert multi[3:13] == ["--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
                           "--master_port", "29500"]
    assert multi[-3:] == ["dpo", "--distributed", "zero3"]
    accel = build_argv(LaunchConfig(command=["kto"], nproc=4, nnodes=2, node_rank=1, main_address="h0",
                                    accelerate_config="fsdp"))
    assert accel[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path("fsdp"))]
    assert accel[5:] == ["--num_processes", "8", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "h0",
                         "--main_process_port", "29500", "-m", "posttrain.cli", "kto"]
    assert cli_main(["launch", "--nproc", "3", "--dry-run", "rm", "--data", "p.jsonl"]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[3:6] == ["--nproc_per_node", "3", "--standalone"] and printed[-3:] == ["rm", "--data", "p.jsonl"]


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "2"], "config field 'command': give the command to launch"),
    (["--nnodes", "2", "--node-rank", "2", "sft"], "config field 'node_rank': must be in 0..1, got 2"),
    (["--accelerate-config", "fsdp", "--distributed", "ddp", "sft"], "give --distributed or --accelerate-config, not both"),
    (["--accelerate-config", "missing.yaml", "sft"], "missing.yaml: no such file"),
])
def test_launch_errors_are_one_line(capsys, argv, message):
    assert cli_main(["launch", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- loop helpers


def test_gradient_norm_measures_without_clipping_at_zero_and_clips_otherwise():
    from accelerate import Accelerator

    from posttrain.distributed.training import gradient_norm

    accelerator = Accelerator(cpu=True)
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert gradient_norm(accelerator, params, 0) == pytest.approx(5.0)
    assert params[0].grad.tolist() == [3.0, 0.0, 0.0]  # untouched
    assert gradient_norm(accelerator, params, 1.0) == pytest.approx(5.0)
    assert params[1].grad.norm().item() == pytest.approx(0.8, rel=1e-4)  # scaled by 1/5


def test_deepspeed_micro_batches_mark_only_the_last_as_the_step_boundary():
    from accelerate.utils import DistributedType

    from posttrain.distributed.training import micro_batch_sync

    class State:
        sync_gradients = True

        def _set_sync_gradients(self, value):
            self.sync_gradients = value

    fake = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, gradient_state=State())
    with micro_batch_sync(fake, None, last=False):
        assert fake.gradient_state.sync_gradients is False  # engine.backward only, no engine.step
    assert fake.gradient_state.sync_gradients is True
    with micro_batch_sync(fake, None, last=True):
        assert fake.gradient_state.sync_gradients is True
