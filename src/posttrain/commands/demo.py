"""`make demo`: the quickstart pipeline on SmolLM2-135M-Instruct, with a measured before/after.

Runs `examples/quickstart.yaml` (baseline eval -> behaviour-cloning warm-up on programmatic
expert answers from the train split -> final eval on the held-out split, strict answer-line
verifier), then prints held-out accuracy before and after with 95% intervals, the difference
with its interval (paired: same problems before and after, with an exact McNemar p-value), and
the report's path. A pipeline with a `warmup_eval` stage before its RL stage (e.g.
`--pipeline examples/warmup_grpo_dpo.yaml`) also gets what RL added on top of the warm-up.
A rerun reuses finished stages (delete the run directory to start over).

    python -m posttrain.commands.demo [--pipeline examples/quickstart.yaml] [--output-dir runs/quickstart]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import PosttrainError


def accuracy_lines(before_dir: Path, after_dir: Path) -> list[str]:
    """Before/after accuracy, the difference with its interval, and how it was computed.

    Both evals score the same held-out problems, so `compare_files` pairs them by item id:
    Newcombe's paired interval and an exact McNemar p-value on the problems that changed."""
    from ..evaluate.compare import compare_files, comparison_legend

    table, rows = compare_files(str(before_dir), str(after_dir))
    return [table, comparison_legend(rows)]


def main(argv: list[str] | None = None) -> int:
    from ..pipeline import load_pipeline, run_pipeline
    from ..report.html import write_report

    parser = argparse.ArgumentParser(prog="python -m posttrain.commands.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="examples/quickstart.yaml")
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        pipeline = load_pipeline(args.pipeline, args.output_dir)
        run_pipeline(args.pipeline, args.output_dir)
        report = write_report(pipeline.output_dir)
        lines = accuracy_lines(pipeline.output_dir / "baseline", pipeline.output_dir / "final")
    except PosttrainError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print("\n" + "=" * 78)
    print("held-out arithmetic accuracy (strict answer line), base model (A) vs the pipeline's result (B):")
    print("\n".join(lines))
    warmup = pipeline.output_dir / "warmup_eval"
    if warmup.is_dir():  # what RL added on top of the behaviour-cloning warm-up alone
        print("-" * 78)
        print("after the warm-up alone (A) vs after the warm-up + RL (B):")
        print("\n".join(accuracy_lines(warmup, pipeline.output_dir / "final")))
    print("=" * 78)
    print(f"total {time.perf_counter() - started:.0f}s; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
