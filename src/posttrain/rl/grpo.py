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

Dynamic sampling (`dynamic_sampling` R > 0, DAPO): a group whose G rewards are all equal has
zero advantage everywhere and teaches nothing, which after a warm-up is most groups (the
policy is nearly deterministic: every sample right, or every one wrong). Such groups are
replaced by groups of further prompts, sampled in up to R extra rounds per step; if the rounds
run out, uniform groups fill the batch, so every step still trains on `prompts_per_step` groups.

RLOO (`posttrain rloo`) is this recipe with other defaults: the leave-one-out baseline,
the KL folded into the reward (r_i - beta * sum_t (log π_old - log π_ref)), and the
sequence-sum loss (REINFORCE treats a whole response as one action).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..errors import ConfigError
from ..losses import GROUP_ADVANTAGES, KL_ESTIMATORS, aggregate_parts, kl_k1, ppo_clip_losses
from ..rollout.rewards import BatchScores
from ..rollout.threads import choose_cpu_threads
from ..train.accelerator import global_sum, reduce_sums
from ..train.reference import Reference, reference_for_policy
from . import combined
from .configs import GRPOConfig, RLArgs, RLOOConfig  # noqa: F401  (RLOOConfig re-exported)
from .loop import (
    OnlineRun,
    check_common,
    disable_dropout,
    gather_rollouts,
    run_online,
    timer,
    update_passes,
)
from .online import (
    RLResult,
    add_sum,
    batch_logprobs,
    global_max,
    logprob_temperature,
    prepare_online_inputs,
    run_evaluator,
    sample_and_score,
    sample_metrics,
)
from .rollouts import (
    Sample,
    chunks,
    rollout_collate,
    rollout_records,
    scoring_batches,
    store_tokens,
    tree_logprobs,
)


def check_grpo(cfg: GRPOConfig) -> None:
    check_common(cfg, cfg.num_samples)
    if cfg.num_samples < 2:
        raise ConfigError("num_samples", "a group baseline needs at least 2 samples per prompt")
    if cfg.temperature == 0:
        raise ConfigError("temperature", "greedy sampling gives identical samples (no group variance); use > 0")
    for name in ("ppo_epochs", "num_minibatches"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, "must be at least 1")
    if cfg.kl_coef < 0:
        raise ConfigError("kl_coef", "must be >= 0")
    if cfg.epsilon <= 0 or (cfg.epsilon_high is not None and cfg.epsilon_high <= 0):
        raise ConfigError("epsilon", "clip ranges must be > 0")
    combined.check_combined(cfg)


def policy_logprobs(model, batch: dict[str, torch.Tensor], temperature: float, entropy: bool = False):
    """Per-token log-probs (and entropy) of a collated batch in its plain [B, T] layout, computed
    through the batch's `tree_*` layout when it has one."""
    if "tree_input_ids" in batch:
        return tree_logprobs(model, batch, temperature, entropy)
    return batch_logprobs(model, batch, temperature, entropy)


# --------------------------------------------------------------------------- one step


def rollout_logprobs(run: OnlineRun, samples: list[Sample], pad_id: int, cfg: RLArgs, reference: Reference | None,
                     need_old: bool) -> None:
    """π_old and π_ref log-probs of every sample (no gradients), stored as sample tokens."""
    temperature = logprob_temperature(cfg)
    for micro, batch in scoring_batches(run, samples, cfg.micro_batch_size, rollout_collate(run, cfg, pad_id)):
        if need_old:
            with run.accelerator.autocast():
                store_tokens(micro, "old_logps", policy_logprobs(run.model, batch, temperature).logprobs,
                             batch["response_mask"])
        if reference is not None:
            store_tokens(micro, "ref_logps", reference.token_logprobs(batch, temperature), batch["response_mask"])


def uniform_group(group: list[Sample]) -> bool:
    """All samples of the group scored the same: every advantage is 0, no learning signal."""
    return all(sample.score == group[0].score for sample in group)


