"""PPO for language models: `posttrain ppo`.

The RLHF recipe of Ziegler et al. (2019) / Stiennon et al. (2020) / InstructGPT, with the
implementation details of Huang et al. (2024, "The N+ Implementation Details of RLHF
with PPO"). Each step:
1. Sample a response to each of `prompts_per_step` prompts (x `n`) with the policy π_old.
2. Score each response once: s_i (verifiers, user functions, a reward model, a weighted sum).
3. Without gradients: log π_old(y_t), log π_ref(y_t), and values V(s_t) from the value model,
   where s_t is the prompt plus the response tokens before y_t.
4. Per-token rewards: a KL penalty on every token, the score on the last one
   (`losses.kl.kl_penalized_rewards`):
       r_t = -beta * kl_t + [t = last] * s_i,    kl_t = k1 = log π_old - log π_ref   (or k3)
   beta comes from a fixed or an adaptive controller (target KL per sequence).
5. GAE (`losses.advantages.gae`):  delta_t = r_t + gamma V_{t+1} - V_t,
   A_t = delta_t + gamma lambda A_{t+1},  returns R_t = A_t + V_t;  A is whitened over
   the batch (all processes).
6. `ppo_epochs` passes over the batch in `num_minibatches` shuffled minibatches; per token
       policy:  max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps_high)),  rho_t = π/π_old
       value:   1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)
       loss_t = policy_t + vf_coef * value_t - entropy_coef * H_t
   reduced with `loss_aggregation` (token_mean by default). PPO-ptx (InstructGPT): with
   `ptx_coef` > 0 each optimizer step adds ptx_coef * (token-mean NLL of `ptx_batch_size` rows
   of `ptx_data`, SFT or pre-training text), rl/combined.py's `nll_backward`.

The value model is a `ScalarHeadModel` (a separate copy of the policy, or a reward-model
directory, with a scalar head; its own learning rate) or, with `value_model: shared`, a
linear head on the policy's own last hidden states (one forward pass for both).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    aggregate_parts,
    approx_kl,
    clipped_value_losses,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_moments,
    ppo_clip_losses,
    whiten,
)
from ..models.peft import apply_peft, merge_adapter
from ..train.accelerator import global_sum, reduce_sums
from ..train.reference import Reference, reference_for_policy
from . import combined
from .configs import PPOConfig
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
    logprob_temperature,
    prepare_online_inputs,
    run_evaluator,
    sample_and_score,
    sample_metrics,
)
from .rollouts import Sample, collate, rollout_collate, rollout_records, scoring_batches, store_tokens, tree_to_plain

# --------------------------------------------------------------------------- actor + critic


class ActorCritic(nn.Module):
    """The policy and its value model in one module (one optimizer, one DDP wrapper).

    forward(batch) -> (logprobs [B, T], entropy [B, T], values [B, T]) in the batch's plain
    layout (`rollouts.collate`), where values[b, j] is V(s) of the state *before* token j, i.e.
    the head at the position whose hidden state predicts token j, lined up with logprobs[b, j].
    A batch with `tree_*` tensors (`rollouts.rollout_collate`) runs the model on that layout,
    each prompt once for all its samples; in it too the position before a response token is
    the one that predicts it (each branch starts with a copy of the last prompt token), so the
    same shift by one holds, and the results are laid back out as `[B, T]`.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None, value_head: nn.Linear | None = None):
        super().__init__()
        if (critic is None) == (value_head is None):
            raise ValueError("give exactly one of critic (separate) or value_head (shared)")
        self.policy, self.critic, self.value_head = policy, critic, value_head
        # FSDP wraps each decoder layer (of policy and critic) as its own unit, as for the policy alone.
        self._no_split_modules = list(getattr(policy, "_no_split_modules", None) or [])

    def forward(self, batch: dict[str, torch.Tensor], temperature: float = 1.0):
        if "tree_input_ids" not in batch:
            return self._score(batch["input_ids"], batch["attention_mask"], batch["response_mask"], None, temperature)
        scored = self._score(batch["tree_input_ids"], batch["tree_attention_mask"], batch["tree_response_mask"],
                             batch["tree_position_ids"], temperature)
        plain = tree_to_plain(batch)
        return tuple(plain(values) for values in scored)

    def _score(self, input_ids, attention_mask, response_mask, position_ids, temperature: float):
        from ..models.logprobs import response_logprobs, split_causal_lm

        kwargs = dict(response_mask=response_mask, position_ids=position_ids, temperature=temperature,
                      return_entropy=True)
        if self.critic is not None:
            out = response_logprobs(self.policy, input_ids, attention_mask, **kwargs)
            state_values = self.critic(input_ids, attention_mask, position_ids=position_ids)
        else:
            # Shared backbone: catch its last hidden states during the policy's own forward.
            parts = split_causal_lm(self.policy)
            if parts is None:
                raise ConfigError("value_model", "'shared' needs a policy whose backbone runs on its own; use 'separate'")
            captured = []
            handle = parts[0].register_forward_hook(lambda module, args, output: captured.append(output.last_hidden_state))
            try:
                out = response_logprobs(self.policy, input_ids, attention_mask, **kwargs)
            finally:
                handle.remove()
            hidden = captured[-1]
            state_values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        values = torch.zeros_like(state_values)
        values[:, 1:] = state_values[:, :-1]
        return out.logprobs, out.entropy, values


