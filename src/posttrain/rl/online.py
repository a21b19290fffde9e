"""Pieces of one online step that GRPO/RLOO and PPO share.

- `build_scorer`: the reward functions of a config (or given callables).
- `sample_and_score`: this step's prompts -> n samples each -> rewards.
- `batch_logprobs`: `response_logprobs` on a collated batch at the sampling temperature.
- `sample_metrics`, `add_sum`: metrics as sums over processes, divided once.
- `evaluate_greedy`: mean reward of greedy answers on held-out prompts (accuracy for 0/1
  verifiers), before, during and after training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..jsonl import write_jsonl
from ..models import load_tokenizer
from ..models.logprobs import response_logprobs
from ..rollout.generation import SamplingParams, generate
from ..train.engine import reduce_sums
from ..train.setup import prepare_run_dir
from .loop import (
    OnlineRun,
    PromptSet,
    RLArgs,
    apply_task_defaults,
    gather_rollouts,
    load_prompt_set,
    prompt_seeds,
    sampling_params,
    step_prompt_indices,
    timer,
)
from .rewards import RewardScorerSet, RewardSpec, parse_reward_specs
from .rollouts import Sample, reward_rows, samples_from_generations

# Extra sampling rounds of a step shuffle the prompts with seed + round x this (any large odd number).
EXTRA_ROUND_SEED_STRIDE = 1_000_033


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


def sample_and_score(run: OnlineRun, cfg: RLArgs, n: int, tokenizer, prompt_set, scorer: RewardScorerSet,
                     step: int, missing_eos_penalty: float = 0.0, extra_round: int = 0,
                     skip: frozenset[int] = frozenset()) -> tuple[list[Sample], Any, dict[str, float]]:
    """Generate n responses for this step's prompts and score them. Returns the samples
    (prompt-major, `sample.score` set), the `BatchScores` (None when no prompt was left) and timings.

    `extra_round` > 0 draws the prompts of that extra sampling round of the step (dynamic
    sampling): another shuffled order, still a function of (seed, step, round) only, leaving
    out the prompt indices in `skip` (those already sampled at this step)."""

    seed = cfg.seed + extra_round * EXTRA_ROUND_SEED_STRIDE
    indices = step_prompt_indices(len(prompt_set.ids), cfg.prompts_per_step, run.world, run.rank, seed, step)
    indices = [i for i in indices if i not in skip]
    started = timer()
    with run.full_parameters():  # entered by every process (FSDP gathers), even one with no prompts left
        generations = generate(run.unwrapped_policy(), tokenizer, [prompt_set.ids[i] for i in indices],
                               sampling_params(cfg, n), batch_size=cfg.generation_batch_size, share_prompt=True,
                               prompt_seeds=prompt_seeds(seed, step, indices)) if indices else []
    samples = samples_from_generations(generations, indices)
    generated = timer()
    scores = scorer.score(reward_rows(samples, prompt_set.prompts)) if samples else None
    for sample, value in zip(samples, scores.total if scores is not None else []):
        penalty = missing_eos_penalty if sample.finish_reason == "length" else 0.0
        sample.score = float(value) - penalty
    return samples, scores, {"time/generate": generated - started, "time/reward": timer() - generated}


def global_max(accelerator, value: float) -> float:
    """The largest of a number over processes."""
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.gather(torch.tensor([float(value)], device=accelerator.device)).max())


def add_sum(sums: dict[str, float], key: str, value) -> None:
    sums[key] = sums.get(key, 0.0) + float(value)


def sample_metrics(run: OnlineRun, samples: list[Sample], scores, seconds_generating: float) -> dict[str, float]:
    """Reward, length and throughput of the step's samples, over all processes."""
    sums = {"count": float(len(samples)), "reward": sum(s.score for s in samples),
            "length": float(sum(s.length for s in samples)),
            "finished": float(sum(s.finish_reason != "length" for s in samples))}
    if len(scores.scores) > 1:
        for name, values in scores.scores.items():
            sums[f"reward/{name}"] = float(sum(values))
    if getattr(scores, "sandbox_violations", None) is not None:  # samples whose code tried to escape or forge
        sums["reward/sandbox_violations"] = float(scores.sandbox_violations)
    sums = reduce_sums(run.accelerator, sums)
    count = max(sums.pop("count"), 1.0)
    generated = sums.pop("length")
    row = {"reward": sums.pop("reward") / count, "response_length": generated / count,
           "finished_fraction": sums.pop("finished") / count}
    row.update({k: v / count for k, v in sums.items()})
    row["response_length_max"] = global_max(run.accelerator, max(s.length for s in samples))
    row["generated_tokens_per_s"] = generated / max(seconds_generating, 1e-9)
    return row


