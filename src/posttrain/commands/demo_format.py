"""The format demo: LoRA fine-tuning of SmolLM2-135M-Instruct, with a measured before/after.

The shipped instruction set teaches a visible behaviour: answer short questions
(arithmetic, capitals, opposites, plurals, ...) as a JSON object
`{"answer": ..., "reason": ...}`. The demo

1. answers 20 held-out prompts with the base model (greedy),
2. fine-tunes a LoRA adapter on the chat-shaped and Alpaca-shaped copies of the data, mixed,
3. answers the same prompts with the tuned model,
4. prints both side by side with two measured rates and their 95% Wilson intervals:
   format (the reply is such a JSON object) and accuracy (its answer is right).

Run: `python -m posttrain.commands.demo_format [--model smollm2-135m] [--max-steps 60] [--output-dir runs/demo]`.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ..data.resources import demo_data_path
from ..errors import PosttrainError


def parse_reply(text: str) -> dict | None:
    """The reply as a JSON object with `answer` and `reason`, or None."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and {"answer", "reason"} <= set(obj) else None


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9.\-]+", " ", str(text).lower()).strip().rstrip(".")


def grade(reply: str, expected: str) -> tuple[bool, bool]:
    """(follows the format, answer is right)."""
    obj = parse_reply(reply)
    if obj is None:
        return False, False
    return True, normalise(obj["answer"]) == normalise(expected)


def answer_all(model_name: str, prompts_path: Path, output: Path, max_new_tokens: int) -> list[dict]:
    from .generate import GenerateConfig, run_generate

    cfg = GenerateConfig(model=[model_name], prompts=str(prompts_path), output=str(output),
                         max_new_tokens=max_new_tokens, temperature=0.0, batch_size=20)
    return run_generate(cfg)


def rates(rows: list[dict]) -> dict[str, tuple[int, int, tuple[float, float]]]:
    from ..evaluate.intervals import wilson_interval

    graded = [grade(r["response"], r["answer"]) for r in rows]
    result = {}
    for name, index in (("format", 0), ("accuracy", 1)):
        hits = sum(g[index] for g in graded)
        result[name] = (hits, len(graded), wilson_interval(hits, len(graded)))
    return result


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_comparison(before: list[dict], after: list[dict], show: int = 8) -> None:
    print("\n" + "=" * 100)
    print(f"{'prompt':<34} {'before (base model)':<32} {'after (LoRA SFT)':<32}")
    print("-" * 100)
    for b, a in list(zip(before, after))[:show]:
        print(f"{short(b['prompt'][-1]['content'], 33):<34} {short(b['response'], 31):<32} {short(a['response'], 31):<32}")
    print("-" * 100)
    for name, (label) in (("format", "replies as a JSON {answer, reason}"), ("accuracy", "answer is right")):
        (hb, n, cb), (ha, _, ca) = rates(before)[name], rates(after)[name]
        print(f"{label:<36} before {hb:>2}/{n} ({hb / n:5.0%}, 95% CI {cb[0]:.0%}–{cb[1]:.0%})   "
              f"after {ha:>2}/{n} ({ha / n:5.0%}, 95% CI {ca[0]:.0%}–{ca[1]:.0%})")
    print("=" * 100)


def main(argv: list[str] | None = None) -> int:
    from ..train.sft import SFTConfig, train_sft

    parser = argparse.ArgumentParser(prog="python -m posttrain.commands.demo_format", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    heldout = demo_data_path("instruct_heldout.jsonl")
    started = time.perf_counter()
    try:
        print(f"[1/3] answering {sum(1 for _ in open(heldout))} held-out prompts with the base model {args.model}")
        before = answer_all(args.model, heldout, out / "before.jsonl", args.max_new_tokens)
        print(f"[2/3] LoRA fine-tuning on {demo_data_path('instruct_chat.jsonl').name} + "
              f"{demo_data_path('instruct_alpaca.jsonl').name} (chat and Alpaca shapes, mixed 50/50)")
        cfg = SFTConfig(model=args.model, output_dir=str(out / "sft"), peft="lora", lora_r=16, lora_alpha=32,
                        data=[str(demo_data_path("instruct_chat.jsonl")), str(demo_data_path("instruct_alpaca.jsonl"))],
                        data_weights=[0.5, 0.5], mix_total=320, learning_rate=1e-3, lr_scheduler="cosine",
                        warmup_ratio=0.05, batch_size=8, grad_accum=1, max_steps=args.max_steps, max_length=256,
                        save_every=20, keep_last=1)
        train_sft(cfg)
        print("[3/3] answering the same prompts with the fine-tuned model")
        after = answer_all(str(out / "sft"), heldout, out / "after.jsonl", args.max_new_tokens)
    except PosttrainError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print_comparison(before, after)
    print(f"total time {time.perf_counter() - started:.0f}s; run directory {out}/ "
          f"(metrics in {out}/sft/metrics.jsonl, generations in before.jsonl / after.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
