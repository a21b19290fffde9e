"""How time and peak memory grow with sequence length and batch size: SFT and DPO (LoRA),
posttrain's default layouts against TRL, via benchmarks/run.py (fresh processes, alternating).

    .venv/bin/python benchmarks/scaling.py --out runs/scaling             # runs, then plots
    .venv/bin/python benchmarks/scaling.py --out runs/scaling --plot-only # plot earlier results

Sequence length L in (256, 512, 1024, 2048) at batch 4, and batch size B in (1, 2, 4, 8) at
L = 512; every sequence is about L tokens (prompt L/4, response 3L/4, nearly equal lengths),
`--steps` timed steps after one warm-up, one alternation (keep it small: CPU time is scarce).
Writes results-*.jsonl per point and `docs/images/scaling.png` (`--image`): seconds per step
and peak RSS against L and against B, one line per framework and method.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LENGTHS = (256, 512, 1024, 2048)
BATCHES = (1, 2, 4, 8)


def points() -> list[tuple[str, int, int]]:
    return [("length", n, 4) for n in LENGTHS] + [("batch", 512, b) for b in BATCHES if b != 4]


def run_point(length: int, batch: int, args) -> Path:
    from benchmarks import run

    out = Path(args.out) / f"L{length}-B{batch}"
    run.main(["--methods", *args.methods, "--modes", "lora", "--reps", "1", "--steps", str(args.steps), "--warmup", "1",
              "--batch-size", str(batch), "--prompt-median", str(length // 4), "--response-median", str(3 * length // 4),
              "--sigma", "0.01", "--min-len", "8", "--max-len", str(length), "--max-length", str(2 * length + 8),
              "--threads", "0", "--out", str(out)])
    return out / "results.jsonl"


def load(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("L*-B*/results.jsonl")):
        length, batch = (int(part[1:]) for part in path.parent.name.split("-"))
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "error" not in r:
                rows.append({**r, "length": length, "batch": batch})
    return rows


def plot(rows: list[dict], image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (axis, fixed_key, fixed) in enumerate((("length", "batch", 4), ("batch", "length", 512))):
        for method in sorted({r["method"] for r in rows}):
            for framework, style in (("posttrain", "-o"), ("trl", "--s")):
                sel = sorted((r for r in rows if r["method"] == method and r["framework"] == framework
                              and r[fixed_key] == fixed), key=lambda r: r[axis])
                if not sel:
                    continue
                x = [r[axis] for r in sel]
                label = f"{method} {framework}"
                axes[0][col].plot(x, [r["seconds"] / max(len(r["step_seconds"]) - 1, 1) for r in sel], style, label=label)
                axes[1][col].plot(x, [r["peak_rss_mb_wait4"] / 1024 for r in sel], style, label=label)
        axes[0][col].set_ylabel("seconds per step")
        axes[1][col].set_ylabel("peak RSS (GB)")
        for row in (0, 1):
            axes[row][col].set_xlabel("sequence length (tokens), batch 4" if axis == "length" else "batch size, length 512")
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M, LoRA, CPU, one timed step per point: posttrain defaults vs TRL (gradient checkpointing off)")
    fig.tight_layout()
    image.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(image, dpi=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/scaling.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/scaling")
    p.add_argument("--methods", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"])
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--image", default=str(ROOT / "docs" / "images" / "scaling.png"))
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--only", nargs=2, type=int, metavar=("LENGTH", "BATCH"), action="append",
                   help="run only these points (repeatable)")
    args = p.parse_args(argv)
    if not args.plot_only:
        for _, length, batch in points():
            if args.only and [length, batch] not in args.only:
                continue
            run_point(length, batch, args)
    rows = load(Path(args.out))
    if rows:
        plot(rows, Path(args.image))
        print(f"plot: {args.image} ({len(rows)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
