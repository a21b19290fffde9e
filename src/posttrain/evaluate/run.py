"""`posttrain eval`: run evaluation suites on a model and write results.json, or compare two runs.

    posttrain eval --model runs/sft --suite task safety
    posttrain eval --model smollm2-135m --suite reference --references heldout.jsonl --output-dir eval/base
    posttrain eval --model runs/dpo --suite winrate --prompts prompts.jsonl --baseline-model runs/sft \\
        --judge-url http://localhost:8000/v1 --judge-model judge
    posttrain eval --outputs eval/base/generations_task.jsonl --suite task      # score existing generations
    posttrain eval --compare runs/sft runs/dpo                                   # no model is run

Suites (several at once; see docs/evaluation.md):
  reference   generate, then BLEU, chrF, ROUGE (BERTScore when installed and given a local model)
  task        a verifiable task set -> accuracy (Wilson interval), or pass@1..N with --num-samples N
  perplexity  held-out text or chat data -> token-level perplexity (assistant tokens only for chats)
  winrate     model vs a baseline, judged in both orders -> win-rate and length-controlled win-rate
  safety      the shipped probe suite -> refusal rate (harmful) and over-refusal rate (benign look-alikes)
  harness     EleutherAI lm-evaluation-harness tasks (--harness mmlu,hellaswag; implied by --harness)

Every input is read and checked before a model is loaded, so bad input fails at once with
one line. The output directory gets results.json (rewritten after each suite, so finished
suites survive a later failure), one generations JSONL per suite, and eval_config.yaml.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import AT_LEAST_0, help_field, parse_config, save_config, validate_ranges
from ..data.options import DataArgs
from ..errors import ConfigError
from ..jsonl import write_json, write_jsonl
from .harness import prepare_harness, run_harness
from .judged_suites import prepare_safety, prepare_winrate, run_safety, run_winrate
from .responders import ModelResponder, OutputsResponder, log_err
from .results import RESULTS_FILENAME, format_metrics_table, write_results
from .suites import (
    SuiteContext,
    prepare_perplexity,
    prepare_reference,
    prepare_task,
    run_perplexity,
    run_reference,
    run_task,
)

# suite -> (check and read its inputs, run it). Order here is the order suites run in.
SUITES: dict[str, tuple[Callable, Callable]] = {
    "task": (prepare_task, run_task),
    "reference": (prepare_reference, run_reference),
    "perplexity": (prepare_perplexity, run_perplexity),
    "safety": (prepare_safety, run_safety),
    "winrate": (prepare_winrate, run_winrate),
    "harness": (prepare_harness, run_harness),
}
COMPARISON_FILENAME = "comparison.json"  # written by --compare when --output-dir is given
SAMPLED_TEMPERATURE = 0.8  # default for --num-samples N > 1 (Chen et al. 2021 use 0.8 for large k)


@dataclass
class EvalConfig(DataArgs):
    model: str | None = help_field(None, "model to evaluate: alias, local or run directory, .gguf, hub id")
    suite: list[str] = help_field([], "suites to run (one or more)", choices=list(SUITES))
    output_dir: str | None = help_field(None, "where results.json and generations go (default: the run directory "
                                              "when --model is a posttrain run, else eval/<model>); "
                                              "with --compare, where comparison.json goes")
    run_name: str | None = help_field(None, "run name stored in results.json (default: the output directory's name)")
    compare: list[str] = help_field([], "RUN_A RUN_B: print both results side by side with intervals on B - A; runs no model")
    outputs: list[str] = help_field([], "score these generation files (prompt + response rows) instead of generating")
    # generation
    max_new_tokens: int = help_field(256, "longest response in tokens", aliases=["max_tokens"])
    temperature: float | None = help_field(None, f"sampling temperature (default 0 = greedy; {SAMPLED_TEMPERATURE} "
                                                 "with --num-samples > 1)")
    top_p: float = help_field(1.0, "nucleus sampling threshold (with temperature > 0)")
    batch_size: int = help_field(16, "prompts per generation batch (sequences per perplexity batch)")
    template: str = help_field("auto", "prompt template", choices=["auto", "chat", "basic", "conversational",
                                                                    "with_input", "alpaca"])
    dtype: str = help_field("auto", "weights dtype")
    device: str = help_field("auto", "torch device (auto: CUDA when available)")
    seed: int = help_field(0, "sampling and bootstrap seed")
    limit: int = help_field(0, "only the first N items of each suite (0: all)")
    confidence: float = help_field(0.95, "confidence level of every interval")
    # reference
    references: str | None = help_field(None, "reference suite: prompts with reference answers "
                                               "(reference / answer / output / completion field)")
    bertscore_model: str | None = help_field(None, "reference suite: local model directory for BERTScore")
    bertscore_layers: int | None = help_field(None, "reference suite: BERTScore layer (with --bertscore-model)")
    # task
    task: str = help_field("arithmetic", "task suite: a shipped task (arithmetic, sorting, code) or a task file")
    task_split: str = help_field("test", "task suite: split of a shipped task", choices=["test", "train"])
    verifier: str | None = help_field(None, "task suite: verifier (math, exact, sort, regex, json_schema, code, "
                                            "answer_format, or module:function); default: from the rows")
    num_samples: int = help_field(1, "task suite: responses per prompt; > 1 reports pass@1..pass@N",
                                  aliases=["n", "samples"])
    # perplexity
    heldout: str | None = help_field(None, "perplexity suite: rows with 'text', or chat/SFT rows")
    max_length: int = help_field(1024, "perplexity suite: longest sequence in tokens (longer ones are cut)")
    # winrate
    prompts: str | None = help_field(None, "winrate suite: prompts both models answer")
    baseline_model: str | None = help_field(None, "winrate suite: the baseline model (generates its answers)")
    baseline_outputs: list[str] = help_field([], "winrate suite: the baseline's answers (generation files)")
    # judge (winrate, and safety with --safety-classifier judge)
    judge_model: str | None = help_field(None, "judge: a local model, or the model name sent to --judge-url",
                                         aliases=["judge"])
    judge_url: str | None = help_field(None, "judge: OpenAI-compatible endpoint")
    api_key_env: str = help_field("OPENAI_API_KEY", "judge: environment variable holding the API key")
    judge_template: str = help_field("pairwise", "winrate judge template (name or .yaml path)")
    judge_max_new_tokens: int = help_field(256, "judge: longest reply in tokens", aliases=["judge_max_tokens"])
    judge_concurrency: int = help_field(4, "judge: HTTP requests in flight")
    judge_timeout: float = help_field(60.0, "judge: HTTP timeout in seconds")
    judge_max_retries: int = help_field(3, "judge: HTTP retries")
    # safety
    probes: str | None = help_field(None, "safety suite: probes JSONL (default: the shipped suite)")
    jailbreaks: bool = help_field(True, "safety suite: add jailbreak-wrapped copies of harmful probes")
    safety_classifier: str = help_field("keyword", "safety suite: refusal classifier", choices=["keyword", "judge"])
    # harness (EleutherAI lm-evaluation-harness; pip install 'posttrain[harness]')
    harness: list[str] = help_field([], "lm-evaluation-harness tasks or groups, comma- or space-separated "
                                    "(mmlu,hellaswag); implies --suite harness")
    harness_include: list[str] = help_field([], "harness: folders of your own task YAML files")
    harness_num_fewshot: int | None = help_field(None, "harness: few-shot examples (default: each task's own)",
                                                 range=AT_LEAST_0)
    harness_chat_template: bool = help_field(False, "harness: wrap prompts in the model's chat template "
                                             "(instruction-tuned models)")


def validate(cfg: EvalConfig) -> list[str]:
    """Check the options that need no file access; returns the suites in run order."""
    if cfg.harness and "harness" not in cfg.suite:
        cfg.suite = [*cfg.suite, "harness"]  # --harness TASKS alone is enough
    if not cfg.suite:
        raise ConfigError("suite", f"name one or more suites: --suite {' '.join(SUITES)}")
    if not (cfg.model or cfg.outputs):
        raise ConfigError("model", "give --model (or --outputs FILE to score existing generations)")
    validate_ranges(cfg)  # the declared ranges (config.py), also for an EvalConfig built in code
    if cfg.num_samples > 1 and cfg.temperature == 0:
        raise ConfigError("temperature", "--num-samples > 1 needs sampling (temperature > 0): greedy samples are identical")
    if cfg.judge_url and not cfg.judge_model:
        raise ConfigError("judge_model", "required with --judge-url: the model name the server serves")
    return [name for name in SUITES if name in cfg.suite]


def is_run_dir(path: str) -> bool:
    """A posttrain run directory (a `final/` model inside, not itself a model directory)."""
    p = Path(path)
    return (p / "final").is_dir() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists()


def default_output_dir(cfg: EvalConfig) -> str:
    """A run directory given as --model keeps its results beside its checkpoints (so `--compare runs/a runs/b`
    finds them); any other model's go to eval/<name>, never into a model directory."""
    if cfg.output_dir:
        return cfg.output_dir
    if cfg.model and is_run_dir(cfg.model):
        return cfg.model
    label = cfg.model or "outputs"
    return os.path.join("eval", re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label).name or label))


