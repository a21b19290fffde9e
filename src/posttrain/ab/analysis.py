"""A/B analysis: per-variant summaries, treatment-vs-control tests, power, and a decision.

Metrics (each "higher is better"):
- thumbs:     share of thumbs-up among votes (no-vote rows are not counted)
- success:    task success rate
- rating:     mean 1-5 rating
- preference: share of pairwise judgements won by the treatment against the
              control, ties counted as half

Tests (treatment minus control): two-proportion z test (and chi-square with
Yates' correction, reported alongside) with Newcombe's interval for rates;
Mann–Whitney U with a bootstrap interval on the mean difference for ratings;
the exact sign test with a Wilson interval for preferences.

Error control:
- With several treatments, the primary metric's alpha is split between them (Bonferroni).
- With several looks at the data (look rows in the log, or `looks`), the primary
  threshold is the last look's nominal alpha under O'Brien–Fleming alpha
  spending (or Bonferroni over looks), see `sequential.py`. Intervals on the
  primary metric use the matching level, 1 - threshold.
- Guardrails are tested at the plain alpha: a harm is flagged more readily than a
  win is claimed.

Decision per treatment (with fewer than MIN_OBSERVATIONS = 20 primary observations
on either side it is always "collect more data"):
- ship: the primary metric is significantly better and no guardrail is significantly worse;
- keep: the primary is significantly worse, or a guardrail is significantly worse,
  or the interval on the primary difference excludes an improvement as large as `mde`;
- collect more data: otherwise, with the sample size needed to detect `mde`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from . import power as pw
from .bradley_terry import NotEstimable, bradley_terry
from .schema import TIE, FeedbackLog
from .sequential import nominal_alpha
from .stats import (
    bootstrap_diff_interval,
    bootstrap_mean_interval,
    chi_square_test,
    mann_whitney_u,
    newcombe_diff_interval,
    proportions_table,
    sign_test,
    two_proportion_ztest,
    wilson_interval,
)

METRICS = ("thumbs", "rating", "success", "preference")
DEFAULT_MDE = {"thumbs": 0.02, "success": 0.02, "rating": 0.1, "preference": 0.05}
# Below this many observations per variant (judgements for preference) the normal
# approximations and bootstrap intervals are not trustworthy: no ship/keep decision.
MIN_OBSERVATIONS = 20


@dataclass
class Settings:
    control: str | None = None
    primary: str | None = None
    guardrails: list[str] | None = None
    alpha: float = 0.05
    power: float = 0.8
    mde: float | None = None
    looks: int = 1
    correction: str = "obrien-fleming"
    n_resamples: int = 2000
    seed: int = 0


# ----------------------------------------------------------------- per-variant data

def metric_values(log: FeedbackLog) -> dict[str, dict[str, list[float]]]:
    """metric -> variant -> per-row values (thumbs/success as 0/1, ratings as numbers)."""
    values: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in ("thumbs", "rating", "success")}
    for row in log.rows:
        if row.variant is None:
            continue
        if row.thumbs in (1, -1):
            values["thumbs"][row.variant].append(1.0 if row.thumbs == 1 else 0.0)
        if row.rating is not None:
            values["rating"][row.variant].append(float(row.rating))
        if row.success is not None:
            values["success"][row.variant].append(1.0 if row.success else 0.0)
    return values


def preference_counts(log: FeedbackLog, control: str, treatment: str) -> dict[str, int]:
    """Wins of each side and ties among judgements of exactly this pair."""
    counts = {"treatment": 0, "control": 0, "ties": 0}
    for row in log.rows:
        if row.pair is None or set(row.pair) != {control, treatment}:
            continue
        key = "ties" if row.preferred == TIE else ("treatment" if row.preferred == treatment else "control")
        counts[key] += 1
    return counts


def summarize(metric: str, values: list[float], alpha: float, n_resamples: int, seed: int) -> dict[str, Any]:
    """n, the estimate and its (1 - alpha) interval for one variant."""
    n = len(values)
    if metric == "rating":
        ci = bootstrap_mean_interval(values, 1 - alpha, n_resamples, seed) if n else None
        hist = {str(k): int(sum(1 for v in values if v == k)) for k in range(1, 6)}
        sd = float(np.std(values, ddof=1)) if n > 1 else None
        return {"n": n, "mean": float(np.mean(values)) if n else None, "sd": sd, "ci": ci, "histogram": hist}
    k = float(sum(values))
    return {"n": n, "successes": k, "rate": k / n if n else None, "ci": wilson_interval(k, n, 1 - alpha)}


# ----------------------------------------------------------------- comparisons

def compare_rates(metric: str, a: list[float], b: list[float], threshold: float) -> dict[str, Any]:
    x_a, x_b, n_a, n_b = sum(a), sum(b), len(a), len(b)
    z, p = two_proportion_ztest(x_a, n_a, x_b, n_b)
    try:
        chi2, chi2_p, _ = chi_square_test(proportions_table(x_a, n_a, x_b, n_b))
    except ValueError:  # a column of zeros: every row a success (or a failure)
        chi2, chi2_p = 0.0, 1.0
    return {"metric": metric, "n_control": n_a, "n_treatment": n_b, "control": x_a / n_a, "treatment": x_b / n_b,
            "difference": x_b / n_b - x_a / n_a, "ci": newcombe_diff_interval(x_a, n_a, x_b, n_b, 1 - threshold),
            "test": "two-proportion z", "statistic": z, "p_value": p, "chi2": chi2, "chi2_p_value": chi2_p}


def compare_ratings(a: list[float], b: list[float], threshold: float, n_resamples: int, seed: int) -> dict[str, Any]:
    u, p = mann_whitney_u(a, b)
    return {"metric": "rating", "n_control": len(a), "n_treatment": len(b), "control": float(np.mean(a)),
            "treatment": float(np.mean(b)), "difference": float(np.mean(b) - np.mean(a)),
            "ci": bootstrap_diff_interval(a, b, 1 - threshold, n_resamples, seed),
            "test": "Mann-Whitney U", "statistic": u, "p_value": p}


def compare_preference(counts: dict[str, int], threshold: float) -> dict[str, Any]:
    """Treatment's preference rate vs ½; `difference` is rate - ½."""
    n = counts["treatment"] + counts["control"] + counts["ties"]
    won = counts["treatment"] + 0.5 * counts["ties"]
    low, high = wilson_interval(won, n, 1 - threshold)
    return {"metric": "preference", "n_control": n, "n_treatment": n, "control": 1 - won / n,
            "treatment": won / n, "difference": won / n - 0.5, "ci": (low - 0.5, high - 0.5),
            "wins": counts["treatment"], "losses": counts["control"], "ties": counts["ties"],
            "test": "sign test", "statistic": counts["treatment"],
            "p_value": sign_test(counts["treatment"], counts["control"])}


