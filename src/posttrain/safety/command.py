"""`posttrain redteam` and `posttrain safety pairs`.

    posttrain redteam --target smollm2-135m --limit 20 --max-new-tokens 48 --output-dir runs/redteam
    posttrain redteam --target runs/dpo --judge judge-model --judge-url http://localhost:8000/v1
    posttrain redteam --target smollm2-135m --attacker smollm2-135m --pairs-output pairs.jsonl
    posttrain safety pairs runs/redteam/transcript.jsonl --output pairs.jsonl --safe-response cai --model smollm2-135m

The output directory gets `transcript.jsonl` (one row per attack and benign prompt: template,
topic, category, the conversation, the reply, its label and the judge's reasoning),
`attack_success.json` (the table, see safety/metrics.py), `results.json` (the same rates as
eval metrics, for `posttrain eval --compare`) and `redteam_config.yaml`. Every input file is
read and checked, and the attack list built, before any model is loaded.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import help_field, parse_config, save_config
from ..data.options import DataArgs, read_kwargs
from ..data.readers import resolve_split
from ..errors import ConfigError
from ..jsonl import check_output_file, write_json, write_jsonl
from .attacks import FAMILIES, build_attacks, in_split, read_attacks, read_benign, read_topics, select
from .classify import KeywordJudge, LLMSafetyJudge, load_judge_template
from .metrics import TABLE_FILENAME, format_table, success_table, table_metrics
from .pairs import BENIGN_CHOSEN, SAFE_RESPONSES, build_safety_pairs, read_transcript
from .redteam import label_rows, run_redteam

TRANSCRIPT = "transcript.jsonl"


def log_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class RedteamConfig(DataArgs):
    target: str = help_field("smollm2-135m", "model to attack: alias, directory, run directory, .gguf, hub id "
                                             "(or the model name served at --target-url)")
    target_url: str | None = help_field(None, "OpenAI-compatible endpoint serving --target (instead of a local model)")
    attacker: str | None = help_field(None, "attacker model that rewrites each templated attack (default: templates only)")
    attacker_url: str | None = help_field(None, "OpenAI-compatible endpoint serving --attacker")
    judge_model: str = help_field("keyword", "safety judge: keyword (a regex classifier, no model) or a model "
                                             "(local, or the name served at --judge-url)", aliases=["judge"])
    judge_url: str | None = help_field(None, "OpenAI-compatible endpoint serving --judge-model")
    judge_template: str = help_field("default", "LLM judge prompt: default or a .yaml path")
    topics: str | None = help_field(None, "seed topics JSONL (default: the shipped ones)")
    attacks: str | None = help_field(None, "attack templates YAML (default: the shipped ones)")
    families: list[str] = help_field([], "only these attack families (default: all)", choices=list(FAMILIES))
    benign: list[str] = help_field([], "benign look-alike files (default: the shipped probe suite's benign rows "
                                       "and resources/redteam/benign.jsonl)")
    include_benign: bool = help_field(True, "also run benign look-alikes (over-refusal rate, help-over-refusal pairs)")
    topic_split: str = help_field("all", "topics to use: all, or the train / eval part of a stable hash split "
                                         "(pairs from train, measure on eval); --split picks a split of the data "
                                         "files (--topics, --benign, --rejudge)", choices=["all", "train", "eval"])
    eval_fraction: float = help_field(0.5, "share of topics (and benign prompts) in the eval split")
    limit: int = help_field(0, "at most N attacks, spread evenly over templates (0: all)")
    benign_limit: int = help_field(0, "at most N benign prompts, spread evenly over categories (0: all)")
    rejudge: str | None = help_field(None, "label an existing transcript again with --judge-model (runs no target)")
    output_dir: str = help_field("runs/redteam", "where transcript.jsonl, attack_success.json and results.json go")
    pairs_output: str | None = help_field(None, "also write safety preference pairs (TRL-style JSONL) here")
    safe_response: str = help_field("template", "pairs: who writes the safe reply", choices=list(SAFE_RESPONSES))
    benign_chosen: str = help_field("auto", "pairs: the helpful answer for benign prompts", choices=list(BENIGN_CHOSEN))
    max_new_tokens: int = help_field(128, "longest target reply in tokens", aliases=["max_tokens"])
    temperature: float = help_field(0.0, "target sampling temperature (0: greedy)")
    attacker_temperature: float = help_field(0.7, "attacker sampling temperature")
    attacker_max_new_tokens: int = help_field(256, "longest attacker rewrite in tokens", aliases=["attacker_max_tokens"])
    judge_max_new_tokens: int = help_field(160, "longest judge reply in tokens", aliases=["judge_max_tokens"])
    batch_size: int = help_field(8, "local models: conversations generated together")
    device: str | None = help_field(None, "local models: torch device (default cuda if available, else cpu)")
    seed: int = help_field(0, "seed for attack selection and sampling")
    confidence: float = help_field(0.95, "confidence level of the Wilson intervals")
    api_key_env: str = help_field("OPENAI_API_KEY", "environment variable holding the API key for the URLs")
    timeout: float = help_field(120.0, "HTTP: seconds before a request times out")
    max_retries: int = help_field(3, "HTTP: retries after a timeout, 429 or 5xx")
    concurrency: int = help_field(4, "HTTP: requests in flight at once")


def validate(cfg: RedteamConfig) -> None:
    for name in ("max_new_tokens", "attacker_max_new_tokens", "judge_max_new_tokens", "batch_size", "concurrency"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, "must be at least 1")
    for name in ("limit", "benign_limit", "temperature", "attacker_temperature"):
        if getattr(cfg, name) < 0:
            raise ConfigError(name, "must be 0 or more")
    if not 0 < cfg.eval_fraction < 1:
        raise ConfigError("eval_fraction", "must be between 0 and 1")
    if not 0 < cfg.confidence < 1:
        raise ConfigError("confidence", "must be between 0 and 1")
    if not cfg.target:
        raise ConfigError("target", "name the model to attack: --target MODEL")
    if cfg.attacker_url and not cfg.attacker:
        raise ConfigError("attacker", "required with --attacker-url: the model name the server serves")
    if cfg.judge_url and cfg.judge_model == "keyword":
        raise ConfigError("judge_model", "with --judge-url, --judge-model names the served judge model")
    check_output_file("pairs_output", cfg.pairs_output)
    if Path(cfg.output_dir).is_file():
        raise ConfigError("output_dir", f"{cfg.output_dir} is a file; give a directory")
    given = [p for p in (cfg.topics, *cfg.benign, cfg.rejudge) if p]
    if cfg.split in ("all", "train", "eval") and not any(os.path.isdir(resolve_split(p, None)[0]) for p in given):
        # `--split train|eval` used to pick the topic hash split; on single files it would now silently pick nothing.
        raise ConfigError("split", f"'{cfg.split}' names a split of a dataset directory (--topics, --benign, --rejudge); "
                          f"for the train/eval part of the topic hash split use --topic-split {cfg.split}")


def build_attack_list(cfg: RedteamConfig, log: Callable[[str], None] = log_err):
    """(library, attacks): harmful attacks then benign look-alikes, split and subsampled."""
    library = read_attacks(cfg.attacks)
    topics = read_topics(cfg.topics, read_kwargs(cfg))
    harmful = in_split(build_attacks(topics, library, cfg.families), cfg.topic_split, cfg.eval_fraction)
    harmful = select(harmful, cfg.limit, cfg.seed, key=lambda a: a.template)
    benign = []
    if cfg.include_benign:
        benign = in_split(read_benign(cfg.benign, read_kwargs(cfg)), cfg.topic_split, cfg.eval_fraction)
        benign = select(benign, cfg.benign_limit, cfg.seed, key=lambda a: a.category)
    if not harmful:
        raise ConfigError("topic_split", f"no attacks left in split '{cfg.topic_split}' (topics: {len(topics)})")
    log(f"{len(harmful)} attacks ({len({a.template for a in harmful})} templates, {len({a.topic for a in harmful})} "
        f"topics), {len(benign)} benign prompts")
    return library, harmful + benign


class Backends:
    """Loads each distinct model once: target, attacker, judge and the safe-reply writer may share one."""

    def __init__(self, cfg: RedteamConfig):
        self.cfg, self.cache = cfg, {}

    def get(self, name: str, url: str | None):
        key = (name, url)
        if key not in self.cache:
            cfg = self.cfg
            if url:
                from ..rollout.chat import HttpChatBackend

                self.cache[key] = HttpChatBackend(url, name, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                                                  max_retries=cfg.max_retries, concurrency=cfg.concurrency)
            else:
                import torch

                from ..rollout.chat import LocalChatBackend

                torch.manual_seed(cfg.seed)  # local sampling (temperature > 0) draws from torch's generator
                self.cache[key] = LocalChatBackend.from_name(name, batch_size=cfg.batch_size, device=cfg.device)
        return self.cache[key]

    def close(self) -> None:
        for backend in self.cache.values():
            if hasattr(backend, "close"):
                backend.close()


def run_redteam_command(cfg: RedteamConfig, *, target=None, attacker=None, judge_backend=None,
                        log: Callable[[str], None] = log_err, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the red-team loop as configured; returns the attack-success table (with pair counts).

    `target`, `attacker` and `judge_backend` override the configured models (any `ChatBackend`).
    """
    validate(cfg)
    # every input is read and checked before any model loads
    old_rows = read_transcript(cfg.rejudge, read_kwargs(cfg)) if cfg.rejudge else None
    library, attacks = build_attack_list(cfg, log) if old_rows is None else (None, [])
    judge_template = load_judge_template(cfg.judge_template) if cfg.judge_model != "keyword" or judge_backend else None
    backends = Backends(cfg)
    try:
        needs_target = old_rows is None or (cfg.pairs_output and cfg.safe_response != "template")
        target = target or (backends.get(cfg.target, cfg.target_url) if needs_target else None)
        if attacker is None and cfg.attacker and old_rows is None:
            attacker = backends.get(cfg.attacker, cfg.attacker_url)
        if judge_backend is None and cfg.judge_model != "keyword":
            judge_backend = backends.get(cfg.judge_model, cfg.judge_url)
        judge = (LLMSafetyJudge(judge_backend, judge_template, cfg.judge_max_new_tokens, log=log) if judge_backend
                 else KeywordJudge())
        if old_rows is not None:
            rows = label_rows(old_rows, judge)
            target_name = next((r["target"] for r in rows if r.get("target")), cfg.target)
        else:
            rows = run_redteam(attacks, target, judge, attacker=attacker, library=library,
                               max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               attacker_max_tokens=cfg.attacker_max_new_tokens,
                               attacker_temperature=cfg.attacker_temperature, log=log)
            target_name = getattr(target, "name", cfg.target)
        meta = {"target": target_name, "judge": judge.name,
                "attacker": getattr(attacker, "name", None), "split": cfg.topic_split,
                "eval_fraction": cfg.eval_fraction if cfg.topic_split != "all" else None}
        if old_rows is not None:
            meta.update(rejudged=cfg.rejudge, split=None)
        table = success_table(rows, cfg.confidence, meta)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "redteam_config.yaml")
        write_jsonl(out / TRANSCRIPT, rows)
        if cfg.pairs_output:
            pairs, counts = build_safety_pairs(rows, cfg.safe_response, cfg.benign_chosen, backend=target,
                                               max_tokens=cfg.max_new_tokens, log=log)
            write_jsonl(cfg.pairs_output, pairs)
            table["pairs"] = {**counts, "file": str(cfg.pairs_output)}
        write_json(out / TABLE_FILENAME, table)
        from ..evaluate.results import RESULTS_FILENAME, write_results

        write_results(out / RESULTS_FILENAME, out.resolve().name, table_metrics(rows, cfg.confidence),
                      {"model": meta["target"], "suites": {"redteam": {k: v for k, v in meta.items() if v is not None}},
                       "confidence": cfg.confidence})
    finally:
        backends.close()
    echo(format_table(table))
    echo(f"wrote {out / TRANSCRIPT}, {out / TABLE_FILENAME}")
    if cfg.pairs_output:
        echo(f"wrote {table['pairs']['pairs']} pairs ({table['pairs']['harmful_pairs']} safe-over-unsafe, "
             f"{table['pairs']['benign_pairs']} help-over-refusal) to {cfg.pairs_output}")
    return table


