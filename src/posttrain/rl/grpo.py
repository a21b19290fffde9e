"""GRPO and RLOO: `posttrain grpo`, `posttrain rloo`.

Each step samples G = `n` responses to each of `prompts_per_step` prompts, scores them,
and turns the G rewards of a prompt into advantages with a *group* baseline instead of a
value model (`losses.advantages.GROUP_ADVANTAGES`):

    grpo     A_i = (r_i - mean_j r_j) / (std_j r_j + eps)      (DeepSeekMath)
    dr_grpo  A_i =  r_i - mean_j r_j                           (Dr. GRPO: no std scaling)
    rloo     A_i =  r_i - mean_{j != i} r_j                    (REINFORCE leave-one-out)

Every response token gets its sequence's advantage. The loss per token t of response i is
the clipped surrogate plus, unless the KL goes into the reward, a KL penalty to π_ref:

    rho_t  = π(y_t) / π_old(y_t)
    l_t    = max(-A_i rho_t, -A_i clip(rho_t, 1 - eps_low, 1 + eps_high)) + beta * k3_t
    k3_t   = π_ref(y_t)/π(y_t) - log(π_ref(y_t)/π(y_t)) - 1

and `loss_aggregation` says how l_t becomes one number (`losses.reduce`):

    token_mean         sum_{i,t} l / sum_i |y_i|          DAPO; every token weighs the same
    sequence_mean      1/N sum_i (1/|y_i| sum_t l)        the original GRPO; every response weighs the same
    sequence_sum       1/N sum_i sum_t l                  plain REINFORCE on sequence log-probs
    sum_over_constant  1/N sum_i sum_t l / max_new_tokens Dr. GRPO; no length bias

π_old is the policy that sampled the batch. With `mu = 1` and one minibatch the update
happens at π_old itself, so the ratio is exactly 1 and the clip never binds (the gradient
is REINFORCE with the group baseline); `mu > 1` reuses the batch mu times, with π_old's
log-probs computed once before the first update. `beta = 0` loads no reference model.

RLOO (`posttrain rloo`) is this recipe with other defaults: the leave-one-out baseline,
the KL folded into the reward (r_i - beta * sum_t (log π_old - log π_ref)), and the
sequence-sum loss (REINFORCE treats a whole response as one action).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..config import help_field, parse_config
from ..errors import ConfigError
from ..losses import GROUP_ADVANTAGES, KL_ESTIMATORS, REDUCTIONS, aggregate_parts, kl_k1, ppo_clip_losses
from .loop import (OnlineRun, Reference, RLArgs, apply_task_defaults, batch_logprobs, check_common, evaluate_greedy,
                   gather_rollouts, global_sum, load_prompt_set, logprob_temperature, sampling_params,
                   step_prompt_indices, timer)
from .rewards import RewardScorerSet, RewardSpec, parse_reward_specs
from .rollouts import Sample, chunks, collate, reward_rows, rollout_records, samples_from_generations, split_even, store_tokens


@dataclass
class GRPOConfig(RLArgs):
    output_dir: str = help_field("runs/grpo", "run directory: config, metrics.jsonl, rollouts.jsonl, checkpoints/, final/")
    n: int = help_field(8, "samples per prompt (the group size G)")
    advantage: str = help_field("grpo", "group baseline: grpo (mean/std), dr_grpo (mean only), rloo (leave-one-out)",
                                choices=list(GROUP_ADVANTAGES))
    loss_aggregation: str = help_field("token_mean", "how per-token losses become one number: token_mean (DAPO), "
                                       "sequence_mean (GRPO paper), sequence_sum (REINFORCE), "
                                       "sum_over_constant (Dr. GRPO, divides by max_new_tokens)", choices=list(REDUCTIONS))
    beta: float = help_field(0.04, "KL coefficient to the reference model (0: no reference model is loaded)")
    kl_estimator: str = help_field("k3", "per-token KL estimator of the loss term", choices=list(KL_ESTIMATORS))
    kl_in_reward: bool = help_field(False, "subtract beta * sequence KL (sum of k1) from each reward instead of a KL loss term")
    epsilon: float = help_field(0.2, "clip range below 1 (eps_low)")
    epsilon_high: float | None = help_field(None, "clip range above 1 (eps_high; DAPO's clip-higher uses 0.28); default: epsilon")
    mu: int = help_field(1, "policy updates per rollout batch (reusing it with the old log-probs)")
    num_minibatches: int = help_field(1, "optimizer steps per pass over a rollout batch")
    entropy_coef: float = help_field(0.0, "entropy bonus coefficient (subtracted from the loss)")
    missing_eos_penalty: float = help_field(0.0, "subtract this from the reward of responses cut at max_new_tokens")


@dataclass
class RLOOConfig(GRPOConfig):
    output_dir: str = help_field("runs/rloo", "run directory: config, metrics.jsonl, rollouts.jsonl, checkpoints/, final/")
    n: int = help_field(4, "samples per prompt (k)")
    advantage: str = help_field("rloo", "group baseline: rloo (leave-one-out), grpo, dr_grpo", choices=list(GROUP_ADVANTAGES))
    loss_aggregation: str = help_field("sequence_sum", "per-token loss reduction (sequence_sum: REINFORCE on whole responses)",
                                       choices=list(REDUCTIONS))
    beta: float = help_field(0.05, "KL coefficient (0: no reference model is loaded)")
    kl_in_reward: bool = help_field(True, "subtract beta * sequence KL from each reward (RLOO paper) instead of a KL loss term")


@dataclass
class RLResult:
    steps: int
    final_dir: Any
    last_metrics: dict[str, Any]
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def build_scorer(cfg: RLArgs, functions: Mapping[str, Callable] | None = None) -> RewardScorerSet:
    """Reward specs from the config; `functions` (name -> callable) serve library callers and tests."""
    if functions and not cfg.reward and not cfg.reward_weights:
        return RewardScorerSet([RewardSpec(name) for name in functions], functions)
    return RewardScorerSet(parse_reward_specs(cfg.reward, cfg.reward_weights), functions)


def check_grpo(cfg: GRPOConfig) -> None:
    check_common(cfg, cfg.n)
    if cfg.n < 2:
        raise ConfigError("n", "a group baseline needs at least 2 samples per prompt")
    if cfg.temperature == 0:
        raise ConfigError("temperature", "greedy sampling gives identical samples (no group variance); use > 0")
    for name in ("mu", "num_minibatches"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, "must be at least 1")
    if cfg.beta < 0:
        raise ConfigError("beta", "must be >= 0")
    if cfg.epsilon <= 0 or (cfg.epsilon_high is not None and cfg.epsilon_high <= 0):
        raise ConfigError("epsilon", "clip ranges must be > 0")


# --------------------------------------------------------------------------- one step


def sample_and_score(run: OnlineRun, cfg: RLArgs, n: int, tokenizer, prompt_set, scorer: RewardScorerSet,
                     step: int) -> tuple[list[Sample], Any, dict[str, float]]:
    """Generate n responses for this step's prompts, score them; returns samples (prompt-major,
    `sample.score` set), the BatchScores and timings."""
    from ..rollout.generation import generate

    indices = step_prompt_indices(len(prompt_set.ids), cfg.prompts_per_step, run.world, run.rank, cfg.seed, step)
    started = timer()
    generations = generate(run.unwrapped_policy(), tokenizer, [prompt_set.ids[i] for i in indices],
                           sampling_params(cfg, n, step, run.rank), batch_size=cfg.generation_batch_size)
    samples = samples_from_generations(generations, indices)
    generated = timer()
    scores = scorer.score(reward_rows(samples, prompt_set.prompts))
    for sample, value in zip(samples, scores.total):
        sample.score = float(value) - (getattr(cfg, "missing_eos_penalty", 0.0) if sample.finish_reason == "length" else 0.0)
    timing = {"time/generate": generated - started, "time/reward": timer() - generated}
    return samples, scores, timing


def rollout_logprobs(run: OnlineRun, samples: list[Sample], pad_id: int, cfg: RLArgs, reference: Reference | None,
                     need_old: bool) -> None:
    """π_old and π_ref log-probs of every sample (no gradients), stored as sample tokens."""
    temperature = logprob_temperature(cfg)
    model = run.model
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for micro in chunks(samples, cfg.micro_batch_size):
            batch = {k: v.to(run.device) for k, v in collate(micro, pad_id).items()}
            if need_old:
                with run.accelerator.autocast():
                    store_tokens(micro, "old_logps", batch_logprobs(model, batch, temperature).logprobs,
                                 batch["response_mask"])
            if reference is not None:
                store_tokens(micro, "ref_logps", reference.logprobs(batch, temperature), batch["response_mask"])
    model.train(was_training)


def group_advantages(samples: list[Sample], n: int, estimator: str, beta_in_reward: float) -> dict[str, float]:
    """Set `sample.scalars["advantage"]` from the group baseline; samples are prompt-major, n each."""
    rewards = torch.tensor([s.score for s in samples], dtype=torch.float64)
    if beta_in_reward > 0:
        # RLOO-style: the reward already pays for drifting from π_ref (sequence KL, k1 summed).
        seq_kl = torch.tensor([float(kl_k1(s.tokens["old_logps"], s.tokens["ref_logps"]).sum()) for s in samples],
                              dtype=torch.float64)
        rewards = rewards - beta_in_reward * seq_kl
    grouped = rewards.view(-1, n)
    advantages = GROUP_ADVANTAGES[estimator](grouped).flatten()
    for sample, value in zip(samples, advantages.tolist()):
        sample.scalars["advantage"] = value
    zero_std = (grouped.std(dim=-1) == 0).double().mean().item() if n > 1 else 1.0
    return {"groups_zero_std": zero_std, "reward_std": float(grouped.std(dim=-1).mean())}


def update_policy(run: OnlineRun, samples: list[Sample], pad_id: int, cfg: GRPOConfig, step: int,
                  has_old: bool, has_ref: bool) -> dict[str, float]:
    """mu passes x num_minibatches optimizer steps over the batch; returns the step's metrics."""
    temperature = logprob_temperature(cfg)
    constant = float(cfg.max_new_tokens)
    clip_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    token_fields = [name for name, on in (("old_logps", has_old), ("ref_logps", has_ref)) if on]
    kl_term = has_ref and not cfg.kl_in_reward and cfg.beta > 0
    sums: dict[str, float] = {}
    shuffle = random.Random(cfg.seed * 7_919 + step)
    losses_seen, grad_norm, first = [], 0.0, True
    run.model.train()
    for _ in range(cfg.mu):
        order = list(samples)
        if cfg.mu > 1 or cfg.num_minibatches > 1:
            shuffle.shuffle(order)
        for minibatch in split_even(order, cfg.num_minibatches):
            micro_batches = chunks(minibatch, cfg.micro_batch_size)
            collated = [collate(m, pad_id, token_fields, ["advantage"]) for m in micro_batches]
            # The denominator of the whole (global) minibatch first: split-invariant reduction.
            den = global_sum(run.accelerator, sum(float(aggregate_parts(b["response_mask"].float(), b["response_mask"],
                                                                        cfg.loss_aggregation, constant)[1]) for b in collated))
            loss_total = 0.0
            for j, batch in enumerate(collated):
                batch = {k: v.to(run.device) for k, v in batch.items()}
                mask = batch["response_mask"]
                with run.accelerator.autocast():
                    out = batch_logprobs(run.model, batch, temperature, entropy=True)
                logps = out.logprobs
                old = batch["old_logps"] if has_old else logps.detach()
                losses, clipped = ppo_clip_losses(logps, old, batch["advantage"], mask, clip_low=cfg.epsilon,
                                                  clip_high=clip_high)
                if kl_term:
                    kl = KL_ESTIMATORS[cfg.kl_estimator](logps, batch["ref_logps"], mask)
                    losses = losses + cfg.beta * kl
                    _add(sums, "kl_sum", kl.detach().sum())
                if cfg.entropy_coef:
                    losses = losses - cfg.entropy_coef * torch.where(mask, out.entropy, 0.0)
                num, _ = aggregate_parts(losses, mask, cfg.loss_aggregation, constant)
                run.backward(num * run.world / max(den, 1e-12), last_micro_batch=j == len(collated) - 1)
                loss_total += float(num.detach()) / max(den, 1e-12)
                _token_metrics(sums, logps.detach(), old, batch["advantage"], clipped, mask, out.entropy,
                               cfg.epsilon, clip_high, first)
            first = False
            losses_seen.append(global_sum(run.accelerator, loss_total))
            grad_norm = run.optimizer_step(step, losses_seen[-1])
    return _finish_metrics(run, sums, losses_seen, grad_norm)


