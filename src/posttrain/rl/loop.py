"""What the online RL recipes (GRPO/RLOO, PPO) share: the online loop on the one training core.

An online step is: pick this step's prompts -> sample responses with the current policy
-> score them -> turn them into training batches -> one or more optimizer steps. The
recipe files own the middle (advantages and losses); the training core
(`train/engine.py` `TrainingCore`) owns set-up, resume, the global-batch normalisation,
health-checked optimizer steps, checkpoints, SIGINT, metrics and progress, as it does for
the offline recipes; this module owns the online loop around it:

- `RLArgs`: the options every online recipe has (prompts, rewards, sampling, optimisation);
  defined in `configs.py` (a module without torch, for a fast `--help`), re-exported here.
- `step_prompt_indices`: this step's prompts, a function of (seed, step) only, so a resumed
  run samples exactly what an uninterrupted one would have.
- `OnlineRun`: the core for an online run (the policy inside a bigger module, rollouts.jsonl,
  the policy saved in checkpoints and final/, zero gradients as ordinary events).
- `run_online`: the loop itself (evaluate, steps, checkpoints, SIGINT, final save).
- `update_passes`: the epochs x minibatches x micro-batches skeleton of one rollout step's
  updates; a recipe gives only its collate, its loss denominator and its loss.

Several processes (`--distributed ddp|fsdp`, docs/distributed.md): process r answers its own
slice of each step's prompts (`step_prompt_indices`; all n samples of a prompt stay on one
process, so group baselines need no communication), each sample is drawn from its own
seeded stream (`prompt_seeds`), losses are divided by the global token/sequence count, and
metrics are sums over processes divided once, so 2 processes answering 4 prompts each take
the same update as 1 process answering the 8.

A "step" of an online run is one rollout batch (its metrics row); it may contain several
optimizer steps (GRPO's mu x minibatches, PPO's epochs x minibatches).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import gather_object

from ..data.options import read_kwargs
from ..data.prompts import load_prompts
from ..distributed.plugins import launcher_mode
from ..distributed.training import full_parameters, full_state_dict
from ..errors import ConfigError, PosttrainError
from ..jsonl import append_jsonl
from ..models.saving import save_model_files
from ..rollout.generation import SamplingParams
from ..rollout.rewards import TASKS, task_file
from ..train.engine import TrainingCore, epoch_order
from ..train.setup import say
from .configs import RLArgs, merge_repeated_flags  # noqa: F401  (merge_repeated_flags re-exported)
from .rollouts import check_rollout_layout, chunks, render_prompt_ids, split_even

# --------------------------------------------------------------------------- set-up


def apply_task_defaults(cfg: RLArgs) -> RLArgs:
    """`--task NAME`: the shipped train/test files and the task's verifier, unless given.
    `--eval-prompts none` turns evaluation off (with or without a task)."""

    no_eval = cfg.eval_prompts.strip().lower() == "none"
    if cfg.task:
        try:
            train, test = task_file(cfg.task, "train"), task_file(cfg.task, "test")
        except PosttrainError as exc:
            raise ConfigError("task", str(exc)) from None
        cfg.prompts = cfg.prompts or str(train)
        cfg.eval_prompts = cfg.eval_prompts or str(test)
        if not cfg.reward and not cfg.reward_weights:
            cfg.reward = [TASKS[cfg.task]]
    if no_eval:
        cfg.eval_prompts = ""
    return cfg


def check_common(cfg: RLArgs, n: int) -> None:
    """Checks with one-line messages naming the field."""
    if not cfg.prompts:
        raise ConfigError("prompts", "give a prompts file (--prompts FILE) or a shipped --task")
    positive = {"num_samples": n, "prompts_per_step": cfg.prompts_per_step, "max_new_tokens": cfg.max_new_tokens,
                "micro_batch_size": cfg.micro_batch_size, "generation_batch_size": cfg.generation_batch_size,
                "max_steps": cfg.max_steps}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(name, f"must be at least 1, got {value}")
    if cfg.temperature < 0:
        raise ConfigError("temperature", "must be >= 0")
    if cfg.max_length <= cfg.max_new_tokens:
        raise ConfigError("max_length", f"must be larger than max_new_tokens ({cfg.max_new_tokens}); "
                                        "prompts get max_length - max_new_tokens tokens")
    check_rollout_layout(cfg)
    check_distributed(cfg)


@dataclass
class PromptSet:
    prompts: list[Any]  # records.Prompt
    ids: list[list[int]]  # rendered generation-prompt token ids, same order


def load_prompt_set(path: str, tokenizer, cfg: RLArgs, limit: int = 0) -> PromptSet:
    # --split picks the training prompts' split; eval prompts name their own as PATH:SPLIT.
    prompts = load_prompts(path, limit=limit or None, **read_kwargs(cfg, split=path == cfg.prompts))
    ids, kept = render_prompt_ids(prompts, tokenizer, cfg.template, cfg.max_length - cfg.max_new_tokens,
                                  cfg.length_policy)
    if not kept:
        raise ConfigError("prompts", f"{path}: every prompt is longer than max_length - max_new_tokens")
    return PromptSet([prompts[i] for i in kept], ids)


def check_distributed(cfg: RLArgs) -> None:
    """The `--distributed` modes online RL supports: generation needs whole weights on every process,
    which posttrain gathers for FSDP (`full_parameters`) but not yet for DeepSpeed ZeRO-3."""
    mode = cfg.distributed if cfg.distributed != "auto" else (launcher_mode() or "ddp")
    if mode == "zero3":
        raise ConfigError("distributed", "online RL does not support zero3 yet (generation would need "
                                         "the ZeRO-3 weights gathered); use fsdp")


def disable_dropout(model: torch.nn.Module) -> None:
    """p = 0 for every dropout layer (LoRA's included) and attention dropout.

    Dropout makes the training forward a different policy from the one that sampled
    (ratio != 1 at the first update, a biased KL); RL recipes turn it off by default.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
        config = getattr(module, "config", None)
        if config is not None and isinstance(getattr(config, "attention_dropout", None), float):
            config.attention_dropout = 0.0


def step_prompt_indices(num_prompts: int, per_process: int, world: int, rank: int, seed: int, step: int) -> list[int]:
    """The prompts process `rank` answers at (0-based) `step`: consecutive slices of a
    shuffled order per epoch (`engine.epoch_order`), a function of (seed, step) only."""
    per_step = per_process * world
    if per_step > num_prompts:
        raise ConfigError("prompts_per_step", f"{per_process} prompts x {world} processes = {per_step} per step, "
                                              f"but there are only {num_prompts} prompts")
    steps_per_epoch = num_prompts // per_step
    epoch, position = divmod(step, steps_per_epoch)
    order = epoch_order(num_prompts, seed, epoch)
    start = position * per_step + rank * per_process
    return order[start:start + per_process]


def sampling_params(cfg: RLArgs, n: int):
    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, n=n, stop=list(cfg.stop), seed=cfg.seed)