def main(argv: list[str]) -> int:
    cfg = parse_config(RedteamConfig, argv, prog="posttrain redteam",
                       description="red-team a model: templated attacks, a safety judge, an attack-success table "
                                   "(docs/safety.md)")
    run_redteam_command(cfg)
    return 0


# ---------------------------------------------------------------------------------- safety pairs

@dataclass
class SafetyPairsConfig(DataArgs):
    transcript: str = help_field("", "red-team transcript JSONL (or the redteam output directory)")
    output: str | None = help_field(None, "pairs JSONL (default: pairs.jsonl beside the transcript)")
    safe_response: str = help_field("template", "who writes the safe reply to an unsafe attack",
                                    choices=list(SAFE_RESPONSES))
    benign_chosen: str = help_field("auto", "the helpful answer for benign look-alikes", choices=list(BENIGN_CHOSEN))
    model: str | None = help_field(None, "model writing safe replies (model, cai): local, or the name served at --url")
    url: str | None = help_field(None, "OpenAI-compatible endpoint serving --model")
    max_new_tokens: int = help_field(160, "longest safe reply in tokens", aliases=["max_tokens"])
    batch_size: int = help_field(8, "local model: conversations generated together")
    device: str | None = help_field(None, "local model: torch device")
    seed: int = help_field(0, "sampling seed")
    api_key_env: str = help_field("OPENAI_API_KEY", "environment variable holding the API key for --url")
    timeout: float = help_field(120.0, "HTTP: seconds before a request times out")
    max_retries: int = help_field(3, "HTTP: retries after a timeout, 429 or 5xx")
    concurrency: int = help_field(4, "HTTP: requests in flight at once")


