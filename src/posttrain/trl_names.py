"""Option names people bring from TRL and `transformers.TrainingArguments`.

A TRL user's command line or YAML (`--model_name_or_path`, `--num_train_epochs 3`,
`--bf16 True`, `per_device_train_batch_size: 4`, ...) is read with the same meaning:

* `RENAMES`: the same option under another name (values pass unchanged);
* `TRANSLATIONS`: an option whose values need translating (`--bf16` sets
  `mixed_precision: bf16`, `--use_peft` sets `peft: lora`);
* `NO_EQUIVALENT`: no posttrain option means the same; using one is an error whose one
  line names the option and what to use instead;
* `IGNORED`: options with nothing to do in posttrain (`--do_train`); a note says so.

A name only translates where the command has the target option (`--beta` is DPO's own
field; `--num_generations` only means something to GRPO/RLOO/PPO). `config.parse_config`
applies this to flags and `config.from_mapping` to YAML keys. docs/coming-from-trl.md
shows the table.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from .errors import ConfigError

# TRL/transformers name -> posttrain field: same meaning, same values.
RENAMES: dict[str, str] = {
    "model_name_or_path": "model",
    "dataset_name": "data",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "logging_steps": "log_every",
    "save_steps": "save_every",
    "eval_steps": "eval_every",
    "save_total_limit": "keep_last",
    "torch_dtype": "dtype",
    "loss_type": "loss",
    "overwrite_output_dir": "overwrite",
    "dataset_train_split": "split",
    "num_generations": "num_samples",
    "max_completion_length": "max_new_tokens",
    "load_best_model_at_end": "keep_best",
    "max_seq_length": "max_length",  # TRL's SFT name before 0.20
    "eval_on_start": "eval_at_start",  # rm
}

TRUE_WORDS = ("true", "yes", "1")
BOOL_WORDS = TRUE_WORDS + ("false", "no", "0")


def _truth(value: Any) -> bool:
    """A TRL bool value: True/False, "True"/"false", or None for a bare flag (`--bf16` = true)."""
    if value is None or isinstance(value, bool):
        return value is not False
    if str(value).lower() in BOOL_WORDS:
        return str(value).lower() in TRUE_WORDS
    raise ValueError(f"expected true or false, got {value!r}")


def _precision(kind: str) -> Callable[[Any], dict[str, Any]]:
    # `--bf16 False` in TRL means "not bf16": full precision here.
    return lambda value: {"mixed_precision": kind if _truth(value) else "no"}


def _peft(method: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {"peft": method if _truth(value) else "none"}


def _strategy(field: str, what: str) -> Callable[[Any], dict[str, Any]]:
    """TrainingArguments' *_strategy: "steps" is posttrain's only kind; "no" turns it off."""
    def translate(value: Any) -> dict[str, Any]:
        word = str(value).lower()
        if word == "steps":
            return {}
        if word == "no":
            return {field: 0}
        raise ValueError(f"{value!r} has no equivalent: posttrain {what} every N optimizer steps "
                         f"(--{field.replace('_', '-')} N)")
    return translate


def _optimizer(value: Any) -> dict[str, Any]:
    names = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
             "adamw_bnb_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "adamw_8bit"}
    if str(value) not in names:
        raise ValueError(f"{value!r} has no equivalent: posttrain has --optimizer adamw and adamw_8bit")
    return {"optimizer": names[str(value)]}


def _scheduler(value: Any) -> dict[str, Any]:
    # posttrain's schedules all start with the warmup (--warmup-steps/--warmup-ratio, 0 by default).
    names = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
    if str(value) not in names:
        raise ValueError(f"{value!r} has no equivalent: posttrain has --lr-scheduler cosine, linear and constant "
                         "(each after --warmup-steps)")
    return {"lr_scheduler": names[str(value)]}


def _completion_only(value: Any) -> dict[str, Any]:
    """completion_only_loss / assistant_only_loss: posttrain's SFT loss is on the answers already."""
    if _truth(value):
        return {}
    raise ValueError("has no equivalent: posttrain's SFT loss is on the assistant's answers only; for a loss on "
                     "every token write the rows as plain `text` (docs/data-formats.md)")


def _packing_strategy(value: Any) -> dict[str, Any]:
    if str(value).lower() == "bfd":  # best-fit decreasing: what --packing does (first-fit decreasing)
        return {}
    raise ValueError(f"{value!r} has no equivalent: --packing packs whole examples first-fit decreasing "
                     "(TRL's bfd); it never cuts an example across rows")


def _disable_tqdm(value: Any) -> dict[str, Any]:
    return {"progress": not _truth(value)}


def _best_metric(value: Any) -> dict[str, Any]:
    # TrainingArguments names eval metrics eval_loss; posttrain logs them as eval/loss.
    name = str(value)
    name = "eval/" + name.removeprefix("eval_") if not name.startswith("eval/") else name
    return {"early_stopping_metric": name}


def _greater_is_better(value: Any) -> dict[str, Any]:
    return {"early_stopping_mode": "max" if _truth(value) else "min"}


