"""Reward-model training: `posttrain rm`.

A scalar head (`Linear(hidden, 1)`) on the causal LM reads the hidden state of the
last response token; the model is trained in full or with a PEFT adapter (the
head is always trained in full).

Data: preference pairs (prompt, chosen, rejected, optional `margin`) and K-way
rankings (prompt, responses, `ranking` best-first or `scores`), mixed freely. One
training example is one *prompt group*: a pair is a group of 2, a ranking a group
of K. Every response of a micro-batch goes through the model once, in one
forward (`reward_batch.py`: the prompt once per group with a block mask, or padded).

Loss (InstructGPT, Ouyang et al. 2022, eq. 1): for each prompt the mean over its
ordered pairs (i better than j) of -log sigma(r_i - r_j), then the mean over
prompts. Each group counts as ONE item (`item_count = 1`), so a prompt with 9
ranked responses (36 pairs) weighs as much as a prompt with one pair, as
InstructGPT does to keep prompts with many responses from dominating (and from
over-fitting: each response appears in K-1 pairs). With `--use-margin` a pair's
loss is -log sigma(r_c - r_r - m) with m from the data (Llama 2, eq. 2).
`--loss plackett_luce` uses the listwise likelihood of the whole ranking instead.

Metrics, per step and on the held-out split: `accuracy` (pairs ordered right),
`margin` (r_better - r_worse), `rewards/mean`, `rewards/std`. The held-out numbers
at the end are printed, logged to metrics.jsonl and written to `rm_summary.json`.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..data import LengthStats, get_template, iter_records
from ..data.formats import skipped_text
from ..data.options import read_kwargs
from ..data.readers import check_sources
from ..errors import ConfigError, InputError
from ..jsonl import write_json
from ..losses.reward import RANKING_LOSSES, bradley_terry_loss, ranking_accuracy_parts, ranking_pairs
from ..models.peft import enable_activation_checkpointing
from .accelerator import make_accelerator
from .configs import RMConfig
from .engine import LossOutput, TrainTask, run_training
from .micro_batch import plan_micro_batches
from .reward_batch import (
    RewardGroup,
    collate_groups,
    forward_rewards,
    resolve_layout,
    rewards_for_groups,
    training_group,
)
from .setup import is_main_process, load_trainable_model, prepare_run_dir, say

SETTINGS_FILE = "reward_model.json"  # how the model tokenises: read back by RewardScorer


# --------------------------------------------------------------------------- data

def load_groups(path: str, tokenizer, template, cfg: RMConfig) -> list[RewardGroup]:
    """Read pairs/rankings from `path` and tokenise them; bad rows are one-line InputErrors."""

    stats, groups, skipped = LengthStats(), [], 0
    no_preference: Counter = Counter()  # ties: well-formed rows with no pair, counted and left out
    # --split picks the training data's split; eval data names its own as PATH:SPLIT.
    read = read_kwargs(cfg, split=path != cfg.eval_data)
    for count, (_, record) in enumerate(iter_records(path, **read, skipped=no_preference), start=1):
        group = training_group(record, tokenizer, template, cfg.max_length, cfg.length_policy, stats)
        if group is None:
            skipped += 1
        else:
            groups.append(group)
        if cfg.limit and count >= cfg.limit:
            break
    identical = skipped - stats.dropped
    say(f"{path}: {len(groups)} prompt groups ({sum(len(g.response_ids) for g in groups)} responses); {stats.summary()}"
        + (f"; {identical} left out because truncation made two responses identical" if identical else "")
        + (f"; {skipped_text(no_preference)}" if no_preference else ""))
    if not groups:
        raise InputError(path, None, None, f"no prompt group is left to train on ({stats.summary()})")
    return groups


def split_eval(groups: list, fraction: float, seed: int) -> tuple[list, list]:
    from .sft import split_eval as split

    return split(groups, fraction, seed)


# --------------------------------------------------------------------------- loss and metrics

def group_losses(rewards: torch.Tensor, batch: dict[str, torch.Tensor], loss: str, use_margin: bool) -> torch.Tensor:
    """Per-group losses [P] from rewards [P, K] (see the module docstring).

    With `use_margin`, groups of two that carry a margin use -log sigma(r_0 - r_1 - m).
    """
    losses = RANKING_LOSSES[loss](rewards, batch["response_mask"], batch["ranks"])
    if use_margin:
        pairs = batch["has_margin"] & (batch["response_mask"].sum(-1) == 2)
        if pairs.any():
            chosen_first = batch["ranks"][:, 0] < batch["ranks"][:, 1]
            better = torch.where(chosen_first, rewards[:, 0], rewards[:, 1])
            worse = torch.where(chosen_first, rewards[:, 1], rewards[:, 0])
            with_margin = bradley_terry_loss(better, worse, batch["margins"].to(rewards.dtype))
            losses = torch.where(pairs, with_margin, losses)
    return losses


def pair_statistics(rewards: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per group: correctly ordered pairs, pairs, and the summed margin r_better - r_worse."""
    rewards = rewards.detach()
    correct, pairs = ranking_accuracy_parts(rewards, batch["response_mask"], batch["ranks"])
    diff, pair_mask = ranking_pairs(rewards, batch["response_mask"], batch["ranks"])
    margin_sum = torch.where(pair_mask, diff, torch.zeros((), dtype=diff.dtype, device=diff.device)).sum((-1, -2))
    return {"correct": correct, "pairs": pairs, "margin_sum": margin_sum}


