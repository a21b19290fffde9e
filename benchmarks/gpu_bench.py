"""GPU benchmark: SFT, DPO and GRPO on a randomly initialised ~1B Llama in bf16, posttrain's
defaults against TRL's defaults; tokens/s, MFU and peak CUDA memory, as a markdown table.

    bash benchmarks/gpu.sh                         # one H100/H200: about 5-8 minutes
    .venv/bin/python benchmarks/gpu_bench.py --dry-run   # the same path on the CPU with a tiny model (tests)

Per method and framework, one fresh process (`gpu_bench.py --child ...`) trains one epoch of
the same rows (SFT: prompt/completion chats; DPO: preference pairs; GRPO: prompts, G samples
each, `max_new_tokens`, a length reward). Each side runs with its own defaults (posttrain:
its default layouts, fused head, cached reference; TRL: its trainers' defaults, which turn on
gradient checkpointing and bf16); both load the same bf16 checkpoint with sdpa attention.

tokens/s: SFT and DPO count the tokens of the data (every sequence standalone, prompt +
response; a pair counts both sequences), identical for both sides, over the training loop's
seconds (posttrain's `TrainResult.seconds`, TRL's `train_runtime`; the first step's
warm-up included, so run enough steps). GRPO counts prompt + generated tokens of the sampled
sequences as each framework reports them. MFU (benchmarks/flops.py): SFT/DPO training FLOPs
of the data over time over the GPU's dense bf16 peak; GRPO adds 2 N per generated token for
sampling to 6 N per trained token. Peak CUDA memory: `torch.cuda.max_memory_allocated`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.flops import ModelShape, peak_flops, training_flops  # noqa: E402
from benchmarks.user_data import preference_rows, sft_rows, user, write_jsonl  # noqa: E402

METHODS = ("sft", "dpo", "grpo")
FRAMEWORKS = ("posttrain", "trl")


def settings(dry_run: bool) -> dict:
    if dry_run:  # seconds on a CPU: the plumbing, not the numbers
        return dict(model="tiny-random", device="cpu", steps=2, batch_size=2, prompt_words=(5, 10),
                    response_words=(10, 20), grpo_prompts=2, grpo_samples=2, max_new_tokens=8)
    return dict(model="llama-1b", device="cuda", steps=12, batch_size=8, prompt_words=(100, 300),
                response_words=(300, 700), grpo_prompts=8, grpo_samples=8, max_new_tokens=256)


def make_data(out: Path, s: dict) -> dict[str, Path]:
    rows = s["steps"] * s["batch_size"]
    prompts = [{"prompt": user(r["prompt"][0]["content"])} for r in
               preference_rows(s["steps"] * s["grpo_prompts"], s["prompt_words"], s["response_words"], seed=2)]
    return {"sft": write_jsonl(sft_rows(rows, s["prompt_words"], s["response_words"]), out / "sft.jsonl"),
            "dpo": write_jsonl(preference_rows(rows, s["prompt_words"], s["response_words"], seed=1), out / "dpo.jsonl"),
            "grpo": write_jsonl(prompts, out / "grpo.jsonl")}


def data_sequence_lengths(method: str, path: Path, tokenizer) -> list[int]:
    """Standalone token counts of every sequence the data holds (chat template applied)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    def count(messages) -> int:
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    if method == "sft":
        return [count(r["prompt"] + r["completion"]) for r in rows]
    return [count(r["prompt"] + r[k]) for r in rows for k in ("chosen", "rejected")]


# --------------------------------------------------------------------------- the children


def child_posttrain(method: str, data: Path, model_dir: str, out_dir: Path, s: dict) -> dict:
    common = dict(model=model_dir, output_dir=str(out_dir), progress=False, seed=0)
    if method == "sft":
        from posttrain.train.sft import SFTConfig, train_sft

        result = train_sft(SFTConfig(**common, data=[str(data)], batch_size=s["batch_size"], max_steps=s["steps"]))
        return {"seconds": result.seconds, "final_loss": result.last_metrics.get("loss")}
    if method == "dpo":
        from posttrain.train.dpo import DPOConfig, train_dpo

        result = train_dpo(DPOConfig(**common, data=[str(data)], batch_size=s["batch_size"], max_steps=s["steps"]))
        return {"seconds": result.seconds, "final_loss": result.last_metrics.get("loss")}
    from posttrain.cli import main as cli

    reward = f"{ROOT / 'benchmarks' / 'gpu_reward.py'}:posttrain_length"
    started = time.perf_counter()
    cli(["grpo", "--model", model_dir, "--prompts", str(data), "--reward", reward, "--max-steps", str(s["steps"]),
         "--prompts-per-step", str(s["grpo_prompts"]), "--num-samples", str(s["grpo_samples"]),
         "--max-new-tokens", str(s["max_new_tokens"]), "--output-dir", str(out_dir), "--no-progress"])
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # prompt + generated tokens of the sampled sequences: tokens/s of each step times its seconds
    tokens = sum(r.get("tokens_per_s", 0.0) * r.get("time/step", 0.0) for r in rows if "step" in r)
    return {"seconds": seconds, "tokens": tokens, "final_loss": next((r["loss"] for r in reversed(rows) if "loss" in r), None)}


