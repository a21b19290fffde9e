"""What a benchmark child process measures, the same way for both frameworks.

Time: `StepClock.mark()` is called once at every boundary between optimizer steps
(posttrain: at the start of each step and once after the last; TRL: at the end of each
step). Boundary k is "step k starts"; the timed window runs from boundary `warmup` to
boundary `warmup + steps`, so the warmup steps (first-call allocations, lazy
initialisation) are left out, and the window holds the same steps' work in both
frameworks: data collation, forward, backward, clipping, optimizer step, one metrics log.

Tokens: `counting_collator` wraps the collate function the training loop calls once per
micro-batch, in step order, and records the real tokens of the examples it was handed
(data.py: prompt + response of every sequence, no padding; a pair counts both sequences).
tokens/s = tokens of the timed steps / seconds of the timed window.

Memory: peak resident set size of the process (`ru_maxrss`, the whole run: libraries,
model load, reference pass, training), the RSS when training starts, and on CUDA the
peak of `torch.cuda.max_memory_allocated`.
"""
from __future__ import annotations

import resource
import time
from typing import Any, Callable


class StepClock:
    def __init__(self, log: "TokenLog | None" = None) -> None:
        self.marks: list[float] = []
        self.rss_at_start_mb: float | None = None
        # With a log: how many micro-batches had been collated at each mark, so a step that
        # accumulates several micro-batches counts all their tokens (posttrain splits each
        # step by default). Without one, each step is taken to be one collated batch.
        self.log = log
        self.batches_at_mark: list[int] = []

    def mark(self, *_: Any, **__: Any) -> None:
        if not self.marks:
            self.rss_at_start_mb = current_rss_mb()
        self.marks.append(time.perf_counter())
        if self.log is not None:
            self.batches_at_mark.append(len(self.log.lengths))

    def batch_range(self, first_step: int, end_step: int) -> range:
        """Indices of the collated batches of steps first_step .. end_step - 1."""
        if self.batches_at_mark:
            return range(self.batches_at_mark[first_step], self.batches_at_mark[end_step])
        return range(first_step, end_step)

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class TokenLog:
    """Per micro-batch, in order: the standalone lengths of the sequences it holds."""

    def __init__(self) -> None:
        self.lengths: list[list[int]] = []

    @property
    def per_batch(self) -> list[int]:
        return [sum(lengths) for lengths in self.lengths]


def counting_collator(collate: Callable[[list], Any], lengths_of: Callable[[Any], list[int]], log: TokenLog):
    """`collate` that also records the sequence lengths of every batch it builds.

    `lengths_of(example)` lists the standalone sequences an example stands for: one for an
    SFT example, several for a pack, two for a preference pair (prompt + chosen, prompt +
    rejected)."""
    def wrapped(examples):
        log.lengths.append([n for e in examples for n in lengths_of(e)])
        return collate(examples)
    return wrapped


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def summarise(clock: StepClock, tokens: TokenLog, warmup: int, steps: int, shape: Any = None) -> dict[str, Any]:
    """The child's result: timed window, tokens, tokens/s, memory (see the module doc)."""
    if len(clock.marks) < warmup + steps + 1:
        raise RuntimeError(f"only {len(clock.marks)} step boundaries recorded, need {warmup + steps + 1}")
    if len(tokens.per_batch) < warmup + steps:
        raise RuntimeError(f"only {len(tokens.per_batch)} batches counted, need {warmup + steps}")
    seconds = clock.marks[warmup + steps] - clock.marks[warmup]
    timed = clock.batch_range(warmup, warmup + steps)
    timed_tokens = sum(tokens.per_batch[i] for i in timed)
    out: dict[str, Any] = {
        "seconds": seconds, "tokens": timed_tokens, "tokens_per_s": timed_tokens / seconds,
        "step_seconds": [round(s, 4) for s in clock.step_seconds()], "batch_tokens": tokens.per_batch[:clock.batch_range(0, warmup + steps).stop],
        "peak_rss_mb": peak_rss_mb(), "rss_at_train_start_mb": clock.rss_at_start_mb,
    }
    if shape is not None:
        from .flops import training_flops

        out["flops"] = sum(training_flops(shape, lengths) for lengths in tokens.lengths[timed.start:timed.stop])
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["device_name"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - memory figures are best effort
        pass
    return out
