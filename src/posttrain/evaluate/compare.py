"""Side-by-side comparison of two runs' results JSONs, with intervals on the differences.

For each metric present in either run, difference = run B - run A, and its
interval (at the runs' confidence, default 0.95) is chosen by what was stored:

- proportion scored on the same items (both runs store per-item 0/1 outcomes
  under the same item ids, as `proportion_result` does): the paired 2x2 table of
  outcomes, Newcombe's paired score interval and an exact McNemar p-value;
- other proportions (successes of n): Newcombe's hybrid score interval (or Wald with
  `proportion_method="wald"`), treating the runs as independent samples;
- mean with per-item values: percentile bootstrap of the mean difference, paired
  (resampling item indices once) when both runs list the same `item_ids` in the
  same order, independent otherwise;
- corpus with per-item statistics and a known scorer (BLEU, chrF, perplexity):
  bootstrap over items, summing the statistics and re-scoring each resample,
  paired when the item ids match;
- anything else with an interval on both sides (e.g. the length-controlled
  win-rate): MOVER, which combines the two runs' own intervals;
- otherwise the difference alone.

An interval that excludes 0 is marked with `*` in the table; a `p` column
appears when some row has a test's p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .accuracy import perplexity_from_stats
from .intervals import (
    bootstrap_diff_interval,
    bootstrap_indices,
    mcnemar_exact_pvalue,
    mover_diff_interval,
    newcombe_diff_interval,
    newcombe_paired_diff_interval,
    wald_diff_interval,
)
from .reference import score_from_statistics
from .results import MetricResult, format_number, read_results, render_table

CORPUS_SCORERS: dict[str, Callable[[Sequence[float]], float]] = {
    "bleu": lambda summed: score_from_statistics("bleu", summed),
    "chrf": lambda summed: score_from_statistics("chrf", summed),
    "perplexity": perplexity_from_stats,
}
PROPORTION_INTERVALS = {"newcombe": newcombe_diff_interval, "wald": wald_diff_interval}


@dataclass
class Comparison:
    """One metric compared: values, difference (b - a), its interval and how it was computed."""

    metric: str
    value_a: float | None
    value_b: float | None
    difference: float | None = None
    ci: tuple[float, float] | None = None
    method: str = "-"
    higher_is_better: bool = True
    p_value: float | None = None
    paired_counts: dict[str, int] | None = None  # both / a_only / b_only / neither, for paired proportions

    @property
    def significant(self) -> bool:
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.value_a, "b": self.value_b, "difference": self.difference,
                "ci": list(self.ci) if self.ci else None, "method": self.method,
                "significant": self.significant, "higher_is_better": self.higher_is_better,
                "p_value": self.p_value, "paired_counts": self.paired_counts}


def _same_items(a: MetricResult, b: MetricResult) -> bool:
    return a.item_ids is not None and a.item_ids == b.item_ids


def paired_table(a: MetricResult, b: MetricResult) -> dict[str, int] | None:
    """The paired 2x2 table of two proportions' per-item outcomes, or None if they do not pair.

    They pair when both store 0/1 `per_item` outcomes (one per item, n of them) with
    `item_ids`, and the ids are the same list, or the same set of distinct ids in
    another order (matched by id). Results written before ids were stored, or scored
    on different items, do not pair and are compared as independent samples.
    """
    outcomes = []
    for m in (a, b):
        if m.per_item is None or m.item_ids is None or len(m.per_item) != m.n or len(m.item_ids) != m.n:
            return None
        if any(x not in (0, 1) for x in m.per_item):
            return None
        outcomes.append(m.per_item)
    out_a, out_b = outcomes
    if a.item_ids != b.item_ids:
        ids_a, ids_b = [str(i) for i in a.item_ids], [str(i) for i in b.item_ids]  # type: ignore[union-attr]
        if len(set(ids_a)) != len(ids_a) or set(ids_a) != set(ids_b) or len(ids_a) != len(ids_b):
            return None
        by_id = dict(zip(ids_b, out_b))
        out_b = [by_id[i] for i in ids_a]
    pairs = list(zip(out_a, out_b))
    return {"both": pairs.count((1, 1)), "a_only": pairs.count((1, 0)),
            "b_only": pairs.count((0, 1)), "neither": pairs.count((0, 0))}


def _compare_proportions(row: Comparison, a: MetricResult, b: MetricResult, conf: float, method: str) -> None:
    """Fill row's interval, method and (for paired data) McNemar p-value."""
    table = paired_table(a, b)
    if table is None:
        row.ci = PROPORTION_INTERVALS[method](a.successes, a.n, b.successes, b.n, conf)  # type: ignore[arg-type]
        row.method = method
        return
    row.paired_counts = table
    row.p_value = mcnemar_exact_pvalue(table["a_only"], table["b_only"])
    if method == "newcombe":
        row.ci = newcombe_paired_diff_interval(table["both"], table["a_only"], table["b_only"], table["neither"], conf)
        row.method = "paired newcombe, exact McNemar"
    else:  # an explicitly requested independent interval; the test is still the paired one
        row.ci = PROPORTION_INTERVALS[method](a.successes, a.n, b.successes, b.n, conf)  # type: ignore[arg-type]
        row.method = f"{method}, exact McNemar"