# --------------------------------------------------------------------------- evaluation


def evaluate_greedy(model, tokenizer, prompt_set: PromptSet, scorer: RewardScorerSet, max_new_tokens: int,
                    batch_size: int, stop: Sequence[str] = (), accelerator=None, output=None) -> dict[str, float]:
    """Greedy answers to `prompt_set` (sharded over processes) -> {"reward": mean total,
    "reward/NAME": mean per function, "response_length": mean tokens}. For 0/1 verifiers the
    mean reward is the accuracy. With `output` (a path), every answer is written there
    (prompt, response, reward and the prompt row's fields) for inspection."""

    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    mine = list(range(rank, len(prompt_set.ids), world))
    sums = {"count": 0.0, "reward": 0.0, "response_length": 0.0}
    rows: list[dict[str, Any]] = []
    if mine:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1, stop=list(stop))
        generations = generate(model, tokenizer, [prompt_set.ids[i] for i in mine], params, batch_size=batch_size)
        samples = samples_from_generations(generations, mine)
        scores = scorer.score(reward_rows(samples, prompt_set.prompts))
        sums["count"] = float(len(samples))
        sums["reward"] = float(sum(scores.total))
        sums["response_length"] = float(sum(s.length for s in samples))
        for name, values in scores.scores.items():
            if len(scores.scores) > 1:
                sums[f"reward/{name}"] = float(sum(values))
        if output is not None:
            rows = [(s.prompt_index, {**prompt_set.prompts[s.prompt_index].extra,
                                      "prompt": prompt_set.prompts[s.prompt_index].prompt, "response": s.text,
                                      "reward": float(v), "finish_reason": s.finish_reason})
                    for s, v in zip(samples, scores.total)]
    if output is not None:
        rows = gather_rollouts(accelerator, rows) if accelerator is not None else rows
        if accelerator is None or accelerator.is_main_process:
            # Prompt order, whatever the split over processes (each process holds every N-th).
            write_jsonl(output, [row for _, row in sorted(rows, key=lambda pair: pair[0])])
    if accelerator is not None:
        sums = reduce_sums(accelerator, sums)
    count = max(sums.pop("count"), 1.0)
    return {k: v / count for k, v in sums.items()}


def run_evaluator(run: OnlineRun, cfg: RLArgs, tokenizer, eval_set: PromptSet | None, scorer: RewardScorerSet):
    """`evaluate(step)` for `run_online`: greedy answers to the eval prompts with the current policy
    (whole weights, see `OnlineRun.full_parameters`), written to output_dir/eval/step-N.jsonl; None
    without eval prompts."""

    def evaluate(step: int) -> dict[str, float] | None:
        if eval_set is None:
            return None
        with run.full_parameters():
            return evaluate_greedy(run.unwrapped_policy(), tokenizer, eval_set, scorer,
                                   cfg.eval_max_new_tokens or cfg.max_new_tokens, cfg.generation_batch_size, cfg.stop,
                                   run.accelerator, output=Path(cfg.output_dir) / "eval" / f"step-{step:06d}.jsonl")
    return evaluate


# --------------------------------------------------------------------------- log-probs


def logprob_temperature(cfg: RLArgs) -> float:
    """Log-probs for the loss use the sampling temperature (greedy sampling: 1)."""
    return cfg.temperature if cfg.temperature > 0 else 1.0


def batch_logprobs(model, batch: dict[str, torch.Tensor], temperature: float, entropy: bool = False):
    """`response_logprobs` on a collated batch -> TokenLogprobs of [B, T] tensors."""
    return response_logprobs(model, batch["input_ids"], batch["attention_mask"], response_mask=batch["response_mask"],
                             temperature=temperature, return_entropy=entropy)


@dataclass
class OnlineInputs:
    """What every online recipe reads before it loads a model (checked first, so bad input leaves nothing behind)."""

    cfg: Any
    scorer: Any
    tokenizer: Any
    pad_id: int
    train_set: Any
    eval_set: Any


def prepare_online_inputs(cfg, check: Callable[[Any], None], reward_functions=None) -> OnlineInputs:
    """Task defaults, config checks, reward functions, tokenizer and prompt sets; then the run directory."""

    cfg = apply_task_defaults(cfg)
    check(cfg)
    scorer = build_scorer(cfg, reward_functions)
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_set = load_prompt_set(cfg.prompts, tokenizer, cfg, cfg.limit)
    eval_set = load_prompt_set(cfg.eval_prompts, tokenizer, cfg, cfg.eval_limit) if cfg.eval_prompts else None
    prepare_run_dir(cfg)  # after the input checks: bad input leaves nothing behind
    return OnlineInputs(cfg, scorer, tokenizer, pad_id, train_set, eval_set)