def compare_metric(metric: str, log: FeedbackLog, values: dict, control: str, treatment: str, threshold: float,
                   settings: Settings) -> dict[str, Any] | None:
    """One metric, treatment vs control; None when either side has no data."""
    if metric == "preference":
        counts = preference_counts(log, control, treatment)
        result = compare_preference(counts, threshold) if sum(counts.values()) else None
    else:
        a, b = values[metric].get(control, []), values[metric].get(treatment, [])
        if not a or not b:
            return None
        result = (compare_ratings(a, b, threshold, settings.n_resamples, settings.seed) if metric == "rating"
                  else compare_rates(metric, a, b, threshold))
    if result is not None:
        result["threshold"] = threshold
        result["significant"] = bool(result["p_value"] < threshold)
        result["ci"] = [float(result["ci"][0]), float(result["ci"][1])]
    return result


# ----------------------------------------------------------------- power

def power_summary(comparison: dict[str, Any], values: dict, control: str, treatment: str, alpha: float,
                  power_target: float, mde: float) -> dict[str, Any]:
    """Minimum detectable effect at the current size, and the size needed to detect `mde`."""
    metric, n_c, n_t = comparison["metric"], comparison["n_control"], comparison["n_treatment"]
    if metric == "preference":
        h = pw.cohens_h(0.5, min(0.5 + mde, 1.0))
        needed = pw.required_nobs(h, alpha, power_target, ratio=0)
        h_now = pw.detectable_effect_size(n_c, alpha, power_target, ratio=0)
        mde_now = math.sin(math.pi / 4 + h_now / 2) ** 2 - 0.5 if h_now < math.pi / 2 else math.inf
        unit = "judgements"
    elif metric == "rating":
        pooled = values["rating"][control] + values["rating"][treatment]
        sd = float(np.std(pooled, ddof=1)) if len(pooled) > 1 else 0.0
        needed = pw.required_nobs(mde / sd, alpha, power_target) if sd > 0 else math.inf
        mde_now = pw.detectable_effect_size(n_c, alpha, power_target, ratio=n_t / n_c) * sd
        unit = "ratings per variant"
    else:
        baseline = comparison["control"]
        needed = pw.required_sample_size(baseline, min(baseline + mde, 1.0), alpha, power_target) \
            if baseline + mde <= 1.0 else math.inf
        mde_now = pw.minimum_detectable_effect(n_c, baseline, alpha, power_target, ratio=n_t / n_c)
        unit = "votes per variant" if metric == "thumbs" else "outcomes per variant"
    return {"metric": metric, "treatment": treatment, "alpha": alpha, "power": power_target, "target_mde": mde,
            "mde_at_current_n": _finite_or_none(mde_now),
            "required_n": math.ceil(needed) if math.isfinite(needed) else None, "unit": unit,
            "current_n": min(n_c, n_t)}


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ----------------------------------------------------------------- decision

