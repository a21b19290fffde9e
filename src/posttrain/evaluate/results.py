"""The evaluation results document: one `MetricResult` per metric, as JSON.

A results JSON looks like

    {"format": "posttrain.eval/1", "run": "sft-v2", "meta": {...},
     "metrics": {"bleu": {...MetricResult...}, "safety/harmful/refusal_rate": {...}}}

Each metric keeps what a later comparison needs to put an interval on a
*difference* between two runs, not just the headline number:

- kind "proportion": `successes` of `n` (refusal rate, accuracy). `per_item` holds
  the 0/1 outcomes and `item_ids` their items; two runs over the same items are
  compared as paired data (Newcombe's paired interval, exact McNemar test), others
  with Newcombe's interval for independent samples. Both fields are optional, so
  older results files still read.
- kind "mean": `per_item` values (pass@k per problem, win score per item in
  {0, 0.5, 1}, ROUGE F1 per item). Compared by bootstrapping the mean difference
  (paired when both runs list the same `item_ids`).
- kind "corpus": a score that is not a mean of item scores (corpus BLEU, chrF,
  perplexity). `stats` holds per-item sufficient statistics that add up over items
  and `scorer` names the function that turns their sum into the score; comparison
  bootstraps items and re-scores.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import InputError
from ..jsonl import write_json
from .intervals import bootstrap_mean_interval, wilson_interval

FORMAT = "posttrain.eval/1"
KINDS = ("proportion", "mean", "corpus")
RESULTS_FILENAME = "results.json"


@dataclass
class MetricResult:
    """One metric of one run. `ci` is the interval on `value` at `confidence`."""

    name: str
    value: float
    kind: str
    n: int
    ci: tuple[float, float] | None = None
    confidence: float = 0.95
    higher_is_better: bool = True
    successes: float | None = None
    per_item: list[float] | None = None
    item_ids: list[str] | None = None
    stats: list[list[float]] | None = None
    scorer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        if row["ci"] is not None:
            row["ci"] = list(row["ci"])
        return {k: v for k, v in row.items() if v is not None and v != {}}


def proportion_result(name: str, outcomes: Sequence[bool], confidence: float = 0.95,
                      item_ids: Sequence[str] | None = None, higher_is_better: bool = True,
                      **extra: Any) -> MetricResult:
    """A rate with its Wilson interval, keeping the per-item 0/1 outcomes."""
    flags = [1.0 if bool(x) else 0.0 for x in outcomes]
    n, k = len(flags), sum(flags)
    return MetricResult(name=name, value=k / n if n else float("nan"), kind="proportion", n=n,
                        ci=wilson_interval(k, n, confidence), confidence=confidence,
                        higher_is_better=higher_is_better, successes=k, per_item=flags,
                        item_ids=list(item_ids) if item_ids is not None else None, extra=dict(extra))


def mean_result(name: str, values: Sequence[float], confidence: float = 0.95, item_ids: Sequence[str] | None = None,
                higher_is_better: bool = True, seed: int = 0, n_resamples: int = 2000, **extra: Any) -> MetricResult:
    """A mean of per-item values with a seeded percentile-bootstrap interval."""
    items = [float(v) for v in values]
    if not items:
        return MetricResult(name=name, value=float("nan"), kind="mean", n=0, confidence=confidence,
                            higher_is_better=higher_is_better, per_item=[], extra=dict(extra))
    ci = bootstrap_mean_interval(items, confidence, n_resamples, seed)
    return MetricResult(name=name, value=sum(items) / len(items), kind="mean", n=len(items), ci=ci,
                        confidence=confidence, higher_is_better=higher_is_better, per_item=items,
                        item_ids=list(item_ids) if item_ids is not None else None, extra=dict(extra))


def results_document(run: str, metrics: Sequence[MetricResult], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready results document for a run."""
    return {"format": FORMAT, "run": run, "meta": dict(meta or {}),
            "metrics": {m.name: m.to_dict() for m in metrics}}


def write_results(path: str | os.PathLike, run: str, metrics: Sequence[MetricResult],
                  meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the results document atomically and return it."""
    doc = results_document(run, metrics, meta)
    write_json(path, json_safe(doc))
    return doc


def json_safe(obj: Any) -> Any:
    """JSON has no NaN: write None instead so other tools can read the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_results(path: str | os.PathLike) -> tuple[str, dict[str, MetricResult]]:
    """Read a results JSON (or a run directory holding `results.json`) -> (run name, metrics).

    Every problem is an `InputError` naming the file and the field, e.g.
    `out/results.json: field 'metrics.bleu.kind': expected one of proportion, mean, corpus`.
    """
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_FILENAME)
    if not os.path.exists(path):
        raise InputError(path, None, None, "file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputError(path, exc.lineno, None, f"malformed JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise InputError(path, None, None, "file is not valid UTF-8 text") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
        raise InputError(path, None, "metrics", "expected a results JSON with a 'metrics' mapping")
    run = str(doc.get("run") or os.path.basename(os.path.dirname(os.path.abspath(path))))
    metrics = {name: _metric_from_dict(path, name, row) for name, row in doc["metrics"].items()}
    return run, metrics


def _metric_from_dict(path: str, name: str, row: Any) -> MetricResult:
    where = f"metrics.{name}"
    if not isinstance(row, dict):
        raise InputError(path, None, where, "expected an object")
    names = {f.name for f in dataclasses.fields(MetricResult)}
    unknown = sorted(set(row) - names)
    if unknown:
        raise InputError(path, None, f"{where}.{unknown[0]}", "unknown field")
    if row.get("kind") not in KINDS:
        raise InputError(path, None, f"{where}.kind", f"expected one of {', '.join(KINDS)}, got {row.get('kind')!r}")
    for key in ("value", "n"):
        if key not in row:
            raise InputError(path, None, f"{where}.{key}", "missing")
    value = row["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InputError(path, None, f"{where}.value", f"expected a number, got {value!r}")
    if isinstance(row["n"], bool) or not isinstance(row["n"], int) or row["n"] < 0:
        raise InputError(path, None, f"{where}.n", f"expected a count, got {row['n']!r}")
    ci = row.get("ci")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)):
        raise InputError(path, None, f"{where}.ci", "expected [low, high]")
    per_item = row.get("per_item")
    if per_item is not None and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in per_item):
        raise InputError(path, None, f"{where}.per_item", "expected a list of numbers")
    if row["kind"] == "proportion" and not isinstance(row.get("successes"), (int, float)):
        raise InputError(path, None, f"{where}.successes", "a proportion needs its count of successes")
    if row["kind"] == "corpus" and row.get("stats") is not None and not row.get("scorer"):
        raise InputError(path, None, f"{where}.scorer", "corpus statistics need the name of their scorer")
    ids = row.get("item_ids")
    if ids is not None and per_item is not None and len(ids) != len(per_item):
        raise InputError(path, None, f"{where}.item_ids", f"{len(ids)} ids for {len(per_item)} per-item values")
    values = dict(row, name=name, value=float("nan") if value is None else float(value))
    if ci is not None:
        values["ci"] = (float(ci[0]), float(ci[1]))
    return MetricResult(**values)


def format_metrics_table(metrics: Sequence[MetricResult]) -> str:
    """A plain-text table: metric, value, interval, n."""
    rows = [("metric", "value", "interval", "n")]
    for m in metrics:
        ci = f"[{format_number(m.ci[0])}, {format_number(m.ci[1])}]" if m.ci else "-"
        rows.append((m.name, format_number(m.value), ci, str(m.n)))
    return render_table(rows)


def format_number(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-align the first column, right-align the rest; a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
