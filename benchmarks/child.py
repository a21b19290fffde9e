"""One measured run in a fresh process: `python -m benchmarks.child SPEC.json RESULT.json`.

The parent (run.py) writes the spec; this process trains with one framework, then writes
the measurements (measure.py) to RESULT.json. Run alone it is also the way to profile
one side, e.g. `py-spy record -o out.svg -- python -m benchmarks.child spec.json out.json`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result_path = Path(argv[1])
    started = time.perf_counter()
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from posttrain.train.engine import epoch_order

    from .data import load_rows
    from .flops import ModelShape
    from .measure import StepClock, TokenLog, summarise

    rows, _ = load_rows(Path(spec["data_path"]))
    workdir = Path(spec["workdir"])
    log = TokenLog()
    # posttrain marks each step's start before collating its micro-batches, so the clock can
    # count them per step; TRL's data loader may fetch ahead, so its steps stay one batch each
    # (its benchmark runs use no accumulation).
    clock = StepClock(log if spec["framework"] == "posttrain" else None)
    if spec["framework"] == "posttrain":
        from .posttrain_side import RUNNERS
    else:
        from .trl_side import RUNNERS

        # TRL reads sequentially; posttrain's engine shuffles with a pure function of (seed, epoch).
        rows = [rows[i] for i in epoch_order(len(rows), spec["seed"], 0)]
    RUNNERS[spec["method"]](spec, rows, workdir, clock, log)

    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(spec["model_dir"]))
    result = summarise(clock, log, spec["warmup"], spec["steps"], shape)
    result.update(framework=spec["framework"], method=spec["method"], mode=spec["mode"],
                  wall_seconds=time.perf_counter() - started, threads=torch.get_num_threads(),
                  torch_version=torch.__version__)
    result_path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