def prompt_seeds(seed: int, step: int, indices: Sequence[int]) -> list[int]:
    """The sampling seed of each prompt at `step`: a function of (run seed, step, prompt) only,
    never of the process or the batch, so any split of the prompts samples the same responses."""
    return [(seed * 1_000_003 + step * 104_729 + index * 7_919) % (2 ** 31) for index in indices]


# --------------------------------------------------------------------------- the run


def part_of(state: dict[str, torch.Tensor] | None, attr: str | None) -> dict[str, torch.Tensor] | None:
    """The entries of a gathered state dict under `attr` (`policy.` keys -> the policy's own names);
    None stays None (unsharded: the live weights are whole)."""
    if state is None or attr is None:
        return state
    prefix = attr + "."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class OnlineRun(TrainingCore):
    """The training core (`train/engine.py`) for an online loop: one "step" is one rollout batch
    (one metrics row and rollouts.jsonl rows), holding one or more optimizer steps.

    `module` is what trains (the policy, or policy + value model in one container whose policy is
    `policy_attr`); `extra_groups` optionally gives `{"params": [...], "lr": ...}` groups added to
    the policy's optimizer (PPO's value model with its own learning rate). A zero gradient is
    ordinary here (a batch whose advantages are all 0): the weights are checked, nothing is printed.
    Checkpoints and final/ hold the policy (HF format, or the adapter) and the tokenizer.
    """

    def __init__(self, cfg: RLArgs, module: torch.nn.Module, optimizer_steps: int, name: str,
                 extra_groups: Sequence[dict[str, Any]] = (), policy_attr: str | None = None):
        self.cfg, self.policy_attr = cfg, policy_attr
        self.tokenizer = None  # set by `run_online`; checkpoints and final/ save it beside the policy
        self.final_state: dict[str, torch.Tensor] | None = None  # gathered weights (main process), set by finish()
        super().__init__(cfg, module, optimizer_steps, name=name, project_name=f"posttrain-{name}",
                         optimized=getattr(module, "policy", module) if extra_groups else module,
                         extra_groups=extra_groups, checkpointed=self._policy_of(module),
                         save_model=self.save_policy, zero_grad_expected=True)
        self.rollouts_path = Path(cfg.output_dir) / "rollouts.jsonl"

    def _policy_of(self, module):
        return getattr(module, self.policy_attr) if self.policy_attr else module

    def unwrapped_policy(self):
        return self._policy_of(self.accelerator.unwrap_model(self.model))

    def sub_state(self, attr: str | None) -> dict[str, torch.Tensor] | None:
        """The part of the weights `finish` gathered (`final_state`) under `attr`."""
        return part_of(self.final_state, attr)

    def full_parameters(self):
        """Context for generation: under FSDP every parameter is gathered once on entry and kept
        whole until exit, so processes may run different numbers of forward passes (sampling
        lengths and the evaluation split differ); elsewhere it does nothing."""
        return full_parameters(self.model)

    def write_policy(self, directory: Path, state: dict[str, torch.Tensor] | None) -> None:
        """The policy (from the gathered `state` when sharded) and the tokenizer -> `directory` (main process)."""
        if self.is_main:
            save_model_files(self.unwrapped_policy(), directory, state_dict=part_of(state, self.policy_attr))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(directory)

    def save_policy(self, model, directory: Path) -> None:
        """The core's `save_model` for checkpoints: every process gathers, the main one writes."""
        self.write_policy(directory, full_state_dict(self.accelerator, self.model))

    def end_step(self, step: int, row: dict[str, Any], tokens: int, state: dict[str, Any],
                 rollouts: list[dict[str, Any]] | None = None) -> None:
        """Log the step's row (and rollouts), advance progress, checkpoint when due. `step` is 1-based.
        The progress bar shows the reward, the sampling throughput and the update's seconds."""
        shown = {"reward": row.get("reward", float("nan"))}
        if "generated_tokens_per_s" in row:
            shown["sampled tok/s"] = row["generated_tokens_per_s"]
        if "time/train" in row:
            shown["update s"] = row["time/train"]
        row["tokens_per_s"] = self.progress.update(tokens, **shown)
        self.log_step(step, self.cfg.max_steps, {"step": step, **row})
        if rollouts and self.cfg.save_rollouts and self.is_main:
            for r in rollouts:
                append_jsonl(self.rollouts_path, r)
        self.save_if_due(step, self.cfg.max_steps, lambda: state)

    def finish(self, tokenizer) -> Path:
        """Save the policy (HF format, or the adapter) to output_dir/final atomically.

        Under FSDP/DeepSpeed the whole module's weights are gathered first (every process
        takes part; the main process keeps them in `self.final_state` for recipes that save
        more, e.g. PPO's value model) and the policy's part is written."""
        self.tokenizer = tokenizer
        self.close_progress()
        self.final_state = full_state_dict(self.accelerator, self.model)
        final = self.save_final(lambda model, directory: self.write_policy(directory, self.final_state))
        self.end()
        return final


