"""posttrain against TRL as users run them: each with its own defaults, whole processes.

    .venv/bin/python benchmarks/defaults.py                          # DPO, SFT, RM x LoRA, full; smollm2-135m
    .venv/bin/python benchmarks/defaults.py --methods dpo --modes lora --reps 3

One data file per method (benchmarks/user_data.py: conversational rows of mixed lengths,
`--rows` of them = steps x batch size, so one epoch), read and tokenised by each framework
itself. posttrain runs its plain CLI command (`posttrain dpo --data F --peft lora
--batch-size 4 --max-steps 6`; the layout, reference strategy, head and allocator are its
defaults); TRL runs benchmarks/trl_defaults.py (its trainers with their defaults; the few
overrides are listed there: same precision, batch, steps, learning rate). Both load the
same SmolLM2-135M-Instruct checkpoint (the converted `smollm2-135m` directory) in float32
and use the machine's default thread count.

Each run is a fresh process; the order alternates posttrain, TRL, posttrain, TRL, ... for
every configuration, `--reps` times. Measured per run: whole-process wall time, peak RSS
(the kernel's `ru_maxrss` of the child, from wait4), the training loop's own seconds, the
final step's loss, and the load average before and after. The table gives medians and
the ratios posttrain / TRL. Results: `--out`/results.jsonl and results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.user_data import preference_rows, sft_rows, write_jsonl  # noqa: E402

LEARNING_RATES = {"dpo": 1e-6, "sft": 2e-5, "rm": 1e-5}  # posttrain's defaults, given to TRL too
COMMANDS = {"dpo": "dpo", "sft": "sft", "rm": "rm"}
DATA_PREFIX = "bench-defaults-"  # names the data files, and so the reference cache entries to forget


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/defaults.py", description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", choices=list(COMMANDS), default=["dpo", "sft", "rm"])
    p.add_argument("--modes", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    p.add_argument("--model", default="smollm2-135m", help="a posttrain alias or a local model directory")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--out", default="runs/benchmarks-defaults")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: both sides in bf16 autocast on the CPU (posttrain --mixed-precision bf16; TRL use_cpu=True, "
                        "its bf16 default); fp32 (default): both in float32, posttrain's CPU default")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p.parse_args(argv)


def model_directory(name: str) -> str:
    """A local directory both frameworks can load (the converted checkpoint for an alias)."""
    if Path(name).is_dir():
        return name
    if name != "smollm2-135m":
        raise SystemExit(f"--model: give smollm2-135m or a local model directory, not {name!r}")
    from posttrain.models.gguf import smollm2_checkpoint

    return str(smollm2_checkpoint())


def posttrain_command(method: str, mode: str, data: Path, model: str, args, run_dir: Path) -> list[str]:
    command = [sys.executable, "-m", "posttrain", COMMANDS[method], "--data", str(data), "--model", model,
               "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--output-dir", str(run_dir),
               "--no-progress"]
    if mode == "lora":
        command += ["--peft", "lora"]
    if method == "rm":
        command += ["--eval-fraction", "0"]  # same examples as TRL (posttrain's RM holds out 10% by default)
    if args.precision == "bf16":
        command += ["--mixed-precision", "bf16"]
    return command


def trl_command(method: str, mode: str, data: Path, model_dir: str, args, run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "trl_defaults.py"), method, mode, str(data), model_dir,
            str(run_dir / "result.json"), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--learning-rate", str(LEARNING_RATES[method]), "--output-dir", str(run_dir),
            *(["--bf16"] if args.precision == "bf16" else [])]


def run_measured(command: list[str], log: Path, timeout: int) -> dict:
    """Wall time, peak RSS (wait4) and exit status of one fresh process."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.1)
    # cpu_s (user + system seconds of the child) varies less with the machine's load than wall_s.
    return {"wall_s": time.perf_counter() - started, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "exit": os.waitstatus_to_exitcode(status), "load_before": load_before, "load_after": os.getloadavg()[0]}