def sample_groups(run: OnlineRun, cfg: GRPOConfig, tokenizer, prompt_set, scorer, step: int):
    """This step's rollout groups (see "Dynamic sampling" above).

    Returns (batch, sampled, scores, timing, metrics): `batch` the `prompts_per_step` groups to
    train on (prompt-major, G each), `sampled` every sample of every round with its `scores`
    (for the reward metrics and rollouts.jsonl), summed timings, and the dynamic-sampling metrics.
    Every process runs the same number of rounds (a round gathers FSDP weights on all of them)."""
    n, wanted = cfg.num_samples, cfg.prompts_per_step
    sampled, scores, timing = sample_and_score(run, cfg, n, tokenizer, prompt_set, scorer, step, cfg.missing_eos_penalty)
    if cfg.dynamic_sampling == 0:
        return sampled, sampled, scores, timing, {}
    first = chunks(sampled, n)
    informative = [group for group in first if not uniform_group(group)]
    parts, rounds = [scores], 0
    while rounds < cfg.dynamic_sampling and global_max(run.accelerator, wanted - len(informative)) > 0:
        rounds += 1
        seen = frozenset(sample.prompt_index for sample in sampled)
        more, more_scores, more_timing = sample_and_score(run, cfg, n, tokenizer, prompt_set, scorer, step,
                                                          cfg.missing_eos_penalty, extra_round=rounds, skip=seen)
        sampled += more
        parts += [more_scores] if more_scores is not None else []
        timing = {key: timing[key] + more_timing[key] for key in timing}
        informative += [group for group in chunks(more, n) if not uniform_group(group)]
    kept = informative[:wanted]
    kept += [group for group in first if uniform_group(group)][:wanted - len(kept)]
    sums = reduce_sums(run.accelerator, {"sampled": len(sampled) / n, "informative": float(len(informative)),
                                         "uniform_kept": float(sum(uniform_group(g) for g in kept)),
                                         "kept": float(len(kept))})
    metrics = {"dynamic/rounds": float(rounds), "dynamic/groups_sampled": sums["sampled"],
               "dynamic/informative_fraction": sums["informative"] / max(sums["sampled"], 1.0),
               "dynamic/uniform_in_batch": sums["uniform_kept"] / max(sums["kept"], 1.0)}
    return [s for group in kept for s in group], sampled, BatchScores.concat(parts), timing, metrics


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


def global_group_stats(run: OnlineRun, stats: dict[str, float], groups: int) -> dict[str, float]:
    """`group_advantages`' per-group means (this process) -> means over every process's groups."""
    sums = reduce_sums(run.accelerator, {"groups": float(groups), **{k: v * groups for k, v in stats.items()}})
    count = max(sums.pop("groups"), 1.0)
    return {k: v / count for k, v in sums.items()}


