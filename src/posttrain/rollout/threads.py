"""How many CPU threads torch should use on a machine that other jobs share.

torch's default is one intra-op thread per core. On an idle machine that is right. When other
processes keep the cores busy, every op of a 2-thread process ends at an OpenMP barrier that
waits for a thread the kernel has descheduled; generation, thousands of small ops per sampled
token, then slows to a crawl (docs/benchmarks.md, "Online RL": 1.4 sampled tokens/s with 2
threads at load 10 on 2 cores). The policy here: one thread per core that the others leave
free, at least one, measured once from the 1-minute load average at start-up. It only ever
lowers torch's count (a caller's `torch.set_num_threads(1)` stays), and an explicit
`OMP_NUM_THREADS` or `--threads N` always wins.
"""
from __future__ import annotations

import math
import os


def threads_for_load(cores: int, load: float) -> int:
    """One thread per core not busy with other work (`load`: runnable processes, the 1-minute
    load average), between 1 and `cores`."""
    return max(1, min(cores, cores - math.floor(max(load, 0.0))))


def choose_cpu_threads(requested: int = 0) -> tuple[int, str]:
    """Set torch's intra-op threads for this process; returns (threads, why) for the log.

    `requested` > 0 is taken as given; otherwise an explicit OMP_NUM_THREADS is kept, and else
    `threads_for_load` decides from the cores this process may run on and the load average."""
    import torch

    if requested > 0:
        torch.set_num_threads(requested)
        return requested, "as asked"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = min(torch.get_num_threads(), threads_for_load(cores, load))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads, f"{cores} cores, load {load:.1f}"
