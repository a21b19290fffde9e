"""The model-facing suites of `posttrain eval`: reference metrics, verifiable tasks, perplexity.

Each suite is two functions:

    prepare_X(cfg) -> data          read and check every input row (no model yet), so bad
                                    input stops the run before anything slow happens
    run_X(data, ctx) -> SuiteResult generate (or score) and compute the metrics

`SuiteResult.rows` is written as the suite's generations JSONL: one row per response
with the item's id, prompt, response, and what the metric saw (reference, verifier
score and reason, ...). Metric names start with the suite (`reference/bleu`,
`task/arithmetic/accuracy`, `perplexity`), so several suites share one results.json.
The judged suites (win-rate, safety) are in `judged_suites.py`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..data import get_template
from ..data.formats import parse_row
from ..data.options import read_kwargs
from ..data.prompts import parse_prompt
from ..data.readers import read_rows
from ..data.tokenize import IGNORE_INDEX, tokenize_conversation
from ..errors import ConfigError, InputError
from ..records import Conversation
from ..rollout.rewards import BUILTIN_REWARDS, TASKS, resolve_reward, score_batch, task_file
from .accuracy import accuracy, mean_pass_at_k, perplexity_result
from .reference import reference_metrics
from .responders import EvalItem, ModelResponder, OutputsResponder, Response, log_err
from .results import MetricResult, mean_result

if TYPE_CHECKING:  # pragma: no cover
    from .run import EvalConfig

REFERENCE_FIELDS = ("reference", "references", "answer", "output", "completion")
# Which record field each built-in verifier reads (checked before any generation).
VERIFIER_FIELDS = {"math": "answer", "exact": "answer", "sort": "answer", "regex": "pattern",
                   "json_schema": "schema", "code": "tests", "answer_format": None,
                   "math_lenient": "answer", "sort_lenient": "answer", "answer_format_lenient": None}
# Fields that identify a verifier when neither --verifier, a `verifier` field nor a known `task` does.
FIELD_VERIFIERS = (("tests", "code"), ("schema", "json_schema"), ("pattern", "regex"))


@dataclass
class SuiteResult:
    suite: str
    metrics: list[MetricResult]
    rows: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)  # goes into results.json meta.suites
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # more JSONL files to write


@dataclass
class SuiteContext:
    """What suites share: the config, who answers, and lazily built judges/models."""

    cfg: "EvalConfig"
    responder: ModelResponder | OutputsResponder | None
    model: ModelResponder | None  # the evaluated model itself (perplexity needs its weights)
    baseline: ModelResponder | OutputsResponder | None = None
    judge_factory: Callable[[], Any] | None = None
    log: Callable[[str], None] = log_err
    owns_judge: bool = True
    _judge: Any = None

    def close(self) -> None:
        """Close a judge this context built (an HTTP client); one passed in belongs to the caller."""
        if self._judge is not None and self.owns_judge and hasattr(self._judge, "close"):
            self._judge.close()

    def judge(self):
        if self._judge is None:
            if self.judge_factory is None:
                raise ConfigError("judge_model", "this suite needs a judge: --judge-model NAME (a local model) "
                                                 "or --judge-url URL --judge-model NAME")
            self._judge = self.judge_factory()
        return self._judge

    def answer(self, items: list[EvalItem], label: str, n: int = 1,
               temperature: float | None = None) -> list[list[Response]]:
        if self.responder is None:
            raise ConfigError("model", f"the {label} suite needs responses: give --model or --outputs FILE")
        temp = self.cfg.temperature if temperature is None else temperature
        return self.responder.respond(items, n=n, temperature=temp or 0.0, label=label)


def prefixed(prefix: str, metric: MetricResult) -> MetricResult:
    return dataclasses.replace(metric, name=f"{prefix}/{metric.name}")


def response_row(item: EvalItem, response: Response, sample: int = 0, **fields: Any) -> dict[str, Any]:
    """A generations-file row: readable by `--outputs` and by `posttrain judge`/`data` tools."""
    row = {**item.extra, "id": item.id, "prompt": item.prompt, "response": response.text, "sample": sample,
           "finish_reason": response.finish_reason}
    if response.tokens is not None:
        row["tokens"] = response.tokens
    return {**row, **fields}


def _where(where: str) -> tuple[str, int | None]:
    path, _, line = where.rpartition(":")
    return (path, int(line)) if line.isdigit() else (where, None)


def load_items(path: str, limit: int = 0, **read: Any) -> list[tuple[EvalItem, dict[str, Any], str]]:
    """(item, raw row, "FILE:LINE") for each prompt row; ids from an `id` field, else "#N" (row number).
    `read` (split, columns, max_line_bytes) goes to `read_rows`."""

    out = []
    for index, (where, raw) in enumerate(read_rows(path, **read), start=1):
        prompt = parse_prompt(raw, where)
        item_id = str(raw["id"]) if raw.get("id") is not None else f"#{index}"
        out.append((EvalItem(item_id, prompt.prompt, {k: v for k, v in prompt.extra.items() if k != "id"}), raw, where))
        if limit and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------------------------------ reference

@dataclass
class ReferenceData:
    items: list[EvalItem]  # extra["reference"]: a string, or a list of strings


def prepare_reference(cfg: "EvalConfig") -> ReferenceData:
    """Prompts with reference answers; every row must carry one (a string or a list of strings)."""
    if not cfg.references:
        raise ConfigError("references", "the reference suite needs a prompts file with reference answers "
                                        "(--references FILE; fields reference, answer, output or completion)")
    items = []
    for item, raw, where in load_items(cfg.references, cfg.limit, **read_kwargs(cfg)):
        name = next((f for f in REFERENCE_FIELDS if raw.get(f) is not None), None)
        if name is None:
            raise InputError(*_where(where), "reference", f"no reference answer (expected one of "
                                                          f"{', '.join(REFERENCE_FIELDS)})")
        values = raw[name] if isinstance(raw[name], list) else [raw[name]]
        if not values or any(isinstance(v, (dict, list)) for v in values):
            raise InputError(*_where(where), name, "expected a text reference or a list of them")
        refs = [str(v) for v in values]
        item.extra["reference"] = refs if len(refs) > 1 else refs[0]
        items.append(item)
    return ReferenceData(items)


def run_reference(data: ReferenceData, ctx: SuiteContext) -> SuiteResult:
    items = data.items
    responses = [r[0] for r in ctx.answer(items, "reference")]
    predictions = [r.text for r in responses]
    references = [item.extra["reference"] for item in items]
    metrics = reference_metrics(predictions, references, ctx.cfg.confidence, [i.id for i in items], ctx.cfg.seed,
                                bertscore_model=ctx.cfg.bertscore_model, bertscore_layers=ctx.cfg.bertscore_layers)
    rows = [response_row(item, response) for item, response in zip(items, responses)]
    return SuiteResult("reference", [prefixed("reference", m) for m in metrics], rows,
                       {"file": ctx.cfg.references, "items": len(items)})


# ----------------------------------------------------------------------------------------------- task

@dataclass
class TaskData:
    name: str
    path: str
    items: list[EvalItem]
    verifiers: list[str]  # per item


def resolve_task(task: str, split: str) -> tuple[str, str]:
    """A shipped task name (`arithmetic`) -> its file for `split`; a path -> (file stem, path)."""

    if task in TASKS:
        return task, str(task_file(task, split))
    if Path(task).exists():
        return Path(task).stem, task
    raise ConfigError("task", f"'{task}' is neither a shipped task ({', '.join(sorted(TASKS))}) nor an existing file")


def check_verifier(name: str, option: str = "verifier") -> str:
    """A built-in verifier name, or a `module:function` that is imported now (so a typo fails before generating)."""

    if name not in BUILTIN_REWARDS and ":" not in name:
        raise ConfigError(option, f"unknown verifier '{name}' (built-ins: {', '.join(sorted(BUILTIN_REWARDS))}; "
                                  "or a 'module:function')")
    resolve_reward(name)
    return name


def infer_verifier(raw: dict[str, Any]) -> str | None:
    """A row's verifier: its `verifier` field, else its `task` type, else a field only one verifier reads."""

    if isinstance(raw.get("verifier"), str):
        return raw["verifier"]
    if raw.get("task") in TASKS:
        return TASKS[raw["task"]]
    return next((verifier for key, verifier in FIELD_VERIFIERS if key in raw), None)


