"""KTO on unpaired data: `posttrain kto`.

Each example is one (prompt, completion) labelled desirable or undesirable
(rows `prompt, completion, label`); preference rows are accepted too and give
one desirable (chosen) and one undesirable (rejected) example each. With
r = log pi(y|x) - log pi_ref(y|x) and the reference point z0 (Ethayarajh et
al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"):

    desirable:   loss = lambda_D * (1 - sigma(beta * (r - z0)))
    undesirable: loss = lambda_U * (1 - sigma(beta * (z0 - r)))

The reference point z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x))) over
mismatched pairs: each example's prompt with another example's completion
(fixed at load time, see preference_data.py). It is computed once per
optimizer step over the WHOLE global batch, before the first micro-batch's
loss (the engine's `prepare_step` hook): every process scores the mismatched
pairs of its own micro-batches (no gradient, eval mode), the sum is
all-reduced, and every process divides by the global batch size, so all
micro-batches and processes use one z0. Validation computes z0 over the whole
held-out set.

The loss is the mean over the examples of the global batch (sum per
micro-batch, divided by the global count by the engine). Logged: loss, kl (z0),
rewards/chosen and rewards/rejected (mean implicit reward beta * r of the
desirable and of the undesirable examples of the step), rewards/margins (their
difference), logps/chosen, logps/rejected, logits/chosen, logits/rejected
(the same split by label), with grad_norm and lr from the engine.
"""
from __future__ import annotations

from typing import Any

import torch

from ..data import get_template
from ..data.formats import check_both_labels
from ..data.readers import check_sources
from ..errors import ConfigError
from .accelerator import make_accelerator
from .configs import KTOConfig
from .engine import LossOutput, TrainTask, run_training, to_device
from .preference_batch import BatchLayout, check_layout
from .preference_data import data_paths, load_data, load_unpaired, write_report
from .reference import build_reference, describe, eval_mode, model_identity, resolve_strategy, summary_line
from .setup import load_trainable_model, prepare_run_dir, say


def mismatched_sum(model, reference, examples: list, layout, device) -> torch.Tensor:
    """Sum over `examples` of log pi(y'|x) - log pi_ref(y'|x) for their mismatched completions y'."""
    from .preference_batch import sequence_logps

    batch = to_device(layout.unpaired(examples, "mismatched_ids"), device)
    policy = sequence_logps(model, batch).logps
    return (policy - reference.sequence_logps(batch, (1,)).to(policy.dtype)).sum()


def set_step_stats(state: dict[str, Any], total: float, examples: list) -> None:
    """z0 and the label counts of one global batch (or of the validation set)."""
    desirable = sum(1 for e in examples if e.desirable)
    state.update(z0=max(0.0, total / len(examples)), n=len(examples), desirable=desirable,
                 undesirable=len(examples) - desirable)


def make_prepare_step(state: dict[str, Any], reference, layout, accelerator, grad_accum: int):
    """The engine hook: z0 over the mismatched pairs of the whole global batch."""
    def prepare_step(model, micro_batches: list[list]) -> None:
        rank = accelerator.process_index
        mine = micro_batches[rank * grad_accum:(rank + 1) * grad_accum]
        total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        with torch.no_grad(), eval_mode(model), accelerator.autocast():
            for examples in mine:
                total += mismatched_sum(model, reference, examples, layout, accelerator.device).double()
        if accelerator.num_processes > 1:
            total = accelerator.reduce(total, reduction="sum")
        set_step_stats(state, float(total), [e for examples in micro_batches for e in examples])
    return prepare_step


