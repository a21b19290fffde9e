"""The `harness` suite of `posttrain eval`: EleutherAI's lm-evaluation-harness tasks on a posttrain model.

    posttrain eval --model runs/dpo --harness mmlu,hellaswag
    posttrain eval --model runs/sft --harness my_task --harness-include tasks/   # your own task YAMLs

Standard benchmarks (MMLU, HellaSwag, ARC, GSM8K, ...) are run by the harness itself, not by
copies of them: posttrain loads the model as it loads any (alias, directory, run directory,
LoRA adapter, .gguf) and hands the loaded model to the harness's Hugging Face wrapper. Needs
`pip install 'posttrain[harness]'`; the harness fetches its datasets from the hub on first use.

Each metric the harness reports becomes a `MetricResult` named `harness/<task>/<metric>` (with
`/<filter>` when the task filters answers, e.g. gsm8k's `strict-match`), so it sits in the same
results.json, report and `--compare` table as posttrain's own suites, with an interval:
- a metric whose per-document values are 0/1 and average to the harness's number (accuracy,
  exact match; also a group such as mmlu, whose documents are its subtasks') is a proportion
  with a Wilson interval and per-document outcomes, so `--compare` pairs the two runs' documents;
- other per-document means (a score in [0, 1] per document) keep their values, bootstrap interval;
- anything else (corpus BLEU, perplexity) gets the harness's standard error as a normal interval,
  value +- z * stderr.
"""
from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .results import MetricResult, mean_result, proportion_result
from .suites import SuiteContext, SuiteResult

if TYPE_CHECKING:  # pragma: no cover
    from .run import EvalConfig

INSTALL_HINT = "pip install 'posttrain[harness]'"


def task_names(values: list[str]) -> list[str]:
    """`["mmlu,hellaswag", "arc_easy"]` -> `["mmlu", "hellaswag", "arc_easy"]` (order kept, no repeats)."""
    names = [name for value in values for name in re.split(r"[,\s]+", value) if name]
    return list(dict.fromkeys(names))


@dataclass
class HarnessPlan:
    tasks: list[str]
    task_manager: Any  # lm_eval.tasks.TaskManager


def task_manager_for(tasks: list[str], include: list[str]):
    """A TaskManager that knows `tasks`. Indexing the harness's own thousands of task files takes a
    minute or more, so when every task is one of the `include` folders' only those are indexed."""
    from lm_eval.tasks import TaskManager

    if include:
        local = TaskManager(include_path=include, include_defaults=False, verbosity="ERROR")
        if all(task in local.all_tasks for task in tasks):
            return local
    return TaskManager(include_path=include or None, verbosity="ERROR")


def prepare_harness(cfg: "EvalConfig") -> HarnessPlan:
    """Check that lm_eval is installed and knows every task, before any model is loaded."""
    tasks = task_names(cfg.harness)
    if not cfg.model:
        raise ConfigError("model", "the harness suite runs a model: give --model (it cannot score --outputs files)")
    if not tasks:
        raise ConfigError("harness", "name one or more lm-evaluation-harness tasks, e.g. --harness mmlu,hellaswag")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("harness", f"lm-evaluation-harness is not installed ({INSTALL_HINT})") from None
    for folder in cfg.harness_include:
        if not Path(folder).is_dir():
            raise ConfigError("harness_include", f"{folder}: not a folder of task YAML files")
    manager = task_manager_for(tasks, cfg.harness_include)
    for task in tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError("harness", f"unknown lm-evaluation-harness task '{task}'{hint}")
    return HarnessPlan(tasks, manager)


def run_harness(plan: HarnessPlan, ctx: SuiteContext) -> SuiteResult:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    cfg = ctx.cfg
    model, tokenizer = ctx.model.model_and_tokenizer()
    device = str(next(model.parameters()).device)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device)
    output = lm_eval.simple_evaluate(
        model=wrapped, tasks=plan.tasks, task_manager=plan.task_manager, num_fewshot=cfg.harness_num_fewshot,
        limit=cfg.limit or None, log_samples=True, apply_chat_template=cfg.harness_chat_template,
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
        bootstrap_iters=1000, verbosity="ERROR")
    metrics = harness_metrics(output, cfg.confidence, seed=cfg.seed)
    rows = [sample_row(task, sample) for task, samples in output.get("samples", {}).items() for sample in samples]
    info = {"tasks": plan.tasks, "lm_eval_version": output.get("lm_eval_version"), "n-shot": output.get("n-shot"),
            "versions": output.get("versions")}
    return SuiteResult("harness", metrics, rows, info=_plain(info))


