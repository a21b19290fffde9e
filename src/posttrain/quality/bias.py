"""Bias tests on pairwise labels (human annotations or judge verdicts).

Three questions, each with a test against "no bias":

- position: is the response shown first preferred more often than half the time?
  Exact two-sided binomial test of first-shown wins among decisive (non-tie) labels vs p = 0.5.
- length: is the longer response preferred? (a) the rate at which the longer one wins among
  decisive labels with unequal lengths, binomial test vs 0.5; (b) the point-biserial correlation
  between "A won" and log2(len A / len B), with its p-value; (c) a logistic regression
  P(A wins) = sigmoid(b0 + b1 log2(len A / len B)), where exp(b1) is the factor the odds of
  winning change by when a response is twice as long as the other (Wald test on b1).
- model: win rate per source model with Wilson confidence intervals (ties count half).

Row fields (see docs/data-quality.md):
  label      winner | choice | label | preference: "A", "B" or "tie" (null = unlabelled)
  position   swapped: true means B was shown first; or first: "A" | "B"; absent: A was first
  judge rows with `judge_orders` (from `posttrain judge --swap`): each parsed order is one
             positional verdict for the position test; the combined winner is used elsewhere
  lengths    length_a / length_b (numbers), else len of response_a / response_b texts
  models     model_a / model_b
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import ConfigError, InputError, PosttrainError
from ..jsonl import write_json
from .fields import Row, load_rows, normalise_winner, winner_of
from .table import fmt_p, format_table, json_safe

# ----------------------------------------------------------------------------------------------
# Pure statistics


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (successes may be fractional, e.g. half-wins)."""
    if n <= 0:
        return None
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_summary(successes: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """Rate, Wilson interval and exact two-sided binomial p-value vs 0.5."""
    if n == 0:
        return {"n": 0, "successes": 0, "rate": None, "ci": None, "p_value": None}
    return {
        "n": n,
        "successes": successes,
        "rate": successes / n,
        "ci": list(wilson_interval(successes, n, confidence)),
        "p_value": float(stats.binomtest(successes, n, 0.5).pvalue),
    }


def logistic_regression_1d(x: Sequence[float], y: Sequence[int], max_iter: int = 50) -> dict[str, Any] | None:
    """Fit P(y=1) = sigmoid(b0 + b1 x) by Newton-Raphson; Wald z-test on b1.

    Returns None when the fit is not identifiable (no variation in x or y) or diverges
    (perfect separation: the maximum-likelihood slope is infinite).
    """
    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    if len(x_arr) < 3 or np.ptp(x_arr) == 0 or np.ptp(y_arr) == 0:
        return None
    design = np.column_stack([np.ones_like(x_arr), x_arr])
    beta = np.zeros(2)
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-design @ beta))
        hessian = design.T @ (design * (p * (1 - p))[:, None])
        if np.linalg.cond(hessian) > 1e12:
            return None
        step = np.linalg.solve(hessian, design.T @ (y_arr - p))
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    else:
        return None
    if np.abs(beta).max() > 30:  # separation: coefficients run off to infinity
        return None
    p = 1 / (1 + np.exp(-design @ beta))
    covariance = np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))
    se = float(math.sqrt(covariance[1, 1]))
    z = beta[1] / se
    return {"intercept": float(beta[0]), "slope": float(beta[1]), "odds_ratio": float(math.exp(beta[1])),
            "slope_se": se, "p_value": float(2 * stats.norm.sf(abs(z)))}


# ----------------------------------------------------------------------------------------------
# Reading labelled pairs


@dataclass
class LabelledPair:
    """One pairwise label with what the bias tests need (None = not known for this row)."""

    winner: str                 # "A", "B" or "tie"
    first: str                  # which response was shown first: "A" or "B"
    length_a: float | None
    length_b: float | None
    model_a: str | None
    model_b: str | None
    position_known: bool
    orders: list[tuple[str, str]] | None = None  # per-order (winner, first) of a swapped judge run