def run_online(run: OnlineRun, cfg: RLArgs, step_fn, evaluate, state_fn, tokenizer, restore_fn=None) -> dict[str, Any]:
    """The online loop: evaluate, then `step_fn(step) -> (row, tokens, rollout rows)` until
    `max_steps`, with periodic evaluation, checkpoints, SIGINT and a final save (all on the core).

    `evaluate(step)` -> metrics (or None when there is no eval set); `state_fn()` -> the recipe
    state saved in checkpoints (e.g. PPO's KL coefficient), given back to `restore_fn(state)`
    on resume. Returns a summary dict.
    """
    run.tokenizer = tokenizer
    step, state = run.start(cfg.max_steps, step_logs=[run.rollouts_path])
    if state and restore_fn is not None:
        restore_fn(state)
    started = timer()
    eval_before = state.get("eval_before") or {}
    if step == 0 and (result := evaluate(0)) is not None:
        eval_before = result
        run.log.log({"step": 0, **{f"eval/{k}": v for k, v in eval_before.items()}})
        say(f"before training: eval reward {eval_before['reward']:.4f}")

    def full_state() -> dict[str, Any]:
        return {**state_fn(), "eval_before": eval_before}

    row: dict[str, Any] = {}
    with run.catching_sigint():
        while step < cfg.max_steps:
            step_started = timer()
            row, tokens, records = step_fn(step)
            row["time/step"] = timer() - step_started
            step += 1
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                if (result := evaluate(step)) is not None:
                    row.update({f"eval/{k}": v for k, v in result.items()})
            run.end_step(step, row, tokens, full_state(), records)
            run.stop_if_interrupted(step, cfg.max_steps, full_state)
    run.check_final_weights(step)
    eval_after = evaluate(step) or {}
    if eval_after:
        run.log.log({"step": step, **{f"eval/{k}": v for k, v in eval_after.items()}})
    final = run.finish(tokenizer)
    seconds = timer() - started
    summary = f"done: {step} steps in {seconds:.0f}s, last reward {row.get('reward', float('nan')):.4f}"
    if eval_after:
        summary += f"; eval reward {eval_before.get('reward', float('nan')):.4f} -> {eval_after['reward']:.4f}"
    say(summary + f"; model in {final}")
    return {"steps": step, "final_dir": final, "last_metrics": row, "eval_before": eval_before,
            "eval_after": eval_after, "seconds": seconds}


