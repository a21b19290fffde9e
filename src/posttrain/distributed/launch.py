"""`posttrain launch`: start a training command on several processes (GPUs, or CPU processes).

    posttrain launch --nproc 8 --distributed fsdp sft --model ... --data ...
    posttrain launch --nproc 8 --nnodes 2 --node-rank 0 --main-address 10.0.0.1 --distributed zero3 dpo ...
    posttrain launch --nproc 8 --accelerate-config fsdp sft ...      (a shipped or your own config file)

Without `--accelerate-config` it runs PyTorch's launcher (`python -m torch.distributed.run`,
i.e. torchrun) and adds `--distributed MODE` (and `--cpu-offload`) to the command, whose
engine builds the matching Accelerate plugin. This works on GPUs and, with the gloo
back-end, on CPU processes. With `--accelerate-config FILE` it runs `accelerate launch
--config_file FILE` instead; Accelerate then passes the config to the command through
environment variables (`--distributed auto` reads them). On a machine without GPUs
`accelerate launch` starts a single process, so use the torchrun form there.

The same command line is run on every machine of a multi-node job, with only
`--node-rank` changing (see docs/distributed.md). `--dry-run` prints the command instead.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass

from ..config import help_field, parse_config
from ..errors import ConfigError
from .configs import config_path
from .plugins import MODES


@dataclass
class LaunchConfig:
    command: list[str] = help_field([], "the posttrain command and its options, e.g. sft --model tiny-random --data FILE")
    nproc: int = help_field(0, "processes per machine (0: one per GPU, or 2 on a machine without GPUs)")
    nnodes: int = help_field(1, "machines in the job")
    node_rank: int = help_field(0, "this machine's rank, 0 .. nnodes-1 (rank 0 hosts the rendezvous)")
    main_address: str = help_field("127.0.0.1", "address of the rank-0 machine (multi-node)")
    main_port: int = help_field(0, "rendezvous port on the rank-0 machine (0: a free port on one machine, 29500 across machines)")
    distributed: str = help_field("auto", "added to the command as --distributed (see docs/distributed.md)",
                                  choices=list(MODES))
    cpu_offload: bool = help_field(False, "added to the command as --cpu-offload (fsdp, zero2, zero3)")
    accelerate_config: str | None = help_field(None, "use accelerate launch with this config: a file, or a shipped "
                                               "one (ddp, fsdp, fsdp_offload, zero2, zero3)")
    dry_run: bool = help_field(False, "print the command that would run, and exit")


def default_nproc() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launch options, command): the command starts at the first word that is not an option
    or an option's value (`launch --nproc 2 sft --lr 1` -> `[--nproc, 2]`, `[sft, --lr, 1]`)."""
    flags_without_value = {"--cpu-offload", "--no-cpu-offload", "--dry-run", "--no-dry-run", "-h", "--help"}
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-"):
            break
        i += 1 if word in flags_without_value or "=" in word else 2
    return argv[:i], argv[i:]


def command_flags(cfg: LaunchConfig) -> list[str]:
    """What the launcher adds to the training command."""
    flags = []
    if cfg.distributed != "auto":
        flags += ["--distributed", cfg.distributed]
    if cfg.cpu_offload:
        flags.append("--cpu-offload")
    return flags


def torchrun_argv(cfg: LaunchConfig) -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(cfg.nproc)]
    if cfg.nnodes == 1 and cfg.main_port == 0:
        argv.append("--standalone")  # one machine, any free port
    else:
        argv += ["--nnodes", str(cfg.nnodes), "--node_rank", str(cfg.node_rank),
                 "--master_addr", cfg.main_address, "--master_port", str(cfg.main_port)]
    return argv + ["-m", "posttrain.cli", *cfg.command, *command_flags(cfg)]


def accelerate_argv(cfg: LaunchConfig) -> list[str]:
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(cfg.accelerate_config)),
            "--num_processes", str(cfg.nproc * cfg.nnodes), "--num_machines", str(cfg.nnodes)]
    if cfg.nnodes > 1:
        argv += ["--machine_rank", str(cfg.node_rank), "--main_process_ip", cfg.main_address]
    if cfg.main_port:
        argv += ["--main_process_port", str(cfg.main_port)]
    return argv + ["-m", "posttrain.cli", *cfg.command, *command_flags(cfg)]


def check(cfg: LaunchConfig) -> LaunchConfig:
    if not cfg.command:
        raise ConfigError("command", "give the command to launch, e.g. posttrain launch --nproc 2 sft --model ...")
    if cfg.command[0] == "launch":
        raise ConfigError("command", "launch cannot launch itself")
    cfg.nproc = cfg.nproc or default_nproc()
    if cfg.nproc < 1:
        raise ConfigError("nproc", f"must be at least 1, got {cfg.nproc}")
    if cfg.nnodes < 1:
        raise ConfigError("nnodes", f"must be at least 1, got {cfg.nnodes}")
    if not 0 <= cfg.node_rank < cfg.nnodes:
        raise ConfigError("node_rank", f"must be in 0..{cfg.nnodes - 1}, got {cfg.node_rank}")
    if cfg.nnodes > 1 and cfg.main_port == 0:
        cfg.main_port = 29500  # every machine must agree on it
    if cfg.accelerate_config and cfg.distributed != "auto":
        raise ConfigError("distributed", "the accelerate config already says how to distribute; "
                                         "give --distributed or --accelerate-config, not both")
    return cfg


def build_argv(cfg: LaunchConfig) -> list[str]:
    cfg = check(cfg)
    return accelerate_argv(cfg) if cfg.accelerate_config else torchrun_argv(cfg)


def main(argv: list[str]) -> int:
    options, command = split_argv(argv)
    cfg = parse_config(LaunchConfig, options, prog="posttrain launch", description=__doc__.splitlines()[0])
    cfg.command = command or cfg.command
    full = build_argv(cfg)
    if cfg.dry_run:
        print(shlex.join(full))
        return 0
    return subprocess.call(full)