def update_policy(run: OnlineRun, samples: list[Sample], pad_id: int, cfg: GRPOConfig, step: int,
                  has_old: bool, has_ref: bool, expert: list[Sample] | None = None) -> dict[str, float]:
    """mu passes x num_minibatches optimizer steps over the batch (`loop.update_passes`); returns the
    step's metrics. With dpo_coef / bc_coef > 0 each step also carries the DPO and BC terms (rl/combined.py)."""
    temperature = logprob_temperature(cfg)
    constant = float(cfg.max_new_tokens)
    clip_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    token_fields = [name for name, on in (("old_logps", has_old), ("ref_logps", has_ref)) if on]
    kl_term = has_ref and not cfg.kl_in_reward and cfg.kl_coef > 0
    sums: dict[str, float] = {}
    scalar_fields = ["advantage"]
    pair_count = 0.0
    if cfg.dpo_coef > 0:
        pairs = combined.rollout_pairs(samples, cfg.num_samples)
        pair_count = global_sum(run.accelerator, float(pairs[0].numel()))
        scalar_fields.append("dpo_coef")

    def before_step(plan):
        """The combined objective's per-step parts: DPO coefficients at the current weights, and
        the behaviour-cloning backward that ends the step."""
        if cfg.dpo_coef > 0:  # dL/dlogp at the weights of this update (one minibatch: all samples)
            ref_field = "ref_logps" if has_ref else ("old_logps" if has_old else None)
            now_field = "old_logps" if has_old and plan.epoch == 0 else None  # pi_old = the weights now
            part = combined.set_dpo_coefficients(run, samples, *pairs, pad_id, cfg, now_field, ref_field, temperature)
            add_sum(sums, "dpo_loss_sum", part)
            add_sum(sums, "dpo_pairs_seen", float(pairs[0].numel()))
        bc_rows = (combined.expert_batch(expert, cfg.bc_batch_size, cfg.seed, step, plan.update)
                   if expert and cfg.bc_coef > 0 else [])
        if not bc_rows:
            return None

        def behaviour_cloning() -> None:
            add_sum(sums, "bc_nll_sum", combined.bc_backward(run, bc_rows, pad_id, cfg, run.world, last=True))
            add_sum(sums, "bc_updates", 1.0)
        return behaviour_cloning

    def denominator(batch) -> float:
        return float(aggregate_parts(batch["response_mask"].float(), batch["response_mask"], cfg.loss_aggregation,
                                     constant)[1])

    def micro_objective(batch, scale: float, plan):
        mask = batch["response_mask"]
        out = policy_logprobs(run.model, batch, temperature, entropy=True)
        logps = out.logprobs
        old = batch["old_logps"] if has_old else logps.detach()
        losses = grpo_token_losses(logps, old, batch, cfg, clip_high, kl_term, sums, out.entropy)
        num, _ = aggregate_parts(losses[0], mask, cfg.loss_aggregation, constant)
        objective = cfg.policy_coef * num * scale if cfg.policy_coef != 1.0 else num * scale
        if cfg.dpo_coef > 0 and pair_count > 0:
            surrogate = combined.dpo_surrogate(logps, mask, batch["dpo_coef"])
            objective = objective + cfg.dpo_coef * surrogate * run.world / pair_count
        _token_metrics(sums, logps.detach(), old, batch["advantage"], losses[1], mask, out.entropy,
                       cfg.epsilon, clip_high, plan.update == 0)
        return objective, float(num.detach()) * scale / run.world

    losses_seen, grad_norm = update_passes(
        run, samples, step, epochs=cfg.ppo_epochs, minibatches=cfg.num_minibatches,
        micro_batch_size=cfg.micro_batch_size, seed=cfg.seed,
        collate_micro=rollout_collate(run, cfg, pad_id, token_fields, scalar_fields),
        denominator=denominator, micro_objective=micro_objective,
        # Minibatches are drawn by whole groups; one minibatch keeps the sampling order.
        shuffle=cfg.num_minibatches > 1, group_size=cfg.num_samples, before_step=before_step)
    return _finish_metrics(run, sums, losses_seen, grad_norm)


def grpo_token_losses(logps, old_logps, batch, cfg: GRPOConfig, clip_high: float, kl_term: bool,
                      sums: dict[str, float], entropy=None):
    """GRPO's loss per token of one micro-batch -> (losses [B, T], clipped [B, T]):
    the clipped surrogate with the sequence's advantage, + beta * KL to π_ref (unless the KL is in
    the reward), - entropy_coef * H. The combined objective's DPO term is added per sequence by
    the caller (`update_policy`)."""
    mask = batch["response_mask"]
    losses, clipped = ppo_clip_losses(logps, old_logps, batch["advantage"], mask, clip_low=cfg.epsilon,
                                      clip_high=clip_high)
    if kl_term:
        kl = KL_ESTIMATORS[cfg.kl_estimator](logps, batch["ref_logps"], mask)
        losses = losses + cfg.kl_coef * kl
        add_sum(sums, "kl_sum", kl.detach().sum())
    if cfg.entropy_coef:
        losses = losses - cfg.entropy_coef * torch.where(mask, entropy, 0.0)
    return losses, clipped


def _token_metrics(sums, logps, old, advantages, clipped, mask, entropy, eps_low, eps_high, first: bool) -> None:
    """Token sums for the step's metrics (turned into means in `_finish_metrics`)."""
    ratio = torch.exp(torch.where(mask, logps - old, 0.0))
    adv = advantages.unsqueeze(-1).expand_as(ratio)
    tokens = mask.sum()
    add_sum(sums, "tokens", tokens)
    add_sum(sums, "ratio_sum", ratio[mask].sum())
    add_sum(sums, "clipped", clipped.sum())
    add_sum(sums, "clipped_low", (mask & (adv < 0) & (ratio < 1 - eps_low)).sum())
    add_sum(sums, "clipped_high", (mask & (adv > 0) & (ratio > 1 + eps_high)).sum())
    add_sum(sums, "entropy_sum", entropy.detach()[mask].sum())
    if first:
        add_sum(sums, "first_tokens", tokens)
        add_sum(sums, "first_ratio_sum", ratio[mask].sum())
        add_sum(sums, "first_ratio_dev", (ratio[mask] - 1).abs().sum())


