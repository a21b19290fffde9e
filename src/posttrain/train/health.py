"""Is the run still healthy? Checks that the training loops make after each step and before each save.

A diverging run must stop (or say so loudly) at the step where it went wrong, naming the last
checkpoint that is really good; it must not write "good" checkpoints full of 1e30s, nor train
on for hundreds of steps on weights that no longer learn.

What is checked, and why each way:
- The loss and the gradient norm of every step (free: both are computed anyway). A non-finite
  one stops the run before the update.
- A gradient norm of exactly 0 after nonzero ones. Saturated, exploded weights give it (a huge
  learning rate: logits so large that softmax is one-hot), but so can a healthy run (GRPO groups
  whose rewards are all equal, a hinge loss whose margins are all met). So it triggers a weight
  check; if the weights are sound it is a loud warning, not a stop (online RL: no warning, since a
  batch whose advantages are all 0 legitimately has no gradient).
- A finite gradient norm far above the recent ones (a spike): a loud warning.
- The trainable weights: non-finite, or larger in magnitude than any trained transformer holds
  (`WEIGHT_LIMIT`). Reading every weight of a full model costs about a second per 100M values on
  a CPU, so it runs before every checkpoint and final save, and after every step only when the
  trainable weights are few (LoRA, small models).

The functions here are pure (numbers or tensors in, a message out) so that the offline engine and
the online RL loop share them; the caller decides how to stop and which checkpoint to name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

# Trained transformer weights are O(1) (SmolLM2-135M's largest magnitude is 9.25); a weight
# above this has been blown up by the optimizer, and every activation it touches saturates.
WEIGHT_LIMIT = 1e4
# Check the weights after every step when there are at most this many trainable values.
PER_STEP_WEIGHT_CHECK_MAX_VALUES = 10_000_000
# A gradient norm this many times the recent average is reported as a spike.
SPIKE_FACTOR = 1000.0


@dataclass
class StepHealth:
    """What the step checks remember from earlier steps of this run (since its start or resume)."""

    nonzero_grad_seen: bool = False
    recent_grad_norm: float | None = None  # exponential moving average of the finite norms seen


@dataclass
class StepVerdict:
    """`stop`: why the update must not be applied; `warning`: what to print loudly; `check_weights`:
    whether the weights must be checked now (a collapsed gradient)."""

    stop: str | None = None
    warning: str | None = None
    check_weights: bool = False


def check_step_health(loss: float, grad_norm: float, memory: StepHealth, zero_grad_expected: bool = False) -> StepVerdict:
    """Judge one step from its loss and (pre-clipping) gradient norm; updates `memory`.

    `zero_grad_expected`: a zero gradient is an ordinary event for this recipe (online RL: every
    advantage of the batch is 0 when all samples of every group scored the same), so it still
    triggers the weight check but no warning."""
    if not math.isfinite(loss):
        return StepVerdict(stop=f"loss is {loss}")
    if not math.isfinite(grad_norm):
        return StepVerdict(stop=f"gradient norm is {grad_norm}")
    if grad_norm == 0.0:
        if zero_grad_expected:
            return StepVerdict(check_weights=memory.nonzero_grad_seen)
        if memory.nonzero_grad_seen:
            return StepVerdict(check_weights=True, warning="the gradient norm is exactly 0 after nonzero steps: "
                               "nothing is learned from this batch (saturated weights, or a loss that is flat here)")
        return StepVerdict()
    verdict = StepVerdict()
    recent = memory.recent_grad_norm
    if recent is not None and grad_norm > SPIKE_FACTOR * recent:
        verdict.warning = f"gradient norm spiked to {grad_norm:.3g} (recent average {recent:.3g})"
    memory.nonzero_grad_seen = True
    memory.recent_grad_norm = grad_norm if recent is None else 0.9 * recent + 0.1 * grad_norm
    return verdict


def trainable_values(parameters: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's values of a parameter (its shard under FSDP2)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def weights_problem(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], limit: float = WEIGHT_LIMIT) -> str | None:
    """What is wrong with these weights (this process's values), or None: a non-finite value, or a
    magnitude above `limit`. Names the first parameter found and the largest magnitude."""
    worst_name, worst = None, 0.0
    for name, param in named_parameters:
        values = _local(param.detach())
        if values.numel() == 0:
            continue
        largest = float(torch.linalg.vector_norm(values.float(), ord=math.inf))
        if not math.isfinite(largest):
            return f"weight '{name}' holds non-finite values"
        if largest > worst:
            worst_name, worst = name, largest
    if worst > limit:
        return f"weights exploded: max |w| = {worst:.3g} in '{worst_name}' (limit {limit:g})"
    return None


def where_to_restart(last_good: Path | None) -> str:
    """The end of a divergence message: the checkpoint to go back to."""
    if last_good is None:
        return "no good checkpoint was written yet"
    return f"last good checkpoint: {last_good}"