def build_judge(cfg: EvalConfig):
    """The judge backend: an HTTP endpoint when --judge-url is given, else a local model."""
    if cfg.judge_url:
        from ..rollout.chat import HttpChatBackend

        return HttpChatBackend(cfg.judge_url, cfg.judge_model or "", api_key_env=cfg.api_key_env,
                               timeout=cfg.judge_timeout, max_retries=cfg.judge_max_retries,
                               concurrency=cfg.judge_concurrency)
    from ..rollout.chat import LocalChatBackend

    return LocalChatBackend.from_name(cfg.judge_model or "", batch_size=cfg.batch_size, device=cfg.device)


def build_context(cfg: EvalConfig, log: Callable[[str], None], judge_backend=None) -> SuiteContext:
    """Responders for the model and the baseline (generation files are read and checked here)."""
    def model_responder(name: str) -> ModelResponder:
        return ModelResponder(name, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p,
                              template=cfg.template, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed, log=log)

    model = model_responder(cfg.model) if cfg.model else None
    responder = OutputsResponder(cfg.outputs, cfg.model) if cfg.outputs else model
    baseline = None
    if "winrate" in cfg.suite:
        if cfg.baseline_outputs:
            baseline = OutputsResponder(cfg.baseline_outputs, cfg.baseline_model, option="baseline_outputs")
        elif model is not None and cfg.baseline_model == cfg.model:
            baseline = model  # the same weights: load them once
        else:
            baseline = model_responder(cfg.baseline_model or "")
    factory = (lambda: judge_backend) if judge_backend is not None else (lambda: build_judge(cfg))
    return SuiteContext(cfg, responder, model, baseline, factory if (cfg.judge_model or judge_backend) else None, log,
                        owns_judge=judge_backend is None)