def split_sums(values: torch.Tensor, desirable: torch.Tensor, state: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """`name/chosen` and `name/rejected` sums scaled so that the engine's division by the global
    count gives the mean over the step's desirable (undesirable) examples."""
    out = {}
    for label, mask, count in (("chosen", desirable, state["desirable"]), ("rejected", ~desirable, state["undesirable"])):
        if count:
            out[f"{name}/{label}"] = values[mask].sum() * (state["n"] / count)
    return out


def make_loss(cfg: KTOConfig, reference, state: dict[str, Any]):
    """`compute_loss(model, batch) -> LossOutput` for a `BatchLayout.unpaired` batch; z0 from `state`."""
    from ..losses import kto_loss
    from .preference_batch import sequence_logps

    def compute_loss(model, batch) -> LossOutput:
        policy = sequence_logps(model, batch, mean_logits=True)
        ref = reference.sequence_logps(batch, (0,)).to(policy.logps.dtype)
        desirable = batch["desirable"]
        out = kto_loss(policy.logps, ref, desirable, state["z0"], beta=cfg.beta,
                       desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
        metrics = {"kl": torch.tensor(state["z0"] * desirable.shape[0]),
                   **split_sums(out.rewards, desirable, state, "rewards"),
                   **split_sums(policy.logps.detach(), desirable, state, "logps"),
                   **split_sums(policy.mean_logits, desirable, state, "logits")}
        if state["desirable"] and state["undesirable"]:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return LossOutput(out.losses.sum(), metrics)
    return compute_loss


def make_evaluator(examples: list, layout, cfg: KTOConfig, reference):
    """Validation: z0 over the whole held-out set, then the loss and metrics averaged over it."""
    state: dict[str, Any] = {}
    compute_loss = make_loss(cfg, reference, state)

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        chunks = [examples[i:i + cfg.batch_size] for i in range(0, len(examples), cfg.batch_size)]
        total = sum(float(mismatched_sum(model, reference, chunk, layout, device)) for chunk in chunks)
        set_step_stats(state, total, examples)
        sums: dict[str, float] = {}
        for chunk in chunks:
            out = compute_loss(model, to_device(layout.unpaired(chunk), device))
            for key, value in {"loss": out.loss_sum, **out.metric_sums}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        return {key: value / len(examples) for key, value in sums.items()}
    return evaluate


def check_weights(cfg: KTOConfig, examples: list) -> None:
    """Print the paper's advice when lambda_D n_D / (lambda_U n_U) is outside [1, 4/3]. Both weights
    are positive (config layer) and both labels present (`check_both_labels`, called first)."""
    n_d = sum(1 for e in examples if e.desirable)
    n_u = len(examples) - n_d
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    if not 1.0 <= ratio <= 4 / 3:
        say(f"note: lambda_D*n_D / (lambda_U*n_U) = {ratio:.2f} ({n_d} desirable, {n_u} undesirable); the KTO paper "
              "recommends 1 to 4/3 (adjust --desirable-weight / --undesirable-weight)")


def train_kto(cfg: KTOConfig):
    """Run KTO as configured; returns the engine's `TrainResult`."""
    if not cfg.data:  # before loading (or converting) any model
        raise ConfigError("data", "give the training data (--data FILE)")

    check_sources(data_paths(cfg) + ([cfg.eval_data] if cfg.eval_data else []))  # a typo costs no model load
    from ..models import load_tokenizer

    mask_style = check_layout(cfg)
    strategy = resolve_strategy(cfg.reference, needs_reference=True, peft=cfg.peft, ref_model=cfg.ref_model,
                                data_paths=data_paths(cfg) + ([cfg.eval_data] if cfg.eval_data else []))
    accelerator = make_accelerator(cfg)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    template = get_template(cfg.template, tokenizer)
    train, held_out, files, reports = load_data(cfg, tokenizer, template, load_unpaired)
    desirable = sum(1 for e in train if e.desirable)
    check_both_labels(" + ".join(data_paths(cfg)), desirable, len(train) - desirable)  # before the run dir
    prepare_run_dir(cfg)  # after the data checks: bad input leaves nothing behind
    check_weights(cfg, train)

    model = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    dtype = next(model.parameters()).dtype
    layout = BatchLayout(tokenizer.pad_token_id, padding_free=cfg.padding_free, mask_style=mask_style, mask_dtype=dtype)

    def score(reference, chunk):  # [B, 2]: reference log-probs of the completion and of the mismatched one
        columns = []
        for column, name in enumerate(("completion_ids", "mismatched_ids")):
            batch = to_device(layout.unpaired(chunk, name), accelerator.device)
            columns.append(reference.sequence_logps(batch, (column,)))
        return torch.stack(columns, dim=1)

    key_parts = {"recipe": "kto", "reference": model_identity(cfg.ref_model or cfg.model, cfg.seed),
                 "dtype": str(dtype), "mixed_precision": accelerator.mixed_precision, "template": template.name,
                 "max_length": cfg.max_length, "length_policy": cfg.length_policy}
    reference = build_reference(strategy, cfg, model, accelerator, datasets=files, score=score,
                                token_fields=("prompt_ids", "completion_ids", "mismatched_ids"), key_parts=key_parts)
    say(f"reference: {summary_line(reference)}")
    write_report(cfg.output_dir, reports, describe(reference))

    state: dict[str, Any] = {}
    task = TrainTask(model=model, train_examples=train, collate=layout.unpaired,
                     compute_loss=make_loss(cfg, reference, state), item_count=lambda example: 1,
                     token_count=lambda e: len(e.prompt_ids) + len(e.completion_ids),
                     evaluate=make_evaluator(held_out, layout, cfg, reference) if held_out else None,
                     prepare_step=make_prepare_step(state, reference, layout, accelerator, cfg.grad_accum), name="kto")
    result = run_training(task, cfg, accelerator=accelerator, tokenizer=tokenizer)
    last, evals = result.last_metrics, result.eval_metrics
    say(f"done: {result.steps} steps in {result.seconds:.0f}s; loss {last.get('loss', float('nan')):.4f}, "
          f"kl {last.get('kl', float('nan')):.4f}, margin "
          # the last step may hold one kind of example only: no margin, not a NaN
          + (f"{last['rewards/margins']:.4f}" if "rewards/margins" in last else "- (one kind in the last step)")
          + (f"; eval margin {evals['eval/rewards/margins']:.4f}" if "eval/rewards/margins" in evals else "")
          + f"; model in {result.final_dir}")
    return result