def decide(primary: dict[str, Any] | None, guardrails: list[dict[str, Any]], power_info: dict[str, Any] | None,
           mde: float, primary_name: str) -> tuple[str, str]:
    """(decision, reason) for one treatment, following the rules in the module docstring."""
    if primary is None:
        return "collect more data", f"no {primary_name} data for both variants yet"
    smallest = min(primary["n_control"], primary["n_treatment"])
    if smallest < MIN_OBSERVATIONS:
        return "collect more data", (f"only {smallest} {primary_name} observation(s) on one side; the tests and "
                                     f"intervals need at least {MIN_OBSERVATIONS} per variant")
    regressions = [g for g in guardrails if g["significant"] and g["difference"] < 0]
    harm = ", ".join(f"{g['metric']} ({g['difference']:+.3g}, p={g['p_value']:.3g})" for g in regressions)
    effect = f"{primary_name} {primary['difference']:+.3g} (p={primary['p_value']:.3g} < {primary['threshold']:.3g})"
    if primary["significant"] and primary["difference"] > 0:
        if regressions:
            return "keep", f"{effect} improves, but guardrail regressed: {harm}"
        return "ship", f"{effect} improves significantly with no significant guardrail regression"
    if primary["significant"]:
        return "keep", f"{effect} is significantly worse"
    if regressions:
        return "keep", f"guardrail regressed significantly: {harm}; {primary_name} is not significantly better"
    not_sig = f"{primary_name} {primary['difference']:+.3g} is not significant (p={primary['p_value']:.3g})"
    if primary["ci"][1] < mde:
        return "keep", f"{not_sig} and its interval rules out an improvement of {mde:g} or more"
    need = power_info.get("required_n") if power_info else None
    more = (f"; detecting {mde:+g} needs about {need:,} {power_info['unit']} (have {power_info['current_n']:,})"
            if need else "")
    return "collect more data", not_sig + more


# ----------------------------------------------------------------- putting it together

def information_fractions(log: FeedbackLog) -> list[float] | None:
    """Share of today's rows each earlier look saw, from timestamps (None if any is missing)."""
    if not log.looks or any(l.timestamp is None for l in log.looks) or any(r.timestamp is None for r in log.rows):
        return None
    stamps = np.sort([r.timestamp for r in log.rows])
    fractions = [float(np.searchsorted(stamps, look.timestamp, side="right")) / len(stamps) for look in log.looks]
    return [t for t in fractions if 0 < t < 1]


def available_metrics(log: FeedbackLog, values: dict) -> list[str]:
    found = [m for m in ("thumbs", "rating", "success") if values[m]]
    if any(r.preferred is not None for r in log.rows):
        found.append("preference")
    return found


def _peeking_warning(looks: int, in_log: int, settings: Settings, threshold: float, alpha: float) -> str:
    method = ("O'Brien-Fleming alpha spending" if settings.correction == "obrien-fleming"
              else "a Bonferroni split over looks")
    source = f"{in_log} earlier look(s) recorded in the log" if in_log + 1 == looks else f"--looks {looks}"
    return (f"peeking: these data have been looked at {looks} times ({source}); to keep the false-positive rate "
            f"at {alpha:g}, the primary test uses {method} and needs p < {threshold:.4g}")


def _independence_warnings(log: FeedbackLog) -> list[str]:
    variants_of: dict[str, set[str]] = defaultdict(set)
    rows_of: dict[str, int] = defaultdict(int)
    for row in log.rows:
        if row.user is not None and row.variant is not None and row.preferred is None:
            variants_of[row.user].add(row.variant)
            rows_of[row.user] += 1
    out = []
    mixed = sum(1 for v in variants_of.values() if len(v) > 1)
    if mixed:
        out.append(f"{mixed} user(s) gave feedback on more than one variant: assignment was not sticky")
    repeat = sum(1 for n in rows_of.values() if n > 1)
    if repeat:
        out.append(f"{repeat} user(s) contributed several rows; rows are analysed as independent, "
                   "which makes intervals too narrow when a user's rows are alike")
    neutral = sum(1 for r in log.rows if r.thumbs == 0)
    if neutral:
        out.append(f"{neutral} row(s) with thumbs 0 (no vote) are not counted in the thumbs-up rate")
    return out


def _first_file(log: FeedbackLog) -> str:
    return log.rows[0].source.rsplit(":", 1)[0]