def harness_metrics(output: dict[str, Any], confidence: float = 0.95, seed: int = 0) -> list[MetricResult]:
    """`simple_evaluate`'s output -> one MetricResult per (task or group, metric, filter)."""
    samples = output.get("samples", {})
    higher = output.get("higher_is_better", {})
    members = {group: list(subtasks) for group, subtasks in output.get("group_subtasks", {}).items()}
    metrics = []
    for task, table in output.get("results", {}).items():
        for key, value in table.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not _is_number(value):
                continue
            name = f"harness/{task}/{metric}" + ("" if filter_name == "none" else f"/{filter_name}")
            values, ids = document_values(task, metric, filter_name, samples, members)
            stderr = table.get(f"{metric}_stderr,{filter_name}")
            better = bool(higher.get(task, {}).get(metric, True))
            metrics.append(metric_result(name, float(value), values, ids, stderr, confidence, better, seed))
    return metrics


def document_values(task: str, metric: str, filter_name: str, samples: dict[str, list[dict]],
                    members: dict[str, list[str]]) -> tuple[list[float], list[str]]:
    """Per-document values of `metric` in `task`, or in every leaf task of a group, with their ids."""
    values, ids = [], []
    for leaf in _leaves(task, members):
        for sample in samples.get(leaf, []):
            if sample.get("filter", "none") != filter_name or not _is_number(sample.get(metric)):
                return [], []
            values.append(float(sample[metric]))
            ids.append(f"{leaf}/{sample['doc_id']}")
    return values, ids


def _leaves(task: str, members: dict[str, list[str]]) -> list[str]:
    if task not in members:
        return [task]
    return [leaf for sub in members[task] for leaf in _leaves(sub, members)]


def metric_result(name: str, value: float, values: list[float], ids: list[str], stderr: Any, confidence: float,
                  higher_is_better: bool, seed: int) -> MetricResult:
    """The best-founded interval the harness's output allows (see the module docstring)."""
    extra = {"stderr": float(stderr)} if _is_number(stderr) else {}
    matches = bool(values) and math.isclose(sum(values) / len(values), value, rel_tol=1e-9, abs_tol=1e-12)
    if matches and all(v in (0.0, 1.0) for v in values):
        return proportion_result(name, [v == 1.0 for v in values], confidence, item_ids=ids,
                                 higher_is_better=higher_is_better, **extra)
    if matches:
        return mean_result(name, values, confidence, item_ids=ids, higher_is_better=higher_is_better, seed=seed,
                           **extra)
    ci = None
    if "stderr" in extra and math.isfinite(value):
        z = NormalDist().inv_cdf((1 + confidence) / 2)
        ci = (value - z * extra["stderr"], value + z * extra["stderr"])
    return MetricResult(name=name, value=value, kind="corpus", n=len(values) or 0, ci=ci, confidence=confidence,
                        higher_is_better=higher_is_better, extra=extra)


def sample_row(task: str, sample: dict[str, Any]) -> dict[str, Any]:
    """One generations-file row per document: the prompt the harness built, its target, the model's answer."""
    arguments = sample.get("arguments") or [[""]]
    first = arguments[0] if isinstance(arguments, (list, tuple)) and arguments else [""]
    prompt = first[0] if isinstance(first, (list, tuple)) and first else first
    metrics = {key: sample[key] for key in sample.get("metrics", []) if key in sample}
    row = {"id": f"{task}/{sample.get('doc_id')}", "task": task, "prompt": str(prompt)}
    # Log-likelihood tasks (multiple choice) ask one (context, continuation) per choice.
    if all(isinstance(a, (list, tuple)) and len(a) == 2 and all(isinstance(x, str) for x in a) for a in arguments):
        row["choices"] = [continuation for _, continuation in arguments]
    return _plain({**row, "target": sample.get("target"), "response": sample.get("filtered_resps"),
                   "filter": sample.get("filter"), **metrics})


def _is_number(value: Any) -> bool:
    """A real number (numpy scalars too), not a bool nor the harness's "N/A"."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _plain(obj: Any) -> Any:
    """numpy scalars and tuples -> JSON-ready Python values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
