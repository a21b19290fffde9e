"""`posttrain cai`: Constitutional-AI critique → revision over a prompts file.

    posttrain cai --prompts prompts.jsonl --model smollm2-135m --principles sample:2 \
        --sft-output cai_sft.jsonl --pairs-output cai_pairs.jsonl --trace-output cai_trace.jsonl
    posttrain cai --prompts prompts.jsonl --url http://localhost:8000/v1 --model my-model ...

Outputs (each optional, at least one needed; all written atomically at the end):
  --trace-output  one row per prompt: the initial response, every critique and revision
                  with its principle, the final response, and failures
  --sft-output    `messages` rows (prompt + final revision) for `posttrain sft`
  --pairs-output  preference rows for `posttrain dpo`: the final revision chosen over the
                  initial response (`--pair-mode revision`), or whichever of the two a judge
                  prefers by the principles applied (`--pair-mode judged`)
A summary JSON (counts, failures, timings) is written beside them. See docs/cai.md.

Where this module sits: the critique/revise loop and the output rows are synth/ library
code (posttrain.synth.cai), the chat backends are generation backends (posttrain.rollout.chat),
and `--pair-mode judged` asks an LLM judge (posttrain.judge), which sits below synth/ in the
layer list. A command that joins synth and judge is orchestration, so it lives here at the
command level (like generate.py), where it may import from every layer above it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..data.prompts import load_prompts
from ..errors import ConfigError, PosttrainError
from ..jsonl import write_json, write_jsonl
from ..synth.cai import CaiSettings, CritiqueReviser, Trace, assistant_turn, count, revision_pairs, sft_rows
from ..synth.constitution import Constitution, load_constitution, parse_selection, plan


@dataclass
class CaiConfig(DataArgs):
    prompts: str = help_field("", "prompts file (prompt / messages / instruction / question rows)")
    model: str = help_field("smollm2-135m", "local model (alias, directory, .gguf, hub id), or the model name "
                                            "sent to --url")
    url: str | None = help_field(None, "OpenAI-compatible endpoint serving --model (instead of a local model)")
    constitution: str = help_field("default", "shipped constitution name or a .yaml path")
    principles: str = help_field("all", "all | sample:K (K drawn per prompt and round) | name,name,...")
    rounds: int = help_field(1, "passes over the chosen principles")
    sft_output: str | None = help_field(None, "JSONL of messages rows: prompt + final revision")
    pairs_output: str | None = help_field(None, "JSONL of preference pairs (prompt, chosen, rejected)")
    trace_output: str | None = help_field(None, "JSONL of full traces, one row per prompt")
    summary: str | None = help_field(None, "summary JSON (default: beside the first output, .summary.json)")
    pair_mode: str = help_field("revision", "revision: final revision over the initial response; judged: a "
                                            "judge picks by principle", choices=["revision", "judged"])
    judge_model: str | None = help_field(None, "judged pairs: a local judge model, or the name sent to "
                                               "--judge-url (default: the generating model)", aliases=["judge"])
    judge_url: str | None = help_field(None, "judged pairs: OpenAI-compatible endpoint of the judge")
    judge_template: str = help_field("pairwise", "judged pairs: pairwise judge template name or .yaml path")
    judge_swap: bool = help_field(False, "judged pairs: judge both orders; disagreement gives no pair")
    judge_max_new_tokens: int = help_field(256, "judged pairs: longest judge reply in tokens", aliases=["judge_max_tokens"])
    max_new_tokens: int = help_field(256, "longest initial response / revision in tokens", aliases=["max_tokens"])
    critique_max_new_tokens: int = help_field(0, "longest critique in tokens (0: --max-new-tokens)",
                                              aliases=["critique_max_tokens"])
    temperature: float = help_field(0.7, "sampling temperature of the model (0: greedy)")
    seed: int = help_field(0, "seed for principle sampling and local sampling")
    limit: int = help_field(0, "only the first N prompts (0: all)")
    batch_size: int = help_field(8, "local model: conversations generated together")
    device: str | None = help_field(None, "local model: torch device (default cuda if available, else cpu)")
    api_key_env: str = help_field("OPENAI_API_KEY", "environment variable holding the API key for the URLs")
    timeout: float = help_field(120.0, "HTTP: seconds before a request times out")
    max_retries: int = help_field(3, "HTTP: retries after a timeout, 429 or 5xx")
    concurrency: int = help_field(4, "HTTP: requests in flight at once")


def validate(cfg: CaiConfig) -> None:
    if not cfg.prompts:
        raise ConfigError("prompts", "required: the prompts file (--prompts FILE)")
    if not (cfg.sft_output or cfg.pairs_output or cfg.trace_output):
        raise ConfigError("sft_output", "give at least one of --sft-output, --pairs-output, --trace-output")
    for name in ("rounds", "max_new_tokens", "judge_max_new_tokens", "batch_size", "concurrency"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, "must be at least 1")
    for name in ("critique_max_new_tokens", "limit", "temperature"):
        if getattr(cfg, name) < 0:
            raise ConfigError(name, "must be 0 or more")
    if cfg.judge_url and not cfg.judge_model:
        raise ConfigError("judge_model", "required with --judge-url: the model name the server serves")
    if cfg.pair_mode == "revision" and (cfg.judge_url or cfg.judge_model or cfg.judge_swap):
        raise ConfigError("pair_mode", "the judge options need --pair-mode judged")
    if cfg.pair_mode == "judged" and not cfg.pairs_output:
        raise ConfigError("pairs_output", "--pair-mode judged makes pairs: give --pairs-output")


def _http(url: str, model: str, cfg: CaiConfig):
    from ..rollout.chat import HttpChatBackend

    return HttpChatBackend(url, model, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                           max_retries=cfg.max_retries, concurrency=cfg.concurrency)


def _local(name: str, cfg: CaiConfig):
    import torch

    from ..rollout.chat import LocalChatBackend

    torch.manual_seed(cfg.seed)  # local sampling (temperature > 0) draws from torch's generator
    return LocalChatBackend.from_name(name, batch_size=cfg.batch_size, device=cfg.device)


def build_backends(cfg: CaiConfig) -> tuple[Any, Any | None]:
    """(model backend, judge backend or None); the judge reuses the model when it is the same one."""
    backend = _http(cfg.url, cfg.model, cfg) if cfg.url else _local(cfg.model, cfg)
    if cfg.pair_mode != "judged" or not cfg.pairs_output:
        return backend, None
    if cfg.judge_url:
        return backend, _http(cfg.judge_url, cfg.judge_model, cfg)
    if cfg.judge_model and (cfg.url or cfg.judge_model != cfg.model):
        return backend, _local(cfg.judge_model, cfg)
    return backend, backend


# --------------------------------------------------------------------------- judged pairs

def judge_rubric(trace: Trace, constitution: Constitution) -> str:
    """The judge's criteria for one prompt: the rubric of each principle that revised it."""
    by_name = {p.name: p.rubric for p in constitution.principles}
    return "\n".join(f"- {by_name[name]}" for name in dict.fromkeys(trace.principles()))


