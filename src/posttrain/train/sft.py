"""Supervised fine-tuning: `posttrain sft`.

Reads one or more instruction datasets in any supported shape, mixes them
(proportional, weighted, or temperature-scaled), tokenises with loss only on
assistant answers, optionally packs several examples per row, and trains the
model (full or with a PEFT adapter) with the shared engine. Raw `text` rows
(language modelling, continued pre-training) are trained on every token.

The loss is the token mean of the negative log-likelihood over every assistant
token in the global batch. Logits are computed only at the positions that
predict a response token (`response_logprobs`), so prompt positions never pay
for a vocabulary projection.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import help_field, parse_config
from ..data import get_template, load_records, pack_examples, tokenize_conversations
from ..data.options import read_kwargs
from ..data.readers import check_sources
from ..errors import ConfigError
from .args import ModelArgs, TrainArgs
from .layout_cost import choose_layout, cost_model, describe_choice, padded_cost, padding_free_cost
from .micro_batch import plan_micro_batches
from .setup import load_trainable_model, prepare_run_dir, say

if TYPE_CHECKING:  # torch and the engine are imported where used, so `posttrain sft --help` stays fast
    import torch

    from .engine import LossOutput


LAYOUTS = ("auto", "padding_free", "padded")


@dataclass
class SFTConfig(ModelArgs, TrainArgs):
    output_dir: str = help_field("runs/sft", "run directory: config, metrics.jsonl, checkpoints/, final/")
    learning_rate: float = help_field(2e-5, "peak learning rate (LoRA usually wants 1e-4 to 3e-4)")
    data: list[str] = help_field([], "training data: one or more files, dataset directories or hub ids")
    data_weights: list[float] = help_field([], "sampling weight per dataset (default: proportional to size)")
    mixing_temperature: float = help_field(0.0, "temperature-scaled mixing, p_i ~ n_i^(1/T) (0: off)")
    mix_total: int = help_field(0, "examples in the mixture per epoch (0: the sum of the dataset sizes)")
    curriculum: str = help_field("shuffle", "order of the mixture", choices=["shuffle", "dataset", "length"])
    eval_data: str | None = help_field(None, "validation data (default: eval_fraction of the training data)")
    packing: bool = help_field(False, "pack several examples into each max_length row (attention stays per example)")
    layout: str = help_field("auto", "micro-batch layout: auto (the cheaper of the two for this data and attention "
                             "kernel, estimated and logged), padding_free (the examples end to end in one row), "
                             "padded (the plain path: one row per example); same loss (see docs/sft.md)",
                             choices=list(LAYOUTS))
    padding_free: bool = help_field(False, "older flag: --layout padding_free")
    limit: int = help_field(0, "use only the first N examples of each dataset (0: all)")


def tokenize_dataset(path: str, tokenizer, template, cfg: SFTConfig, eval_data: bool = False) -> list:
    """Conversations (loss on the answers) and raw `text` rows (loss on every token; a text longer
    than max_length becomes several examples) of one dataset, tokenised. Eval data names its own
    split (PATH:SPLIT), so --split applies to the training data only."""

    records = load_records(path, kind=("sft", "text"), limit=cfg.limit or None, **read_kwargs(cfg, split=not eval_data))
    examples, stats = tokenize_conversations(records, tokenizer, template, cfg.max_length, cfg.length_policy)
    pieces = len(examples) - stats.kept
    say(f"{path}: {stats.summary()}" + (f"; long texts cut into {pieces} extra pieces of max_length" if pieces else ""))
    if not examples:
        raise ConfigError("data", f"{path}: no example is left after the length policy ({stats.summary()})")
    return examples


def build_mixture(datasets: list[list], cfg: SFTConfig) -> list:
    """Flatten several tokenised datasets into one training list, as the mixing options say."""
    from ..data import mix

    if cfg.data_weights and len(cfg.data_weights) != len(datasets):
        raise ConfigError("data_weights", f"{len(cfg.data_weights)} weights for {len(datasets)} datasets")
    picks = mix([len(d) for d in datasets], weights=cfg.data_weights or None,
                temperature=cfg.mixing_temperature or None, total=cfg.mix_total or None, seed=cfg.seed,
                order=cfg.curriculum, lengths=[[len(e) for e in d] for d in datasets])
    return [datasets[d][i] for d, i in picks]


def split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(len(examples) * fraction)))
    held = set(order[:cut])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def response_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["labels"] != -100


def nll_sum(model, batch: dict[str, torch.Tensor]) -> LossOutput:
    """Sum of -log p(token) over the batch's trained tokens (the engine divides by their count)."""
    from ..models.logprobs import response_logprobs
    from .engine import LossOutput

    inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    token_logprobs = response_logprobs(model, batch["input_ids"], response_mask=response_mask(batch), **inputs).logprobs
    return LossOutput(loss_sum=-token_logprobs.sum())