def check_outputs_cover(ctx: SuiteContext, prepared: dict[str, Any]) -> None:
    """With --outputs / --baseline-outputs, every prompt must have its responses before anything runs."""
    for name, data in prepared.items():
        items = getattr(data, "items", None)
        if items is None:
            continue
        if isinstance(ctx.responder, OutputsResponder):
            ctx.responder.lookup(items, n=ctx.cfg.num_samples if name == "task" else 1)
        if name == "winrate" and isinstance(ctx.baseline, OutputsResponder):
            ctx.baseline.lookup(items)


def run_eval(cfg: EvalConfig, *, judge_backend=None, log: Callable[[str], None] = log_err,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the chosen suites; write results.json, generations and the config; return the results document.

    `judge_backend` overrides the judge the config names (any `ChatBackend`, e.g. in tests).
    """
    suites = validate(cfg)
    prepared = {name: SUITES[name][0](cfg) for name in suites}  # every input checked before any model loads
    ctx = build_context(cfg, log, judge_backend)
    check_outputs_cover(ctx, prepared)
    out_dir = default_output_dir(cfg)
    run = cfg.run_name or Path(os.path.abspath(out_dir)).name
    os.makedirs(out_dir, exist_ok=True)
    save_config(cfg, os.path.join(out_dir, "eval_config.yaml"))
    meta: dict[str, Any] = {"model": ctx.responder.name if ctx.responder else cfg.model, "suites": {},
                            "generation": {}, "confidence": cfg.confidence}
    metrics, started = [], time.perf_counter()
    try:
        for name in suites:
            log(f"suite {name} ...")
            result = SUITES[name][1](prepared[name], ctx)
            rows_file = "perplexity_items.jsonl" if name == "perplexity" else f"generations_{name}.jsonl"
            write_jsonl(os.path.join(out_dir, rows_file), result.rows)
            for filename, rows in result.files.items():
                write_jsonl(os.path.join(out_dir, filename), rows)
            metrics += result.metrics
            meta["suites"][name] = {**result.info, "rows_file": rows_file}
            for source in (ctx.responder, ctx.baseline):
                for label, stats in (getattr(source, "stats", None) or {}).items():
                    meta["generation"][label] = stats.as_dict()
            meta["seconds"] = round(time.perf_counter() - started, 1)
            write_results(os.path.join(out_dir, RESULTS_FILENAME), run, metrics, meta)
    finally:
        ctx.close()
    doc = write_results(os.path.join(out_dir, RESULTS_FILENAME), run, metrics, meta)
    echo(format_metrics_table(metrics))
    for label, stats in meta["generation"].items():
        if stats["seconds"]:
            echo(f"generation {label}: {stats['responses']} responses, {stats['tokens']} tokens, "
                 f"{stats['tokens_per_s']} tokens/s")
    echo(f"wrote {os.path.join(out_dir, RESULTS_FILENAME)}")
    return doc


def run_compare(cfg: EvalConfig, echo: Callable[[str], None] = print) -> list[Any]:
    """Print the comparison table; with --output-dir also write it as comparison.json."""
    from .compare import compare_files, comparison_legend
    from .results import json_safe

    if len(cfg.compare) != 2:
        raise ConfigError("compare", f"give exactly two runs (results files or run directories), got {len(cfg.compare)}")
    table, rows = compare_files(cfg.compare[0], cfg.compare[1], seed=cfg.seed)
    echo(table)
    echo(comparison_legend(rows))
    if cfg.output_dir:
        path = os.path.join(cfg.output_dir, COMPARISON_FILENAME)
        write_json(path, json_safe({"a": cfg.compare[0], "b": cfg.compare[1], "rows": [r.to_dict() for r in rows]}))
        echo(f"wrote {path}")
    return rows


def main(argv: list[str]) -> int:
    cfg = parse_config(EvalConfig, argv, prog="posttrain eval", description=__doc__.splitlines()[0])
    if cfg.compare:
        run_compare(cfg)
    else:
        run_eval(cfg)
    return 0
