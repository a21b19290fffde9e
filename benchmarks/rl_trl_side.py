"""TRL 1.16's GRPOTrainer with its own defaults: the other side of benchmarks/rl_grpo.py.

    python benchmarks/rl_trl_side.py MODE PROMPTS.jsonl MODEL_DIR OUT.json --steps 4 --prompts-per-step 4 \
        --num-samples 4 --max-new-tokens 20 --output-dir DIR

TRL's defaults are kept (gradient checkpointing on, `loss_type="dapo"`, beta 0 so no reference
model, its generation through `model.generate`, `per_device_train_batch_size` 8, learning rate
1e-6, temperature 1.0), except what the comparison needs to be the same work:
- `bf16=False` and the model loaded in float32 (posttrain trains in float32 on the CPU);
- `num_generations` = G, `max_completion_length` = the new-token limit, and
  `gradient_accumulation_steps` = P x G / 8, so one optimizer step consumes exactly one
  generation batch of P prompts x G samples (posttrain's step: micro-batches of 8 too);
- `max_steps`, `logging_steps=1`, `report_to="none"`, `save_strategy="no"`; the final model is
  saved with `trainer.save_model()`, as posttrain writes its final model.
The reward is posttrain's strict `math` verifier itself (the shipped arithmetic task's reward),
called on the decoded completion text with the row's `answer`.
LoRA: r=16, alpha=32, dropout 0.05 on all linear layers (posttrain's defaults).

Per optimizer step it records: wall seconds of the step (callback), seconds in generation
(`_generate`) and in generate-and-score (generation, rewards, TRL's bookkeeping), the sampled
tokens and the prompt + completion tokens of the batch. Writes them, with the final loss, to OUT.json.
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["lora", "full"])
    p.add_argument("prompts")
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--output-dir", required=True)
    args = p.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.rollout.rewards import BUILTIN_REWARDS

    verifier = BUILTIN_REWARDS["math"]
    rows = [json.loads(line) for line in open(args.prompts) if line.strip()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in rows])

    def strict_math(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(verifier("", text, answer=a)) for text, a in zip(texts, answer)]

    per_step = args.prompts_per_step * args.num_samples
    micro = 8  # TRL's default per_device_train_batch_size
    if per_step % micro:
        raise SystemExit(f"P x G = {per_step} must be a multiple of TRL's batch size {micro}")
    config = GRPOConfig(output_dir=args.output_dir, num_generations=args.num_samples,
                        max_completion_length=args.max_new_tokens, gradient_accumulation_steps=per_step // micro,
                        max_steps=args.steps, bf16=False, logging_steps=1, report_to="none", save_strategy="no")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    peft = (LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
            if args.mode == "lora" else None)
    trainer = GRPOTrainer(model=model, reward_funcs=strict_math, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft)

    steps: list[dict] = []
    current: dict = {}
    generate, generate_and_score = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(*a, **k):
        started = time.perf_counter()
        out = generate(*a, **k)
        current["generate_s"] = current.get("generate_s", 0.0) + time.perf_counter() - started
        return out

    def timed_generate_and_score(*a, **k):
        started = time.perf_counter()
        out = generate_and_score(*a, **k)
        current["generate_and_score_s"] = current.get("generate_and_score_s", 0.0) + time.perf_counter() - started
        completion = out["completion_mask"]
        current["sampled_tokens"] = current.get("sampled_tokens", 0) + int(completion.sum())
        current["update_tokens"] = current.get("update_tokens", 0) + int(out["prompt_mask"].sum() + completion.sum())
        return out

    trainer._generate = timed_generate
    trainer._generate_and_score_completions = timed_generate_and_score

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            current.clear()
            current["started"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            row = dict(current)
            row["step_s"] = time.perf_counter() - row.pop("started")
            steps.append(row)

    trainer.add_callback(StepTimer())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(args.output_dir + "/final")
    history = trainer.state.log_history
    losses = [row["loss"] for row in history if "loss" in row]
    rewards = [row["reward"] for row in history if "reward" in row]
    with open(args.out, "w") as handle:
        json.dump({"final_loss": losses[-1] if losses else None, "train_seconds": seconds, "rewards": rewards,
                   "steps": steps, "torch_threads": torch.get_num_threads()}, handle)


if __name__ == "__main__":
    main()