def collate_fn(tokenizer, packed: bool, padding_free: bool = False, attn_implementation: str = "sdpa",
               dtype: torch.dtype | None = None):
    """The micro-batch collator of a layout; `dtype` is the model's (for the 4D mask; default float32)."""
    import torch

    from ..data import packed_collate, pad_collate, padding_free_collate

    dtype = dtype or torch.float32

    # flash-attention reads example boundaries from the restarting position_ids (varlen);
    # other kernels get an additive 4D mask in the model's dtype, built once for every layer
    # (a mask that transformers builds from position_ids is bool, and sdpa would convert
    # it to float in every layer and keep each copy for backward).
    attention = "position_ids" if attn_implementation == "flash_attention_2" else "4d"
    if packed:
        return lambda packs: packed_collate(packs, tokenizer.pad_token_id, attention=attention, dtype=dtype)
    if padding_free:
        return lambda examples: padding_free_collate(examples, attention=attention, dtype=dtype)
    return lambda examples: pad_collate(examples, tokenizer.pad_token_id)


def resolve_layout(cfg: SFTConfig, model, examples: list) -> tuple[bool, str]:
    """(padding_free, one log line): `--layout`, the older `--padding-free`, or for `auto` the
    cheaper layout over the data's micro-batches (train/layout_cost.py)."""

    if cfg.packing:
        return False, f"layout: packed rows of {cfg.max_length} tokens (--packing)"
    if cfg.padding_free:
        return True, "layout: padding_free (--padding-free)"
    if cfg.layout != "auto":
        return cfg.layout == "padding_free", f"layout: {cfg.layout} (--layout)"
    if cfg.peft == "prefix" or cfg.attn_implementation == "flex_attention":
        return False, "layout: padded (auto: the only layout for prefix tuning / flex attention)"
    costs = cost_model(model)
    dense = cfg.attn_implementation != "flash_attention_2"
    candidates = {"padded": lambda chunk: padded_cost(costs, [len(e) for e in chunk]),
                  "padding_free": lambda chunk: padding_free_cost(costs, [len(e) for e in chunk], dense)}
    name, relative = choose_layout(candidates, examples, cfg.batch_size, baseline="padded")
    return name == "padding_free", describe_choice(name, relative, "padded")


def trained_tokens(example) -> int:
    # Pack.add already masks the first token of each example; labels equal ids where trained.
    return sum(1 for label in example.labels[1:] if label != -100)


def make_evaluator(eval_examples: list, collate, batch_size: int):
    def evaluate(model) -> dict[str, float]:
        total, count = 0.0, 0
        for start in range(0, len(eval_examples), batch_size):
            chunk = eval_examples[start:start + batch_size]
            device = next(model.parameters()).device
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            total += float(nll_sum(model, batch).loss_sum)
            count += sum(trained_tokens(e) for e in chunk)
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return evaluate


def train_sft(cfg: SFTConfig):
    """Run SFT as configured; returns the engine's `TrainResult`."""
    from ..models import load_tokenizer
    from .engine import TrainTask, run_training

    if not cfg.data:
        raise ConfigError("data", "give at least one training file (--data FILE)")
    if cfg.packing and (cfg.padding_free or cfg.layout != "auto"):
        raise ConfigError("padding_free" if cfg.padding_free else "layout",
                          "--packing is a layout of its own: leave out --layout and --padding-free")
    if cfg.padding_free and cfg.layout != "auto":
        raise ConfigError("layout", "give --layout or the older --padding-free flag, not both")
    if (cfg.padding_free or cfg.layout == "padding_free") and (cfg.peft == "prefix" or cfg.attn_implementation == "flex_attention"):
        raise ConfigError("layout", "padding_free needs sdpa, eager or flash_attention_2 and no prefix tuning; use --layout padded")
    check_sources([*cfg.data, *([cfg.eval_data] if cfg.eval_data else [])])  # before loading anything
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    template = get_template(cfg.template, tokenizer)
    train = build_mixture([tokenize_dataset(path, tokenizer, template, cfg) for path in cfg.data], cfg)
    if cfg.eval_data:
        held_out = tokenize_dataset(cfg.eval_data, tokenizer, template, cfg, eval_data=True)
    else:
        train, held_out = split_eval(train, cfg.eval_fraction, cfg.seed)
    if cfg.packing:
        packs = pack_examples(train, cfg.max_length)
        say(f"packed {len(train)} examples into {len(packs)} rows of at most {cfg.max_length} tokens")
        train = packs
    prepare_run_dir(cfg)  # after the data checks: bad input leaves no half-made run directory
    model = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    plan = plan_micro_batches(cfg, model, train, len, unit="packs" if cfg.packing else "examples")
    say(plan.line)
    padding_free, choice = resolve_layout(plan.apply(cfg), model, train)
    say(choice)
    collate = collate_fn(tokenizer, cfg.packing, padding_free, cfg.attn_implementation, next(model.parameters()).dtype)
    task = TrainTask(
        model=model, train_examples=train, collate=collate, compute_loss=nll_sum,
        item_count=trained_tokens, token_count=len,
        evaluate=make_evaluator(held_out, collate_fn(tokenizer, False), cfg.batch_size) if held_out else None,
        name="sft")
    result = run_training(task, plan.apply(cfg), tokenizer=tokenizer)
    say(f"done: {result.steps} steps in {result.seconds:.0f}s, final loss {result.last_metrics.get('loss', float('nan')):.4f}"
          + (f", eval loss {result.eval_metrics['eval/loss']:.4f}" if "eval/loss" in result.eval_metrics else "")
          + f"; model in {result.final_dir}")
    return result


def main(argv: list[str]) -> int:
    cfg = parse_config(SFTConfig, argv, prog="posttrain sft", description=__doc__.splitlines()[0])
    train_sft(cfg)
    return 0