def build_critic(cfg: PPOConfig, policy: nn.Module) -> tuple[nn.Module | None, nn.Linear | None]:
    """(critic, None) for a separate value model, (None, head) for a shared one."""
    from ..models import load_model
    from ..models.heads import ScalarHeadModel, hidden_size, is_classifier_dir, is_scalar_head_dir

    if cfg.value_model == "shared":
        param = next(policy.parameters())
        head = nn.Linear(hidden_size(policy), 1, device=param.device, dtype=param.dtype)
        zero_value_head(head)
        return None, head
    path = cfg.value_model_path or cfg.model
    if cfg.value_model_path and is_scalar_head_dir(path):
        critic = ScalarHeadModel.from_pretrained(path, dtype=cfg.dtype)
        # A LoRA reward model loads as a PeftModel: fold its adapter in, so the new adapter below
        # is the only one (a second PEFT wrapper hides the backbone from the head's forward).
        critic.model = merge_adapter(critic.model)
    elif cfg.value_model_path and is_classifier_dir(path):  # a reward model (posttrain's, TRL's): its head is kept
        critic = ScalarHeadModel.from_classifier(path, dtype=cfg.dtype)
    else:
        # A LoRA run as the critic's start is merged first, so a new adapter can go on top.
        critic = ScalarHeadModel.from_causal_lm(merge_adapter(load_model(path, dtype=cfg.dtype, seed=cfg.seed)), seed=cfg.seed + 1)
        zero_value_head(critic.head)  # a fresh head; a trained reward model's head (above) is kept
    if cfg.peft != "none" and cfg.peft in ("lora", "dora"):
        target = cfg.lora_target_modules
        critic.model = apply_peft(critic.model, cfg.peft, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                  target_modules=target[0] if target == ["all-linear"] else target)
    critic.train()
    return critic, None


def zero_value_head(head: nn.Linear) -> None:
    """A fresh value head predicts exactly 0 for every state.

    A random head is a random critic: on SmolLM2 (last hidden states of norm ~48), weights of
    std 1/sqrt(H+1) give values of std ~1.4 against 0/1 rewards, so GAE's advantages are
    mostly the critic's TD noise, and whitening scales that noise to unit variance whatever
    its size (std 1/(H+1) gives the same whitened advantages). Measured on a batch of 16
    samples that all scored 0: a policy-gradient norm of 5.7 with the random head, 0 with
    this one (docs/ppo.md, "Why PPO collapsed"). With V = 0, the first advantages are the
    returns themselves, centred by whitening: REINFORCE with the batch mean as baseline,
    until the critic learns a better one.
    """
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


def check_ppo(cfg: PPOConfig) -> None:
    check_common(cfg, cfg.num_samples)
    for name in ("ppo_epochs", "num_minibatches"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, "must be at least 1")
    if cfg.value_warmup_steps < 0:
        raise ConfigError("value_warmup_steps", "must be >= 0")
    if cfg.kl_controller == "adaptive" and (cfg.kl_target <= 0 or cfg.kl_horizon <= 0):
        raise ConfigError("kl_target", "the adaptive controller needs kl_target > 0 and kl_horizon > 0")
    if cfg.kl_coef < 0:
        raise ConfigError("kl_coef", "must be >= 0")
    if cfg.ptx_coef > 0 and not cfg.ptx_data:
        raise ConfigError("ptx_data", "ptx_coef > 0 needs data: --ptx-data FILE (prompt/completion or text rows)")


# --------------------------------------------------------------------------- one step


