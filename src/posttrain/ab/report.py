"""The terminal report for `posttrain ab`: one table per treatment, then power, Bradley–Terry,
the recommendation and warnings. Everything printed is also in the results JSON."""
from __future__ import annotations

from typing import Any

from ..evaluate.results import format_number, render_table


def _interval(ci: Any, signed: bool = False) -> str:
    if not ci:
        return "-"
    low, high = ci
    fmt = (lambda x: f"{x:+.3g}") if signed else (lambda x: f"{x:.3g}")
    return f"[{fmt(low)}, {fmt(high)}]"


def _side(result: dict[str, Any], comparison: dict[str, Any], variant: str, side: str) -> str:
    metric = comparison["metric"]
    if metric == "preference":
        return f"{comparison[side]:.3g} (n={comparison['n_' + side]})"
    summary = result["summaries"][metric][variant]
    value = summary["mean"] if metric == "rating" else summary["rate"]
    return f"{format_number(value)} {_interval(summary['ci'])} n={summary['n']}"


def comparison_table(result: dict[str, Any], treatment: str) -> str:
    control = result["control"]
    if not result["comparisons"][treatment]:
        return f"no metric has data for both {control} and {treatment}"
    rows = [("metric", "role", control, treatment, "difference", "interval", "p", "test")]
    for c in result["comparisons"][treatment]:
        mark = "*" if c["significant"] else " "
        diff = f"{c['difference']:+.3g}" + (" vs 1/2" if c["metric"] == "preference" else "")
        rows.append((c["metric"], c["role"], _side(result, c, control, "control"),
                     _side(result, c, treatment, "treatment"), diff, _interval(c["ci"], signed=True) + mark,
                     f"{c['p_value']:.3g}", c["test"]))
    return render_table(rows)


def power_line(info: dict[str, Any] | None) -> str | None:
    if not info:
        return None
    now = info["mde_at_current_n"]
    detect = f"detectable now: {now:+.3g}" if now is not None else "nothing detectable yet"
    need = (f"detecting {info['target_mde']:+g} needs {info['required_n']:,} {info['unit']}" if info["required_n"]
            else f"an improvement of {info['target_mde']:+g} is impossible from this baseline")
    return (f"power ({info['metric']}, alpha {info['alpha']:.3g}, power {info['power']:g}): {detect} at "
            f"n={info['current_n']:,}; {need}")


def bradley_terry_lines(bt: dict[str, Any] | None) -> list[str]:
    if not bt:
        return []
    if "error" in bt:
        return [f"Bradley-Terry: not estimable ({bt['error']})"]
    lines = [f"Bradley-Terry strengths (log-odds vs {bt['reference']}, {bt['n_comparisons']} judgements, "
             f"{bt['method']} intervals):"]
    for name, v in bt["variants"].items():
        if name == bt["reference"]:
            continue
        lines.append(f"  {name}: theta {v['theta']:+.3f} {_interval(v['ci'], signed=True)}, "
                     f"P(beats {bt['reference']}) {v['p_beats_reference']:.3f}")
    return lines


def format_report(result: dict[str, Any]) -> str:
    """The whole terminal report as text."""
    head = (f"A/B analysis: control {result['control']} vs {', '.join(result['treatments'])} "
            f"({result['n_rows']:,} feedback rows)\n"
            f"primary: {result['primary']}   guardrails: {', '.join(result['guardrails']) or 'none'}   "
            f"alpha {result['alpha']:g}   looks {result['looks']}   primary threshold p < "
            f"{result['primary_threshold']:.4g}")
    parts = [head]
    for treatment in result["treatments"]:
        block = [comparison_table(result, treatment)]
        line = power_line(result["power_analysis"][treatment])
        if line:
            block.append(line)
        rec = result["recommendations"][treatment]
        block.append(f"{treatment}: {rec['decision'].upper()} - {rec['reason']}")
        parts.append("\n".join(block))
    parts += ["\n".join(bradley_terry_lines(result["bradley_terry"]))] if result["bradley_terry"] else []
    overall = result["recommendation"]
    who = f" {overall['variant']}" if overall["variant"] else ""
    parts.append(f"Recommendation: {overall['decision'].upper()}{who}")
    if result["warnings"]:
        parts.append("Warnings:\n" + "\n".join(f"  - {w}" for w in result["warnings"]))
    parts.append("(* interval excludes 0; intervals on the primary metric use level 1 - threshold)")
    return "\n\n".join(parts)
