"""Where a whole process spends its time and memory: run a command, stamp each line it prints.

    .venv/bin/python benchmarks/phases.py -- .venv/bin/python -m posttrain dpo --data F --peft lora ...

Each output line of the child is printed with the seconds since start and the child's RSS at
that moment (sampled from /proc every 0.05 s, so also the peak RSS since the previous line).
At the end: wall time, peak RSS (the kernel's ru_maxrss, from wait4) and the exit status.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        raise SystemExit("usage: benchmarks/phases.py -- COMMAND ...")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    state = {"peak": 0.0, "done": False}

    def sample() -> None:
        while not state["done"]:
            state["peak"] = max(state["peak"], rss_mb(process.pid))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    for line in process.stdout:
        print(f"{time.perf_counter() - started:7.1f}s {rss_mb(process.pid):7.0f} MB (peak {state['peak']:5.0f}) | "
              f"{line.rstrip()[:200]}", flush=True)
    _, status, usage = os.wait4(process.pid, 0)
    state["done"] = True
    print(f"wall {time.perf_counter() - started:.1f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB, "
          f"exit {os.waitstatus_to_exitcode(status)}, load {os.getloadavg()[0]:.1f}", flush=True)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