def prepare_task(cfg: "EvalConfig") -> TaskData:
    name, path = resolve_task(cfg.task, cfg.task_split)
    if cfg.verifier:
        check_verifier(cfg.verifier)
    items, verifiers = [], []
    # --split is for the user's eval data; a task names its split with --task-split or PATH:SPLIT.
    for item, raw, where in load_items(path, cfg.limit, **read_kwargs(cfg, split=False)):
        verifier = cfg.verifier or infer_verifier(raw)
        if verifier is None:
            raise InputError(*_where(where), "verifier", "cannot tell how to check this row: give --verifier "
                                                         "NAME, or a 'verifier' or known 'task' field")
        check_verifier(verifier)
        needed = VERIFIER_FIELDS.get(verifier)
        if needed and raw.get(needed) is None:
            raise InputError(*_where(where), needed, f"missing: the '{verifier}' verifier checks responses "
                                                     f"against it (a task file needs an {needed!r} per row)")
        items.append(item)
        verifiers.append(verifier)
    return TaskData(name, path, items, verifiers)


def score_responses(data: TaskData, responses: list[list[Response]]) -> list[list[tuple[float, str | None]]]:
    """(score, reason) per response, each verifier run once over all its rows (code runs concurrently)."""

    flat = [(i, j) for i, rs in enumerate(responses) for j in range(len(rs))]
    out: list[list[tuple[float, str | None]]] = [[(0.0, None)] * len(rs) for rs in responses]
    for verifier in sorted(set(data.verifiers)):
        picked = [(i, j) for i, j in flat if data.verifiers[i] == verifier]
        rows = [{**{k: v for k, v in data.items[i].extra.items() if k != "verifier"}, "prompt": data.items[i].prompt,
                 "response": responses[i][j].text} for i, j in picked]
        scored = score_batch({verifier: verifier}, rows)
        for (i, j), value, reason in zip(picked, scored.scores[verifier], scored.reasons[verifier]):
            out[i][j] = (value, reason)
    return out


