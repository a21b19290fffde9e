"""Multi-process test helpers, and the worker that torchrun starts.

As a script, run several posttrain commands one after another in each process of ONE launch:

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py COMMANDS.json

COMMANDS.json is a list of argv lists (`[["sft", "--model", ...], ["dpo", ...]]`), or
`{"copy": [SRC, DST]}` steps (`copy_step`: rank 0 copies a run directory between two commands). Starting
processes and a process group costs more than a tiny training run, so the distributed tests
pay for it once per launch instead of once per recipe. Stops at the first command that fails.

As a module (`from distributed_worker import ...`): data files, the per-recipe commands,
the launch itself, and readers for what a run wrote.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("sft", "dpo", "kto", "rm")


def write_data(folder: Path) -> Path:
    """Tiny learnable data for every recipe: chat additions, YES/NO pairs, unpaired YES/NO rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    chat, pairs, unpaired = [], [], []
    for _ in range(24):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        chat.append({"messages": [{"role": "user", "content": f"{a}+{b}"}, {"role": "assistant", "content": str(a + b)}]})
    for i in range(16):
        body = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 9)))
        pairs.append({"prompt": f"Q{i}: say it", "chosen": "YES " + body, "rejected": "NO! " + body})
        unpaired.append({"prompt": f"Q{i}: say it", "completion": ("YES " if i % 2 == 0 else "NO! ") + body,
                         "label": i % 2 == 0})
    for name, rows in (("chat.jsonl", chat), ("pairs.jsonl", pairs), ("unpaired.jsonl", unpaired)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def recipe_commands(data: Path, out: Path, extra: list[str], recipes=RECIPES, steps: int = 2) -> list[list[str]]:
    """One argv per recipe, writing to out/<recipe>. DPO keeps a frozen reference copy; KTO
    caches its reference log-probs beside `data` (use a separate `data` folder per run)."""
    common = ["--model", "tiny-random", "--max-steps", str(steps), "--batch-size", "2", "--no-progress",
              "--seed", "1", "--learning-rate", "1e-2", *extra]
    per_recipe = {
        "sft": ["sft", "--data", str(data / "chat.jsonl"), "--save-every", "1"],
        "dpo": ["dpo", "--data", str(data / "pairs.jsonl"), "--reference", "copy"],
        "kto": ["kto", "--data", str(data / "unpaired.jsonl")],
        "rm": ["rm", "--data", str(data / "pairs.jsonl")],
    }
    return [[*per_recipe[r], "--output-dir", str(out / r), *common] for r in recipes]


def launch(commands: list[list[str]], workdir: Path, nproc: int = 2, env: dict | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `commands` in one torchrun launch of `nproc` CPU processes (gloo)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / f"commands-{random.Random().randrange(10**9)}.json"
    spec.write_text(json.dumps(commands))
    port = str(29500 + random.Random().randint(100, 2000))
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master-port", port,
            str(ROOT / "tests" / "distributed_worker.py"), str(spec)]
    return subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def final_weights(run: Path) -> dict:
    """Every tensor in run/final/*.safetensors, keyed `file:name`."""
    from safetensors.torch import load_file

    files = sorted((run / "final").glob("*.safetensors"))
    assert files, f"no weights in {run / 'final'}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def train_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def accelerate_launch_env(config_file) -> dict[str, str]:
    """The variables `accelerate launch --config_file FILE` gives each process (via Accelerate's own
    launcher code; private helpers, so this test breaks loudly if Accelerate changes them)."""
    from accelerate.commands import launch as accelerate_launch

    args = accelerate_launch.launch_command_parser().parse_args(
        ["--config_file", str(config_file), "--num_processes", "2", "-m", "posttrain.cli", "sft"])
    args, defaults, _ = accelerate_launch._validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config.keys())
        _, env = accelerate_launch.prepare_deepspeed_cmd_env(args)
    else:
        env = accelerate_launch.prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def copy_step(src: Path, dst: Path) -> dict:
    """A worker step: rank 0 copies directory `src` to `dst` while the others wait."""
    return {"copy": [str(src), str(dst)]}


if __name__ == "__main__":
    import shutil

    import torch.distributed as dist

    from posttrain.cli import main

    for entry in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        if isinstance(entry, dict):
            if int(os.environ.get("RANK", "0")) == 0:
                shutil.copytree(*entry["copy"])
            if dist.is_initialized():
                dist.barrier()
            continue
        code = main(entry)
        if code:
            sys.exit(code)