def make_loss(cfg: RMConfig):
    def compute_loss(model, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Sum over the micro-batch's groups; the engine divides by the global number of groups.

        Training metrics are prompt-weighted like the loss: accuracy and margin are
        each prompt's mean over its pairs; rewards/mean and rewards/std are taken
        over the micro-batch's responses and weighted by its number of prompts."""
        rewards = forward_rewards(model, batch)
        losses = group_losses(rewards, batch, cfg.loss, cfg.use_margin)
        stats = pair_statistics(rewards, batch)
        pairs = stats["pairs"].clamp(min=1)
        real = rewards.detach()[batch["response_mask"]]
        groups = rewards.shape[0]
        std = real.std(unbiased=False) if real.numel() > 1 else real.new_zeros(())
        return LossOutput(loss_sum=losses.sum(), metric_sums={
            "accuracy": (stats["correct"] / pairs).sum(), "margin": (stats["margin_sum"] / pairs).sum(),
            "rewards/mean": real.mean() * groups, "rewards/std": std * groups})
    return compute_loss


def heldout_metrics(model, groups: list[RewardGroup], layout: str, pad_id: int, cfg: RMConfig) -> dict[str, float]:
    """Held-out metrics over all groups: pairwise accuracy and mean margin over every
    ordered pair (ties in the rewards count 1/2), the loss as in training (mean over
    prompts), and the mean/std of all responses' rewards."""
    rewards = rewards_for_groups(model, groups, layout, pad_id, max_responses=max(cfg.batch_size * 2, 8))
    batch = collate_rewards(rewards, groups)
    losses = group_losses(batch["rewards"], batch, cfg.loss, cfg.use_margin)
    stats = pair_statistics(batch["rewards"], batch)
    every = batch["rewards"][batch["response_mask"]]
    pairs = float(stats["pairs"].sum())
    return {"loss": float(losses.mean()), "accuracy": float(stats["correct"].sum()) / max(pairs, 1.0),
            "margin": float(stats["margin_sum"].sum()) / max(pairs, 1.0),
            "rewards/mean": float(every.mean()), "rewards/std": float(every.std(unbiased=False)),
            "pairs": pairs, "prompts": float(len(groups))}


def collate_rewards(rewards: list[torch.Tensor], groups: list[RewardGroup]) -> dict[str, torch.Tensor]:
    """Per-group reward vectors -> padded rewards [P, K] plus the mask/ranks/margins of `collate_groups`."""
    width = max(len(r) for r in rewards)
    out = torch.zeros(len(rewards), width)
    mask = torch.zeros(len(rewards), width, dtype=torch.bool)
    ranks = torch.full((len(rewards), width), width, dtype=torch.long)
    for p, (values, group) in enumerate(zip(rewards, groups)):
        out[p, :len(values)], mask[p, :len(values)] = values, True
        ranks[p, :len(values)] = torch.tensor(group.ranks)
    return {"rewards": out, "response_mask": mask, "ranks": ranks,
            "margins": torch.tensor([g.margin or 0.0 for g in groups]),
            "has_margin": torch.tensor([g.margin is not None for g in groups])}


# --------------------------------------------------------------------------- model and saving

def build_model(cfg: RMConfig):
    """The causal LM (PEFT-wrapped when asked) under a fresh scalar head; the head always trains."""
    from ..models.heads import ScalarHeadModel

    if cfg.peft in ("prefix",):
        raise ConfigError("peft", "prefix tuning cannot run the transformer body on its own; use lora, dora or ia3")
    lm = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing and cfg.peft == "none":
        enable_activation_checkpointing(lm)
    # No bias: the head is then the `score` layer of a sequence classifier (saved in that format).
    model = ScalarHeadModel.from_causal_lm(lm, seed=cfg.seed, bias=False)
    model.head.requires_grad_(True)
    return model.train()


def settings_for(cfg: RMConfig, layout: str) -> dict[str, Any]:
    return {"format": "posttrain-reward-model", "base_model": cfg.model, "template": cfg.template,
            "max_length": cfg.max_length, "loss": cfg.loss, "layout": layout}


def make_saver(accelerator, tokenizer, settings: dict[str, Any]):
    from ..distributed.training import full_state_dict

    def save(model, directory: Path) -> None:
        state_dict = full_state_dict(accelerator, model)  # every process: sharded weights are gathered (else None)
        if accelerator.is_main_process:
            # AutoModelForSequenceClassification (or a SEQ_CLS adapter) + tokenizer, as TRL writes them.
            accelerator.unwrap_model(model).save_as_classifier(directory, tokenizer, state_dict=state_dict)
            (Path(directory) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return save


# --------------------------------------------------------------------------- the recipe

def train_reward_model(cfg: RMConfig):
    """Train as configured; returns the engine's `TrainResult` (summary also in rm_summary.json)."""
    from ..models import load_tokenizer

    if not cfg.data:
        raise ConfigError("data", "give at least one training file (--data FILE)")
    check_sources([*cfg.data, *([cfg.eval_data] if cfg.eval_data else [])])  # before loading anything
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    template = get_template(cfg.template, tokenizer)
    train = [g for path in cfg.data for g in load_groups(path, tokenizer, template, cfg)]
    if cfg.eval_data:
        held_out = load_groups(cfg.eval_data, tokenizer, template, cfg)
    else:
        train, held_out = split_eval(train, cfg.eval_fraction, cfg.seed)
    run_dir = prepare_run_dir(cfg)  # after the data checks: bad input leaves no half-made run directory
    if cfg.use_margin and not any(g.margin is not None for g in train):
        say("note: --use-margin is set but no training pair has a 'margin' field")
    accelerator = make_accelerator(cfg)
    model = build_model(cfg)
    layout = resolve_layout(cfg.layout, cfg.attn_implementation, model)
    pad_id = tokenizer.pad_token_id
    plan = plan_micro_batches(cfg, model, train, lambda group: group.num_tokens(layout), unit="prompt groups",
                              device=accelerator.device)
    say(plan.line)
    say(f"{len(train)} training groups, {len(held_out)} held out; layout {layout}; loss {cfg.loss}"
        + (" with margins" if cfg.use_margin else ""))

    def evaluate(m) -> dict[str, float]:
        return heldout_metrics(m, held_out, layout, pad_id, cfg)

    initial = {}
    if held_out and cfg.eval_at_start and not cfg.resume:
        if cfg.peft != "qlora":  # a 4-bit model is already placed and cannot be moved
            model.to(accelerator.device)
        model.eval()
        initial = evaluate(model)
        model.train()
        say(f"held-out before training: accuracy {initial['accuracy']:.3f}, margin {initial['margin']:+.3f}")
    task = TrainTask(
        model=model, train_examples=train, collate=lambda groups: collate_groups(groups, layout, pad_id),
        compute_loss=make_loss(cfg), item_count=lambda group: 1, token_count=lambda group: group.num_tokens(layout),
        evaluate=evaluate if held_out else None, save_final=make_saver(accelerator, tokenizer, settings_for(cfg, layout)),
        name="rm")
    started = time.perf_counter()
    result = run_training(task, plan.apply(cfg), accelerator=accelerator, tokenizer=tokenizer)
    final = {k.removeprefix("eval/"): v for k, v in result.eval_metrics.items() if k.startswith("eval/")}
    summary = {"model": cfg.model, "peft": cfg.peft, "loss": cfg.loss, "use_margin": cfg.use_margin, "layout": layout,
               "steps": result.steps, "seconds": round(time.perf_counter() - started, 1),
               "train_groups": len(train), "heldout_groups": len(held_out),
               "heldout_before": initial, "heldout": final, "final_dir": str(result.final_dir),
               "last_train_step": result.last_metrics}
    if is_main_process():
        write_json(run_dir / "rm_summary.json", summary)
    if final:
        say(f"held-out: pairwise accuracy {final['accuracy']:.3f} over {int(final['pairs'])} pairs "
            f"({int(final['prompts'])} prompts), margin {final['margin']:+.3f}, "
            f"rewards {final['rewards/mean']:+.3f} +- {final['rewards/std']:.3f}")
    else:
        say("no held-out split (eval_fraction 0 and no eval_data): no held-out accuracy")
    say(f"done: {result.steps} steps in {result.seconds:.0f}s; reward model in {result.final_dir}")
    return result