def _finish_metrics(run: OnlineRun, sums: dict[str, float], losses: list[float], grad_norm: float) -> dict[str, float]:
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
    if "dpo_pairs_seen" in sums:  # the combined objective's terms (rl/combined.py)
        row["dpo_loss"] = sums["dpo_loss_sum"] / max(sums["dpo_pairs_seen"], 1.0)
        row["dpo_pairs"] = sums["dpo_pairs_seen"]
    if "bc_updates" in sums:
        row["bc_nll"] = sums["bc_nll_sum"] / max(sums["bc_updates"], 1.0)
    return row


# --------------------------------------------------------------------------- the recipe


def train_grpo(cfg: GRPOConfig, reward_functions: Mapping[str, Callable] | None = None, name: str = "grpo") -> RLResult:
    """Run GRPO (or RLOO, by its config) as configured; see the module docstring."""
    from ..train.setup import load_trainable_model, say

    inputs = prepare_online_inputs(cfg, check_grpo, reward_functions)
    cfg, scorer, tokenizer, pad_id = inputs.cfg, inputs.scorer, inputs.tokenizer, inputs.pad_id
    train_set, eval_set = inputs.train_set, inputs.eval_set
    expert = combined.load_expert_samples(cfg.bc_data, tokenizer, cfg) if cfg.bc_data else None
    say(f"{name}: {len(train_set.ids)} prompts, reward = {scorer.describe()}, G = {cfg.num_samples}, "
        f"advantage = {cfg.advantage}, loss = {cfg.loss_aggregation}, kl_coef = {cfg.kl_coef}")
    if not torch.cuda.is_available():
        threads, why = choose_cpu_threads(cfg.threads)
        say(f"threads: {threads} ({why})")

    policy = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.disable_dropout:
        disable_dropout(policy)
    has_ref = cfg.kl_coef > 0
    reference = reference_for_policy(policy, lambda: run.unwrapped_policy()) if has_ref else None
    run = OnlineRun(cfg, policy, cfg.max_steps * cfg.ppo_epochs * cfg.num_minibatches, name)
    if reference is not None:
        reference.to(run.device)
    # π_old needs a pass of its own only when the batch is reused or split (or for the KL reward).
    has_old = cfg.ppo_epochs > 1 or cfg.num_minibatches > 1 or (cfg.kl_in_reward and has_ref)

    def step_fn(step: int):
        samples, sampled, scores, timing, dynamic = sample_groups(run, cfg, tokenizer, train_set, scorer, step)
        row = sample_metrics(run, sampled, scores, timing["time/generate"])
        row.update(dynamic)
        rollout_logprobs(run, samples, pad_id, cfg, reference, has_old)
        stats = group_advantages(samples, cfg.num_samples, cfg.advantage, cfg.kl_coef if cfg.kl_in_reward else 0.0)
        row.update(global_group_stats(run, stats, len(samples) // cfg.num_samples))
        trained = timer()
        row.update(update_policy(run, samples, pad_id, cfg, step, has_old, has_ref, expert))
        row.update(timing)
        row["time/train"] = timer() - trained
        tokens = int(global_sum(run.accelerator, sum(len(s.prompt_ids) + s.length for s in samples)))
        row["rollout_tokens"] = tokens  # prompt + response of every sample (for update throughput)
        records = gather_rollouts(run.accelerator, rollout_records(sampled, train_set.prompts, step + 1, scores.scores))
        return row, tokens, records

    evaluate = run_evaluator(run, cfg, tokenizer, eval_set, scorer)

    summary = run_online(run, cfg, step_fn, evaluate, lambda: {}, tokenizer)
    return RLResult(**summary)