def run_task(data: TaskData, ctx: SuiteContext) -> SuiteResult:
    cfg, prefix = ctx.cfg, f"task/{data.name}"
    n = cfg.num_samples
    temperature = cfg.temperature if cfg.temperature is not None else (0.8 if n > 1 else 0.0)
    responses = ctx.answer(data.items, "task", n=n, temperature=temperature)
    scores = score_responses(data, responses)
    correct = [[value >= 1.0 - 1e-9 for value, _ in per_item] for per_item in scores]
    ids = [item.id for item in data.items]
    unanswered = sum(1 for per_item in scores for _, reason in per_item if reason and reason.startswith("no "))
    extra = {"verifiers": {v: data.verifiers.count(v) for v in sorted(set(data.verifiers))},
             "unanswered": unanswered, "samples": n, "temperature": temperature}
    if n == 1:
        metrics = [accuracy([c[0] for c in correct], cfg.confidence, ids, name=f"{prefix}/accuracy")]
        metrics[0].extra.update(extra)
    else:
        counts = [(n, sum(c)) for c in correct]
        metrics = [prefixed(prefix, mean_pass_at_k(counts, k, cfg.confidence, ids, cfg.seed)) for k in range(1, n + 1)]
        for m in metrics:
            m.extra.update(extra)
    if any(0.0 < value < 1.0 for per_item in scores for value, _ in per_item):  # partial credit (code tests)
        metrics.append(mean_result(f"{prefix}/mean_score", [sum(v for v, _ in s) / len(s) for s in scores],
                                   cfg.confidence, ids, seed=cfg.seed))
    rows = [response_row(item, response, j, verifier=verifier, score=value, correct=value >= 1.0 - 1e-9,
                         reason=reason)
            for item, verifier, rs, ss in zip(data.items, data.verifiers, responses, scores)
            for j, (response, (value, reason)) in enumerate(zip(rs, ss))]
    return SuiteResult("task", metrics, rows, {"task": data.name, "file": data.path, "items": len(data.items),
                                               **extra})


# ----------------------------------------------------------------------------------------- perplexity

@dataclass
class TextItem:
    """Held-out text: plain `text` (every token after the first is scored) or a chat (assistant tokens only)."""

    id: str
    text: str | None = None
    conversation: Conversation | None = None


