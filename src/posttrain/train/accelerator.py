"""The accelerator of a run, and the sums over its processes.

`make_accelerator` turns the run's arguments (mixed precision, trackers, the distributed plan)
into an `accelerate.Accelerator`; `reduce_sums`, `global_sum` and `any_process` are the few
collectives the training loops need (each a no-op with one process).
"""
from __future__ import annotations

import torch

from ..distributed.plugins import plan_distributed
from .args import TrainArgs, check_mixed_precision, check_trackers


def make_accelerator(args: TrainArgs, project_name: str = "posttrain"):
    from accelerate import Accelerator

    mixed = args.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # bf16 autocast also runs on the CPU (as TRL does with use_cpu). Measured on a CPU with AMX it
    # saved only 7-15% of the time for 0.3-0.6 GB more memory (autocast re-casts the weights on
    # every forward; docs/benchmarks.md, "Another machine, and bf16 on the CPU"), so `auto` leaves
    # the CPU in float32. fp16 autocast is a GPU feature.
    check_mixed_precision(mixed)  # (checked when the command line is read, and again here)
    check_trackers(args.report_to)
    forget_other_precision(mixed)
    plan = plan_distributed(args)  # --distributed: DDP, FSDP or DeepSpeed plugin (docs/distributed.md)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed,
                              log_with=args.report_to or None, project_dir=args.output_dir, **plan.kwargs)
    plan.finish(accelerator)
    if args.report_to:
        accelerator.init_trackers(project_name)
    return accelerator


def forget_other_precision(mixed: str) -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed precision; a pipeline (or a test) that runs a float32 stage after a bf16 one in the
    same process needs it. The process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, mixed):
        AcceleratorState._reset_state(reset_partial_state=False)


def reduce_sums(accelerator, sums: dict[str, float]) -> dict[str, float]:
    """Sum a dict of floats over processes (one collective for all keys)."""
    if accelerator.num_processes == 1 or not sums:
        return sums
    keys = sorted(sums)
    tensor = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    tensor = accelerator.reduce(tensor, reduction="sum")
    return dict(zip(keys, tensor.tolist()))


def global_sum(accelerator, value: float) -> float:
    """A number summed over processes."""
    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(tensor, reduction="sum").item() > 0)