def judged_pairs(traces: list[Trace], judge, constitution: Constitution) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Ask `judge` (an LLMJudge) which of final (A) and initial (B) is better by the principles applied.

    A -> the revision is chosen; B -> the initial response is chosen (the revision made it
    worse); a tie, a failed request or an unparseable verdict gives no pair. Prompts revised
    by the same principles share a rubric and go to the judge in one batch.
    """
    from ..judge import PairItem

    todo = [t for t in traces if t.ok and t.revised and t.current != t.initial]
    by_rubric: dict[str, list[Trace]] = {}
    for t in todo:
        by_rubric.setdefault(judge_rubric(t, constitution), []).append(t)
    rows, tally = [], {"revision_preferred": 0, "initial_preferred": 0, "tie": 0, "no_verdict": 0}
    for rubric, group in by_rubric.items():
        judge.rubric = rubric
        for t, judgement in zip(group, judge.judge_pairs([PairItem(t.prompt, t.current, t.initial) for t in group])):
            if judgement.winner not in ("A", "B"):
                tally["tie" if judgement.winner == "tie" else "no_verdict"] += 1
                continue
            revision_wins = judgement.winner == "A"
            tally["revision_preferred" if revision_wins else "initial_preferred"] += 1
            chosen, rejected = (t.current, t.initial) if revision_wins else (t.initial, t.current)
            rows.append({**t.extra, "prompt": t.prompt, "chosen": assistant_turn(chosen),
                         "rejected": assistant_turn(rejected),
                         "pair_mode": "judged", "chosen_is": "revision" if revision_wins else "initial",
                         "cai_principles": t.principles(), "judge": judgement.judge,
                         "judge_reasoning": judgement.reasoning})
    return rows, tally


# --------------------------------------------------------------------------- the command

def summary_path(cfg: CaiConfig) -> str:
    if cfg.summary:
        return cfg.summary
    first = cfg.trace_output or cfg.sft_output or cfg.pairs_output
    return first.removesuffix(".jsonl") + ".summary.json"


def run_cai(cfg: CaiConfig, backend=None, judge_backend=None, log=None) -> dict[str, Any]:
    """Run the whole command; `backend` / `judge_backend` replace the ones built from `cfg` (tests)."""

    log = log or (lambda text: print(text, file=sys.stderr))
    validate(cfg)
    constitution = load_constitution(cfg.constitution)
    selection = parse_selection(cfg.principles, constitution)
    prompts = load_prompts(cfg.prompts, limit=cfg.limit or None, **read_kwargs(cfg))
    judge = None
    if cfg.pair_mode == "judged" and cfg.pairs_output:
        from ..judge import load_template

        template = load_template(cfg.judge_template, "pairwise")  # a bad template fails before any generation
    owned = backend is None
    if owned:
        backend, built_judge = build_backends(cfg)
        judge_backend = judge_backend or built_judge
    started = time.perf_counter()
    try:
        traces = [Trace(i, p.prompt, dict(p.extra), p.source) for i, p in enumerate(prompts)]
        settings = CaiSettings(cfg.max_new_tokens, cfg.critique_max_new_tokens or cfg.max_new_tokens, cfg.temperature)
        reviser = CritiqueReviser(backend, constitution, settings, log)
        reviser.run(traces, plan(constitution, selection, len(traces), cfg.rounds, cfg.seed))
        summary: dict[str, Any] = {"model": backend.name, "constitution": constitution.name,
                                   "principles": cfg.principles, "rounds": cfg.rounds, **count(traces)}
        if cfg.pair_mode == "judged" and cfg.pairs_output:
            from ..judge import LLMJudge

            judge = LLMJudge(judge_backend or backend, template, swap=cfg.judge_swap,
                             max_tokens=cfg.judge_max_new_tokens, temperature=0.0)
            pairs, summary["judged"] = judged_pairs(traces, judge, constitution)
        else:
            pairs = revision_pairs(traces)
    finally:
        if owned:
            for b in {id(b): b for b in (backend, judge_backend) if b is not None}.values():
                if hasattr(b, "close"):
                    b.close()
    sft = sft_rows(traces)
    summary.update({"sft_rows": len(sft), "pairs": len(pairs), "pair_mode": cfg.pair_mode,
                    "seconds": round(time.perf_counter() - started, 3), "batches": reviser.batches,
                    "stage_seconds": {k: round(v, 3) for k, v in reviser.stage_seconds.items()},
                    "requests": backend.stats.as_dict()})
    if judge is not None and judge.backend is not backend:
        summary["judge_requests"] = judge.backend.stats.as_dict()
    for path, rows in ((cfg.trace_output, [t.to_dict() for t in traces]), (cfg.sft_output, sft),
                       (cfg.pairs_output, pairs)):
        if path:
            write_jsonl(path, rows)
    summary["outputs"] = {k: v for k, v in (("trace", cfg.trace_output), ("sft", cfg.sft_output),
                                             ("pairs", cfg.pairs_output)) if v}
    write_json(summary_path(cfg), summary)
    for line in summary_lines(summary):
        log(line)
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    steps = summary["steps"]
    lines = [f"cai {summary['model']}: {summary['prompts']} prompts, {summary['revised_prompts']} revised, "
             f"{summary['unrevised_prompts']} never revised, {summary['failed_prompts']} failed "
             f"{summary['failed_at'] or ''}".rstrip(),
             f"  revisions: {steps['revised']} accepted, {steps['empty']} empty, {steps['unchanged']} unchanged, "
             f"{steps['repetitive']} repetitive, {steps['failed']} failed",
             f"  wrote {summary['sft_rows']} SFT rows, {summary['pairs']} pairs ({summary['pair_mode']}) "
             f"in {summary['seconds']:.1f}s over {summary['batches']} batches"]
    if "judged" in summary:
        lines.append("  judge: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary["judged"].items()))
    return lines


def main(argv: list[str]) -> int:
    cfg = parse_config(CaiConfig, argv, prog="posttrain cai", positional="prompts",
                       description=__doc__.splitlines()[0])
    summary = run_cai(cfg)
    if summary["prompts"] and summary["failed_prompts"] == summary["prompts"]:
        reasons = summary["requests"].get("failure_reasons") or {}
        detail = ", ".join(f"{k} x{v}" for k, v in reasons.items()) or "see the trace"
        raise PosttrainError(f"every prompt failed ({detail}); outputs were still written")
    return 0
