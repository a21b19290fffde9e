"""How many CPU threads torch should use on a machine that other jobs share.

torch's default is one intra-op thread per core. On an idle machine that is right. When other
processes keep the cores busy, every op of a 2-thread process ends at an OpenMP barrier that
waits for a thread the kernel has descheduled; generation, thousands of small ops per sampled
token, then slows to a crawl (docs/benchmarks.md, "Online RL": 1.4 sampled tokens/s with 2
threads at load 10 on 2 cores). The policy here: one thread per core that the others leave
free, at least one, measured once at start-up. "Busy" is the smaller of the 1-minute load
average and the cores busy right now (`/proc/stat` sampled over a quarter second): the load
average alone lags by a minute, so a run started just after another heavy job ended took 1
thread on an idle machine (measured: a GRPO LoRA run at load average 1.7 with both cores idle
got 1 thread, ~2x slower). It only ever
lowers torch's count (a caller's `torch.set_num_threads(1)` stays), and an explicit
`OMP_NUM_THREADS` or `--threads N` always wins.
"""
from __future__ import annotations

import math
import os
import time

SAMPLE_SECONDS = 0.25


def threads_for_load(cores: int, load: float) -> int:
    """One thread per core not busy with other work (`load`: runnable processes, the 1-minute
    load average), between 1 and `cores`."""
    return max(1, min(cores, cores - math.floor(max(load, 0.0))))


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user .. steal (guest time is already in user)
    return total - idle, total


def busy_cores(before: tuple[int, int], after: tuple[int, int], cores: int) -> float:
    """Cores kept busy between two `cpu_times` readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return cores * busy / total if total > 0 else 0.0


def busy_cores_now(cores: int, seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores busy over the next `seconds` (this process is idle meanwhile), or None off Linux."""
    before = cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = cpu_times()
    return busy_cores(before, after, cores) if after is not None else None


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
    average = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    now = busy_cores_now(cores)
    load = average if now is None else min(average, now)
    threads = min(torch.get_num_threads(), threads_for_load(cores, load))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    busy = "" if now is None else f", {now:.1f} busy now"
    return threads, f"{cores} cores, load average {average:.1f}{busy}"
