"""Rejection sampling: `posttrain best-of-n`.

For every prompt, sample n responses, score them with the reward functions, and keep

    best       the highest-scoring response (if `threshold` is set, only when it reaches it)
    threshold  every response scoring >= `threshold`
    condition  every response for which `condition(prompt, response, score=..., **extra)` is true

Each round writes, under `output_dir/round-K/`:

    samples.jsonl  every sample: prompt, response, reward (and per-function rewards), selected
    sft.jsonl      the kept responses as chat conversations ({"messages": [...]}), for `posttrain sft`
    pairs.jsonl    best vs worst response per prompt ({"prompt", "chosen", "rejected", "margin"}),
                   where the best scores strictly higher (by more than `pair_min_margin`)
    summary.json   counts and mean rewards (mean of all samples, mean of the best of n)

`--iterations K` alternates sampling and training, as in Llama 2's rejection-sampling
rounds: round k samples from the model that round k-1 trained, then trains it on its own
selected responses with the SFT recipe (`--train sft`), or on its best-vs-worst pairs with
the DPO recipe (`--train dpo`: iterative, on-policy DPO). With eval prompts each round also
reports the greedy mean reward (accuracy, for 0/1 verifiers) of the model it starts from,
and the run ends with the final model's.

Several processes (`torchrun` / `posttrain launch`, `--distributed ddp|fsdp|...`): process r
samples and scores every N-th prompt (r, r+N, ...), each sample drawn from its own seeded
stream (run seed, round, prompt, sample index), so the samples do not depend on the split;
the scored samples are gathered into prompt order on every process, process 0 writes the
round's files, and the round's SFT/DPO training runs with the same `--distributed` setting,
its global batch `train_batch_size` split over the processes. Evaluation splits its prompts
the same way. The files and the final model equal those of one process
(tests/test_rl_best_of_n_distributed.py).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..distributed.plugins import plan_distributed
from ..errors import ConfigError
from ..jsonl import read_jsonl, write_json, write_jsonl
from ..records import prompt_text
from ..rollout.progress import progress_logger
from ..rollout.rewards import call_reward, load_reward_function
from ..train.args import ModelArgs
from .configs import BestOfNConfig
from .rollouts import conversation

# --------------------------------------------------------------------------- selection


def select_best(scores: Sequence[float], threshold: float | None = None) -> list[int]:
    """Index of the highest score (the first one on ties), or [] when it is below `threshold`."""
    if not scores:
        return []
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return [best] if threshold is None or scores[best] >= threshold else []


def select_threshold(scores: Sequence[float], threshold: float) -> list[int]:
    return [i for i, s in enumerate(scores) if s >= threshold]


def make_condition(spec: str) -> Callable[[str, str, float, Mapping[str, Any]], bool]:
    fn = load_reward_function(spec)

    def check(prompt: str, response: str, score: float, extra: Mapping[str, Any]) -> bool:
        return call_reward(fn, prompt, response, {**extra, "score": score}, spec) > 0

    return check


@dataclass
class RoundData:
    samples: list[dict[str, Any]]  # every sample, with reward and `selected`
    sft: list[dict[str, Any]]  # {"messages": [...], "reward": ..., **extra}
    pairs: list[dict[str, Any]]  # {"prompt", "chosen", "rejected", "margin", ...}
    summary: dict[str, Any]


def build_round_data(prompts: Sequence[Any], texts: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                     components: Sequence[Sequence[dict[str, float]]], cfg: BestOfNConfig,
                     finish: Sequence[Sequence[str]] | None = None) -> RoundData:
    """Selection, SFT rows and pairs from `texts[p][i]` / `scores[p][i]` (prompt p, sample i)."""
    condition = make_condition(cfg.condition) if cfg.select == "condition" else None
    samples, sft, pairs = [], [], []
    covered = 0
    for p, prompt in enumerate(prompts):
        candidates = list(range(len(texts[p])))
        if cfg.dedup:  # the first copy of each distinct response
            seen: dict[str, int] = {}
            candidates = [seen.setdefault(texts[p][i], i) for i in candidates if texts[p][i] not in seen]
        # A response cut at max_new_tokens is not a finished answer: never kept or chosen
        # (unless keep_truncated), though it can be the rejected side of a pair.
        complete = [i for i in candidates
                    if cfg.keep_truncated or finish is None or finish[p][i] != "length"]
        values = [scores[p][i] for i in complete]
        if cfg.select == "best":
            picked = [complete[i] for i in select_best(values, cfg.threshold)]
        elif cfg.select == "threshold":
            picked = [complete[i] for i in select_threshold(values, cfg.threshold)]
        else:
            text = prompt_text(prompt.prompt)
            picked = [i for i in complete if condition(text, texts[p][i], scores[p][i], prompt.extra)]
        for i, response in enumerate(texts[p]):
            row = {**prompt.extra, "prompt": prompt.prompt, "response": response, "reward": scores[p][i],
                   "sample": i, "selected": i in picked}
            if components and len(components[p][i]) > 1:
                row["rewards"] = components[p][i]
            if finish is not None:
                row["finish_reason"] = finish[p][i]
            samples.append(row)
        covered += bool(picked)
        for i in picked:
            sft.append({**prompt.extra, "messages": conversation(prompt.prompt, texts[p][i]), "reward": scores[p][i]})
        if complete:
            best = complete[select_best(values)[0]]
            worst = min(candidates, key=lambda i: (scores[p][i], i))
            if scores[p][best] - scores[p][worst] > cfg.pair_min_margin:
                pairs.append({**prompt.extra, "prompt": prompt.prompt, "chosen": texts[p][best],
                              "rejected": texts[p][worst], "margin": scores[p][best] - scores[p][worst],
                              "chosen_reward": scores[p][best], "rejected_reward": scores[p][worst]})
    flat = [s for row in scores for s in row]
    summary = {"prompts": len(prompts), "samples": len(flat), "kept": len(sft), "pairs": len(pairs),
               "mean_reward": sum(flat) / max(len(flat), 1),
               "best_of_n_reward": sum(max(row) for row in scores if row) / max(len(prompts), 1),
               "prompts_with_a_kept_sample": covered}
    return RoundData(samples, sft, pairs, summary)


# --------------------------------------------------------------------------- sampling and training


def sample_round(model_name: str, prompt_set, scorer, cfg: BestOfNConfig, round_index: int,
                 processes=None) -> RoundData:
    """Sample, score and select one round. Under several processes (`processes`, a
    `distributed.processes.Processes`) each one samples and scores its share of the prompts;
    the results are gathered into prompt order, so every process returns the whole round,
    equal to what one process sampling every prompt returns."""
    from ..distributed.processes import Processes
    from ..models import load_model, load_tokenizer
    from ..rollout.generation import SamplingParams, generate
    from .loop import prompt_seeds, timer
    from .rollouts import reward_rows, samples_from_generations

    processes = processes or Processes()
    mine = processes.my_share(len(prompt_set.ids))
    n = cfg.num_samples
    per_prompt: list[tuple[int, dict[str, Any]]] = []  # (prompt index, its n samples' texts, scores, ...)
    started = timer()
    if mine:
        tokenizer = load_tokenizer(model_name, padding_side="left")
        model = load_model(model_name, dtype=cfg.dtype, device=processes.device, seed=cfg.seed)
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                top_k=cfg.top_k, n=n, stop=list(cfg.stop), seed=cfg.seed * 1_000_003 + round_index)
        on_batch = progress_logger(f"round {round_index}", len(mine), _log_err) if cfg.progress else None
        # One random stream per (seed, round, prompt, sample): the samples do not depend on which
        # process, batch or padding a prompt lands in.
        generations = generate(model, tokenizer, [prompt_set.ids[i] for i in mine], params,
                               batch_size=cfg.generation_batch_size, share_prompt=True,
                               prompt_seeds=prompt_seeds(cfg.seed, round_index, mine), on_batch=on_batch)
        del model
        samples = samples_from_generations(generations, mine)
        result = scorer.score(reward_rows(samples, prompt_set.prompts))
        totals = [float(v) for v in result.total]
        names = list(result.scores)
        for j, index in enumerate(mine):
            part = range(j * n, (j + 1) * n)
            per_prompt.append((index, {
                "texts": [samples[i].text for i in part], "finish": [samples[i].finish_reason for i in part],
                "scores": [totals[i] for i in part],
                "components": [{k: float(result.scores[k][i]) for k in names} for i in part],
                "tokens": sum(samples[i].length for i in part)}))
    seconds = timer() - started
    rows = processes.gather_in_order(per_prompt)  # every prompt, in prompt order, on every process
    seconds = max(processes.all_gather(seconds))  # the round took as long as its slowest process
    data = build_round_data(prompt_set.prompts, [r["texts"] for r in rows], [r["scores"] for r in rows],
                            [r["components"] for r in rows], cfg, [r["finish"] for r in rows])
    tokens = sum(r["tokens"] for r in rows)
    data.summary.update({"generation_seconds": seconds, "generated_tokens": tokens,
                         "generated_tokens_per_s": tokens / max(seconds, 1e-9)})
    return data


def train_batch_per_process(cfg: BestOfNConfig, rows: int, world: int) -> int:
    """Examples per process per optimizer step: `train_batch_size` is the global batch (lowered to
    the number of rows when fewer), split evenly over the processes, so N processes take the
    steps one process takes (exactly so when N divides it). 0: fewer rows than processes."""
    return min(cfg.train_batch_size, rows) // world


def train_round(kind: str, model_name: str, data_path: Path, batch_size: int, out_dir: Path,
                cfg: BestOfNConfig) -> str:
    """Train `model_name` on `data_path` with the SFT or DPO recipe (`batch_size` examples per
    process per step, `--distributed` as given); returns the new model directory.
    Under a launcher every process calls this: the recipe builds its own Accelerator."""
    from ..train.setup import say

    common = {f: getattr(cfg, f) for f in ModelArgs.__dataclass_fields__}
    common.update(model=model_name, output_dir=str(out_dir), seed=cfg.seed, learning_rate=cfg.train_learning_rate,
                  epochs=cfg.train_epochs, batch_size=batch_size, max_steps=cfg.train_max_steps, progress=cfg.progress,
                  distributed=cfg.distributed, cpu_offload=cfg.cpu_offload)
    if kind == "sft":
        from ..train.sft import SFTConfig, train_sft

        result = train_sft(SFTConfig(**common, data=[str(data_path)]))
    else:
        from ..train.dpo import DPOConfig, train_dpo

        result = train_dpo(DPOConfig(**common, data=[str(data_path)], beta=cfg.dpo_beta))
    say(f"round model: {result.final_dir}")
    return str(result.final_dir)


def run_best_of_n(cfg: BestOfNConfig, reward_functions: Mapping[str, Callable] | None = None) -> dict[str, Any]:
    """All rounds; returns the run summary (also written to output_dir/summary.json)."""
    from ..distributed.processes import Processes
    from ..models import load_tokenizer
    from ..train.setup import prepare_run_dir, say
    from .loop import PromptSet, apply_task_defaults, load_prompt_set
    from .online import build_scorer, evaluate_greedy

    cfg = apply_task_defaults(cfg)
    check_best_of_n(cfg)
    train_kind = ("sft" if cfg.iterations > 1 else "none") if cfg.train == "auto" else cfg.train
    if train_kind != "none":
        plan_distributed(cfg)  # a --distributed / --cpu-offload the recipes would refuse: refused now, before sampling
    processes = Processes()  # joins the launcher's process group (one process: no-op)
    world = processes.num_processes
    scorer = build_scorer(cfg, reward_functions)
    out = Path(cfg.output_dir)
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    prompt_set: PromptSet = load_prompt_set(cfg.prompts, tokenizer, cfg, cfg.limit)
    eval_set = load_prompt_set(cfg.eval_prompts, tokenizer, cfg, cfg.eval_limit) if cfg.eval_prompts else None
    prepare_run_dir(cfg)  # after the input checks: bad input leaves nothing behind
    say(f"best-of-n: {len(prompt_set.ids)} prompts x {cfg.num_samples} samples, reward = {scorer.describe()}, "
        f"select = {cfg.select}, {cfg.iterations} round(s), train = {train_kind}"
        + (f", {world} processes" if world > 1 else ""))

    def write(writer, path: Path, rows) -> None:  # process 0 writes; the others wait where they must
        if processes.is_main_process:
            writer(path, rows)

    def evaluate(model_name: str, output: Path) -> dict[str, float] | None:
        if eval_set is None:
            return None
        from ..models import load_model

        # Every process answers every N-th eval prompt (uneven shares are fine: no collective
        # inside generation); sums are reduced and answers written in prompt order by process 0.
        model = load_model(model_name, dtype=cfg.dtype, device=processes.device, seed=cfg.seed)
        return evaluate_greedy(model, load_tokenizer(model_name, padding_side="left"), eval_set, scorer,
                               cfg.eval_max_new_tokens or cfg.max_new_tokens, cfg.generation_batch_size, cfg.stop,
                               accelerator=processes, output=output)

    model_name, rounds = cfg.model, []
    all_sft, all_pairs = [], []
    for k in range(1, cfg.iterations + 1):
        round_dir = out / f"round-{k}"
        summary_path = round_dir / "summary.json"
        if cfg.resume and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            say(f"round {k}: reusing {round_dir}")
            all_sft += _read(round_dir / "sft.jsonl")
            all_pairs += _read(round_dir / "pairs.jsonl")
            model_name = summary.get("model_after", model_name)
            rounds.append(summary)
            continue
        summary: dict[str, Any] = {"round": k, "model_before": model_name}
        if (before := evaluate(model_name, round_dir / "eval_before.jsonl")) is not None:
            summary["eval_before"] = before
            say(f"round {k}: eval reward of {model_name}: {before['reward']:.4f}")
        data = sample_round(model_name, prompt_set, scorer, cfg, k, processes)
        summary.update(data.summary)
        write(write_jsonl, round_dir / "samples.jsonl", data.samples)
        write(write_jsonl, round_dir / "sft.jsonl", data.sft)
        write(write_jsonl, round_dir / "pairs.jsonl", data.pairs)
        all_sft += data.sft
        all_pairs += data.pairs
        say(f"round {k}: mean reward {data.summary['mean_reward']:.4f}, best-of-{cfg.num_samples} {data.summary['best_of_n_reward']:.4f}; "
            f"kept {len(data.sft)} samples, {len(data.pairs)} pairs -> {round_dir}")
        if train_kind != "none":
            if cfg.accumulate:  # every round's data so far, in one file
                rows = all_sft if train_kind == "sft" else all_pairs
                data_path = round_dir / f"train_{train_kind}.jsonl"
                write(write_jsonl, data_path, rows)
            else:
                rows = data.sft if train_kind == "sft" else data.pairs
                data_path = round_dir / ("sft.jsonl" if train_kind == "sft" else "pairs.jsonl")
            processes.wait_for_everyone()  # the data file is complete before any process reads it
            batch_size = train_batch_per_process(cfg, len(rows), world)
            if batch_size:
                model_name = train_round(train_kind, model_name, data_path, batch_size, round_dir / train_kind, cfg)
            elif rows:
                say(f"round {k}: {len(rows)} rows for {world} processes, fewer than one per process; "
                    f"not trained, the model stays {model_name}")
            else:
                say(f"round {k}: nothing to train on; the model stays {model_name}")
        summary["model_after"] = model_name
        write(write_json, summary_path, summary)
        processes.wait_for_everyone()  # every process sees the finished round (and agrees on --resume)
        rounds.append(summary)
    final_eval = evaluate(model_name, out / "eval_final.jsonl") if train_kind != "none" else None
    result = {"rounds": rounds, "final_model": model_name}
    if final_eval is not None:
        result["eval_final"] = final_eval
        first = rounds[0].get("eval_before", {}).get("reward", float("nan"))
        say(f"eval reward: {first:.4f} before round 1 -> {final_eval['reward']:.4f} after round {cfg.iterations}")
    write(write_json, out / "summary.json", result)
    processes.wait_for_everyone()
    return result


def _log_err(line: str) -> None:
    from ..train.setup import is_main_process

    if is_main_process():
        print(line, file=sys.stderr, flush=True)


def _read(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path)] if path.is_file() else []


def check_best_of_n(cfg: BestOfNConfig) -> None:
    if not cfg.prompts:
        raise ConfigError("prompts", "give a prompts file (--prompts FILE) or a shipped --task")
    for name in ("num_samples", "max_new_tokens", "iterations", "generation_batch_size", "train_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, f"must be at least 1, got {getattr(cfg, name)}")
    if cfg.select == "threshold" and cfg.threshold is None:
        raise ConfigError("threshold", "select 'threshold' needs --threshold")
    if cfg.select == "condition" and not cfg.condition:
        raise ConfigError("condition", "select 'condition' needs --condition module:function")
    if cfg.max_length <= cfg.max_new_tokens:
        raise ConfigError("max_length", f"must be larger than max_new_tokens ({cfg.max_new_tokens})")
