"""Where does a posttrain training step spend its time? Forward + backward of one micro-batch.

    .venv/bin/python benchmarks/profile_step.py --method dpo --layout padding_free --batch-size 4
    .venv/bin/python benchmarks/profile_step.py --method dpo --layout padded --profile   # torch.profiler table

Builds the batch from the benchmark's synthetic data (data.py) exactly as the recipe's
collate does, runs the recipe's loss and backward `--repeat` times (the first is a
warmup), and prints seconds per pass, the batch shape and the process's peak RSS.
`--profile` adds torch.profiler's table of the most expensive operators (CPU time);
`--compile` compiles every decoder layer with torch.compile first (the first pass pays
the compilation).
No optimizer step: this isolates the model and the loss from the training loop.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LAYOUTS = {
    "sft": ("padded", "packed", "padding_free"),
    "dpo": ("padded", "padding_free", "prefix_sharing", "both"),
    "rm": ("padded", "shared_prompt"),
}


def build(method: str, layout: str, rows: list[dict], pad_id: int, max_length: int):
    """(batch, compute_loss) for posttrain's recipe in this layout."""
    import torch

    if method == "sft":
        from posttrain.data import TokenizedExample, pack_examples, packed_collate, pad_collate, padding_free_collate
        from posttrain.train.sft import nll_sum

        examples = [TokenizedExample(r["prompt"] + r["chosen"], [-100] * len(r["prompt"]) + r["chosen"]) for r in rows]
        if layout == "packed":
            batch = packed_collate(pack_examples(examples, max_length), pad_id)
        elif layout == "padding_free":
            batch = padding_free_collate(examples)
        else:
            batch = pad_collate(examples, pad_id)
        return batch, lambda model: nll_sum(model, batch).loss_sum
    if method == "dpo":
        from posttrain.train.dpo import make_loss
        from posttrain.train.preference_batch import BatchLayout
        from posttrain.train.preference_data import PairExample
        from posttrain.train.reference import CachedReference

        pairs = [PairExample(r["prompt"], r["chosen"], r["rejected"], index=i) for i, r in enumerate(rows)]
        batch = BatchLayout(pad_id, padding_free=layout in ("padding_free", "both"),
                            prefix_sharing=layout in ("prefix_sharing", "both")).pairs(pairs)
        reference = CachedReference(torch.full((len(pairs), 2), -100.0))
        loss = make_loss({"sigmoid": 1.0}, {"sigmoid": {"beta": 0.1}}, reference)
        return batch, lambda model: loss(model, batch).loss_sum
    from posttrain.train.reward import RMConfig, make_loss
    from posttrain.train.reward_batch import RewardGroup, collate_groups

    groups = [RewardGroup(r["prompt"], [r["chosen"], r["rejected"]], ranks=[0, 1]) for r in rows]
    batch = collate_groups(groups, layout, pad_id)
    loss = make_loss(RMConfig())
    return batch, lambda model: loss(model, batch).loss_sum


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", choices=list(LAYOUTS), default="dpo")
    p.add_argument("--layout", default="padded")
    p.add_argument("--mode", choices=["lora", "full"], default="lora")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--prompt-median", type=float, default=64.0)
    p.add_argument("--response-median", type=float, default=64.0)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every decoder layer (regional compilation; the first pass compiles)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast around the forward (--mixed-precision bf16)")
    p.add_argument("--weights-bf16", action="store_true", help="frozen weights stored in bf16 (LoRA's base)")
    args = p.parse_args(argv)
    if args.layout not in LAYOUTS[args.method]:
        p.error(f"--layout for {args.method}: one of {', '.join(LAYOUTS[args.method])}")

    import tempfile

    import torch
    from transformers import AutoTokenizer

    from benchmarks.data import LengthSpec, make_rows
    from benchmarks.measure import peak_rss_mb
    from benchmarks.models import materialise
    from posttrain.train.engine import enable_gradient_checkpointing
    from posttrain.train.reward import RMConfig, build_model
    from posttrain.train.setup import load_trainable_model

    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory(prefix="posttrain-profile-")  # removed at exit
    model_dir, has_text = materialise(args.model, Path(scratch.name))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = 10**9
    rows = make_rows(args.batch_size, LengthSpec(args.prompt_median), LengthSpec(args.response_median), seed=args.seed,
                     eos_id=tokenizer.eos_token_id, tokenizer=tokenizer if has_text else None,
                     vocab=len(tokenizer))
    cfg = RMConfig(model=str(model_dir), peft="lora" if args.mode == "lora" else "none", attn_implementation=args.attn,
                   gradient_checkpointing=args.gradient_checkpointing)
    if args.method == "rm":
        model = build_model(cfg)
    else:
        model = load_trainable_model(cfg, gradient_checkpointing=args.gradient_checkpointing, quiet=True)
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
    if args.weights_bf16:
        for name, param in model.named_parameters():
            if not param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    if args.compile:
        for module in model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.compile()
    batch, compute = build(args.method, args.layout, rows, tokenizer.pad_token_id, args.max_length)
    shapes = {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
    print(f"{args.method} {args.layout} {args.mode}: input_ids {shapes['input_ids']}, "
          f"attention_mask {shapes.get('attention_mask')}", flush=True)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):  # as the engine's step does
            loss = compute(model)
        loss.backward()

    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        print(f"  pass: {times[-1]:.2f}s", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(f"median pass {sorted(times[1:] or times)[len(times[1:] or times) // 2]:.2f}s; peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