def prepare_perplexity(cfg: "EvalConfig") -> list[TextItem]:
    if not cfg.heldout:
        raise ConfigError("heldout", "the perplexity suite needs held-out data (--heldout FILE: rows with 'text', "
                                     "or chat/SFT rows, whose assistant tokens are scored)")
    if not cfg.model:
        raise ConfigError("model", "the perplexity suite scores text with a model's weights; give --model")
    items = []
    for index, (where, raw) in enumerate(read_rows(cfg.heldout, **read_kwargs(cfg)), start=1):
        item_id = str(raw["id"]) if raw.get("id") is not None else f"#{index}"
        if "text" in raw:
            if not isinstance(raw["text"], str) or not raw["text"].strip():
                raise InputError(*_where(where), "text", "expected non-empty text")
            items.append(TextItem(item_id, text=raw["text"]))
        else:
            _, record = parse_row(raw, where, kind="sft")
            items.append(TextItem(item_id, conversation=record))
        if cfg.limit and len(items) >= cfg.limit:
            break
    return items


def tokenize_for_perplexity(item: TextItem, tokenizer, template, max_length: int) -> tuple[list[int], list[bool], bool]:
    """(ids, scored mask, truncated). Text: all tokens but the first; chat: assistant tokens."""

    if item.text is not None:
        ids = list(tokenizer(item.text, add_special_tokens=True)["input_ids"])
        cut = len(ids) > max_length
        ids = ids[:max_length]
        return ids, [False] + [True] * (len(ids) - 1), cut
    example = tokenize_conversation(item.conversation, tokenizer, template, max_length, policy="truncate")
    full = tokenize_conversation(item.conversation, tokenizer, template, None)
    return example.input_ids, [label != IGNORE_INDEX for label in example.labels], len(full) > len(example)


def sequence_logprobs(model, batch: list[tuple[list[int], list[bool]]], pad_id: int) -> list[list[float]]:
    """Log-probs of the scored tokens of each sequence (right-padded into one batch)."""
    import torch

    from ..models.logprobs import response_logprobs

    width = max(len(ids) for ids, _ in batch)
    device = next(model.parameters()).device
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    scored = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, mask) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        scored[row, :len(ids)] = torch.tensor(mask)
    with torch.no_grad():
        lp = response_logprobs(model, input_ids.to(device), attention.to(device), response_mask=scored.to(device))
    lp = lp.logprobs.float().cpu()
    return [lp[row][scored[row]].tolist() for row in range(len(batch))]


def run_perplexity(items: list[TextItem], ctx: SuiteContext) -> SuiteResult:
    model, tokenizer = ctx.model.model_and_tokenizer()  # type: ignore[union-attr]
    template = get_template(ctx.cfg.template, tokenizer)
    encoded = [tokenize_for_perplexity(item, tokenizer, template, ctx.cfg.max_length) for item in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]))
    logprobs: list[list[float]] = [[] for _ in items]
    started, tokens, size = time.perf_counter(), 0, ctx.cfg.batch_size
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        for i, values in zip(chunk, sequence_logprobs(model, [encoded[i][:2] for i in chunk], pad_id)):
            logprobs[i] = values
            tokens += len(values)
        seconds = time.perf_counter() - started
        ctx.log(f"perplexity: {min(start + size, len(order))}/{len(order)} sequences, {tokens} tokens scored, "
                f"{tokens / max(seconds, 1e-9):.0f} tokens/s")
    metric = perplexity_result(logprobs, confidence=ctx.cfg.confidence, item_ids=[i.id for i in items],
                               seed=ctx.cfg.seed)
    truncated = sum(1 for _, _, cut in encoded if cut)
    metric.extra.update({"tokens": tokens, "truncated": truncated})
    rows = []
    for item, values in zip(items, logprobs):
        nll = -sum(values)
        rows.append({"id": item.id, "tokens": len(values), "nll": nll,
                     "perplexity": math.exp(nll / len(values)) if values else None})
    return SuiteResult("perplexity", [metric], rows, {"file": ctx.cfg.heldout, "items": len(items), "tokens": tokens,
                                                      "truncated": truncated})