def _length(row: Row, side: str, unit: str, path: str | None, line: int) -> float | None:
    field = f"length_{side}"
    if field in row and row[field] is not None:
        value = row[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InputError(path, line, field, f"expected a non-negative number, got {value!r}")
        return float(value)
    text = row.get(f"response_{side}")
    if text is None:
        return None
    if not isinstance(text, str):
        raise InputError(path, line, f"response_{side}", f"expected a string, got {type(text).__name__}")
    return float(len(text.split()) if unit == "words" else len(text))


def _first(row: Row, path: str | None, line: int) -> tuple[str, bool]:
    if row.get("swapped") is not None:
        if not isinstance(row["swapped"], bool):
            raise InputError(path, line, "swapped", f"expected true or false, got {row['swapped']!r}")
        return ("B" if row["swapped"] else "A"), True
    if row.get("first") is not None:
        first = normalise_winner(row["first"], path, line, "first")
        if first == "tie":
            raise InputError(path, line, "first", "expected 'A' or 'B'")
        return first, True
    return "A", False


def _model(row: Row, field: str, path: str | None, line: int) -> str | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(path, line, field, f"expected a model name, got {value!r}")
    return value


def labelled_pairs(rows: Sequence[tuple[int, Row]], path: str | None = None,
                   length_unit: str = "chars") -> tuple[list[LabelledPair], int]:
    """The labelled rows as `LabelledPair`s, and how many rows had no label."""
    pairs, unlabelled = [], 0
    for line, row in rows:
        winner = winner_of(row, path, line)
        if winner is None:
            unlabelled += 1
            continue
        first, known = _first(row, path, line)
        orders = _judge_orders(row, path, line) if isinstance(row.get("judge_orders"), list) else []
        pairs.append(LabelledPair(winner, first, _length(row, "a", length_unit, path, line),
                                  _length(row, "b", length_unit, path, line),
                                  _model(row, "model_a", path, line), _model(row, "model_b", path, line),
                                  known or bool(orders), orders or None))
    return pairs, unlabelled


def _judge_orders(row: Row, path: str | None, line: int) -> list[tuple[str, str]]:
    """`posttrain judge` rows keep each order's verdict in `judge_orders` ({"order": "ab"|"ba",
    "winner": A|B|tie|null, ...}, winner already in original labels). Each parsed order is one
    positional verdict: in order "ba" response B was shown first. (The row's combined `winner`
    turns order disagreements into ties, which would hide position bias.)"""
    out = []
    for i, result in enumerate(row["judge_orders"]):
        if not isinstance(result, dict) or result.get("order") not in ("ab", "ba"):
            raise InputError(path, line, f"judge_orders[{i}]", 'expected {"order": "ab" or "ba", "winner": ...}')
        if result.get("winner") is not None:
            winner = normalise_winner(result["winner"], path, line, f"judge_orders[{i}].winner")
            out.append((winner, "A" if result["order"] == "ab" else "B"))
    return out


# ----------------------------------------------------------------------------------------------
# The three tests


def position_bias(pairs: Sequence[LabelledPair], confidence: float = 0.95) -> dict[str, Any]:
    """How often the first-shown response wins among decisive labels (binomial test vs 0.5).

    A judge row with both orders (`orders`) contributes one verdict per order, since each
    order is a separate judgement with a known position.
    """
    verdicts = [v for p in pairs for v in (p.orders or [(p.winner, p.first)])]
    decisive = [(winner, first) for winner, first in verdicts if winner != "tie"]
    first_wins = sum(winner == first for winner, first in decisive)
    out = binomial_summary(first_wins, len(decisive), confidence)
    ties = len(verdicts) - len(decisive)
    out.update(verdicts=len(verdicts), ties=ties, tie_rate=ties / len(verdicts) if verdicts else None,
               position_known=sum(p.position_known for p in pairs),
               a_shown_first=sum(first == "A" for _, first in verdicts))
    return out


def length_bias(pairs: Sequence[LabelledPair], confidence: float = 0.95) -> dict[str, Any]:
    """Longer-wins rate (binomial), point-biserial r and a logistic slope on log2 length ratio."""
    usable = [p for p in pairs if p.winner != "tie" and p.length_a is not None and p.length_b is not None]
    unequal = [p for p in usable if p.length_a != p.length_b]
    longer_wins = sum((p.winner == "A") == (p.length_a > p.length_b) for p in unequal)
    out: dict[str, Any] = {"longer_wins": binomial_summary(longer_wins, len(unequal), confidence)}
    x = [math.log2((p.length_a + 1) / (p.length_b + 1)) for p in usable]  # +1: empty responses
    y = [int(p.winner == "A") for p in usable]
    out["pairs_with_lengths"] = len(usable)
    out["point_biserial"] = None
    if len(usable) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r, p_value = stats.pointbiserialr(y, x)
        out["point_biserial"] = {"r": float(r), "p_value": float(p_value)}
    out["logistic"] = logistic_regression_1d(x, y)
    winners = [p.length_a if p.winner == "A" else p.length_b for p in usable]
    losers = [p.length_b if p.winner == "A" else p.length_a for p in usable]
    out["mean_length_winner"] = float(np.mean(winners)) if winners else None
    out["mean_length_loser"] = float(np.mean(losers)) if losers else None
    return out


def model_bias(pairs: Sequence[LabelledPair], confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per source model: games, wins, losses, ties, win rate (ties half) with a Wilson interval."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # wins, losses, ties
    for p in pairs:
        if p.model_a is None or p.model_b is None:
            continue
        for model, side in ((p.model_a, "A"), (p.model_b, "B")):
            slot = 2 if p.winner == "tie" else (0 if p.winner == side else 1)
            tally[model][slot] += 1
    out = {}
    for model, (wins, losses, ties) in sorted(tally.items()):
        games = wins + losses + ties
        score = wins + 0.5 * ties
        ci = wilson_interval(score, games, confidence)
        out[model] = {"games": games, "wins": wins, "losses": losses, "ties": ties,
                      "win_rate": score / games, "ci": list(ci) if ci else None}
    return out


def bias_report(pairs: Sequence[LabelledPair], confidence: float = 0.95) -> dict[str, Any]:
    return {"labelled": len(pairs), "confidence": confidence,
            "labels": {w: sum(p.winner == w for p in pairs) for w in ("A", "B", "tie")},
            "position": position_bias(pairs, confidence), "length": length_bias(pairs, confidence),
            "model": model_bias(pairs, confidence)}


# ----------------------------------------------------------------------------------------------
# `posttrain data bias`


@dataclass
class BiasConfig(DataArgs):
    input: str = help_field("", "pairwise labels JSONL (judgements or annotations)")
    output: str | None = help_field(None, "also write the full report as JSON here")
    length_unit: str = help_field("chars", "how response length is measured from text", choices=("chars", "words"))
    confidence: float = help_field(0.95, "confidence level of the intervals")
    group_by: str | None = help_field(None, "also report each value of this field separately (e.g. judge, annotator)")


def _ci(ci: list | None) -> str:
    return "n/a" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def render(report: dict[str, Any], title: str = "") -> str:
    pos, length = report["position"], report["length"]
    level = f"{round(report['confidence'] * 100)}% CI"
    lines = [format_table(
        ["test", "n", "hits", "rate", level, "p-value"],
        [["first shown wins", pos["n"], pos["successes"], pos["rate"], _ci(pos["ci"]), fmt_p(pos["p_value"])],
         ["longer wins", length["longer_wins"]["n"], length["longer_wins"]["successes"], length["longer_wins"]["rate"],
          _ci(length["longer_wins"]["ci"]), fmt_p(length["longer_wins"]["p_value"])]],
        title=f"{title}{report['labelled']} labelled pairs (A {report['labels']['A']}, B {report['labels']['B']}, "
              f"tie {report['labels']['tie']}); ties are left out of these tests")]
    if pos["position_known"] < report["labelled"]:
        lines.append(f"note: {report['labelled'] - pos['position_known']} rows give no swapped/first field; "
                     "A was taken as shown first")
    pb, logit = length["point_biserial"], length["logistic"]
    lines.append("length: point-biserial r = " + ("n/a" if pb is None else f"{pb['r']:.3f} (p = {fmt_p(pb['p_value'])})")
                 + "; odds ratio per doubling of length = "
                 + ("n/a" if logit is None else f"{logit['odds_ratio']:.3f} (p = {fmt_p(logit['p_value'])})"))
    if report["model"]:
        lines.append(format_table(
            ["model", "games", "wins", "losses", "ties", "win rate", level],
            [[m, r["games"], r["wins"], r["losses"], r["ties"], r["win_rate"], _ci(r["ci"])]
             for m, r in report["model"].items()], title="win rate per model (ties count half)"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg = parse_config(BiasConfig, argv, prog="posttrain data bias", positional="input",
                       description="Position, length and model bias of pairwise labels.")
    if not cfg.input:
        raise PosttrainError("no input file given (posttrain data bias FILE)")
    if not 0 < cfg.confidence < 1:
        raise ConfigError("confidence", f"must be between 0 and 1, got {cfg.confidence}")
    rows = load_rows(cfg.input, **read_kwargs(cfg))
    pairs, unlabelled = labelled_pairs(rows, cfg.input, cfg.length_unit)
    if not pairs:
        raise InputError(cfg.input, None, "winner", "no labelled rows (expected winner, choice or label: A, B or tie)")
    report = bias_report(pairs, cfg.confidence)
    report["unlabelled"] = unlabelled
    print(render(report))
    if cfg.group_by:
        groups: dict[str, list[tuple[int, Row]]] = defaultdict(list)
        for line, row in rows:
            groups[str(row.get(cfg.group_by))].append((line, row))
        report["groups"] = {}
        for name, members in sorted(groups.items()):
            group_pairs, _ = labelled_pairs(members, cfg.input, cfg.length_unit)
            if group_pairs:
                report["groups"][name] = bias_report(group_pairs, cfg.confidence)
                print("\n" + render(report["groups"][name], title=f"{cfg.group_by} = {name}: "))
    if cfg.output:
        write_json(cfg.output, json_safe({"input": cfg.input, **report}))
        print(f"wrote {cfg.output}")
    return 0
