"""Run the model-heavy commands under jemalloc when the machine has it.

Why: glibc's malloc keeps the memory a training step frees in a fragmented heap, so the peak
memory of a run grows with every micro-batch of a step even though torch frees each one's
activations (docs/benchmarks.md, "Where the memory goes": SFT LoRA, 8 examples of ~256
tokens per step, 2 steps: 3.1-3.3 GB with glibc). jemalloc reuses and returns that memory:
1.74 GB (-45%) in the same time (49.8 and 51.4 s against 52.8 and 49.2 s, alternating).
Giving the memory back with glibc alone costs time (`--trim-memory`: 2.0 GB, +15%).

How: a process cannot switch its allocator once running, so the `posttrain` entry point
(`cli.entry`) replaces itself, before importing anything heavy, by the same command with
`LD_PRELOAD` naming the library (`os.execve`; same process id, arguments, environment and
exit status). Only for the commands that load models (`PRELOADED_COMMANDS`), not for `--help`.
`POSTTRAIN_ALLOCATOR`: `auto` (default: jemalloc if one of `JEMALLOC_PATHS` exists), `system`
(never), or the path of a malloc library to preload (jemalloc or tcmalloc). Linux only. With
nothing to preload (e.g. no libjemalloc installed: `apt install libjemalloc2`) the command
simply runs as before. `cli.main`, which the library's users and the tests call, never re-executes.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, Sequence

ENV = "POSTTRAIN_ALLOCATOR"
REEXECUTED = "_POSTTRAIN_ALLOCATOR_SET"  # set in the re-executed process: never loop
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",  # Debian, Ubuntu (libjemalloc2)
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",  # Fedora, RHEL
    "/usr/lib/libjemalloc.so.2",  # Arch, Alpine
    "/usr/local/lib/libjemalloc.so.2",  # built from source
)
PRELOADED_COMMANDS = frozenset({"sft", "dpo", "kto", "rm", "ppo", "grpo", "rloo", "best-of-n", "generate", "pairs",
                                "cai", "run", "score", "judge", "redteam", "eval", "export"})


def library_to_preload(argv: Sequence[str], environ: Mapping[str, str], platform: str = sys.platform,
                       exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """The malloc library to run `posttrain ARGV` under, or None to run it as it is."""
    if platform != "linux" or REEXECUTED in environ or not argv or argv[0] not in PRELOADED_COMMANDS:
        return None
    if any(arg in ("-h", "--help") for arg in argv):
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preloaded or "tcmalloc" in preloaded:  # the user chose already
        return None
    choice = environ.get(ENV, "auto").strip() or "auto"
    if choice == "system":
        return None
    candidates = JEMALLOC_PATHS if choice == "auto" else (choice,)
    return next((path for path in candidates if exists(path)), None)


def reexecute_with_allocator(argv: Sequence[str]) -> None:
    """Replace this process by `python -m posttrain ARGV` under the library, when there is one."""
    library = library_to_preload(argv, os.environ)
    if library is None:
        choice = os.environ.get(ENV, "auto")
        heavy = bool(argv) and argv[0] in PRELOADED_COMMANDS and REEXECUTED not in os.environ
        if heavy and choice not in ("auto", "system", "") and not os.path.exists(choice):
            print(f"posttrain: {ENV}={choice}: no such file; running with the system allocator", file=sys.stderr)
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{library} {env.get('LD_PRELOAD', '')}".strip()
    env[REEXECUTED] = library
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "posttrain", *argv], env)
    except OSError:  # no usable interpreter path (an embedded Python): run as we are
        return