def analyze(log: FeedbackLog, settings: Settings) -> dict[str, Any]:
    """The full analysis as a JSON-ready dict (docs/ab-testing.md lists its fields)."""
    variants = log.variants
    if len(variants) < 2:
        raise InputError(_first_file(log), None, "variant", f"need at least two variants, found {variants}")
    control = settings.control or ("A" if "A" in variants else variants[0])
    if control not in variants:
        raise ConfigError("control", f"{control!r} is not a variant in the logs ({', '.join(variants)})")
    treatments = [v for v in variants if v != control]
    values = metric_values(log)
    metrics = available_metrics(log, values)
    warnings: list[str] = []
    primary = settings.primary
    if primary is None:
        if not metrics:
            raise InputError(_first_file(log), None, None, "no usable feedback (only thumbs 0?)")
        primary = metrics[0]
        warnings.append(f"primary metric not given; using {primary} (fix it before the experiment with --primary)")
    elif primary not in metrics:
        raise ConfigError("primary", f"no {primary} data in the logs (found: {', '.join(metrics) or 'none'})")
    guardrails = [m for m in metrics if m != primary] if settings.guardrails is None else list(settings.guardrails)
    if primary in guardrails:
        raise ConfigError("guardrails", f"{primary} is the primary metric and cannot also be a guardrail")
    warnings += [f"guardrail {g} has no data" for g in guardrails if g not in metrics]
    mde = settings.mde if settings.mde is not None else DEFAULT_MDE[primary]

    looks = max(settings.looks, len(log.looks) + 1)
    fractions = information_fractions(log) if looks == len(log.looks) + 1 else None
    family_alpha = settings.alpha / len(treatments)
    threshold = nominal_alpha(looks, family_alpha, settings.correction, fractions)
    if len(treatments) > 1:
        warnings.append(f"{len(treatments)} treatments share alpha {settings.alpha:g} on the primary metric "
                        f"(Bonferroni: {family_alpha:.4g} each)")
    if looks > 1:
        warnings.append(_peeking_warning(looks, len(log.looks), settings, threshold, family_alpha))
    warnings += _independence_warnings(log)

    summaries = {m: {v: summarize(m, values[m].get(v, []), settings.alpha, settings.n_resamples, settings.seed)
                     for v in variants} for m in metrics if m != "preference"}
    comparisons, power_analysis, recommendations = {}, {}, {}
    for treatment in treatments:
        prim = compare_metric(primary, log, values, control, treatment, threshold, settings)
        guards = [c for g in guardrails if g in metrics
                  and (c := compare_metric(g, log, values, control, treatment, settings.alpha, settings))]
        info = power_summary(prim, values, control, treatment, threshold, settings.power, mde) if prim else None
        decision, reason = decide(prim, guards, info, mde, primary)
        comparisons[treatment] = ([{**prim, "role": "primary"}] if prim else []) + \
            [{**g, "role": "guardrail"} for g in guards]
        power_analysis[treatment] = info
        recommendations[treatment] = {"decision": decision, "reason": reason}

    return {"format": "posttrain.ab/1", "variants": variants, "control": control, "treatments": treatments,
            "n_rows": len(log.rows), "primary": primary, "guardrails": guardrails, "alpha": settings.alpha,
            "power": settings.power, "mde": mde, "looks": looks, "correction": settings.correction,
            "information_fractions": fractions, "primary_threshold": threshold, "summaries": summaries,
            "comparisons": comparisons, "power_analysis": power_analysis, "recommendations": recommendations,
            "recommendation": overall_recommendation(recommendations, comparisons),
            "bradley_terry": bradley_terry_summary(log, control, settings), "warnings": warnings}


def overall_recommendation(per_treatment: dict[str, dict[str, str]], comparisons: dict) -> dict[str, Any]:
    """Ship the shippable treatment with the largest primary gain; else collect if any says so; else keep."""
    ship = [t for t, r in per_treatment.items() if r["decision"] == "ship"]
    if ship:
        best = max(ship, key=lambda t: comparisons[t][0]["difference"])
        return {"decision": "ship", "variant": best, "reason": per_treatment[best]["reason"]}
    collect = [t for t, r in per_treatment.items() if r["decision"] == "collect more data"]
    if collect:
        return {"decision": "collect more data", "variant": None,
                "reason": "; ".join(f"{t}: {per_treatment[t]['reason']}" for t in collect)}
    return {"decision": "keep", "variant": None,
            "reason": "; ".join(f"{t}: {r['reason']}" for t, r in per_treatment.items())}


def bradley_terry_summary(log: FeedbackLog, control: str, settings: Settings) -> dict[str, Any] | None:
    """Strengths from every pairwise row (any pair of variants), relative to the control."""
    comparisons = [(r.pair[0], r.pair[1], r.preferred) for r in log.rows if r.pair is not None]
    if not comparisons:
        return None
    names = sorted({c[0] for c in comparisons} | {c[1] for c in comparisons})
    try:
        fit = bradley_terry(comparisons, reference=control if control in names else names[0],
                            confidence=1 - settings.alpha)
    except NotEstimable as exc:
        return {"error": str(exc)}
    return fit.to_dict()
