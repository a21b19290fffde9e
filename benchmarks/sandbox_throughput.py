"""Code-reward throughput: programs per second through the sandbox, 5 tests each.

    python benchmarks/sandbox_throughput.py --programs 40 --workers 2 --repeats 5

The common RL case: each program defines `f`, and its 5 tests are `assert f(x) == value`
(half the programs are wrong, so failures are on the path too). Runs `Sandbox().run_many`
`--repeats` times and prints programs/s per repeat and their median, the CPU seconds spent per
program (this process and every process it started, all waited for: steadier than wall time on
a shared machine), and the isolation used.
To compare with another checkout, run this same file with that checkout's sources first on
the path, e.g. `PYTHONPATH=/tmp/base/src python benchmarks/sandbox_throughput.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time


def jobs(count: int, form: str = "probe") -> list[tuple[str, list[str]]]:
    """`count` programs; even ones are right, odd ones are off by one on every test. form
    "probe": `assert f(x) == value` (compared by the trainer); "judge": `assert value <= f(x) <= value`
    (no literal to split off, so it runs in the judge process)."""
    out = []
    for number in range(count):
        wrong = number % 2
        code = f"def f(x):\n    total = 0\n    for i in range(x):\n        total += i\n    return total + {wrong}\n"
        expected = [(x, x * (x - 1) // 2) for x in range(number % 7, number % 7 + 5)]
        if form == "probe":
            tests = [f"assert f({x}) == {value}" for x, value in expected]
        else:
            tests = [f"assert {value} <= f({x}) <= {value}" for x, value in expected]
        out.append((code, tests))
    return out


def cpu_seconds() -> float:
    """CPU time of this process plus all its waited-for descendants (supervisors, programs)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--form", choices=("probe", "judge"), default="probe")
    args = parser.parse_args(argv)

    import posttrain
    from posttrain.rollout.sandbox import Sandbox

    box = Sandbox()
    work = jobs(args.programs, args.form)
    box.run_many(work[:2], max_workers=1)  # warm-up (first-run costs, page cache)
    rates, cpu = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), cpu_seconds()
        results = box.run_many(work, max_workers=args.workers)
        rates.append(args.programs / (time.perf_counter() - start))
        cpu.append((cpu_seconds() - cpu_start) / args.programs)
        passed = [r.passed for r in results]
        if passed != [number % 2 == 0 for number in range(args.programs)]:
            print(f"wrong verdicts: {[r.reason for r in results][:4]}", file=sys.stderr)
            return 1
    print(json.dumps({"source": os.path.dirname(posttrain.__file__), "isolation": box.isolation,
                      "form": args.form, "programs": args.programs, "workers": args.workers,
                      "programs_per_s": [round(r, 2) for r in rates], "median": round(statistics.median(rates), 2),
                      "cpu_s_per_program": [round(c, 4) for c in cpu],
                      "load": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