def child_trl(method: str, data: Path, model_dir: str, out_dir: Path, s: dict) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = s["device"] == "cuda"
    dataset = load_dataset("json", data_files=str(data), split="train")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    common = dict(output_dir=str(out_dir), max_steps=s["steps"], logging_steps=1, report_to="none",
                  save_strategy="no", use_cpu=not cuda, bf16=cuda)
    if method == "sft":
        from trl import SFTConfig as Config
        from trl import SFTTrainer as Trainer

        kwargs = dict(args=Config(**common, per_device_train_batch_size=s["batch_size"]))
    elif method == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        kwargs = dict(args=Config(**common, per_device_train_batch_size=s["batch_size"]))
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

        from benchmarks.gpu_reward import trl_length

        samples = s["grpo_prompts"] * s["grpo_samples"]
        kwargs = dict(args=Config(**common, per_device_train_batch_size=samples, num_generations=s["grpo_samples"],
                                  max_completion_length=s["max_new_tokens"]), reward_funcs=trl_length)
    trainer = Trainer(model=model, train_dataset=dataset, processing_class=tokenizer, **kwargs)
    output = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    tokens = max([r.get("num_tokens", 0) for r in trainer.state.log_history] or [0])
    return {"seconds": output.metrics["train_runtime"], "tokens": tokens, "final_loss": losses[-1] if losses else None}


def run_child(args) -> None:
    import torch

    s = settings(args.dry_run)
    runner = child_posttrain if args.framework == "posttrain" else child_trl
    result = runner(args.method, Path(args.data), args.model_dir, Path(args.out_dir), s)
    if torch.cuda.is_available():
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["device_name"] = torch.cuda.get_device_name()
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent


def materialise_model(name: str, out: Path, dtype: str) -> str:
    from benchmarks.models import materialise

    model_dir, _ = materialise(name, out)
    if dtype == "bfloat16":  # store bf16 weights, so that both sides load the same bf16 tensors
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        model.save_pretrained(model_dir)
    return str(model_dir)


def markdown(rows: list[dict]) -> str:
    lines = ["| method | framework | tokens/s | MFU | peak CUDA MB | train s | final loss |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['framework']} | failed: {r['error']} | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        memory = f"{r['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in r else "n/a"
        loss = f"{r['final_loss']:.4f}" if isinstance(r.get("final_loss"), (int, float)) else "n/a"
        lines.append(f"| {r['method']} | {r['framework']} | {r['tokens_per_s']:.0f} | {mfu} | {memory} | "
                     f"{r['seconds']:.1f} | {loss} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny-random, 2 steps: checks the plumbing only")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    p.add_argument("--out", default="runs/gpu-bench")
    p.add_argument("--timeout", type=int, default=240, help="seconds per run")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak (default: from the GPU's name)")
    p.add_argument("--child", nargs=6, metavar=("FRAMEWORK", "METHOD", "DATA", "MODEL_DIR", "OUT_DIR", "RESULT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.framework, args.method, args.data, args.model_dir, args.out_dir, args.result = args.child
        run_child(args)
        return 0
    s = settings(args.dry_run)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = materialise_model(s["model"], out, "float32" if args.dry_run else "bfloat16")
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir))
    data = make_data(out, s)
    rows = []
    for method in args.methods:
        for framework in args.frameworks:
            run_dir = out / f"{method}-{framework}"
            result_path = out / f"{method}-{framework}.json"
            result_path.unlink(missing_ok=True)
            command = [sys.executable, str(Path(__file__).resolve()), "--child", framework, method, str(data[method]),
                       model_dir, str(run_dir), str(result_path)] + (["--dry-run"] if args.dry_run else [])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                   "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
            row = {"method": method, "framework": framework}
            try:
                done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({**row, "error": f"timeout after {args.timeout}s"})
                continue
            if done.returncode != 0 or not result_path.exists():
                (out / f"{method}-{framework}.log").write_text(done.stdout + done.stderr)
                rows.append({**row, "error": f"exit {done.returncode} (see {method}-{framework}.log)"})
                continue
            result = json.loads(result_path.read_text())
            if method == "grpo":
                samples = s["steps"] * s["grpo_prompts"] * s["grpo_samples"]
                tokens = result.get("tokens") or 0
                generated = samples * s["max_new_tokens"]  # an upper bound: responses end at max_new_tokens at most
                flops = 6 * shape.matmul_params * tokens + 2 * shape.matmul_params * generated
            else:
                lengths = data_sequence_lengths(method, data[method], tokenizer)
                tokens = sum(lengths)
                flops = training_flops(shape, lengths)
            peak = args.peak_tflops * 1e12 or peak_flops(result.get("device_name", "")) or 0.0
            rows.append({**row, **result, "tokens": tokens, "tokens_per_s": tokens / result["seconds"],
                         "mfu": flops / result["seconds"] / peak if peak else None})
            print(json.dumps(rows[-1]), flush=True)
    text = (f"{s['model']} ({shape.matmul_params / 1e9:.2f}B matmul parameters), "
            f"{'dry run on the CPU' if args.dry_run else 'bf16'}; {s['steps']} steps, batch {s['batch_size']}\n\n"
            + markdown(rows))
    (out / "results.md").write_text(text)
    print(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
