"""Online RL: `posttrain grpo` against TRL 1.16's GRPOTrainer, each with its own defaults, whole processes.

    .venv/bin/python benchmarks/rl_grpo.py                               # full + LoRA, 3 alternations
    .venv/bin/python benchmarks/rl_grpo.py --modes full --reps 1 --steps 3

Same model (the converted SmolLM2-135M-Instruct directory, float32), same prompts (the shipped
arithmetic task's train split), P prompts x G samples per step, the same new-token limit, the
same reward (posttrain's strict `math` verifier; TRL calls it as a reward function), no KL
(TRL's default beta is 0; posttrain gets `--kl-coef 0`), the machine's default thread count.
posttrain runs its plain CLI (`posttrain grpo --task arithmetic ...`); TRL runs
benchmarks/rl_trl_side.py (its overrides are listed there).

Each run is a fresh process; the order alternates posttrain, TRL, posttrain, TRL, ... for every
mode, `--reps` times. Per run: whole-process wall time and peak RSS (wait4's ru_maxrss), the
load average before and after, and per step: seconds, seconds generating, sampled tokens and
update tokens (prompt + response of every sequence, no padding, the same definition for both).
Step 1 is a warm-up and left out of the per-step figures; steps/s = 1 / median step seconds.

The machine's limit: FLOPs per token from the model's shape (`benchmarks/flops.py`: 2 N per
sampled token, 6 N per trained token, N = matmul weights of the blocks and the head) against
the matmul rate measured here (float32, default threads, the 576 x 1536 projection shape at
`--limit-rows` rows), measured once before and once after the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.defaults import model_directory, run_measured  # noqa: E402
from benchmarks.flops import ModelShape  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/rl_grpo.py", description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    p.add_argument("--frameworks", nargs="+", choices=["posttrain", "trl"], default=["posttrain", "trl"])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or a local model directory")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is a warm-up)")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--limit-rows", type=int, default=1024, help="rows of the matmul that measures the machine")
    p.add_argument("--posttrain-flags", default="", help="extra flags for posttrain grpo (a lever to try)")
    p.add_argument("--out", default="runs/benchmarks-rl")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--table-from", nargs="+", default=[], metavar="RESULTS_JSONL",
                   help="run nothing: print the table of these results files (runs of several invocations)")
    p.add_argument("--gflops", nargs="+", type=float, default=[],
                   help="with --table-from: the matmul rates those runs measured (default: measure now)")
    return p.parse_args(argv)


def train_prompts() -> Path:
    from posttrain.rollout.rewards import task_file

    return task_file("arithmetic", "train")


def posttrain_command(mode: str, model_dir: str, args, run_dir: Path) -> list[str]:
    command = [sys.executable, "-m", "posttrain", "grpo", "--task", "arithmetic", "--model", model_dir,
               "--prompts-per-step", str(args.prompts_per_step), "--num-samples", str(args.num_samples),
               "--max-new-tokens", str(args.max_new_tokens), "--max-steps", str(args.steps), "--kl-coef", "0",
               "--eval-prompts", "none", "--output-dir", str(run_dir), "--no-progress"]
    if mode == "lora":
        command += ["--peft", "lora"]
    return command + args.posttrain_flags.split()


def trl_command(mode: str, model_dir: str, args, run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "rl_trl_side.py"), mode, str(train_prompts()), model_dir,
            str(run_dir / "result.json"), "--steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step),
            "--num-samples", str(args.num_samples), "--max-new-tokens", str(args.max_new_tokens),
            "--output-dir", str(run_dir)]


def posttrain_steps(run_dir: Path, count: int) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step_s": r["time/step"], "generate_s": r["time/generate"], "update_s": r["time/train"],
             "sampled_tokens": round(r["response_length"] * count), "update_tokens": r.get("rollout_tokens"),
             "reward": r.get("reward")}
            for r in rows if "time/step" in r]


def trl_steps(result: dict) -> list[dict]:
    return [{"step_s": s["step_s"], "generate_s": s.get("generate_s"),
             "update_s": s["step_s"] - s.get("generate_and_score_s", 0.0),
             "sampled_tokens": s.get("sampled_tokens"), "update_tokens": s.get("update_tokens")}
            for s in result["steps"]]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def per_run_figures(steps: list[dict]) -> dict:
    """Medians over the timed steps (all but the first)."""
    timed = steps[1:] or steps
    return {"step_s": median([s["step_s"] for s in timed]),
            "sample_tok_s": median([s["sampled_tokens"] / s["generate_s"] for s in timed
                                    if s.get("generate_s") and s.get("sampled_tokens")]),
            "update_tok_s": median([s["update_tokens"] / s["update_s"] for s in timed
                                    if s.get("update_s") and s.get("update_tokens")]),
            "generate_s": median([s["generate_s"] for s in timed]),
            "update_s": median([s["update_s"] for s in timed])}


def matmul_gflops(rows: int, seconds: float = 3.0) -> float:
    """float32 matmul rate at the default thread count: [rows x 576] @ [576 x 1536] (SmolLM2's MLP shape)."""
    code = (f"import time, torch\nx = torch.randn({rows}, 576); w = torch.randn(576, 1536)\n"
            "for _ in range(3): x @ w\nn, t = 0, time.perf_counter()\n"
            f"while time.perf_counter() - t < {seconds}:\n    x @ w; n += 1\n"
            f"print(2 * {rows} * 576 * 1536 * n / (time.perf_counter() - t) / 1e9)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def model_shape(model_dir: str) -> ModelShape:
    from transformers import AutoConfig

    return ModelShape.from_config(AutoConfig.from_pretrained(model_dir))


def table(results: list[dict], shape: ModelShape, gflops: list[float]) -> str:
    rate = median(gflops) * 1e9
    n = shape.matmul_params
    limit_sample, limit_update = rate / (2 * n), rate / (6 * n)
    lines = [f"matmul rate {', '.join(f'{g:.1f}' for g in gflops)} GFLOP/s (median {rate / 1e9:.1f}); N = {n / 1e6:.1f}M "
             f"matmul weights -> limit {limit_sample:.0f} sampled tok/s (2N), {limit_update:.0f} trained tok/s (6N)", "",
             "| mode | side | step s | steps/s | sample tok/s (% of limit) | update tok/s (% of limit) | gen s | update s "
             "| wall s | peak MB | runs | load |", "|" + "---|" * 12]
    for mode in ("full", "lora"):
        sides = {}
        for framework in ("posttrain", "trl"):
            runs = [r for r in results if r["mode"] == mode and r["framework"] == framework and r["exit"] == 0]
            if not runs:
                continue
            figures = [r["figures"] for r in runs]
            f = {k: median([x[k] for x in figures]) for k in figures[0]}
            sides[framework] = f | {"wall": median([r["wall_s"] for r in runs]),
                                    "peak": median([r["peak_rss_mb"] for r in runs])}
            loads = [r[k] for r in runs for k in ("load_before", "load_after")]
            lines.append(f"| {mode} | {framework} | {f['step_s']:.2f} | {1 / f['step_s']:.3f} | "
                         f"{f['sample_tok_s']:.1f} ({100 * f['sample_tok_s'] / limit_sample:.0f}%) | "
                         f"{f['update_tok_s']:.0f} ({100 * f['update_tok_s'] / limit_update:.0f}%) | "
                         f"{f['generate_s']:.2f} | {f['update_s']:.2f} | {sides[framework]['wall']:.1f} | "
                         f"{sides[framework]['peak']:.0f} | {len(runs)} | {min(loads):.1f}-{max(loads):.1f} |")
        if len(sides) == 2:
            p, t = sides["posttrain"], sides["trl"]
            lines.append(f"| {mode} | **posttrain / TRL** | | **{t['step_s'] / p['step_s']:.2f}x** steps/s | "
                         f"{p['sample_tok_s'] / t['sample_tok_s']:.2f}x | {p['update_tok_s'] / t['update_tok_s']:.2f}x | | | "
                         f"{t['wall'] / p['wall']:.2f}x faster | **{p['peak'] / t['peak']:.2f}x** memory | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table_from:
        results = [json.loads(line) for path in args.table_from for line in Path(path).read_text().splitlines()
                   if line.strip()]
        rates = args.gflops or [matmul_gflops(args.limit_rows)]
        print(table(results, model_shape(model_directory(args.model)), rates))
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model if args.dry_run else model_directory(args.model)
    results_path = out / "results.jsonl"
    gflops = [] if args.dry_run else [matmul_gflops(args.limit_rows)]
    count = args.prompts_per_step * args.num_samples
    for rep in range(args.reps):
        for mode in args.modes:
            for framework in args.frameworks:
                run_dir = out / f"{mode}-{framework}-{rep}"
                shutil.rmtree(run_dir, ignore_errors=True)
                make = posttrain_command if framework == "posttrain" else trl_command
                command = make(mode, model_dir, args, run_dir)
                print(" ".join(command), flush=True)
                if args.dry_run:
                    continue
                run_dir.mkdir(parents=True)
                log = run_dir / "log.txt"
                result = {"mode": mode, "framework": framework, "rep": rep, "posttrain_flags": args.posttrain_flags,
                          "time": time.strftime("%Y-%m-%d %H:%M:%S"), **run_measured(command, log, args.timeout)}
                if result["exit"] == 0:
                    steps = (posttrain_steps(run_dir, count) if framework == "posttrain"
                             else trl_steps(json.loads((run_dir / "result.json").read_text())))
                    result.update(steps=steps, figures=per_run_figures(steps))
                else:
                    result["log_tail"] = log.read_text()[-2000:]
                print(json.dumps(result), flush=True)
                with open(results_path, "a") as handle:
                    handle.write(json.dumps(result) + "\n")
    if args.dry_run:
        return 0
    gflops.append(matmul_gflops(args.limit_rows))
    results = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    text = table(results, model_shape(model_dir), gflops)
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