def _corpus_bootstrap(a: MetricResult, b: MetricResult, confidence: float, n_resamples: int,
                      seed: int) -> tuple[tuple[float, float], str]:
    score = CORPUS_SCORERS[a.scorer]  # type: ignore[index]
    stats_a, stats_b = np.asarray(a.stats, dtype=float), np.asarray(b.stats, dtype=float)
    paired = _same_items(a, b) and len(stats_a) == len(stats_b)
    idx_a = bootstrap_indices(len(stats_a), n_resamples, seed)
    idx_b = idx_a if paired else bootstrap_indices(len(stats_b), n_resamples, seed + 1)
    diffs = np.array([score(stats_b[ib].sum(axis=0)) - score(stats_a[ia].sum(axis=0))
                      for ia, ib in zip(idx_a, idx_b)])
    diffs = diffs[np.isfinite(diffs)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return (float(low), float(high)), "paired bootstrap" if paired else "bootstrap"


def compare_metric(a: MetricResult, b: MetricResult, confidence: float | None = None, n_resamples: int = 2000,
                   seed: int = 0, proportion_method: str = "newcombe") -> Comparison:
    """Difference b - a of one metric with the best interval the stored data allow."""
    conf = confidence or a.confidence
    row = Comparison(a.name, a.value, b.value, b.value - a.value, higher_is_better=a.higher_is_better)
    if a.kind != b.kind:
        row.method = f"kinds differ ({a.kind} vs {b.kind})"
    elif a.kind == "proportion" and a.n > 0 and b.n > 0:
        _compare_proportions(row, a, b, conf, proportion_method)
    elif a.kind == "mean" and a.per_item and b.per_item:
        paired = _same_items(a, b)
        row.ci = bootstrap_diff_interval(a.per_item, b.per_item, conf, n_resamples, seed, paired=paired)
        row.method = "paired bootstrap" if paired else "bootstrap"
    elif (a.kind == "corpus" and a.stats and b.stats and a.scorer == b.scorer and a.scorer in CORPUS_SCORERS):
        row.ci, row.method = _corpus_bootstrap(a, b, conf, n_resamples, seed)
    elif a.ci is not None and b.ci is not None and math.isfinite(a.value) and math.isfinite(b.value):
        row.ci = mover_diff_interval(a.value, a.ci, b.value, b.ci)
        row.method = "MOVER"
    return row


def compare_results(a: dict[str, MetricResult], b: dict[str, MetricResult], confidence: float | None = None,
                    n_resamples: int = 2000, seed: int = 0, proportion_method: str = "newcombe") -> list[Comparison]:
    """Compare every metric; ones present in only one run appear with the other side None."""
    if proportion_method not in PROPORTION_INTERVALS:
        raise ValueError(f"proportion_method must be one of {sorted(PROPORTION_INTERVALS)}")
    rows = []
    for name in list(a) + [n for n in b if n not in a]:
        if name in a and name in b:
            rows.append(compare_metric(a[name], b[name], confidence, n_resamples, seed, proportion_method))
        else:
            only = a.get(name) or b[name]
            rows.append(Comparison(name, a[name].value if name in a else None, b[name].value if name in b else None,
                                   method="only in " + ("A" if name in a else "B"),
                                   higher_is_better=only.higher_is_better))
    return rows


def format_comparison(rows: Sequence[Comparison], name_a: str = "A", name_b: str = "B") -> str:
    """Terminal table: metric | A | B | B - A | interval | [p] | method (`*`: interval excludes 0).

    The p column is shown only when some row has a p-value (paired proportions)."""
    with_p = any(r.p_value is not None for r in rows)
    header = ["metric", name_a, name_b, f"{name_b} - {name_a}", "interval"] + (["p"] if with_p else []) + ["method"]
    table = [tuple(header)]
    for r in rows:
        ci = f"[{format_number(r.ci[0])}, {format_number(r.ci[1])}]" + ("*" if r.significant else " ") if r.ci else "-"
        cells = [r.metric, format_number(r.value_a), format_number(r.value_b), format_number(r.difference), ci]
        cells += [format_number(r.p_value)] if with_p else []
        table.append(tuple(cells + [r.method]))
    return render_table(table)


def comparison_legend(rows: Sequence[Comparison]) -> str:
    """The line(s) printed under the table: how to read it."""
    text = "B - A with its interval; * marks an interval that excludes 0"
    if any(r.p_value is not None for r in rows):
        text += ("\npaired rows (same items in both runs): Newcombe's paired interval; p is the exact "
                 "McNemar test on the items whose outcome changed")
    return text


def compare_files(path_a: str, path_b: str, confidence: float | None = None, n_resamples: int = 2000,
                  seed: int = 0, proportion_method: str = "newcombe") -> tuple[str, list[Comparison]]:
    """Read two results JSONs (or run directories) -> (table text, comparison rows)."""
    run_a, metrics_a = read_results(path_a)
    run_b, metrics_b = read_results(path_b)
    rows = compare_results(metrics_a, metrics_b, confidence, n_resamples, seed, proportion_method)
    return format_comparison(rows, run_a, run_b), rows