def _add(sums: dict[str, float], key: str, value) -> None:
    sums[key] = sums.get(key, 0.0) + float(value)


def _token_metrics(sums, logps, old, advantages, clipped, mask, entropy, eps_low, eps_high, first: bool) -> None:
    """Token sums for the step's metrics (turned into means in `_finish_metrics`)."""
    ratio = torch.exp(torch.where(mask, logps - old, 0.0))
    adv = advantages.unsqueeze(-1).expand_as(ratio)
    tokens = mask.sum()
    _add(sums, "tokens", tokens)
    _add(sums, "ratio_sum", ratio[mask].sum())
    _add(sums, "clipped", clipped.sum())
    _add(sums, "clipped_low", (mask & (adv < 0) & (ratio < 1 - eps_low)).sum())
    _add(sums, "clipped_high", (mask & (adv > 0) & (ratio > 1 + eps_high)).sum())
    _add(sums, "entropy_sum", entropy.detach()[mask].sum())
    if first:
        _add(sums, "first_tokens", tokens)
        _add(sums, "first_ratio_sum", ratio[mask].sum())
        _add(sums, "first_ratio_dev", (ratio[mask] - 1).abs().sum())


def _finish_metrics(run: OnlineRun, sums: dict[str, float], losses: list[float], grad_norm: float) -> dict[str, float]:
    from ..train.engine import reduce_sums

    sums = reduce_sums(run.accelerator, sums)
    tokens = max(sums.get("tokens", 0.0), 1.0)
    first = max(sums.get("first_tokens", 0.0), 1.0)
    row = {"loss": sum(losses) / max(len(losses), 1), "grad_norm": grad_norm,
           "lr": run.scheduler.get_last_lr()[0],
           "entropy": sums.get("entropy_sum", 0.0) / tokens, "ratio_mean": sums.get("ratio_sum", 0.0) / tokens,
           "ratio_first": sums.get("first_ratio_sum", 0.0) / first,
           "ratio_first_abs_dev": sums.get("first_ratio_dev", 0.0) / first,
           "clip_fraction": sums.get("clipped", 0.0) / tokens,
           "clip_low_fraction": sums.get("clipped_low", 0.0) / tokens,
           "clip_high_fraction": sums.get("clipped_high", 0.0) / tokens}
    if "kl_sum" in sums:
        row["kl"] = sums["kl_sum"] / tokens
    return row


