"""Run several posttrain commands, one after another, in each process of ONE torchrun launch.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py COMMANDS.json

COMMANDS.json is a list of argv lists (`[["sft", "--model", ...], ["dpo", ...]]`). Starting
processes and a process group costs more than a tiny training run, so the distributed tests
pay for it once per launch instead of once per recipe. Stops at the first command that fails.
"""
from __future__ import annotations

import json
import sys

from posttrain.cli import main

if __name__ == "__main__":
    for argv in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        code = main(argv)
        if code:
            sys.exit(code)
