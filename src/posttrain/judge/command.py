"""`posttrain judge`: judge pairs or score responses from a JSONL file.

    posttrain judge --input pairs.jsonl --mode pairwise --swap --judge-model smollm2-135m
    posttrain judge --input pairs.jsonl --judge-url http://localhost:8000/v1 --judge-model my-judge
    posttrain judge --input pairs.jsonl --reward-model runs/rm --tie-threshold 0.1

Writes OUTPUT (Judgement records, one per pair or per response) atomically, and
OUTPUT.summary.json with the counts. While running, finished rows are appended to
OUTPUT.partial; if a run stops, the next run with the same settings skips the rows
already there (rows whose requests failed are judged again), then removes it.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import ConfigError, InputError, PosttrainError
from ..jsonl import append_jsonl, check_output_file, write_json, write_jsonl
from ..rollout.chat import ChatBackend
from .inputs import read_items
from .judging import LLMJudge, summarize
from .reward_judge import RewardJudge
from .templates import load_template

DEFAULT_LOCAL_JUDGE = "smollm2-135m"


@dataclass
class JudgeConfig(DataArgs):
    input: str = help_field("", "data file (JSONL, CSV, Parquet, dataset directory) of pairs (pairwise) or responses (pointwise) to judge")
    output: str | None = help_field(None, "output JSONL of Judgement records (default: INPUT stem + .judged.jsonl)")
    mode: str = help_field("pairwise", "what to judge", choices=["pairwise", "pointwise"])
    swap: bool = help_field(False, "pairwise: judge both orders; disagreement becomes a tie")
    judge_url: str | None = help_field(None, "OpenAI-compatible endpoint (server root, /v1 or the full /v1/chat/completions URL)")
    judge_model: str | None = help_field(None, f"model name sent to --judge-url, or a local model (default {DEFAULT_LOCAL_JUDGE})",
                                         aliases=["judge"])
    reward_model: str | None = help_field(None, "judge with a trained reward model (a `posttrain rm` run dir) instead of an LLM")
    tie_threshold: float = help_field(0.0, "reward model: a score difference within this is a tie")
    api_key_env: str = help_field("OPENAI_API_KEY", "environment variable holding the API key for --judge-url")
    template: str | None = help_field(None, "template name (pairwise, pairwise_short, pointwise, educational_value) or a .yaml path")
    rubric: str | None = help_field(None, "text replacing the template's {rubric}")
    max_new_tokens: int = help_field(512, "longest judge reply, in tokens", aliases=["max_tokens"])
    temperature: float = help_field(0.0, "judge sampling temperature (0 = greedy)")
    timeout: float = help_field(60.0, "HTTP: seconds before a request times out")
    max_retries: int = help_field(3, "HTTP: retries after a timeout, 429 or 5xx")
    backoff: float = help_field(1.0, "HTTP: first retry delay in seconds (doubles each retry, with jitter)")
    backoff_max: float = help_field(30.0, "HTTP: longest retry delay in seconds")
    concurrency: int = help_field(4, "HTTP: requests in flight at once")
    batch_size: int = help_field(8, "local model: conversations generated together")
    device: str | None = help_field(None, "local model: torch device (default cuda if available, else cpu)")
    chunk_size: int = help_field(64, "input rows judged between writes to OUTPUT.partial")
    limit: int | None = help_field(None, "judge only the first N input rows")
    resume: bool = help_field(True, "skip rows already finished in OUTPUT.partial")
    seed: int = help_field(0, "random seed (local sampling with temperature > 0)")
    summary: str | None = help_field(None, "summary JSON path (default: OUTPUT with .summary.json)")


def validate(cfg: JudgeConfig) -> None:
    if not cfg.input:
        raise ConfigError("input", "required: the JSONL file to judge")
    if cfg.judge_url and not cfg.judge_model:
        raise ConfigError("judge_model", "required with --judge-url: the model name the server serves")
    for name in ("max_new_tokens", "chunk_size", "concurrency", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, "must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError("limit", "must be at least 1")
    if cfg.temperature < 0:
        raise ConfigError("temperature", "must be 0 or more")
    if cfg.swap and cfg.mode == "pointwise":
        raise ConfigError("swap", "only applies to --mode pairwise")
    if cfg.reward_model and (cfg.judge_url or cfg.judge_model):
        raise ConfigError("reward_model", "give either --reward-model or --judge-url/--judge-model, not both")
    if cfg.reward_model and cfg.swap:
        raise ConfigError("swap", "a reward model scores each answer on its own, so position swap does not apply")
    if cfg.tie_threshold < 0:
        raise ConfigError("tie_threshold", "must be 0 or more")
    output, _, summary = output_paths(cfg)
    check_output_file("output", output)
    check_output_file("summary", summary)


def output_paths(cfg: JudgeConfig) -> tuple[str, str, str]:
    """(output, partial, summary) paths."""
    source = Path(cfg.input)
    output = cfg.output or str(source.with_name(source.name.removesuffix(".jsonl") + ".judged.jsonl"))
    summary = cfg.summary or (output.removesuffix(".jsonl") + ".summary.json")
    return output, output + ".partial", summary


def build_backend(cfg: JudgeConfig) -> ChatBackend:
    """HTTP when --judge-url is given, else a local model."""
    if cfg.judge_url:
        from ..rollout.chat import HttpChatBackend

        return HttpChatBackend(cfg.judge_url, cfg.judge_model or "", api_key_env=cfg.api_key_env,
                               timeout=cfg.timeout, max_retries=cfg.max_retries, backoff=cfg.backoff,
                               backoff_max=cfg.backoff_max, concurrency=cfg.concurrency)
    from ..rollout.chat import LocalChatBackend

    return LocalChatBackend.from_name(cfg.judge_model or DEFAULT_LOCAL_JUDGE, batch_size=cfg.batch_size,
                                      device=cfg.device)


def build_reward_judge(cfg: JudgeConfig) -> RewardJudge:
    """A trained reward model (`posttrain rm` output) as a pairwise/pointwise judge."""
    from ..rollout.score import RewardScorer

    scorer = RewardScorer(cfg.reward_model, device=cfg.device or "auto", batch_size=cfg.batch_size)
    return RewardJudge(score_batch=scorer.score, tie_threshold=cfg.tie_threshold,
                       name=f"reward_model({Path(cfg.reward_model).name})")


def load_partial(path: str, settings: dict[str, Any]) -> dict[int, list[dict]]:
    """Finished rows from an earlier run: input line -> its records (later entries win).

    A torn last line (the run was killed mid-write) is ignored; settings that differ
    from this run's are an error rather than a silent mix of two judges.
    """
    if not os.path.exists(path):
        return {}
    lines = [t for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
    done: dict[int, list[dict]] = {}
    for number, text in enumerate(lines, start=1):
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise InputError(path, number, None, "malformed JSON in the partial file; delete it or pass --no-resume") from None
        if number == 1:
            if entry.get("partial_of") != settings:
                raise PosttrainError(f"{path} was written with other settings ({entry.get('partial_of')}); "
                                     "delete it or pass --no-resume")
            continue
        done[int(entry["input_line"])] = entry["records"]
    return done


def _finished(records: list[dict]) -> bool:
    return all(r.get("judge_status") != "failed" for r in records)


def run_judge(cfg: JudgeConfig, backend: ChatBackend | RewardJudge | None = None, log=print) -> dict[str, Any]:
    """Judge `cfg.input`, write the output and summary files, and return the summary.

    `backend` overrides what the config names: a `ChatBackend` (judged with the
    template) or a `RewardJudge`.
    """
    validate(cfg)
    template = load_template(cfg.template, cfg.mode)
    rows = read_items(cfg.input, cfg.mode, cfg.limit, **read_kwargs(cfg))  # every row is checked before any judging
    output, partial, summary_path = output_paths(cfg)
    Path(partial).parent.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and os.path.exists(partial):
        os.unlink(partial)
    owns_backend = backend is None
    if backend is None:
        backend = build_reward_judge(cfg) if cfg.reward_model else build_backend(cfg)
    settings = {"input": os.path.abspath(cfg.input), "mode": cfg.mode, "template": template.name,
                "swap": cfg.swap, "judge": backend.name, "rubric": cfg.rubric}
    settings.update({k: v for k, v in (("split", cfg.split), ("columns", cfg.columns)) if v})  # only when set
    done = {line: recs for line, recs in load_partial(partial, settings).items() if _finished(recs)}
    if not os.path.exists(partial):
        append_jsonl(partial, {"partial_of": settings})
    pending = [(line, items) for line, items in rows if line not in done]
    if done:
        log(f"resuming: {len(rows) - len(pending)} of {len(rows)} rows already judged in {partial}")
    if cfg.temperature > 0:
        import torch

        torch.manual_seed(cfg.seed)
    judge = backend if isinstance(backend, RewardJudge) else LLMJudge(
        backend, template, swap=cfg.swap, rubric=cfg.rubric, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    try:
        for start in range(0, len(pending), cfg.chunk_size):
            chunk = pending[start:start + cfg.chunk_size]
            items = [item for _, row_items in chunk for item in row_items]
            judged = judge.judge_pairs(items) if cfg.mode == "pairwise" else judge.judge_points(items)
            records = iter(j.to_dict() for j in judged)
            for line, row_items in chunk:
                entry = {"input_line": line, "records": [next(records) for _ in row_items]}
                append_jsonl(partial, entry)
                done[line] = entry["records"]
            print(f"judged {min(start + cfg.chunk_size, len(pending))}/{len(pending)} rows", file=sys.stderr)
    finally:
        if owns_backend and hasattr(backend, "close"):
            backend.close()
    final = [record for line, _ in rows for record in done[line]]
    write_jsonl(output, final)
    summary = summarize(final, cfg.mode)
    stats = backend.stats.as_dict()
    summary.update({"judge": backend.name, "template": None if judge is backend else template.name, "swap": cfg.swap,
                    "resumed_rows": len(rows) - len(pending), "requests": stats["requests"],
                    "failed_requests": stats["failed"], "retries": stats["retries"],
                    "failure_reasons": stats["failure_reasons"], "output": output})
    write_json(summary_path, summary)
    os.unlink(partial)
    for text in summary_lines(summary):
        log(text)
    log(f"wrote {output} and {summary_path}")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A few human-readable lines for the terminal."""
    via = f" (template {summary['template']})" if summary["template"] else ""
    lines = [f"judge {summary['judge']}{via}: {summary['judgements']} judgements"]
    if summary["mode"] == "pairwise":
        lines.append(f"  A {summary['A']}   B {summary['B']}   tie {summary['tie']}   "
                     f"unparseable {summary['unparseable']}   failed {summary['failed']}")
        if summary["position_consistency"] is not None:
            lines.append(f"  position consistency {summary['position_consistency']:.3f} "
                         f"over {summary['swapped_pairs']} pairs judged in both orders")
        if "reference_agreement" in summary:
            lines.append(f"  agreement with chosen/rejected labels {summary['reference_agreement']:.3f}")
    else:
        mean = summary["mean_score"]
        lines.append(f"  scored {summary['ok']}   unparseable {summary['unparseable']}   failed {summary['failed']}   "
                     f"mean score {'-' if mean is None else f'{mean:.3f}'}")
    lines.append(f"  requests {summary['requests']}   retries {summary['retries']}   "
                 f"failed requests {summary['failed_requests']} {summary['failure_reasons'] or ''}".rstrip())
    return lines


def main(argv: list[str]) -> int:
    cfg = parse_config(JudgeConfig, argv, prog="posttrain judge", positional="input",
                       description="LLM-as-judge: pairwise verdicts (with position swap) or pointwise scores")
    summary = run_judge(cfg)
    if summary["judgements"] and summary["failed"] == summary["judgements"]:
        reasons = ", ".join(f"{k} x{v}" for k, v in summary["failure_reasons"].items()) or "see the summary"
        raise PosttrainError(f"every judge request failed ({reasons}); records were still written to {summary['output']}")
    return 0