def rollout_pass(run: OnlineRun, samples: list[Sample], pad_id: int, cfg: PPOConfig,
                 reference: Reference | None) -> None:
    """π_old, π_ref log-probs and V_old of every sample, stored as sample tokens. Without a
    reference (kl_coef 0: the penalty is 0 whatever it says) π_ref is taken as π_old (KL 0)."""
    temperature = logprob_temperature(cfg)
    for micro, batch in scoring_batches(run, samples, cfg.micro_batch_size, rollout_collate(run, cfg, pad_id)):
        with run.accelerator.autocast():
            logps, _, values = run.model(batch, temperature)
        store_tokens(micro, "old_logps", logps, batch["response_mask"])
        store_tokens(micro, "old_values", values, batch["response_mask"])
        ref_logps = reference.token_logprobs(batch, temperature) if reference is not None else logps
        store_tokens(micro, "ref_logps", ref_logps, batch["response_mask"])


def compute_advantages(run: OnlineRun, samples: list[Sample], pad_id: int, cfg: PPOConfig, kl_coef: float) -> dict[str, float]:
    """KL-penalised per-token rewards -> GAE advantages and returns (stored on the samples)."""
    batch = collate(samples, pad_id, ["old_logps", "ref_logps", "old_values"])
    mask = batch["response_mask"]
    kl = KL_ESTIMATORS[cfg.kl_estimator](batch["old_logps"], batch["ref_logps"], mask)
    scores = torch.tensor([s.score for s in samples], dtype=torch.float32)
    rewards = kl_penalized_rewards(scores, kl, mask, kl_coef)
    if cfg.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False, moments=_global_moments(run, rewards, mask))
    advantages, returns = gae(rewards, batch["old_values"], mask, gamma=cfg.gamma, lam=cfg.lam)
    scores_vary = _scores_vary(run, scores)
    if cfg.whiten_advantages and scores_vary:
        advantages = whiten(advantages, mask, moments=_global_moments(run, advantages, mask))
    store_tokens(samples, "advantages", advantages, mask)
    store_tokens(samples, "returns", returns, mask)
    sums = reduce_sums(run.accelerator, {
        "count": float(len(samples)), "kl": float(kl.sum()), "non_score": float((-kl_coef * kl).sum()),
        "tokens": float(mask.sum()), "values": float(batch["old_values"][mask].sum()),
        "returns": float(returns[mask].sum())})
    count, tokens = max(sums["count"], 1.0), max(sums["tokens"], 1.0)
    return {"kl": sums["kl"] / count, "non_score_reward": sums["non_score"] / count, "kl_coef": kl_coef,
            "values_mean": sums["values"] / tokens, "returns_mean": sums["returns"] / tokens,
            "explained_variance": _global_explained_variance(run, batch["old_values"], returns, mask),
            "advantages_whitened": float(cfg.whiten_advantages and scores_vary)}


def _scores_vary(run: OnlineRun, scores: torch.Tensor) -> bool:
    """Whether the batch's scores (all processes) differ at all.

    When every sample scored the same (common with 0/1 verifiers: nobody solved anything),
    the advantages hold no information about the task, only the critic's errors and the KL
    term; whitening them would blow that up to unit variance and take a full-size step in
    a direction the reward never asked for. Such batches keep their raw (small) advantages.
    """
    moments = _global_moments(run, scores.view(-1, 1), torch.ones(len(scores), 1, dtype=torch.bool))
    total, total_sq, count = moments.tolist()
    count = max(count, 1.0)
    return total_sq / count - (total / count) ** 2 > 1e-12 * max(1.0, (total / count) ** 2)