# --------------------------------------------------------------------------- the update skeleton


@dataclass
class MinibatchPlan:
    """What one optimizer step of `update_passes` trains on (given to the recipe's hooks)."""

    epoch: int  # 0-based pass over the rollout batch
    update: int  # 0-based optimizer step within this rollout step
    samples: list[Any]  # this process's samples of the minibatch


def update_passes(run: OnlineRun, samples: Sequence[Any], step: int, *, epochs: int, minibatches: int,
                  micro_batch_size: int, seed: int, collate_micro, denominator, micro_objective,
                  shuffle: bool = True, group_size: int = 1, before_step=None) -> tuple[list[float], float]:
    """`epochs` passes x `minibatches` optimizer steps over a rollout batch: the skeleton PPO and
    GRPO/RLOO share, on the core's global-batch normalisation, micro-batch context and
    optimizer step. Returns (each optimizer step's loss, the last gradient norm).

    The recipe supplies only its own parts:
      collate_micro(list of samples) -> batch dict (CPU tensors; moved to the device here)
      denominator(batch) -> this micro-batch's share of the loss denominator (token count,
          sequence count, ...); summed over micro-batches *and processes* before any backward,
          so the update does not depend on how the batch is split (split-invariant means)
      micro_objective(batch, scale, plan) -> (objective tensor to backpropagate, loss for the log);
          `scale` = `run.scale(global denominator)` turns a loss numerator into its share of the
          global mean
      before_step(plan) -> None, or a callable run after the micro-batches (an extra backward
          that ends the step, e.g. the behaviour-cloning term)

    The order is shuffled per pass from (seed, step) only, so a resumed run replays it. It is
    shuffled in units of `group_size` consecutive samples (a prompt's samples), so that a
    minibatch keeps a prompt's samples together and the shared-prompt layout can compute the
    prompt once for them. With one minibatch a shuffle changes nothing but float rounding (the
    update does not depend on how the batch is split), so recipes turn it off then.
    """
    rng = random.Random(seed * 7_919 + step)
    losses: list[float] = []
    grad_norm = 0.0
    run.model.train()
    for epoch in range(epochs):
        units = chunks(samples, group_size)
        if shuffle:
            rng.shuffle(units)
        order = [sample for unit in units for sample in unit]
        for minibatch in split_even(order, minibatches):
            plan = MinibatchPlan(epoch, len(losses), minibatch)
            finish = before_step(plan) if before_step is not None else None
            collated = [collate_micro(micro) for micro in chunks(minibatch, micro_batch_size)]
            scale = run.scale(max(run.global_sum(sum(float(denominator(b)) for b in collated)), 1e-12))
            logged = run.backward_micro_batches(collated, lambda batch: micro_objective(batch, scale, plan),
                                                last_syncs=finish is None)
            total = sum(float(value) for value in logged)
            if finish is not None:
                finish()
            losses.append(run.global_sum(total))
            grad_norm = run.optimizer_step(step, losses[-1])
    return losses, grad_norm


def gather_rollouts(accelerator, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's rollout rows on the main process (others get [])."""
    if accelerator.num_processes == 1:
        return rows
    gathered = gather_object([rows])
    return [r for part in gathered for r in part] if accelerator.is_main_process else []


def timer() -> float:
    return time.perf_counter()
