"""posttrain against TRL: same model, data, batches, sequence lengths and steps; alternating runs.

    .venv/bin/python benchmarks/run.py                       # SFT, RM, DPO x LoRA, full on smollm2-135m
    .venv/bin/python benchmarks/run.py --model tiny-random --reps 1 --steps 2   # smoke run (seconds)
    .venv/bin/python benchmarks/run.py --device cuda --model llama-1b --methods sft --modes full \
        --batch-size 16 --prompt-median 256 --response-median 512 --max-len 2048   # GPU, with MFU

For every (method, mode) the two frameworks run in fresh subprocesses, alternating
posttrain, TRL, posttrain, TRL, ... (`--reps` pairs, interleaved across all the
configurations) so that drifting machine load hits both alike; the table reports medians.
Definitions (tokens, timed window, memory, FLOPs) are in measure.py and flops.py and in
docs/benchmarks.md. Results go to `--out` (one JSON line per run, and results.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.data import LengthSpec, make_rows, save_rows  # noqa: E402
from benchmarks.models import MODELS, materialise  # noqa: E402

METHODS = ("sft", "rm", "dpo")
MODES = ("lora", "full")
FRAMEWORKS = ("posttrain", "trl")
# --dpo-layout -> the recipe's --layout
DPO_LAYOUTS = {"auto": "auto", "padded": "padded", "padding_free": "padding_free", "prefix_sharing": "shared_prompt",
               "both": "shared_prompt_padding_free"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    p.add_argument("--model", choices=MODELS, default="smollm2-135m")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--batch-size", type=int, default=4, help="examples (SFT), pairs (RM, DPO) or packs per step")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and left out of the timing (>= 1)")
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per run")
    p.add_argument("--reps", type=int, default=3, help="alternations: runs per framework and configuration")
    p.add_argument("--prompt-median", type=float, default=64.0, help="median prompt length (tokens)")
    p.add_argument("--response-median", type=float, default=64.0, help="median response length (tokens)")
    p.add_argument("--sigma", type=float, default=0.7, help="log-normal spread of the lengths")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256, help="longest prompt or response")
    p.add_argument("--max-length", type=int, default=1024, help="longest sequence; the pack size with --sft-packing")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in each run (0: torch's default, one per core). Default: 1 on the CPU (on a "
                        "shared, oversubscribed machine OpenMP barriers stall: 2 threads ran up to 20x slower than 1), "
                        "0 with --device cuda")
    p.add_argument("--attn-implementation", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa",
                   help="attention kernel, in both frameworks (flash_attention_2 needs the flash-attn package and "
                        "--dpo-layout padded or padding_free)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="in both frameworks")
    # posttrain's batch layouts (TRL has no equivalent switch except packing)
    p.add_argument("--sft-packing", action="store_true", help="pack SFT examples into --max-length rows (both)")
    p.add_argument("--sft-padding-free", action="store_true",
                   help="posttrain's SFT puts each micro-batch in one row without padding (TRL pads)")
    p.add_argument("--dpo-layout", choices=["auto", "padded", "padding_free", "prefix_sharing", "both"], default="auto",
                   help="posttrain's DPO batch layout (TRL always pads); auto: the recipe's default rule")
    p.add_argument("--rm-layout", choices=["auto", "shared_prompt", "padded"], default="auto",
                   help="posttrain's reward-model batch layout (TRL always pads)")
    p.add_argument("--dpo-reference", choices=["precompute", "live"], default="precompute",
                   help="precompute: reference log-probs in a pass before training (posttrain --reference cached, "
                        "TRL precompute_ref_log_probs); live: a reference forward every step (a frozen copy for "
                        "full fine-tuning, the adapter switched off for LoRA)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: from the GPU name)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--out", default="runs/benchmarks", help="directory for results.jsonl and results.md")
    p.add_argument("--keep", action="store_true", help="keep each run's working directory and log")
    p.add_argument("--from-results", nargs="+", metavar="JSONL", default=None,
                   help="run nothing: build the table from earlier results.jsonl files (a configuration found in a "
                        "later file replaces the same configuration from earlier files)")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step is never timed)")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


def options(args: argparse.Namespace) -> dict:
    return {"sft_packing": args.sft_packing, "sft_padding_free": args.sft_padding_free, "rm_layout": args.rm_layout, "dpo_reference": args.dpo_reference,
            "dpo_layout": DPO_LAYOUTS[args.dpo_layout]}


def rows_needed(args: argparse.Namespace, method: str) -> int:
    steps = args.warmup + args.steps
    if method == "sft" and args.sft_packing:
        mean = (args.prompt_median + args.response_median) * 1.3  # log-normal mean > median
        return int(steps * args.batch_size * args.max_length / mean * 1.5) + args.batch_size
    return steps * args.batch_size


def row_command(args: argparse.Namespace, method: str, mode: str) -> str:
    """The command that reproduces one table row."""
    parts = [".venv/bin/python", "benchmarks/run.py", "--methods", method, "--modes", mode, "--model", args.model,
             "--device", args.device, "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
             "--steps", str(args.steps), "--reps", str(args.reps), "--prompt-median", f"{args.prompt_median:g}",
             "--response-median", f"{args.response_median:g}", "--sigma", f"{args.sigma:g}",
             "--min-len", str(args.min_len), "--max-len", str(args.max_len), "--max-length", str(args.max_length)]
    parts += ["--threads", str(args.threads)]
    if args.attn_implementation != "sdpa":
        parts += ["--attn-implementation", args.attn_implementation]
    if args.gradient_checkpointing:
        parts.append("--gradient-checkpointing")
    if method == "sft" and args.sft_packing:
        parts.append("--sft-packing")
    if method == "sft" and args.sft_padding_free:
        parts.append("--sft-padding-free")
    if method == "dpo":
        parts += ["--dpo-layout", args.dpo_layout, "--dpo-reference", args.dpo_reference]
    if method == "rm" and args.rm_layout != "auto":
        parts += ["--rm-layout", args.rm_layout]
    return " ".join(shlex.quote(p) for p in parts)


def child_env(workdir: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1",
               TOKENIZERS_PARALLELISM="false", HF_DATASETS_CACHE=str(workdir / "hf-datasets"),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    return env


def run_child(spec: dict, workdir: Path, timeout: int) -> dict:
    """Run one measured child; its result plus the peak RSS the kernel reports for it (wait4)."""
    workdir.mkdir(parents=True)
    data = workdir / "data.json"
    shutil.copy(spec["data_path"], data)  # a fresh directory: no reference cache from an earlier run
    spec = {**spec, "data_path": str(data), "workdir": str(workdir)}
    (workdir / "spec.json").write_text(json.dumps(spec))
    load_before = os.getloadavg()[0]
    with open(workdir / "log.txt", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "benchmarks.child", str(workdir / "spec.json"),
                                    str(workdir / "result.json")], cwd=ROOT, env=child_env(workdir),
                                   stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    load_after = os.getloadavg()[0]
    if process.returncode != 0 or not (workdir / "result.json").exists():
        tail = (workdir / "log.txt").read_text()[-3000:]
        return {"error": f"exit {process.returncode}", "log_tail": tail}
    result = json.loads((workdir / "result.json").read_text())
    result.update(peak_rss_mb_wait4=usage.ru_maxrss / 1024, load_before=load_before, load_after=load_after)
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(results: list[dict], args: argparse.Namespace) -> list[dict]:
    """One row per (method, mode): medians over the alternations, and the posttrain/TRL ratios."""
    from benchmarks.flops import peak_flops

    rows = []
    for method in args.methods:
        for mode in args.modes:
            runs = {f: [r for r in results if r.get("method") == method and r.get("mode") == mode
                        and r.get("framework") == f and "error" not in r] for f in FRAMEWORKS}
            row = {"method": method, "mode": mode, "command": row_command(args, method, mode)}
            for f, rs in runs.items():
                row[f"{f}_tok_s"] = median([r["tokens_per_s"] for r in rs])
                row[f"{f}_peak_mb"] = median([r["peak_rss_mb_wait4"] for r in rs])
                row[f"{f}_runs"] = len(rs)
                if args.device == "cuda" and rs:
                    row[f"{f}_cuda_peak_mb"] = median([r.get("cuda_peak_mb", float("nan")) for r in rs])
                    peak = args.peak_tflops * 1e12 or peak_flops(rs[0].get("device_name", "")) or float("nan")
                    row[f"{f}_mfu"] = median([r["flops"] / r["seconds"] / peak for r in rs])
            row["speed_ratio"] = row["posttrain_tok_s"] / row["trl_tok_s"] if row.get("trl_tok_s") else float("nan")
            row["memory_ratio"] = row["posttrain_peak_mb"] / row["trl_peak_mb"] if row.get("trl_peak_mb") else float("nan")
            loads = [r["load_before"] for rs in runs.values() for r in rs] + [r["load_after"] for rs in runs.values() for r in rs]
            row["load_avg"] = sum(loads) / len(loads) if loads else float("nan")
            rows.append(row)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    cuda = args.device == "cuda"
    head = ["method", "mode", "posttrain tok/s", "TRL tok/s", "ratio", "posttrain peak MB", "TRL peak MB", "ratio"]
    if cuda:
        head += ["posttrain MFU", "TRL MFU", "posttrain CUDA MB", "TRL CUDA MB"]
    head += ["runs", "load avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["mode"], f"{r['posttrain_tok_s']:.0f}", f"{r['trl_tok_s']:.0f}", f"{r['speed_ratio']:.2f}x",
                 f"{r['posttrain_peak_mb']:.0f}", f"{r['trl_peak_mb']:.0f}", f"{r['memory_ratio']:.2f}x"]
        if cuda:
            cells += [f"{r.get('posttrain_mfu', float('nan')):.1%}", f"{r.get('trl_mfu', float('nan')):.1%}",
                      f"{r.get('posttrain_cuda_peak_mb', float('nan')):.0f}", f"{r.get('trl_cuda_peak_mb', float('nan')):.0f}"]
        cells += [f"{r['posttrain_runs']}+{r['trl_runs']}", f"{r['load_avg']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {r['method']} {r['mode']}: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def load_results(paths: list[str]) -> list[dict]:
    """Runs from results.jsonl files; a (method, mode) present in a later file replaces earlier ones."""
    merged: dict[tuple[str, str], list[dict]] = {}
    for path in paths:
        runs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        for key in {(r["method"], r["mode"]) for r in runs}:
            merged[key] = [r for r in runs if (r["method"], r["mode"]) == key]
    return [r for runs in merged.values() for r in runs]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        text = markdown(summarise(load_results(args.from_results), args), args)
        (out / "results.md").write_text(text)
        print(text)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="posttrain-bench-"))
    model_dir, has_text = materialise(args.model, scratch)
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = 10**9  # the text stream is long; only slices of it become sequences
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    prompt = LengthSpec(args.prompt_median, args.sigma, args.min_len, args.max_len)
    response = LengthSpec(args.response_median, args.sigma, args.min_len, args.max_len)
    data_files = {}
    for method in args.methods:
        rows = make_rows(rows_needed(args, method), prompt, response, seed=args.seed, eos_id=tokenizer.eos_token_id,
                         tokenizer=tokenizer if has_text else None, vocab=vocab)
        data_files[method] = scratch / f"data-{method}.json"
        save_rows(data_files[method], rows, {"method": method, "seed": args.seed})

    plan = [(rep, method, mode, framework) for rep in range(args.reps) for method in args.methods
            for mode in args.modes for framework in args.frameworks]
    print(f"{len(plan)} runs; model {args.model} ({model_dir}); device {args.device}; "
          f"load average {os.getloadavg()[0]:.1f}; scratch {scratch}", flush=True)
    results, log_path = [], out / "results.jsonl"
    for n, (rep, method, mode, framework) in enumerate(plan, start=1):
        spec = {"framework": framework, "method": method, "mode": mode, "model_dir": str(model_dir),
                "data_path": str(data_files[method]), "device": args.device, "batch_size": args.batch_size,
                "warmup": args.warmup, "steps": args.steps, "max_length": args.max_length,
                "learning_rate": args.learning_rate, "seed": args.seed, "threads": args.threads,
                "attn_implementation": args.attn_implementation,
                "gradient_checkpointing": args.gradient_checkpointing, "options": options(args)}
        workdir = scratch / f"run-{n:03d}-{method}-{mode}-{framework}"
        result = {**run_child(spec, workdir, args.timeout), "rep": rep, "method": method, "mode": mode,
                  "framework": framework, "model": args.model, "device": args.device, "options": spec["options"],
                  "batch_size": args.batch_size, "steps": args.steps}
        results.append(result)
        with open(log_path, "a") as handle:
            handle.write(json.dumps(result) + "\n")
        if "error" in result:
            print(f"[{n}/{len(plan)}] {method} {mode} {framework}: FAILED ({result['error']})\n{result['log_tail']}", flush=True)
        else:
            print(f"[{n}/{len(plan)}] {method:3s} {mode:4s} {framework:9s} {result['tokens_per_s']:8.1f} tok/s  "
                  f"peak {result['peak_rss_mb_wait4']:6.0f} MB  ({result['tokens']} tokens in {result['seconds']:.1f}s; "
                  f"load {result['load_before']:.1f})", flush=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = summarise(results, args)
    text = markdown(table, args)
    (out / "results.md").write_text(text)
    print("\n" + text)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
