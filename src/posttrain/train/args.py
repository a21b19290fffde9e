"""Training options shared by every training command.

Each command's config is one flat dataclass that inherits these fields, so every
option is a flag (`--learning-rate`) and a YAML key (`learning_rate:`).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..config import AT_LEAST_0, AT_LEAST_1, FRACTION, FRACTION_BELOW_1, POSITIVE, Range, help_field
from ..data.options import DataArgs
from ..errors import ConfigError

# Each tracker -> the modules that provide it (any one will do) and what to install.
TRACKERS = {"tensorboard": (("tensorboard", "tensorboardX"), "pip install 'posttrain[tracking]'"),
            "wandb": (("wandb",), "pip install wandb"), "mlflow": (("mlflow",), "pip install mlflow")}


def check_trackers(names: list[str]) -> None:
    """A ConfigError for an unknown or not installed tracker: checked when the command line is
    read, so the run stops before any data or model is loaded and nothing is written."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError("report_to", f"unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
        modules, install = TRACKERS[name]
        if not any(importlib.util.find_spec(module) for module in modules):
            raise ConfigError("report_to", f"{name} is not installed ({install})")


def check_mixed_precision(mode: str) -> None:
    """fp16 autocast is a GPU feature (bf16 also runs on a CPU): checked when the command line is
    read, so the run stops before any data or model is loaded and nothing is written."""
    if mode == "fp16":
        import torch  # here, not at the top: `posttrain --help` stays fast

        if not torch.cuda.is_available():
            raise ConfigError("mixed_precision", "fp16 needs a GPU; use 'bf16', 'no' or 'auto' on CPU")


@dataclass
class RunArgs(DataArgs):
    """What every training command has, offline (sft, dpo, ...) or online (grpo, ppo, ...): the run
    directory, optimizer and schedule, precision, checkpoints, logging and `--distributed`; and,
    from `DataArgs`, how to read the data (`--split`, `--columns`, `--max-line-bytes`)."""

    output_dir: str = help_field("runs/run", "run directory: config, metrics.jsonl, checkpoints/, final/")
    seed: int = help_field(0, "seed for weights init, data/prompt order, dropout and sampling", range=AT_LEAST_0)
    learning_rate: float = help_field(2e-5, "peak learning rate", range=POSITIVE)
    lr_scheduler: str = help_field("cosine", "learning-rate schedule after warmup", choices=["cosine", "linear", "constant"])
    warmup_ratio: float = help_field(0.0, "fraction of optimizer steps spent warming up (ignored when warmup_steps > 0)", range=FRACTION)
    warmup_steps: int = help_field(0, "number of warmup optimizer steps", range=AT_LEAST_0)
    weight_decay: float = help_field(0.0, "AdamW weight decay", range=AT_LEAST_0)
    optimizer: str = help_field("adamw", "optimizer; adamw_8bit needs bitsandbytes", choices=["adamw", "adamw_8bit"])
    max_grad_norm: float = help_field(1.0, "clip the gradient norm to this (0: no clipping)", range=AT_LEAST_0)
    mixed_precision: str = help_field("auto", "auto: bf16 on GPUs that support it, none on CPU; bf16 also on CPU "
                                       "(faster with AMX, more memory); fp16 needs a GPU", choices=["auto", "no", "bf16", "fp16"],
                                       check=check_mixed_precision)
    gradient_checkpointing: bool = help_field(False, "recompute activations in backward to save memory")
    trim_memory: bool = help_field(False, "give the heap's free pages back to the system after every micro-batch "
                                   "(glibc malloc_trim; CPU runs): measured a third lower peak memory for a sixth "
                                   "more time (docs/benchmarks.md); jemalloc, when installed, needs no flag")
    save_every: int = help_field(0, "write a checkpoint every N steps (0: only on interrupt)", range=AT_LEAST_0)
    keep_last: int = help_field(2, "checkpoints kept (older ones are deleted)", range=AT_LEAST_1)
    resume: bool = help_field(False, "continue from the newest checkpoint in output_dir")
    overwrite: bool = help_field(False, "start afresh in an output_dir that holds a finished or started run "
                                 "(its final/, checkpoints/ and metrics.jsonl are removed)")
    overwrite_config: bool = help_field(False, "with --resume: continue even though settings differ from the "
                                        "run's config.yaml")
    log_every: int = help_field(1, "log metrics every N steps", range=AT_LEAST_1)
    report_to: list[str] = help_field([], "also log to: tensorboard (pip install 'posttrain[tracking]'), wandb, mlflow",
                                      check=check_trackers)
    progress: bool = help_field(True, "show a progress bar")
    distributed: str = help_field("auto", "how processes share the work: auto (what the launcher set up: DDP under "
                                  "torchrun, or an accelerate launch config), ddp, fsdp (FSDP2 full shard), zero2, "
                                  "zero3 (DeepSpeed, GPUs); see docs/distributed.md",
                                  choices=["auto", "ddp", "fsdp", "zero2", "zero3"])
    cpu_offload: bool = help_field(False, "with fsdp/zero3: keep parameters and optimizer state in CPU memory "
                                   "(zero2: optimizer state)")