def sample_metrics(run: OnlineRun, samples: list[Sample], scores) -> dict[str, float]:
    """Reward and length statistics of the step's samples, over all processes."""
    from ..train.engine import reduce_sums

    sums = {"count": float(len(samples)), "reward": sum(s.score for s in samples),
            "length": float(sum(s.length for s in samples)),
            "finished": float(sum(s.finish_reason != "length" for s in samples))}
    for name, values in scores.scores.items():
        sums[f"reward/{name}"] = float(sum(values))
    sums = reduce_sums(run.accelerator, sums)
    count = max(sums.pop("count"), 1.0)
    row = {"reward": sums.pop("reward") / count, "response_length": sums.pop("length") / count,
           "finished_fraction": sums.pop("finished") / count}
    if len(scores.scores) > 1:
        row.update({k: v / count for k, v in sums.items()})
    row["response_length_max"] = max(s.length for s in samples)
    return row


# --------------------------------------------------------------------------- the recipe


def train_grpo(cfg: GRPOConfig, reward_functions: Mapping[str, Callable] | None = None, name: str = "grpo") -> RLResult:
    """Run GRPO (or RLOO, by its config) as configured; see the module docstring."""
    from ..models import load_tokenizer
    from ..train.engine import Interrupted, sigint_flag
    from ..train.setup import load_trainable_model, prepare_run_dir, say

    cfg = apply_task_defaults(cfg)
    check_grpo(cfg)
    scorer = build_scorer(cfg, reward_functions)
    prepare_run_dir(cfg)
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_set = load_prompt_set(cfg.prompts, tokenizer, cfg, cfg.limit)
    eval_set = load_prompt_set(cfg.eval_prompts, tokenizer, cfg, cfg.eval_limit) if cfg.eval_prompts else None
    say(f"{name}: {len(train_set.ids)} prompts, reward = {scorer.describe()}, G = {cfg.n}, "
        f"advantage = {cfg.advantage}, loss = {cfg.loss_aggregation}, beta = {cfg.beta}")

    policy = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    need_ref = cfg.beta > 0
    reference = Reference.for_policy(policy, lambda: run.unwrapped_policy()) if need_ref else None
    run = OnlineRun(cfg, policy, cfg.max_steps * cfg.mu * cfg.num_minibatches, name)
    if reference is not None:
        reference.to(run.device)
    # The old log-probs need a pass of their own only when the batch is reused or split.
    need_old = cfg.mu > 1 or cfg.num_minibatches > 1 or (cfg.kl_in_reward and need_ref)
    eval_tokens = cfg.eval_max_new_tokens or cfg.max_new_tokens

    def evaluate() -> dict[str, float]:
        return evaluate_greedy(run.unwrapped_policy(), tokenizer, eval_set, scorer, eval_tokens,
                               cfg.generation_batch_size, cfg.stop, run.accelerator)

    step, state = run.start()
    started = timer()
    eval_before = state.get("eval_before", {})
    if eval_set is not None and step == 0:
        eval_before = evaluate()
        run.log.log({"step": 0, **{f"eval/{k}": v for k, v in eval_before.items()}})
        say(f"before training: eval reward {eval_before['reward']:.4f}")
    row: dict[str, Any] = {}
    with sigint_flag() as interrupt:
        while step < cfg.max_steps:
            step_started = timer()
            samples, scores, timing = sample_and_score(run, cfg, cfg.n, tokenizer, train_set, scorer, step)
            row = sample_metrics(run, samples, scores)
            rollout_logprobs(run, samples, pad_id, cfg, reference, need_old)
            row.update(group_advantages(samples, cfg.n, cfg.advantage, cfg.beta if cfg.kl_in_reward else 0.0))
            trained = timer()
            row.update(update_policy(run, samples, pad_id, cfg, step, need_old, need_ref))
            timing["time/train"] = timer() - trained
            timing["time/step"] = timer() - step_started
            tokens = int(global_sum(run.accelerator, sum(len(s.prompt_ids) + s.length for s in samples)))
            generated = global_sum(run.accelerator, sum(s.length for s in samples))
            row.update(timing)
            row["generated_tokens_per_s"] = generated / max(timing["time/generate"], 1e-9)
            records = gather_rollouts(run.accelerator, rollout_records(samples, train_set.prompts, step + 1,
                                                                       scores.scores))
            step += 1
            if eval_set is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                row.update({f"eval/{k}": v for k, v in evaluate().items()})
            run.end_step(step, row, tokens, {"eval_before": eval_before}, records)
            if interrupt["hit"]:
                from ..train.checkpoint import save_checkpoint

                path = save_checkpoint(run.accelerator, cfg.output_dir, step, {"eval_before": eval_before}, cfg.keep_last)
                run.progress.close()
                raise Interrupted(f"interrupted at step {step}/{cfg.max_steps}; checkpoint saved to {path}; "
                                  f"run again with --resume to continue")
    eval_after = {}
    if eval_set is not None:
        eval_after = evaluate()
        run.log.log({"step": step, **{f"eval/{k}": v for k, v in eval_after.items()}})
    final = run.finish(tokenizer)
    seconds = timer() - started
    summary = f"done: {step} steps in {seconds:.0f}s, last reward {row.get('reward', float('nan')):.4f}"
    if eval_after:
        summary += f"; eval reward {eval_before.get('reward', float('nan')):.4f} -> {eval_after['reward']:.4f}"
    say(summary + f"; model in {final}")
    return RLResult(step, final, row, eval_before, eval_after, seconds)


def main(argv: list[str]) -> int:
    from .loop import merge_repeated_flags

    cfg = parse_config(GRPOConfig, merge_repeated_flags(argv, "--reward"), prog="posttrain grpo",
                       description="GRPO: group-relative policy optimisation with verifiable or learned rewards")
    train_grpo(cfg)
    return 0


def rloo_main(argv: list[str]) -> int:
    from .loop import merge_repeated_flags

    cfg = parse_config(RLOOConfig, merge_repeated_flags(argv, "--reward"), prog="posttrain rloo",
                       description="RLOO: REINFORCE with a leave-one-out baseline")
    train_grpo(cfg, name="rloo")
    return 0
