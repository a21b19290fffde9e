"""Preference optimisation, the DPO family: `posttrain dpo --loss NAME`.

Reads prompt/chosen/rejected pairs, tokenises them (a bad row or an over-long
pair is an error, or is dropped and counted, as the policies say), gets
reference log-probs (`--reference`, see reference.py), and trains with any
loss of `posttrain.losses.PREFERENCE_LOSSES`, or a weighted mix of several
(`--loss sigmoid hinge --loss-weights 0.7 0.3`).

Per micro-batch: chosen and rejected of every pair go through the policy in
ONE forward pass (preference_batch.py: padded, padding-free, and optionally
with the prompt computed once for both responses); log-probs are gathered on
response tokens only. The loss is the mean over pairs of the global batch: the
recipe returns the sum of per-pair losses and the engine divides by the pair
count (`item_count` = 1 per pair), so splitting a batch over micro-batches or
processes does not change it.

Logged per step (means over the step's pairs): loss, rewards/chosen,
rewards/rejected, rewards/margins (chosen - rejected), rewards/accuracies
(fraction with chosen > rejected), logps/chosen, logps/rejected (summed
response log-probs under the policy), logits/chosen, logits/rejected (mean
logit over response tokens and the vocabulary), with grad_norm and lr from the
engine; the same with an eval/ prefix on the held-out split.
"""
from __future__ import annotations

import torch

from ..data import get_template
from ..data.readers import check_sources
from ..errors import ConfigError
from ..losses import PairLogps, mixed_preference_loss, needs_reference, preference_loss
from .accelerator import make_accelerator
from .configs import DPOConfig
from .engine import LossOutput, TrainTask, run_training, to_device
from .memory import trim
from .micro_batch import plan_micro_batches
from .preference_batch import BatchLayout, check_layout, resolve_layout, sequence_logps
from .preference_data import data_paths, load_data, load_pairs, write_report
from .reference import build_reference, describe, model_identity, resolve_strategy, summary_line
from .setup import load_trainable_model, prepare_run_dir, say

# --------------------------------------------------------------------------- the loss


