"""The launcher's processes, for work that is not a training loop (no model to prepare).

`posttrain best-of-n` samples and scores under `torchrun` without an Accelerator of its own:
an `Accelerator` fixes Accelerate's shared state (DDP, FSDP or DeepSpeed plugin) for the whole
process, and the SFT/DPO recipes each round calls must be the ones to build it with their
`--distributed` plugin. `Processes` only joins the process group (Accelerate's
`PartialState`, which the recipes' Accelerators then share) and offers the few collectives
the sampling side needs, with the attribute names of an `Accelerator` (`num_processes`,
`process_index`, `is_main_process`, `device`, `reduce`, `wait_for_everyone`), so helpers written
for an Accelerator (`rl.online.evaluate_greedy`) accept it.

Started directly (no launcher) it is one process and every collective is a no-op.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .plugins import world_size


class Processes:
    def __init__(self):
        self.state = None
        if world_size() > 1:
            from accelerate import PartialState

            # cpu=... as `train.engine.make_accelerator` will ask, so the shared state agrees.
            self.state = PartialState(cpu=not torch.cuda.is_available())

    @property
    def num_processes(self) -> int:
        return self.state.num_processes if self.state is not None else 1

    @property
    def process_index(self) -> int:
        return self.state.process_index if self.state is not None else 0

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def device(self) -> torch.device:
        """This process's device: its own GPU under a launcher (cuda:LOCAL_RANK), else cuda/cpu."""
        if self.state is not None:
            return self.state.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def my_share(self, count: int) -> list[int]:
        """The indices of `count` items this process handles: every N-th, starting at its rank
        (shares differ by at most one item; neighbouring items, often of similar length, spread)."""
        return list(range(self.process_index, count, self.num_processes))

    def all_gather(self, obj: Any) -> list[Any]:
        """`[obj of process 0, obj of process 1, ...]` on every process (any picklable object)."""
        if self.num_processes == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.num_processes
        dist.all_gather_object(gathered, obj)
        return gathered

    def gather_in_order(self, indexed: Sequence[tuple[int, Any]]) -> list[Any]:
        """Each process's `(index, item)` pairs -> every item of every process, sorted by index,
        on every process: the order one process handling everything would have produced."""
        pairs = [pair for part in self.all_gather(list(indexed)) for pair in part]
        return [item for _, item in sorted(pairs, key=lambda pair: pair[0])]

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        """Sum (or mean) of `tensor` over processes, as `Accelerator.reduce`."""
        if self.num_processes == 1:
            return tensor
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.num_processes if reduction == "mean" else tensor

    def wait_for_everyone(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()
