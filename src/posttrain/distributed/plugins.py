"""`--distributed auto|ddp|fsdp|zero2|zero3`: the Accelerate plugin behind each choice.

`plan_distributed(args)` turns a training config into the keyword arguments of
`accelerate.Accelerator` (an FSDP or DeepSpeed plugin, or nothing), after
checking that the choice can run here; `DistributedPlan.finish(accelerator)`
completes the set-up once the Accelerator exists.

- `auto` (default): whatever the launcher set up. Under `torchrun` /
  `posttrain launch` that is DDP; under `accelerate launch --config_file X`
  it is what X says (Accelerate passes it on in `ACCELERATE_USE_FSDP`,
  `ACCELERATE_USE_DEEPSPEED`, `FSDP_*`, ... environment variables).
- `ddp`: plain data parallelism, every process holds the whole model.
- `fsdp`: PyTorch FSDP2 (`fully_shard`), full shard: parameters, gradients
  and optimizer state split over the processes; every decoder layer is its own
  unit (gathered just before it runs, freed after). Checkpoints are sharded
  (torch.distributed.checkpoint, one file per process); `final/` is gathered
  into an ordinary Hugging Face directory.
- `zero2` / `zero3`: DeepSpeed ZeRO stage 2 (optimizer state and gradients
  sharded) or 3 (parameters too). GPUs only, and `pip install deepspeed`.
- `--cpu-offload`: fsdp: parameters, gradients and optimizer state live in CPU
  memory between uses; zero2: optimizer state on CPU; zero3: optimizer state
  and parameters on CPU.

FSDP1 (the `FullyShardedDataParallel` wrapper) is not used: under it a model's
own forward cannot be called outside the wrapper, which evaluation and PEFT
references do. Accelerate configs with `fsdp_version: 1` are refused.

FSDP on CPU (for tests): Accelerate 1.x only turns the FSDP plugin on for GPU
(and other accelerator) back-ends; with several CPU processes it silently falls
back to DDP. PyTorch's FSDP2 itself runs on CPU with the gloo back-end, so for
CPU runs `finish` switches Accelerate's state to FSDP after construction, and
the same Accelerate code paths as on GPUs run (sharded prepare, sharded
`save_state`/`load_state`, full-state-dict gathering). On GPUs nothing is
switched: Accelerate sets FSDP up itself.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

MODES = ("auto", "ddp", "fsdp", "zero2", "zero3")


def world_size() -> int:
    """Processes in this run, as the launcher says (1 when started directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def launcher_mode() -> str | None:
    """The mode an `accelerate launch --config_file` asked for, from the environment it set."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return f"zero{int(os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '2'))}"
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def resolve_mode(requested: str) -> str:
    """The mode to use: an explicit `--distributed`, else the launcher's, else ddp (or single process)."""
    if requested not in MODES:
        raise ConfigError("distributed", f"{requested!r} is not one of {', '.join(MODES)}")
    from_launcher = launcher_mode()
    if requested == "auto":
        return from_launcher or "ddp"
    if from_launcher and from_launcher != requested:
        raise ConfigError("distributed", f"--distributed {requested} but the accelerate config of this launch "
                                         f"asks for {from_launcher}; give one of them")
    return requested


# --------------------------------------------------------------------------- FSDP


def fsdp_plugin(cpu_offload: bool, from_environment: bool = False):
    """An FSDP2 full-shard plugin: one unit per decoder layer (the model's `_no_split_modules`),
    sharded checkpoints, optional CPU offload. With `from_environment`, the FSDP_* variables
    of an `accelerate launch` config decide instead (they must say version 2)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    if from_environment:
        version = int(os.environ.get("FSDP_VERSION", "1"))
        if version != 2:
            raise ConfigError("distributed", f"the accelerate config asks for FSDP version {version}; posttrain "
                                             "supports FSDP2 only (set fsdp_version: 2, see docs/distributed.md)")
        return FullyShardedDataParallelPlugin(cpu_offload=_offload_policy() if cpu_offload else None)
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=True,  # full shard (ZeRO-3-like); False would keep layers gathered until backward
        auto_wrap_policy="transformer_based_wrap",
        state_dict_type="SHARDED_STATE_DICT",  # checkpoints: one shard per process, no gather
        cpu_offload=_offload_policy() if cpu_offload else False,
        cpu_ram_efficient_loading=False,  # every process loads the model (posttrain loads before prepare)
    )


def _offload_policy():
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy

    # Pinned memory speeds up host<->GPU copies; there is nothing to pin for on a CPU-only machine.
    return CPUOffloadPolicy(pin_memory=torch.cuda.is_available())


def enable_fsdp_on_cpu(accelerator, plugin) -> None:
    """Make Accelerate run FSDP over gloo on CPU processes (it only does so on GPUs by itself).

    Both shared states (PartialState: collectives; AcceleratorState: prepare,
    save/load, state dicts) must say FSDP, or a later `AcceleratorState()`
    would copy the CPU setting back.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    if not accelerator.is_fsdp2:
        raise RuntimeError("could not switch Accelerate to FSDP2 on CPU")  # an Accelerate change broke this


# --------------------------------------------------------------------------- DeepSpeed


def deepspeed_plugin(stage: int, args, from_environment: bool = False):
    """A DeepSpeed ZeRO plugin that fits posttrain's loop.

    posttrain accumulates gradients itself (it knows every micro-batch of a
    step and normalises the loss by the global item count), so DeepSpeed's own
    accumulation stays at 1: no extra 1/N loss scaling, and the engine marks the
    last micro-batch of each step as the accumulation boundary
    (`micro_batch_sync`). Clipping is DeepSpeed's, at `max_grad_norm`.
    """
    from accelerate.utils import DeepSpeedPlugin

    if from_environment:
        plugin = DeepSpeedPlugin()
        if getattr(args, "cpu_offload", False):  # --cpu-offload on top of the launcher's config
            zero = plugin.deepspeed_config.setdefault("zero_optimization", {})
            zero["offload_optimizer"] = {"device": "cpu"}
            if stage == 3:
                zero["offload_param"] = {"device": "cpu"}
    else:
        offload = "cpu" if getattr(args, "cpu_offload", False) else "none"
        zero: dict[str, Any] = {"stage": stage, "offload_optimizer": {"device": offload},
                                "overlap_comm": True, "contiguous_gradients": True}
        if stage == 3:
            zero["offload_param"] = {"device": offload}
            # final/ needs whole weights: gather them on save (else only ZeRO shards are written).
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        config = {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
        plugin = DeepSpeedPlugin(hf_ds_config=config)
    ds = plugin.deepspeed_config
    # Offline recipes: --batch-size; online RL: sequences per forward/backward (--micro-batch-size).
    micro = getattr(args, "batch_size", None) or getattr(args, "micro_batch_size", 1)
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["train_batch_size"] = micro * world_size()
    ds["gradient_accumulation_steps"] = 1
    plugin.gradient_accumulation_steps = 1
    if args.max_grad_norm > 0:
        ds["gradient_clipping"] = plugin.gradient_clipping = args.max_grad_norm
    else:
        ds.pop("gradient_clipping", None)
        plugin.gradient_clipping = None
    return plugin


# --------------------------------------------------------------------------- the plan


@dataclass
class DistributedPlan:
    mode: str  # resolved: ddp, fsdp, zero2, zero3
    kwargs: dict[str, Any] = field(default_factory=dict)  # for accelerate.Accelerator(...)
    cpu_offload: bool = False
    note: str = ""
    # ACCELERATE_USE_FSDP before the Accelerator existed: given a plugin, Accelerate sets it,
    # and a later command in the same process would take that for the launcher's choice.
    fsdp_variable: str | None = field(default_factory=lambda: os.environ.get("ACCELERATE_USE_FSDP"))

    def finish(self, accelerator) -> None:
        """After `Accelerator(**kwargs)`: switch CPU processes to FSDP; say once what runs."""
        if self.fsdp_variable is None:
            os.environ.pop("ACCELERATE_USE_FSDP", None)
        plugin = self.kwargs.get("fsdp_plugin")
        if plugin is not None and accelerator.device.type == "cpu" and accelerator.num_processes > 1:
            enable_fsdp_on_cpu(accelerator, plugin)
        if accelerator.is_main_process and (accelerator.num_processes > 1 or self.note):
            print(f"distributed: {describe(accelerator, self)}", flush=True)


def describe(accelerator, plan: DistributedPlan) -> str:
    """One line on what actually runs (read back from Accelerate's state, not from the plan)."""
    from accelerate.utils import DistributedType

    world, kind = accelerator.num_processes, accelerator.distributed_type
    mode = "fsdp" if kind == DistributedType.FSDP else plan.mode if kind == DistributedType.DEEPSPEED else "ddp"
    what = {"ddp": "DDP (whole model on every process)", "fsdp": "FSDP2 full shard" if accelerator.is_fsdp2 else "FSDP1",
            "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}[mode]
    if world == 1:
        what = "single process"
    parts = [what, f"{world} process{'es' if world != 1 else ''} ({accelerator.device.type}, "
                   f"{getattr(accelerator.state, 'backend', None) or 'no'} backend)"]
    if plan.cpu_offload and mode != "ddp" and world > 1:
        parts.append("CPU offload")
    if plan.note:
        parts.append(plan.note)
    return "; ".join(parts)


def plan_distributed(args) -> DistributedPlan:
    """Check `args.distributed` (and `args.cpu_offload`) and build the Accelerator's plugin arguments.

    `args` is any training config; one without these fields (older configs) means `auto`.
    """
    requested = getattr(args, "distributed", "auto")
    cpu_offload = bool(getattr(args, "cpu_offload", False))
    mode = resolve_mode(requested)
    from_environment = requested == "auto"
    import torch  # here, not at the top: `posttrain launch --help` and the CLI's checks stay instant

    gpu = torch.cuda.is_available()
    world = world_size()
    if mode == "ddp":
        if cpu_offload:
            raise ConfigError("cpu_offload", "needs a sharded mode: --distributed fsdp, zero2 or zero3")
        return DistributedPlan("ddp")
    if mode in ("zero2", "zero3"):
        if not gpu:
            raise ConfigError("distributed", f"{mode} (DeepSpeed) needs CUDA GPUs; on CPU use ddp or fsdp")
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("distributed", f"{mode} needs DeepSpeed: pip install deepspeed")
        return DistributedPlan(mode, {"deepspeed_plugin": deepspeed_plugin(int(mode[-1]), args, from_environment)},
                               cpu_offload)
    # fsdp
    if world == 1:
        return DistributedPlan("fsdp", {}, cpu_offload,
                               note="fsdp needs several processes (posttrain launch --nproc N ...); running unsharded")
    return DistributedPlan("fsdp", {"fsdp_plugin": fsdp_plugin(cpu_offload, from_environment)}, cpu_offload)