def loss_components(cfg: DPOConfig) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(`{name: weight}`, per-loss keyword options) for `preference_loss` / `mixed_preference_loss`."""
    if len(set(cfg.loss)) != len(cfg.loss):
        raise ConfigError("loss", f"a loss is named twice: {' '.join(cfg.loss)}")
    weights = cfg.loss_weights or [1.0] * len(cfg.loss)
    if len(weights) != len(cfg.loss):
        raise ConfigError("loss_weights", f"{len(weights)} weights for {len(cfg.loss)} losses")
    if any(w < 0 for w in weights):
        raise ConfigError("loss_weights", "weights must not be negative")
    options = {"cdpo": {"label_smoothing": cfg.label_smoothing}, "robust": {"label_smoothing": cfg.label_smoothing},
               "simpo": {"gamma": cfg.simpo_gamma}, "orpo": {"lam": cfg.orpo_lambda}, "rpo": {"alpha": cfg.rpo_alpha}}
    if cfg.beta is not None:
        for name in cfg.loss:
            if name != "orpo":  # ORPO has no beta
                options.setdefault(name, {})["beta"] = cfg.beta
    return dict(zip(cfg.loss, weights)), {k: v for k, v in options.items() if k in cfg.loss}


def pair_metrics(chosen_rewards, rejected_rewards, policy, b: int) -> dict[str, torch.Tensor]:
    """Per-pair sums of the logged metrics (the engine divides by the global pair count)."""
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    logps = policy.logps.detach()
    return {"rewards/chosen": c.sum(), "rewards/rejected": r.sum(), "rewards/margins": (c - r).sum(),
            "rewards/accuracies": (c > r).float().sum(),
            "logps/chosen": logps[:b].sum(), "logps/rejected": logps[b:].sum(),
            "logits/chosen": policy.mean_logits[:b].sum(), "logits/rejected": policy.mean_logits[b:].sum()}


def make_loss(components: dict[str, float], options: dict[str, dict[str, float]], reference):
    """`compute_loss(model, batch) -> LossOutput` for a `BatchLayout.pairs` batch.

    One step, as in the DPO paper's listing: the batch holds the B chosen sequences, then the
    B rejected ones; one policy forward gives each sequence's summed response log-prob; the
    reference gives the same (or None for simpo/orpo); the loss is e.g.
    `dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=...)`, summed over pairs
    (the engine divides by the global pair count).
    """
    def compute_loss(model, batch) -> LossOutput:
        b = batch["example_index"].shape[0]
        policy = sequence_logps(model, batch, mean_logits=True)  # [2B]: chosen then rejected
        ref = reference.sequence_logps(batch, (0, 1)).to(policy.logps.dtype) if reference is not None else None
        pairs = PairLogps(policy_chosen=policy.logps[:b], policy_rejected=policy.logps[b:],
                          ref_chosen=None if ref is None else ref[:b], ref_rejected=None if ref is None else ref[b:],
                          chosen_lengths=policy.lengths[:b], rejected_lengths=policy.lengths[b:])
        if len(components) == 1:  # the usual case: one loss, called directly
            (name,) = components
            out = preference_loss(name, pairs, **options.get(name, {}))
        else:
            out = mixed_preference_loss(components, pairs, options)
        return LossOutput(out.losses.sum(), pair_metrics(out.chosen_rewards, out.rejected_rewards, policy, b))
    return compute_loss


def make_evaluator(examples: list, collate, compute_loss, batch_size: int):
    """Validation: the loss and every metric, averaged over the held-out pairs."""
    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        for start in range(0, len(examples), batch_size):
            out = compute_loss(model, to_device(collate(examples[start:start + batch_size]), device))
            for key, value in {"loss": out.loss_sum, **out.metric_sums}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        return {key: value / len(examples) for key, value in sums.items()}
    return evaluate


# --------------------------------------------------------------------------- the recipe


def train_dpo(cfg: DPOConfig):
    """Run DPO-family training as configured; returns the engine's `TrainResult`."""
    if not cfg.data:  # before loading (or converting) any model
        raise ConfigError("data", "give the training data (--data FILE)")

    check_sources(data_paths(cfg) + ([cfg.eval_data] if cfg.eval_data else []))  # a typo costs no model load
    from ..models import load_tokenizer

    components, options = loss_components(cfg)
    mask_style = check_layout(cfg)
    strategy = resolve_strategy(cfg.reference, needs_reference=needs_reference(cfg.loss), peft=cfg.peft,
                                ref_model=cfg.ref_model, data_paths=data_paths(cfg) + ([cfg.eval_data] if cfg.eval_data else []))
    accelerator = make_accelerator(cfg)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    template = get_template(cfg.template, tokenizer)
    train, held_out, files, reports = load_data(cfg, tokenizer, template, load_pairs)
    prepare_run_dir(cfg)  # after the data checks: bad input leaves nothing behind

    model = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    dtype = next(model.parameters()).dtype
    # Micro-batches under a token budget (train/micro_batch.py), counted as the padded layout's
    # tokens (an upper bound for every layout); the layout is then priced on those micro-batches.
    plan = plan_micro_batches(cfg, model, train, lambda e: 2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids),
                              unit="pairs", device=accelerator.device)
    say(plan.line)
    padding_free, prefix_sharing, choice = resolve_layout(plan.apply(cfg), model, train)
    say(choice)
    layout = BatchLayout(tokenizer.pad_token_id, padding_free=padding_free, prefix_sharing=prefix_sharing,
                         mask_style=mask_style, mask_dtype=dtype)

    def score(reference, chunk):  # [B, 2] reference log-probs of (chosen, rejected), for the cache
        batch = to_device(layout.pairs(chunk), accelerator.device)
        return reference.sequence_logps(batch, (0, 1)).view(2, -1).T

    key_parts = {"recipe": "dpo", "reference": model_identity(cfg.ref_model or cfg.model, cfg.seed),
                 "dtype": str(dtype), "mixed_precision": accelerator.mixed_precision, "template": template.name,
                 "max_length": cfg.max_length, "length_policy": cfg.length_policy}
    # The reference pass scores the same micro-batches as training (less padding than whole batches).
    reference = build_reference(strategy, plan.apply(cfg), model, accelerator, datasets=files, score=score,
                                token_fields=("prompt_ids", "chosen_ids", "rejected_ids"), key_parts=key_parts)
    trim()  # what the reference pass freed
    say(f"reference: {summary_line(reference)}")
    write_report(cfg.output_dir, reports, describe(reference))

    compute_loss = make_loss(components, options, reference)
    task = TrainTask(model=model, train_examples=train, collate=layout.pairs, compute_loss=compute_loss,
                     item_count=lambda example: 1, token_count=layout.pair_tokens,
                     evaluate=make_evaluator(held_out, layout.pairs, compute_loss, cfg.batch_size) if held_out else None,
                     name="dpo")
    result = run_training(task, plan.apply(cfg), accelerator=accelerator, tokenizer=tokenizer)
    last, evals = result.last_metrics, result.eval_metrics
    say(f"done: {result.steps} steps in {result.seconds:.0f}s; loss {last.get('loss', float('nan')):.4f}, "
          f"margin {last.get('rewards/margins', float('nan')):.4f}, accuracy {last.get('rewards/accuracies', float('nan')):.3f}"
          + (f"; eval margin {evals['eval/rewards/margins']:.4f}, eval accuracy {evals['eval/rewards/accuracies']:.3f}"
             if "eval/rewards/margins" in evals else "") + f"; model in {result.final_dir}")
    return result