# TRL/transformers name -> function(value) -> {posttrain field: value}. Bool-valued names
# (in BOOLEAN_NAMES) may be given as a bare flag, `--bf16`, as TRL allows.
TRANSLATIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "bf16": _precision("bf16"),
    "fp16": _precision("fp16"),
    "use_peft": _peft("lora"),
    "load_in_4bit": _peft("qlora"),
    "optim": _optimizer,
    "lr_scheduler_type": _scheduler,
    "eval_strategy": _strategy("eval_every", "validates"),
    "evaluation_strategy": _strategy("eval_every", "validates"),
    "save_strategy": _strategy("save_every", "checkpoints"),
    "logging_strategy": _strategy("log_every", "logs"),
    "metric_for_best_model": _best_metric,
    "greater_is_better": _greater_is_better,
    "completion_only_loss": _completion_only,
    "assistant_only_loss": _completion_only,
    "disable_tqdm": _disable_tqdm,
    "packing_strategy": _packing_strategy,
}
BOOLEAN_NAMES = frozenset({"bf16", "fp16", "use_peft", "load_in_4bit", "greater_is_better", "completion_only_loss",
                           "assistant_only_loss", "disable_tqdm"})

# Options with no posttrain equivalent -> what to do instead.
NO_EQUIVALENT: dict[str, str] = {
    "push_to_hub": "upload the run's final/ directory yourself (huggingface-cli upload REPO runs/NAME/final)",
    "hub_model_id": "upload the run's final/ directory yourself (huggingface-cli upload REPO runs/NAME/final)",
    "resume_from_checkpoint": "use --resume: it continues from the newest checkpoint in --output-dir",
    "per_device_eval_batch_size": "validation uses --batch-size",
    "max_prompt_length": "use --max-length with --length-policy (drop, truncate or error)",
    "dataset_config": "save that configuration as a local file or dataset directory and pass it to --data",
    "dataset_test_split": "pass held-out data with --eval-data (or --eval-fraction)",
    "dataset_text_field": "rows with a `text` field are read as plain text; map other names with --columns",
    "deepspeed": "use --distributed zero2 or zero3 (see docs/distributed.md)",
    "fsdp": "use --distributed fsdp (see docs/distributed.md)",
    "trust_remote_code": "posttrain loads only models transformers supports natively",
    "model_revision": "download that revision and pass its directory to --model",
    "tf32": "posttrain leaves TF32 to PyTorch's default",
    "dataloader_num_workers": "posttrain tokenises once up front; there is no data-loader worker to set",
    "save_only_model": "checkpoints always hold the model (checkpoints/step-N/model) beside the training state",
    "model_init_kwargs": "use --dtype and --attn-implementation",
    "lr_scheduler_kwargs": "the schedules take no extra arguments (--lr-scheduler, --warmup-steps / --warmup-ratio)",
    "adam_beta1": "AdamW uses PyTorch's defaults (betas 0.9, 0.999; eps 1e-8)",
    "adam_beta2": "AdamW uses PyTorch's defaults (betas 0.9, 0.999; eps 1e-8)",
    "adam_epsilon": "AdamW uses PyTorch's defaults (betas 0.9, 0.999; eps 1e-8)",
    "neftune_noise_alpha": "posttrain has no NEFTune embedding noise",
    "chat_template_path": "save the template in the model directory's tokenizer (chat_template.jinja) and use "
                          "--template chat, or pick a built-in one with --template",
    "eos_token": "posttrain uses the tokenizer's; save a tokenizer with the tokens you want beside the model",
    "pad_token": "posttrain uses the tokenizer's; save a tokenizer with the tokens you want beside the model",
    "dataset_kwargs": "map columns with --columns and pick a split with --split",
}

# Options that do nothing here: a note, then ignored.
IGNORED: dict[str, str] = {
    "do_train": "the command trains",
    "do_eval": "validation runs when eval data or --eval-fraction is given",
    "logging_dir": "tracker logs go under --output-dir",
    "run_name": "a run is named by its --output-dir",
    "remove_unused_columns": "posttrain reads only the fields a row shape needs",
    "lora_task_type": "posttrain sets the adapter's task type itself",
    "dataset_num_proc": "posttrain tokenises once, up front, in one process",
    "log_level": "posttrain prints its own progress lines",
    "logging_first_step": "metrics are logged every --log-every steps and at the last (--log-every 1 logs the first)",
    "ddp_find_unused_parameters": "posttrain sets up data parallelism itself (--distributed)",
    "gradient_checkpointing_kwargs": "--gradient-checkpointing picks the settings itself",
    "label_names": "posttrain builds the labels from the row shape",
    "group_by_length": "micro-batches are formed by a token budget (--micro-batch-tokens)",
    "use_liger_kernel": "posttrain's log-probs go through its own chunked head (no full logits are formed)",
}


def familiar_name(key: str) -> str:
    """`--num-train-epochs` / `num_train_epochs` -> `num_train_epochs`."""
    return str(key).lstrip("-").replace("-", "_")


def is_familiar(name: str) -> bool:
    return name in RENAMES or name in TRANSLATIONS or name in NO_EQUIVALENT or name in IGNORED


def translate(name: str, value: Any, fields: set[str], source: str | None = None) -> dict[str, Any] | None:
    """One TRL-style option -> {posttrain field: value} ({} when ignored), or None when
    `name` is not a TRL name this command can take (the caller reports it as unknown).

    Raises ConfigError (one line naming the option and what to use instead) where
    posttrain has no equivalent.
    """
    if name in IGNORED:
        print(f"note: {name} is ignored ({IGNORED[name]})", file=sys.stderr, flush=True)
        return {}
    if name in NO_EQUIVALENT:
        raise ConfigError(name, f"no posttrain equivalent: {NO_EQUIVALENT[name]}", source)
    if name in RENAMES:
        target = RENAMES[name]
        return {target: value} if target in fields else None
    if name in TRANSLATIONS:
        try:
            result = TRANSLATIONS[name](value)
        except ValueError as exc:
            raise ConfigError(name, str(exc), source) from None
        return result if set(result) <= fields else None
    return None