def _global_explained_variance(run: OnlineRun, values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """`explained_variance` over the tokens of all processes: 1 - Var[R - V] / Var[R] (population
    variances from all-reduced sums; nan when Var[R] = 0)."""
    if run.world == 1:
        return float(explained_variance(values, returns, mask))

    def variance(x: torch.Tensor) -> float:
        total, total_sq, count = _global_moments(run, x, mask).tolist()
        count = max(count, 1.0)
        return total_sq / count - (total / count) ** 2

    var_r = variance(returns)
    return 1.0 - variance(returns - values) / var_r if var_r > 0 else float("nan")


def _global_moments(run: OnlineRun, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    moments = masked_moments(values, mask)
    if run.world > 1:
        moments = run.accelerator.reduce(moments.to(run.device), reduction="sum").cpu()
    return moments


def ppo_token_losses(logps, entropy, values, batch, cfg: PPOConfig, policy_weight: float = 1.0):
    """PPO's loss per token of one micro-batch -> (loss_t, policy_t, value_t, clipped, value_clipped).

        loss_t = policy_weight * policy_t + vf_coef * value_t - entropy_coef * H_t

    All [B, T], 0 off the response mask. `policy_weight` is 0 during the value warm-up.
    """
    mask = batch["response_mask"]
    clip_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    policy_t, clipped = ppo_clip_losses(logps, batch["old_logps"], batch["advantages"], mask,
                                        clip_low=cfg.epsilon, clip_high=clip_high)
    value_t, value_clipped = clipped_value_losses(values, batch["old_values"], batch["returns"], mask,
                                                  clip=cfg.cliprange_value if cfg.cliprange_value > 0 else None)
    loss_t = policy_weight * policy_t + cfg.vf_coef * value_t
    if cfg.entropy_coef:
        loss_t = loss_t - cfg.entropy_coef * torch.where(mask, entropy, 0.0)
    return loss_t, policy_t, value_t, clipped, value_clipped


def ppo_update(run: OnlineRun, samples: list[Sample], pad_id: int, cfg: PPOConfig, step: int,
               ptx: list[Sample] | None = None) -> dict[str, float]:
    """ppo_epochs x num_minibatches optimizer steps (`loop.update_passes`); returns the loss metrics.

    With `ptx` rows and ptx_coef > 0 (InstructGPT's PPO-ptx), every optimizer step also
    backpropagates ptx_coef * (token-mean NLL of ptx_batch_size rows drawn for that step), so the
    step's gradient is  grad L_ppo + ptx_coef * grad NLL_ptx  (off during the value warm-up)."""
    temperature = logprob_temperature(cfg)
    policy_weight = 0.0 if step < cfg.value_warmup_steps else 1.0
    fields = ["old_logps", "old_values", "advantages", "returns"]
    constant = float(cfg.max_new_tokens)
    sums: dict[str, float] = {}

    def denominator(batch) -> float:
        return float(aggregate_parts(batch["response_mask"].float(), batch["response_mask"], cfg.loss_aggregation,
                                     constant)[1])

    def micro_objective(batch, scale: float, plan):
        mask = batch["response_mask"]
        logps, entropy, values = run.model(batch, temperature)
        loss_t, policy_t, value_t, clipped, value_clipped = ppo_token_losses(logps, entropy, values, batch, cfg,
                                                                             policy_weight)
        num, _ = aggregate_parts(loss_t, mask, cfg.loss_aggregation, constant)
        tokens = float(mask.sum())
        add_sum(sums, "tokens", tokens)
        add_sum(sums, "policy_loss", aggregate_parts(policy_t.detach(), mask, "token_mean")[0])
        add_sum(sums, "value_loss", aggregate_parts(value_t.detach(), mask, "token_mean")[0])
        add_sum(sums, "clipped", clipped.sum())
        add_sum(sums, "value_clipped", value_clipped.sum())
        add_sum(sums, "entropy", entropy.detach()[mask].sum())
        add_sum(sums, "approx_kl", approx_kl(logps.detach(), batch["old_logps"], mask) * tokens)
        add_sum(sums, "ratio", torch.exp(logps.detach() - batch["old_logps"])[mask].sum())
        return num * scale, float(num.detach()) * scale / run.world

    def before_step(plan):
        if not ptx or cfg.ptx_coef <= 0 or policy_weight == 0:
            return None
        rows = combined.expert_batch(ptx, cfg.ptx_batch_size, cfg.seed, step, plan.update)

        def forward(batch):  # the policy's log-probs at temperature 1; the values ride along at weight 0
            logps, _, values = run.model(batch, 1.0)
            return logps, values

        def ptx_backward() -> None:
            add_sum(sums, "ptx_nll_sum", combined.nll_backward(run, rows, pad_id, cfg.micro_batch_size,
                                                               cfg.ptx_coef * run.world, True, forward))
            add_sum(sums, "ptx_updates", 1.0)
        return ptx_backward

    losses, grad_norm = update_passes(run, samples, step, epochs=cfg.ppo_epochs, minibatches=cfg.num_minibatches,
                                      micro_batch_size=cfg.micro_batch_size, seed=cfg.seed,
                                      collate_micro=rollout_collate(run, cfg, pad_id, fields),
                                      denominator=denominator, micro_objective=micro_objective,
                                      shuffle=cfg.num_minibatches > 1, group_size=cfg.num_samples,
                                      before_step=before_step)
    sums = reduce_sums(run.accelerator, sums)
    ptx_nll, ptx_updates = sums.pop("ptx_nll_sum", None), sums.pop("ptx_updates", 0.0)
    tokens = max(sums.pop("tokens", 0.0), 1.0)
    names = {"clipped": "clip_fraction", "value_clipped": "value_clip_fraction", "ratio": "ratio_mean"}
    row = {names.get(k, k): v / tokens for k, v in sums.items()}
    row.update({"loss": sum(losses) / max(len(losses), 1), "grad_norm": grad_norm, "lr": run.scheduler.get_last_lr()[0]})
    if ptx_nll is not None:  # mean over processes and optimizer steps
        row["ptx_nll"] = ptx_nll / max(ptx_updates, 1.0)
    return row


# --------------------------------------------------------------------------- the recipe


def train_ppo(cfg: PPOConfig, reward_functions: Mapping[str, Callable] | None = None) -> RLResult:
    """Run PPO as configured; see the module docstring."""
    from ..train.setup import load_trainable_model, say

    inputs = prepare_online_inputs(cfg, check_ppo, reward_functions)
    cfg, scorer, tokenizer, pad_id = inputs.cfg, inputs.scorer, inputs.tokenizer, inputs.pad_id
    train_set, eval_set = inputs.train_set, inputs.eval_set
    ptx = combined.load_expert_samples(cfg.ptx_data, tokenizer, cfg, text_rows=True) if cfg.ptx_data else None
    say(f"ppo: {len(train_set.ids)} prompts, reward = {scorer.describe()}, value model = {cfg.value_model}, "
        f"kl = {cfg.kl_estimator} x {cfg.kl_coef} ({cfg.kl_controller})"
        + (f", ptx = {cfg.ptx_coef} x NLL on {len(ptx)} rows" if ptx and cfg.ptx_coef > 0 else ""))

    policy = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    # kl_coef 0 multiplies the KL by 0 (the adaptive controller keeps 0 at 0): no reference model,
    # no reference forward (the `kl` metric is then 0).
    reference = reference_for_policy(policy, lambda: run.unwrapped_policy()) if cfg.kl_coef > 0 else None
    critic, head = build_critic(cfg, policy)
    if cfg.disable_dropout:
        disable_dropout(policy)
        if critic is not None:
            disable_dropout(critic)
    module = ActorCritic(policy, critic, head)
    critic_params = [p for p in (critic or head).parameters() if p.requires_grad]
    group = {"params": critic_params, "lr": cfg.value_learning_rate or cfg.learning_rate}
    run = OnlineRun(cfg, module, cfg.max_steps * cfg.ppo_epochs * cfg.num_minibatches, "ppo",
                    extra_groups=[group], policy_attr="policy")
    if reference is not None:
        reference.to(run.device)
    if cfg.kl_controller == "adaptive":
        controller = KL_CONTROLLERS["adaptive"](cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    else:
        controller = KL_CONTROLLERS["fixed"](cfg.kl_coef)

    def step_fn(step: int):
        samples, scores, timing = sample_and_score(run, cfg, cfg.num_samples, tokenizer, train_set, scorer, step,
                                                   cfg.missing_eos_penalty)
        row = sample_metrics(run, samples, scores, timing["time/generate"])
        rollout_pass(run, samples, pad_id, cfg, reference)
        row.update(compute_advantages(run, samples, pad_id, cfg, controller.value))
        row["rlhf_reward"] = row["reward"] + row["non_score_reward"]
        trained = timer()
        row.update(ppo_update(run, samples, pad_id, cfg, step, ptx))
        row.update(timing)
        row["time/train"] = timer() - trained
        controller.update(row["kl"], int(global_sum(run.accelerator, len(samples))))
        tokens = int(global_sum(run.accelerator, sum(len(s.prompt_ids) + s.length for s in samples)))
        records = gather_rollouts(run.accelerator, rollout_records(samples, train_set.prompts, step + 1, scores.scores))
        return row, tokens, records

    evaluate = run_evaluator(run, cfg, tokenizer, eval_set, scorer)

    def restore(state: dict) -> None:  # the adaptive coefficient is training state too
        controller.value = float(state.get("kl_coef", controller.value))

    summary = run_online(run, cfg, step_fn, evaluate, lambda: {"kl_coef": controller.value}, tokenizer, restore)
    save_value_model(run, cfg)
    return RLResult(**summary)


def save_value_model(run: OnlineRun, cfg: PPOConfig) -> None:
    """The separate value model -> output_dir/value_model (a scalar-head directory, usable
    as `value_model_path` or as a reward model); a shared head -> output_dir/value_head.pt.
    Under FSDP/DeepSpeed from the weights `run.finish` gathered."""
    if not run.accelerator.is_main_process:
        return
    module = run.accelerator.unwrap_model(run.model)
    if module.critic is not None:
        module.critic.save_pretrained(Path(cfg.output_dir) / "value_model", state_dict=run.sub_state("critic"))
    else:
        head = run.sub_state("value_head") or module.value_head.state_dict()
        torch.save({k: v.detach().cpu() for k, v in head.items()}, Path(cfg.output_dir) / "value_head.pt")
    run.final_state = None  # release the gathered copy
