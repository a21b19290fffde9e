"""Metrics: `metrics.jsonl` in the run directory, optional trackers, and a progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..jsonl import append_jsonl


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, forget rows logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


class MetricsLog:
    """Appends metric rows to metrics.jsonl (main process) and forwards them to trackers."""

    def __init__(self, accelerator, output_dir: str, trackers: list[str]):
        self.accelerator = accelerator
        self.path = Path(output_dir) / "metrics.jsonl"
        self.trackers = trackers

    def log(self, row: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        clean = {k: (round(v, 8) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}
        append_jsonl(self.path, clean)
        if self.trackers:
            numeric = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numeric, step=row.get("step"))


class Progress:
    """A progress bar with loss, tokens/s and ETA; quiet on non-main processes."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, description: str):
        self.bar = tqdm(total=total_steps, initial=start_step, desc=description, disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, mininterval=1.0, unit="step")
        self.started = time.perf_counter()
        self.tokens = 0

    def update(self, tokens: int, **shown: float) -> float:
        """Advance one step; return tokens/s since the start of this process's run."""
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.tokens / elapsed
        self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in shown.items()}, "tok/s": f"{rate:.0f}"}, refresh=False)
        self.bar.update(1)
        return rate

    def close(self) -> None:
        self.bar.close()