def posttrain_outcome(run_dir: Path, log: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r and "step" in r]
    found = re.search(r"done: (\d+) steps in (\d+)s", log.read_text())
    layout = re.search(r"^layout: .*$", log.read_text(), re.M)
    return {"final_loss": losses[-1] if losses else None, "steps": int(found.group(1)) if found else None,
            "train_seconds": float(found.group(2)) if found else None, "layout": layout.group(0) if layout else None}


def forget_reference_cache() -> None:
    """Delete the reference log-prob tables earlier runs cached for the benchmark's data files."""
    from posttrain.models.gguf import cache_root

    for path in (cache_root() / "reference").glob(f"{DATA_PREFIX}*.ref-*"):
        path.unlink()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def table(results: list[dict]) -> str:
    lines = ["| method | mode | posttrain wall s | TRL wall s | speed-up | posttrain peak MB | TRL peak MB | memory ratio "
             "| final loss (posttrain / TRL) | runs | load avg |", "|" + "---|" * 11]
    keys = sorted({(r["method"], r["mode"]) for r in results}, key=lambda k: (list(COMMANDS).index(k[0]), k[1]))
    for method, mode in keys:
        side = {f: [r for r in results if (r["method"], r["mode"], r["framework"]) == (method, mode, f) and r["exit"] == 0]
                for f in ("posttrain", "trl")}
        wall = {f: median([r["wall_s"] for r in rs]) for f, rs in side.items()}
        peak = {f: median([r["peak_rss_mb"] for r in rs]) for f, rs in side.items()}
        loss = {f: median([r.get("final_loss") for r in rs]) for f, rs in side.items()}
        loads = [r[k] for rs in side.values() for r in rs for k in ("load_before", "load_after")]
        lines.append(f"| {method} | {mode} | {wall['posttrain']:.0f} | {wall['trl']:.0f} | "
                     f"**{wall['trl'] / wall['posttrain']:.2f}x** | {peak['posttrain']:.0f} | {peak['trl']:.0f} | "
                     f"**{peak['posttrain'] / peak['trl']:.2f}x** | {loss['posttrain']:.4f} / {loss['trl']:.4f} | "
                     f"{len(side['posttrain'])}+{len(side['trl'])} | {median(loads):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = args.steps * args.batch_size
    data = {"dpo": write_jsonl(preference_rows(rows), out / f"{DATA_PREFIX}pairs.jsonl"),
            "rm": write_jsonl(preference_rows(rows), out / f"{DATA_PREFIX}rm-pairs.jsonl"),
            "sft": write_jsonl(sft_rows(rows), out / f"{DATA_PREFIX}sft.jsonl")}
    model_dir = args.model if args.dry_run else model_directory(args.model)
    results_path = out / "results.jsonl"
    for rep in range(args.reps):
        for method in args.methods:
            for mode in args.modes:
                for framework in ("posttrain", "trl"):
                    run_dir = out / f"{method}-{mode}-{framework}-{rep}"
                    shutil.rmtree(run_dir, ignore_errors=True)
                    forget_reference_cache()  # every run pays its reference pass, as a first run does
                    make = posttrain_command if framework == "posttrain" else trl_command
                    command = make(method, mode, data[method], model_dir, args, run_dir)
                    print(" ".join(command), flush=True)
                    if args.dry_run:
                        continue
                    run_dir.mkdir(parents=True)
                    log = run_dir / "log.txt"
                    result = {"method": method, "mode": mode, "framework": framework, "rep": rep,
                              **run_measured(command, log, args.timeout)}
                    if result["exit"] == 0:
                        result.update(posttrain_outcome(run_dir, log) if framework == "posttrain"
                                      else json.loads((run_dir / "result.json").read_text()))
                    else:
                        result["log_tail"] = log.read_text()[-2000:]
                    print(json.dumps(result), flush=True)
                    with open(results_path, "a") as handle:
                        handle.write(json.dumps(result) + "\n")
    if not args.dry_run:
        results = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
        text = table(results)
        (out / "results.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
