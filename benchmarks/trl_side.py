"""TRL's side of a benchmark run (trl 1.16 API: SFTTrainer, RewardTrainer, DPOTrainer).

Settings matched to posttrain's (TRL's own defaults differ; each override says why):
- `gradient_checkpointing=False` (TRL defaults to True), `bf16=False` on CPU (TRL
  defaults to bf16 autocast): posttrain trains in float32 without checkpointing unless
  asked, and the same work must be compared. `--gradient-checkpointing` turns it on in both.
- `train_sampling_strategy="sequential"` over rows put in posttrain's epoch order
  (`posttrain.train.engine.epoch_order`), so step k of both frameworks sees the same
  examples (packed SFT aside, where each packs its own way).
- `save_strategy="no"`, `report_to="none"`, `logging_steps=1` (posttrain logs every step).
- The optimizer is TRL's default (fused AdamW); LoRA r=16, alpha=32, dropout 0.05 on every
  linear layer but the head, as posttrain's defaults.
- DPO: the token ids are handed over ready (`_prepare_dataset` is bypassed: it would
  re-tokenise text). `precompute_ref_log_probs` follows `--dpo-reference`.
- Reward model: `AutoModelForSequenceClassification` (one label), as RewardTrainer expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .measure import StepClock, TokenLog, counting_collator


def training_kwargs(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    cuda = spec["device"] == "cuda"
    return dict(output_dir=str(workdir / "trl-run"), per_device_train_batch_size=spec["batch_size"],
                gradient_accumulation_steps=1, max_steps=spec["warmup"] + spec["steps"],
                learning_rate=spec["learning_rate"], lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
                gradient_checkpointing=spec["gradient_checkpointing"], bf16=cuda, use_cpu=not cuda,
                train_sampling_strategy="sequential", dataloader_num_workers=0, seed=spec["seed"],
                disable_tqdm=True, max_length=spec["max_length"])


def lora_config(task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type=task_type)


def model_dtype(spec: dict[str, Any]):
    """The dtype posttrain's `--dtype auto` picks on this device, so both load the same weights."""
    import torch

    from posttrain.models import resolve_dtype

    return resolve_dtype("auto", torch.device(spec["device"]))


def attention(spec: dict[str, Any]) -> str:
    return spec.get("attn_implementation", "sdpa")


def clock_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.mark()

        def on_step_end(self, args, state, control, **kwargs):
            clock.mark()

    return Clock()


def train(trainer, clock: StepClock, log: TokenLog, lengths_of) -> None:
    trainer.add_callback(clock_callback(clock))
    # Wrapped after construction: a reference pre-pass in __init__ is not counted as training.
    trainer.data_collator = counting_collator(trainer.data_collator, lengths_of, log)
    trainer.train()


def run_sft(spec: dict[str, Any], rows: list[dict], workdir: Path, clock: StepClock, log: TokenLog) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    packing = spec["options"].get("sft_packing", False)
    args = SFTConfig(**training_kwargs(spec, workdir), packing=packing, packing_strategy="bfd")
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=model_dtype(spec), attn_implementation=attention(spec))
    dataset = Dataset.from_list([{"input_ids": r["prompt"] + r["chosen"], "labels": [-100] * len(r["prompt"]) + r["chosen"]}
                                 for r in rows])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config("CAUSAL_LM") if spec["mode"] == "lora" else None)

    def lengths_of(example: dict) -> list[int]:
        return list(example["seq_lengths"]) if "seq_lengths" in example else [len(example["input_ids"])]

    train(trainer, clock, log, lengths_of)


def run_rm(spec: dict[str, Any], rows: list[dict], workdir: Path, clock: StepClock, log: TokenLog) -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**training_kwargs(spec, workdir))
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, dtype=model_dtype(spec),
                                                               attn_implementation=attention(spec))
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = Dataset.from_list([{"chosen_ids": r["prompt"] + r["chosen"], "rejected_ids": r["prompt"] + r["rejected"]}
                                 for r in rows])
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=lora_config("SEQ_CLS") if spec["mode"] == "lora" else None)
    train(trainer, clock, log, lambda example: [len(example["chosen_ids"]), len(example["rejected_ids"])])


def run_dpo(spec: dict[str, Any], rows: list[dict], workdir: Path, clock: StepClock, log: TokenLog) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    precompute = spec["options"].get("dpo_reference", "precompute") == "precompute"
    args = DPOConfig(**training_kwargs(spec, workdir), precompute_ref_log_probs=precompute, beta=0.1,
                     loss_type=["sigmoid"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=model_dtype(spec), attn_implementation=attention(spec))
    dataset = Dataset.from_list([{"prompt_ids": r["prompt"], "chosen_ids": r["chosen"], "rejected_ids": r["rejected"]}
                                 for r in rows])
    # The rows are token ids already; TRL's preparation would tokenise "prompt"/"chosen" text.
    DPOTrainer._prepare_dataset = lambda self, dataset, *args, **kwargs: dataset
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config("CAUSAL_LM") if spec["mode"] == "lora" else None)

    def lengths_of(example: dict) -> list[int]:
        prompt = len(example["prompt_ids"])
        return [prompt + len(example["chosen_ids"]), prompt + len(example["rejected_ids"])]

    train(trainer, clock, log, lengths_of)


RUNNERS = {"sft": run_sft, "rm": run_rm, "dpo": run_dpo}
