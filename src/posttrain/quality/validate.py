"""`posttrain data validate`: completeness, consistency, diversity and balance of a data file.

- completeness: per top-level field, how many rows have it, lack it, or have it empty
  (null, "", whitespace, [], {}); rows with no prompt text or no response text.
- consistency: rows that are the same item (same normalised prompt and the same set of
  responses, and the same annotator when rows carry one) but disagree on the label: a different
  preferred response, tie vs a winner, a different KTO label, or a different ranking.
  Different annotators disagreeing is not a data error - use `data agreement` for that.
- diversity: corpus-level distinct-1/distinct-2 (unique word n-grams / all word n-grams, Li et
  al. 2016) of prompts and responses; unique prompts; near-duplicate pairs among the distinct
  prompts (character-shingle Jaccard >= threshold, see near.py).
- balance: label counts (A/B/tie, KTO true/false), which side was shown first, prompt and
  response length distributions, and how often the preferred response is the longer one.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import ConfigError, InputError, PosttrainError
from ..jsonl import write_json
from .fields import Row, load_rows, prompt_of, responses_of, winner_of
from .heuristics import ngrams, word_count, words
from .near import near_pairs, normalise
from .table import format_table, json_safe

# ----------------------------------------------------------------------------------------------
# Completeness


def is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, dict)) and not value)


def completeness(rows: Sequence[tuple[int, Row]], path: str | None = None) -> dict[str, Any]:
    fields: dict[str, Counter] = defaultdict(Counter)
    no_prompt, no_response = [], []
    for line, row in rows:
        for key, value in row.items():
            fields[key]["present"] += 1
            fields[key]["empty"] += is_empty(value)
        if not prompt_of(row, path, line).strip():
            no_prompt.append(line)
        responses = responses_of(row, path, line)
        if not responses or any(not r.strip() for r in responses):
            no_response.append(line)
    n = len(rows)
    return {
        "fields": {k: {"present": c["present"], "missing": n - c["present"], "empty": c["empty"]}
                   for k, c in sorted(fields.items())},
        "rows_without_prompt": len(no_prompt), "rows_with_empty_response": len(no_response),
        "lines_without_prompt": no_prompt[:20], "lines_with_empty_response": no_response[:20],
    }


# ----------------------------------------------------------------------------------------------
# Consistency


def item_outcome(row: Row, path: str | None = None, line: int | None = None) -> tuple[tuple, Any] | None:
    """(item key, label outcome in terms of response texts) or None when the row has no label.

    The outcome names the preferred *text*, so the same pair shown as (x, y) and as (y, x) with
    winners A and B respectively is consistent.
    """
    prompt = normalise(prompt_of(row, path, line))
    responses = responses_of(row, path, line)
    key = (prompt, frozenset(normalise(r) for r in responses), str(row.get("annotator", "")))
    if "chosen" in row and "rejected" in row:
        return key, normalise(responses[0])
    if isinstance(row.get("label"), bool):
        return key, row["label"]
    winner = winner_of(row, path, line)
    if winner is not None and "response_a" in row and "response_b" in row:
        return key, "tie" if winner == "tie" else normalise(row["response_a" if winner == "A" else "response_b"])
    if "responses" in row and (row.get("ranking") or row.get("scores")):
        texts = [normalise(r) for r in responses]
        order = row.get("ranking") or sorted(range(len(texts)), key=lambda i: -row["scores"][i])
        return key, tuple(texts[int(i)] for i in order)
    return None


def consistency(rows: Sequence[tuple[int, Row]], path: str | None = None, examples: int = 5) -> dict[str, Any]:
    identical = Counter(repr(sorted(row.items(), key=lambda kv: kv[0])) for _, row in rows)
    groups: dict[tuple, list[tuple[int, Any]]] = defaultdict(list)
    for line, row in rows:
        found = item_outcome(row, path, line)
        if found is not None:
            groups[found[0]].append((line, found[1]))
    repeated = {k: v for k, v in groups.items() if len(v) > 1}
    conflicts = [v for v in repeated.values() if len({repr(o) for _, o in v}) > 1]
    return {
        "identical_rows": sum(c - 1 for c in identical.values()),
        "repeated_items": len(repeated),
        "conflicting_items": len(conflicts),
        "conflicts": [{"lines": [line for line, _ in v]} for v in conflicts[:examples]],
    }


# ----------------------------------------------------------------------------------------------
# Diversity


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique word n-grams / all word n-grams over the whole corpus (None if there are none)."""
    total, unique = 0, set()
    for text in texts:
        grams = ngrams(words(text), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else None


def diversity(prompts: Sequence[str], responses: Sequence[str], threshold: float = 0.8,
              examples: int = 5) -> dict[str, Any]:
    distinct: dict[str, str] = {}
    for p in prompts:
        if normalise(p):
            distinct.setdefault(normalise(p), p)
    unique = list(distinct.values())
    pairs = near_pairs(unique, threshold)
    return {
        "prompts": {"distinct_1": distinct_n(prompts, 1), "distinct_2": distinct_n(prompts, 2),
                    "unique": len(unique), "total": len(prompts)},
        "responses": {"distinct_1": distinct_n(responses, 1), "distinct_2": distinct_n(responses, 2),
                      "total": len(responses)},
        "near_duplicate_prompt_pairs": len(pairs),
        "prompts_with_near_duplicate": len({i for p in pairs for i in p[:2]}),
        "near_duplicate_examples": [{"a": unique[i][:80], "b": unique[j][:80], "similarity": s}
                                    for i, j, s in pairs[:examples]],
    }


# ----------------------------------------------------------------------------------------------
# Balance


def describe(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return {"min": float(arr.min()), "mean": float(arr.mean()), "median": float(np.median(arr)),
            "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}


def balance(rows: Sequence[tuple[int, Row]], path: str | None = None) -> dict[str, Any]:
    labels: Counter = Counter()
    first: Counter = Counter()
    prompt_words, response_words, preferred_longer = [], [], []
    for line, row in rows:
        prompt_words.append(word_count(prompt_of(row, path, line)))
        responses = responses_of(row, path, line)
        response_words += [word_count(r) for r in responses]
        winner = winner_of(row, path, line)
        if winner is not None:
            labels[winner] += 1
        elif isinstance(row.get("label"), bool):
            labels[str(row["label"]).lower()] += 1
        if isinstance(row.get("swapped"), bool):
            first["B" if row["swapped"] else "A"] += 1
        elif row.get("first") in ("A", "B"):
            first[row["first"]] += 1
        pair = None
        if "chosen" in row and "rejected" in row:
            pair = (responses[0], responses[1])
        elif winner in ("A", "B") and len(responses) >= 2:
            pair = (responses[0], responses[1]) if winner == "A" else (responses[1], responses[0])
        if pair and word_count(pair[0]) != word_count(pair[1]):
            preferred_longer.append(word_count(pair[0]) > word_count(pair[1]))
    return {
        "labels": dict(labels.most_common()),
        "shown_first": dict(first) or None,
        "prompt_words": describe(prompt_words),
        "response_words": describe(response_words),
        "preferred_is_longer": (sum(preferred_longer) / len(preferred_longer)) if preferred_longer else None,
        "pairs_with_length_difference": len(preferred_longer),
    }


# ----------------------------------------------------------------------------------------------
# `posttrain data validate`


@dataclass
class ValidateConfig(DataArgs):
    input: str = help_field("", "JSONL file to check (any row format the data tools read)")
    output: str | None = help_field(None, "also write the full report as JSON here")
    threshold: float = help_field(0.8, "Jaccard similarity at which two distinct prompts count as near duplicates")
    examples: int = help_field(5, "how many examples of each problem to list")
    strict: bool = help_field(False, "exit with status 1 when rows lack a prompt/response or labels conflict")


def validate_rows(rows: Sequence[tuple[int, Row]], path: str | None = None, threshold: float = 0.8,
                  examples: int = 5) -> dict[str, Any]:
    prompts = [prompt_of(row, path, line) for line, row in rows]
    responses = [r for line, row in rows for r in responses_of(row, path, line)]
    return {"input": path, "rows": len(rows), "completeness": completeness(rows, path),
            "consistency": consistency(rows, path, examples),
            "diversity": diversity(prompts, responses, threshold, examples), "balance": balance(rows, path)}


def problems(report: dict[str, Any]) -> list[str]:
    """The findings that --strict fails on."""
    c, k = report["completeness"], report["consistency"]
    out = []
    if c["rows_without_prompt"]:
        out.append(f"{c['rows_without_prompt']} rows without a prompt (lines {c['lines_without_prompt'][:5]})")
    if c["rows_with_empty_response"]:
        out.append(f"{c['rows_with_empty_response']} rows with a missing or empty response "
                   f"(lines {c['lines_with_empty_response'][:5]})")
    if k["conflicting_items"]:
        out.append(f"{k['conflicting_items']} items labelled inconsistently (lines {k['conflicts'][0]['lines']}, ...)")
    return out


def render(report: dict[str, Any]) -> str:
    c, k, d, b = (report[s] for s in ("completeness", "consistency", "diversity", "balance"))
    out = [format_table(["field", "present", "missing", "empty"],
                        [[f, v["present"], v["missing"], v["empty"]] for f, v in c["fields"].items()],
                        title=f"completeness ({report['rows']} rows)")]
    out.append(format_table(["check", "count"], [
        ["rows without prompt", c["rows_without_prompt"]], ["rows with empty response", c["rows_with_empty_response"]],
        ["identical rows (repeats)", k["identical_rows"]], ["items labelled more than once", k["repeated_items"]],
        ["items with conflicting labels", k["conflicting_items"]]], title="\nconsistency"))
    p, r = d["prompts"], d["responses"]
    out.append(format_table(["text", "total", "distinct-1", "distinct-2", "unique"], [
        ["prompts", p["total"], p["distinct_1"], p["distinct_2"], p["unique"]],
        ["responses", r["total"], r["distinct_1"], r["distinct_2"], ""]], title="\ndiversity"))
    out.append(f"near-duplicate prompt pairs (J >= {report['threshold']}): {d['near_duplicate_prompt_pairs']}")
    for e in d["near_duplicate_examples"]:
        out.append(f"  {e['similarity']:.2f}: {e['a']!r} ~ {e['b']!r}")
    stats = ("min", "mean", "median", "p95", "max")
    lengths = [[name, *(f"{b[key][s]:.1f}" if s == "mean" else f"{b[key][s]:g}" for s in stats)]
               for name, key in (("prompt words", "prompt_words"), ("response words", "response_words")) if b[key]]
    out.append(format_table(["length", "min", "mean", "median", "p95", "max"], lengths, title="\nbalance"))
    if b["labels"]:
        total = sum(b["labels"].values())
        out.append("labels: " + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in b["labels"].items()))
    if b["shown_first"]:
        out.append("shown first: " + ", ".join(f"{k} {v}" for k, v in sorted(b["shown_first"].items())))
    if b["preferred_is_longer"] is not None:
        out.append(f"preferred response is the longer one in {b['preferred_is_longer']:.0%} "
                   f"of {b['pairs_with_length_difference']} pairs with different lengths")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    cfg = parse_config(ValidateConfig, argv, prog="posttrain data validate", positional="input",
                       description="Completeness, consistency, diversity and balance of a data file.")
    if not cfg.input:
        raise PosttrainError("no input file given (posttrain data validate FILE)")
    if not 0 < cfg.threshold <= 1:
        raise ConfigError("threshold", f"must be in (0, 1], got {cfg.threshold}")
    rows = load_rows(cfg.input, **read_kwargs(cfg))
    if not rows:
        raise InputError(cfg.input, None, None, "no rows in the file")
    report = validate_rows(rows, cfg.input, cfg.threshold, cfg.examples)
    report["threshold"] = cfg.threshold
    report["problems"] = problems(report)
    print(render(report))
    for problem in report["problems"]:
        print(f"problem: {problem}")
    if cfg.output:
        write_json(cfg.output, json_safe(report))
        print(f"wrote {cfg.output}")
    return 1 if cfg.strict and report["problems"] else 0
