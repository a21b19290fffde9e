"""Two processes (torchrun, gloo on CPU) give the same run as one process accumulating the same
global batch: DPO (cache pass split over ranks, pair-mean loss) and KTO (z0 all-reduced per step)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

COMMON = ["--model", "tiny-random", "--max-steps", "3", "--batch-size", "2", "--learning-rate", "3e-3",
          "--no-progress", "--lr-scheduler", "constant", "--max-length", "64"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def launch(args: list[str], processes: int, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "posttrain.cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "-m", "posttrain.cli", *args]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("recipe, data_fixture, extra", [
    ("dpo", "preference_file", ["--reference", "cached"]),
    ("kto", "unpaired_file", ["--reference", "copy"]),
])
def test_two_processes_match_one_with_accumulation(tmp_path, request, recipe, data_fixture, extra):
    data = request.getfixturevalue(data_fixture)(24)
    base = [recipe, "--data", str(data), *COMMON, *extra]
    launch([*base, "--output-dir", str(tmp_path / "two"), "--grad-accum", "2"], 2, tmp_path)
    launch([*base, "--output-dir", str(tmp_path / "one"), "--grad-accum", "4"], 1, tmp_path)
    for a, b in zip(metrics(tmp_path / "two"), metrics(tmp_path / "one"), strict=True):
        for key in ("loss", "rewards/margins", "grad_norm", "kl"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a["step"])
