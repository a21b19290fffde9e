"""Reference models for KL-regularised methods (DPO family, PPO, GRPO).

Two ways to get π_ref:

* `frozen_copy(model)`: a deep copy in eval mode with gradients off. Costs one more
  model in memory; works for full fine-tuning.
* `adapter_disabled(peft_model)`: when the policy is base + adapter (LoRA), the base
  *is* the reference: run the policy inside this context and the adapter is switched
  off, no second copy needed.

    with torch.no_grad(), adapter_disabled(policy):
        ref_logprobs = response_logprobs(policy, ...).logprobs
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

from torch import nn

from ..errors import PosttrainError


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model`, in eval mode (no dropout), with `requires_grad=False` everywhere."""
    reference = copy.deepcopy(model)
    reference.eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run a PEFT model as its base model inside the block (the adapter is restored after).

    Also accepts a `ScalarHeadModel`-like wrapper whose `.model` is a PEFT model.
    Raises PosttrainError for a model without an adapter (use `frozen_copy` then).
    """
    target = model
    if not hasattr(target, "disable_adapter") and hasattr(target, "model"):
        target = target.model
    if not hasattr(target, "disable_adapter") or getattr(target, "peft_config", None) is None:
        raise PosttrainError("the reference model can only be 'the policy without its adapter' when the policy "
                             "has a PEFT adapter; use a frozen copy for full fine-tuning")
    with target.disable_adapter():
        yield model

