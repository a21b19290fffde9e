"""The safety section of `posttrain report`: attack success and over-refusal, before and after.

Reads what the safety commands wrote in each stage directory (no model is run):

- `attack_success.json` of every red-team run: in a stage directory (a `redteam` stage) or one
  level below it (`before/`, `after/`, `redteam_train/` of a `safety` stage);
- the `safety/...` metrics of `results.json` files (`posttrain eval --suite safety`).

Red-team runs become columns of one table (rate [CI] (k/n) per row: overall, per family, per
category, over-refusal). When two or more runs measured the same attacks (same `suite` id),
the last column is the change from the first to the last of them, with Newcombe's interval;
runs on different attack sets are shown but never subtracted.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from .metrics import TABLE_FILENAME, cell, change

EVAL_METRICS = ("safety/harmful/refusal_rate", "safety/benign/over_refusal_rate")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def find_tables(directories: Sequence[tuple[str, Path]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, attack-success table) for each red-team run under the given (name, directory)s."""
    found = []
    for name, directory in directories:
        # runs inside one stage (redteam_train/, before/, after/) in the order they were written
        inner = sorted(directory.glob(f"*/{TABLE_FILENAME}"), key=lambda p: (p.stat().st_mtime, p.name))
        candidates = [directory / TABLE_FILENAME] + inner
        for path in candidates:
            if not path.is_file():
                continue
            try:
                table = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(table, dict) and "counts" in table:
                label = name if path.parent == directory else f"{name}/{path.parent.name}"
                found.append((label, table))
    return found


def comparison_pair(tables: list[tuple[str, dict[str, Any]]]) -> tuple[int, int] | None:
    """Indices of the first and last run of the latest attack suite measured at least twice."""
    for j in range(len(tables) - 1, 0, -1):
        suite = tables[j][1].get("suite")
        firsts = [i for i in range(j) if tables[i][1].get("suite") == suite]
        if firsts:
            return firsts[0], j
    return None


def _rows(tables: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str, str]]:
    """(row label, section, group key, group name) in display order, over all tables."""
    rows = [("attack success rate: all", "attack_success", "overall", "")]
    for group in ("by_family", "by_category"):
        names = sorted({n for _, t in tables for n in (t.get("attack_success") or {}).get(group, {})})
        rows += [(f"  {group[3:]} {n}", "attack_success", group, n) for n in names]
    rows.append(("over-refusal rate: all benign", "over_refusal", "overall", ""))
    names = sorted({n for _, t in tables for n in (t.get("over_refusal") or {}).get("by_category", {})})
    rows += [(f"  category {n}", "over_refusal", "by_category", n) for n in names]
    return rows


def _value(table: dict[str, Any], section: str, group: str, name: str) -> dict[str, Any] | None:
    part = table.get(section) or {}
    return part.get("overall") if group == "overall" else (part.get(group) or {}).get(name)


def _change_text(before: dict[str, Any] | None, after: dict[str, Any] | None, confidence: float) -> str:
    delta = change(before or {}, after or {}, confidence)
    if delta is None:
        return "-"
    low, high = delta["ci"]
    mark = " *" if low > 0 or high < 0 else ""
    return f"{delta['diff']:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def redteam_table(tables: list[tuple[str, dict[str, Any]]]) -> str:
    confidence = tables[0][1].get("confidence", 0.95)
    pair = comparison_pair(tables)
    head = "".join(f"<th>{esc(label)}<br><small>{esc(t.get('target', ''))}, judge {esc(t.get('judge', ''))}"
                   f"{', split ' + esc(t['split']) if t.get('split') not in (None, 'all') else ''}</small></th>"
                   for label, t in tables)
    if pair:
        head += f"<th>change {esc(tables[pair[1]][0])} − {esc(tables[pair[0]][0])}</th>"
    body = []
    for label, section, group, name in _rows(tables):
        cells = "".join(f"<td>{esc(cell(_value(t, section, group, name)))}</td>" for _, t in tables)
        if pair:
            before, after = (_value(tables[i][1], section, group, name) for i in pair)
            cells += f"<td>{esc(_change_text(before, after, confidence))}</td>"
        body.append(f"<tr><td>{esc(label)}</td>{cells}</tr>")
    note = ("<p>Each cell: rate [{0}% Wilson interval] (k/n); lower is better for both rates. The change column "
            "is the later run minus the earlier one on the same attacks, with Newcombe's {0}% interval; "
            "* marks an interval that excludes 0.</p>").format(int(round(confidence * 100)))
    if not pair and len(tables) > 1:
        note += "<p>No two red-team runs measured the same attacks, so no change is computed.</p>"
    return f"<table><tr><th>rate</th>{head}</tr>{''.join(body)}</table>{note}"


def eval_table(results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    rows = []
    for label, doc in results:
        metrics = doc.get("metrics") or {}
        cells = []
        for name in EVAL_METRICS:
            m = metrics.get(name)
            if isinstance(m, dict) and m.get("value") is not None and m.get("ci"):
                cells.append(f"{m['value']:.2f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}] (n={m.get('n')})")
            else:
                cells.append("-")
        rows.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return ("<h3>Safety probe suite (posttrain eval --suite safety)</h3><table><tr><th>run</th>"
            "<th>harmful refusal rate (higher is better)</th><th>benign over-refusal rate</th></tr>"
            + "".join(rows) + "</table>")


def safety_section_html(directories: Sequence[tuple[str, Path]], results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The report's safety section, or "" when the run has no red-team tables and no safety metrics."""
    tables = find_tables(directories)
    evals = [(label, doc) for label, doc in results
             if isinstance(doc, dict) and any(name in (doc.get("metrics") or {}) for name in EVAL_METRICS)]
    if not tables and not evals:
        return ""
    parts = ["<h2>Safety</h2>"]
    if tables:
        parts.append("<h3>Red-team: attack success and over-refusal</h3>" + redteam_table(tables))
    if evals:
        parts.append(eval_table(evals))
    parts.append("<p>Rates from a small suite and a keyword judge are indications, not guarantees; "
                 "see docs/safety.md.</p>")
    return "\n".join(parts)
