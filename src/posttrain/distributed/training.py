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
    """Make FSDP2 accept posttrain's partial forward passes; call right after `accelerator.prepare`.

    posttrain's log-prob code runs the transformer body and the output head
    separately (logits only where a loss needs them), so the top-level module's
    forward, and with it FSDP's root hooks, never runs. Two consequences, two fixes:

    1. FSDP2 picks the root lazily, as the first sharded module to run forward;
       starting inside the body it refuses ("requires running forward through
       the root module first"). Initialising from the top-level module fixes the
       root once and for all.
    2. Parameters that belong to no inner FSDP unit (with PEFT: the final norm and
       the output head) sit in the root's group, which only the root's forward
       gathers. A pre-forward hook on each module owning such a parameter gathers
       the root's group first (a no-op when it is already gathered); FSDP's
       end-of-backward callback reduces its gradients and frees it as usual.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return
    model._get_fsdp_state()._lazy_init()

    def gather_root(module, args):
        model.unshard()

    for module in root_owned_modules(model):
        module.register_forward_pre_hook(gather_root)


def root_owned_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Sub-modules (not the root itself) whose own parameters are in the root's FSDP group:
    those not inside any nested FSDP unit."""
    from torch.distributed.fsdp import FSDPModule

    found: list[torch.nn.Module] = []

    def walk(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, FSDPModule):
                continue  # its parameters (and its children's) are its own group
            if next(child.parameters(recurse=False), None) is not None:
                found.append(child)
            walk(child)

    walk(model)
    return found


@contextlib.contextmanager
def full_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Every FSDP2 unit of `model` gathered on entry and kept whole until exit (a no-op when
    the model is not FSDP-sharded). Call on every process.

    For generation: under full shard each forward gathers each layer from all processes,
    so processes would have to run exactly the same forward passes in lockstep, which
    sampling (responses end at different lengths) and an uneven evaluation split do not.
    Inside this context forwards need no communication at all. The price is the whole
    model in memory per process while it lasts (as when TRL/OpenRLHF gather ZeRO-3 weights
    for generation). Only the collectives on entry and exit must match across processes.

    FSDP2 frees a unit's weights after its forward when the unit reshards after forward;
    that is switched off inside (the group's `post_forward_mesh_info`, which
    `FSDPModule.set_reshard_after_forward` sets, saved and restored as it was).
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    # One group can serve several modules (`fully_shard([norm, head])`): each once.
    groups = list({id(g): g for m in units for g in m._get_fsdp_state()._fsdp_param_groups}.values())
    saved = [g.post_forward_mesh_info for g in groups]
    for group in groups:
        group.post_forward_mesh_info = None  # keep gathered after forward
    try:
        for unit in units:  # the same order on every process: these are collectives
            unit.unshard()
        yield
    finally:
        for group, info in zip(groups, saved):
            group.post_forward_mesh_info = info
        for unit in units:
            unit.reshard()
