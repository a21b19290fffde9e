"""Scale-out: several processes, GPUs or machines (see docs/distributed.md).

- `plugins`: `--distributed auto|ddp|fsdp|zero2|zero3` -> the Accelerate plugin
  (`plan_distributed`), used by `train.engine.make_accelerator`.
- `training`: helpers the loops use so DDP, FSDP and DeepSpeed train alike
  (`micro_batch_sync`, `gradient_norm`, `full_state_dict`, `is_sharded`).
- `processes`: `Processes`, the launcher's processes without an Accelerator (rank, shares,
  gather, reduce), for sampling outside a training loop (`posttrain best-of-n`).
- `launch`: `posttrain launch`, a wrapper around torchrun / accelerate launch.
- `configs`: the shipped Accelerate config files (`resources/accelerate/*.yaml`).

Sampling through a vLLM server lives in `rollout/server_generation.py` (it is a generation
backend). This package sits just above `losses/` in ARCHITECTURE.md's layer order: it
imports nothing from train, rollout or above.
"""
from .plugins import MODES, DistributedPlan, plan_distributed

__all__ = ["MODES", "DistributedPlan", "plan_distributed"]