def run_safety_pairs(cfg: SafetyPairsConfig, backend=None, log: Callable[[str], None] = log_err,
                     echo: Callable[[str], None] = print) -> dict[str, Any]:
    if not cfg.transcript:
        raise ConfigError("transcript", "give the red-team transcript: posttrain safety pairs TRANSCRIPT.jsonl")
    if cfg.safe_response != "template" and not (cfg.model or backend):
        raise ConfigError("model", f"--safe-response {cfg.safe_response} needs --model (the model writing safe replies)")
    if cfg.max_new_tokens < 1:
        raise ConfigError("max_new_tokens", "must be at least 1")
    check_output_file("output", cfg.output)
    rows = read_transcript(cfg.transcript, read_kwargs(cfg))  # checked before any model loads
    folder = Path(cfg.transcript) if Path(cfg.transcript).is_dir() else Path(cfg.transcript).parent
    output = cfg.output or str(folder / "pairs.jsonl")
    backends = None
    if backend is None and cfg.safe_response != "template":
        backends = Backends(RedteamConfig(batch_size=cfg.batch_size, device=cfg.device, seed=cfg.seed,
                                          api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                                          max_retries=cfg.max_retries, concurrency=cfg.concurrency))
        backend = backends.get(cfg.model or "", cfg.url)
    try:
        pairs, counts = build_safety_pairs(rows, cfg.safe_response, cfg.benign_chosen, backend=backend,
                                           max_tokens=cfg.max_new_tokens, log=log)
    finally:
        if backends is not None:
            backends.close()
    write_jsonl(output, pairs)
    summary = {**counts, "file": output, "transcript": cfg.transcript}
    write_json(os.path.splitext(output)[0] + ".summary.json", summary)
    echo(f"wrote {counts['pairs']} pairs ({counts['harmful_pairs']} safe-over-unsafe, {counts['benign_pairs']} "
         f"help-over-refusal) to {output}")
    for reason, n in counts["skipped"].items():
        echo(f"  skipped {n}: {reason}")
    return summary


def pairs_main(argv: list[str]) -> int:
    cfg = parse_config(SafetyPairsConfig, argv, prog="posttrain safety pairs",
                       description="safety preference pairs from a red-team transcript", positional="transcript")
    run_safety_pairs(cfg)
    return 0
