"""TRL with its own defaults, as a user runs it (the other side of benchmarks/defaults.py).

    python benchmarks/trl_defaults.py METHOD MODE DATA.jsonl MODEL_DIR OUT.json --steps 6 --batch-size 4 --learning-rate 1e-6

TRL's defaults are kept (gradient checkpointing on, a live reference forward for DPO
through the disabled adapter or a reference copy, padding, full-vocabulary logits, its
data preparation), except where the comparison needs the same work:
- `bf16=False`: the same precision as posttrain's default on the CPU; the model is loaded in
  float32 for the same reason. TRL's own default, bf16 autocast, stops on a CPU ("You need to
  assign use_cpu"); `--bf16` does what that message asks (`use_cpu=True`, TRL's bf16 default
  kept), the other side of `posttrain ... --mixed-precision bf16`;
- batch size, `max_steps` and learning rate: the same examples, steps and update as posttrain's run;
- `logging_steps=1`: to report the final step's loss (posttrain logs every step);
- `report_to="none"`, `save_strategy="no"` (no checkpoint in either); the final model is saved
  with `trainer.save_model()`, as posttrain writes its final model.
LoRA: r=16, alpha=32, dropout 0.05 on all linear layers, posttrain's defaults.
Writes {"final_loss", "train_seconds", "steps"} to OUT.json.
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("method", choices=["sft", "dpo", "rm"])
    p.add_argument("mode", choices=["lora", "full"])
    p.add_argument("data")
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--learning-rate", type=float, required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--bf16", action="store_true", help="TRL's bf16 autocast default on the CPU (use_cpu=True)")
    args = p.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    dataset = load_dataset("json", data_files=args.data, split="train")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    common = dict(output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                  learning_rate=args.learning_rate, logging_steps=1, report_to="none", save_strategy="no",
                  **({"use_cpu": True} if args.bf16 else {"bf16": False}))
    task = "SEQ_CLS" if args.method == "rm" else "CAUSAL_LM"
    peft = (LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type=task)
            if args.mode == "lora" else None)
    if args.method == "rm":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=dataset,
                                processing_class=tokenizer, peft_config=peft)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        if args.method == "dpo":
            from trl import DPOConfig, DPOTrainer

            trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft)
        else:
            from trl import SFTConfig, SFTTrainer

            trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(args.output_dir + "/final")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    with open(args.out, "w") as handle:
        json.dump({"final_loss": losses[-1] if losses else None, "train_seconds": seconds,
                   "steps": trainer.state.global_step}, handle)


if __name__ == "__main__":
    main()
