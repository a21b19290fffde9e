"""Small helpers the training loops use so that DDP, FSDP and DeepSpeed all train the same way."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def is_sharded(accelerator) -> bool:
    """True when parameters are split over processes (FSDP or DeepSpeed): every process must
    then run the same number of forward passes, since each one gathers shards from all."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


@contextlib.contextmanager
def micro_batch_sync(accelerator, model: torch.nn.Module, last: bool) -> Iterator[None]:
    """Around one micro-batch's forward+backward: gradients are reduced over processes only
    on the last micro-batch of an optimizer step.

    DDP and FSDP: `accelerator.no_sync(model)` on the others. DeepSpeed: tell the
    engine whether this backward ends the step (Accelerate reads `sync_gradients`
    and calls `engine.step()` only then); the flag is restored afterwards so the
    optimizer step that follows is not skipped.
    """
    from accelerate.utils import DistributedType

    if last:
        yield
        return
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        state = accelerator.gradient_state
        state._set_sync_gradients(False)
        try:
            yield
        finally:
            state._set_sync_gradients(True)
        return
    with accelerator.no_sync(model):
        yield


def gradient_norm(accelerator, parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0: no clipping) and return the norm before.

    `clip_grad_norm_` knows how to add up sharded (DTensor) gradients; an
    infinite limit measures without scaling anything.
    """
    norm = accelerator.clip_grad_norm_(parameters, max_norm if max_norm > 0 else float("inf"))
    if norm is None:  # DeepSpeed before its first step
        return 0.0
    return float(norm.detach().float().item()) if isinstance(norm, torch.Tensor) else float(norm)


def full_state_dict(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on the main process (call on EVERY process), or None when the
    model is not sharded (then `unwrap_model(model).state_dict()` is the whole model already)."""
    if not is_sharded(accelerator):
        return None
    return accelerator.get_state_dict(model)


def settle_sharded_model(model: torch.nn.Module) -> None:
    """Fix the FSDP2 root to be the whole model, right after `accelerator.prepare`.

    FSDP2 decides lazily, at the first forward, which sharded module is the root
    (the one that owns the per-step bookkeeping). posttrain's log-prob code runs
    the transformer body and the output head separately (logits only where a
    loss needs them), so the first forward would start inside the body and FSDP
    would refuse ("requires running forward through the root module first").
    Initialising from the top-level module first makes such partial calls
    valid: each layer group then gathers and frees its own shards.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()
