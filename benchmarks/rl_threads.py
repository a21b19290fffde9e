"""Thread count for online RL on a shared CPU: 1 vs the default, alternating in one process.

    .venv/bin/python benchmarks/rl_threads.py [--reps 5] [--threads 1 2]

Times the two halves of a GRPO step on SmolLM2-135M (float32), with each thread count in
turn (torch.set_num_threads), interleaved so that load changes hit every setting alike:
- decode: `--new-tokens` (20) sampled tokens for 16 rows (4 prompts x 4 samples, KV cache), i.e. `generate`'s
  inner loop: many small matmuls, where OpenMP barriers between threads cost the most when the
  cores are shared;
- update: forward + backward of one GRPO micro-batch, 8 samples (2 prompts of 56 tokens x 4
  samples of 20 tokens), response log-probs through the fused head, in the plain padded layout
  (`update`) and with each prompt computed once (`shared`: `rl.rollouts.tree_layout`,
  padding-free).
Prints medians and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/rl_threads.py", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--new-tokens", type=int, default=20)
    args = p.parse_args(argv)

    import torch

    from benchmarks.defaults import model_directory
    from posttrain.models import load_model
    from posttrain.rl.grpo import policy_logprobs
    from posttrain.rl.rollouts import Sample, collate, tree_layout

    model = load_model(model_directory(args.model), dtype="float32")
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1000, (16, 56), generator=generator)
    prompts = [torch.randint(0, 1000, (56,), generator=generator).tolist() for _ in range(2)]
    samples = [Sample(i // 4, i % 4, prompts[i // 4], torch.randint(0, 1000, (20,), generator=generator).tolist(),
                      "", "length") for i in range(8)]
    plain = collate(samples, 0)
    shared = {**plain, **tree_layout(samples, 0, padding_free=True)}

    def decode() -> None:
        with torch.no_grad():
            out = model(input_ids=prompt, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(args.new_tokens):
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

    def update(batch) -> None:
        model.zero_grad(set_to_none=True)
        out = policy_logprobs(model, batch, 1.0, entropy=True)
        (out.logprobs.sum() + out.entropy.sum()).backward()

    steps = (("decode", decode), ("update", lambda: update(plain)), ("shared", lambda: update(shared)))
    times = {(n, name): [] for n in args.threads for name, _ in steps}
    load_before = os.getloadavg()[0]
    for rep in range(args.reps + 1):
        for n in args.threads:
            torch.set_num_threads(n)
            for name, fn in steps:
                started = time.perf_counter()
                fn()
                if rep:  # the first round is a warm-up
                    times[(n, name)].append(time.perf_counter() - started)
    print(f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}; medians of {args.reps} (s):")
    for (n, name), values in times.items():
        print(f"  threads {n}  {name:6s} {statistics.median(values):7.2f}  (all: {', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