@dataclass
class TrainArgs(RunArgs):
    """`RunArgs` plus the batch, epoch and validation options of the offline recipes."""

    batch_size: int = help_field(8, "examples per micro-batch per process", range=AT_LEAST_1)
    grad_accum: int = help_field(1, "micro-batches accumulated per optimizer step", range=AT_LEAST_1)
    micro_batch_tokens: int = help_field(-1, "split each batch into micro-batches of about this many tokens, "
                                         "accumulating their gradients (the same step, less memory); -1: auto "
                                         "(on the CPU the activations of a micro-batch take about as much memory "
                                         "as the weights; logged), 0: never split (sft, dpo, rm)", range=Range(-1))
    epochs: float = help_field(1.0, "passes over the training data (ignored when max_steps > 0)", range=POSITIVE)
    max_steps: int = help_field(0, "optimizer steps to run (0: from epochs)", range=AT_LEAST_0)
    eval_every: int = help_field(0, "validate every N steps (0: only at the end)", range=AT_LEAST_0)
    eval_fraction: float = help_field(0.0, "hold out this fraction of the training data for validation when no eval data is given", range=FRACTION_BELOW_1)
    early_stopping_patience: int = help_field(0, "stop after N validations without improvement (0: off)", range=AT_LEAST_0)
    early_stopping_metric: str = help_field("eval/loss", "validation metric watched for early stopping")
    early_stopping_mode: str = help_field("min", "whether lower or higher is better", choices=["min", "max"])
    keep_best: bool = help_field(False, "final/ is the model of the best validation (early_stopping_metric), "
                                 "not the last step; validations are checkpointed (load_best_model_at_end)")


@dataclass
class ModelArgs:
    """Which model to start from, how to load it, and the parameter-efficient method."""

    model: str = help_field("smollm2-135m", "hub id, local/run directory, .gguf file, or alias (smollm2-135m, tiny-random)")
    dtype: str = help_field("auto", "weights dtype: auto (fp32 on CPU, bf16 on capable GPUs), float32, bfloat16, float16")
    attn_implementation: str = help_field("sdpa", "attention kernel", choices=["sdpa", "eager", "flash_attention_2", "flex_attention"])
    peft: str = help_field("none", "parameter-efficient method", choices=["none", "lora", "dora", "qlora", "prefix", "ia3"])
    lora_r: int = help_field(16, "LoRA rank", range=AT_LEAST_1)
    lora_alpha: float = help_field(32.0, "LoRA alpha (scale = alpha / r)", range=POSITIVE)
    lora_dropout: float = help_field(0.05, "LoRA dropout", range=FRACTION_BELOW_1)
    lora_target_modules: list[str] = help_field(["all-linear"], "modules to adapt (all-linear: every linear layer but the head)")
    template: str = help_field("auto", "prompt template: auto (the tokenizer's chat template if any), chat, basic, conversational, with_input, alpaca",
                               choices=["auto", "chat", "basic", "conversational", "with_input", "alpaca"])
    max_length: int = help_field(1024, "longest sequence in tokens", range=AT_LEAST_1)
    length_policy: str = help_field("drop", "what to do with longer examples (counted and reported)", choices=["error", "truncate", "drop"])
