"""`posttrain report RUN_DIR`: one self-contained HTML file (inline CSS, plots as data URIs).

Sections: stage timings, and per stage its resolved config, metric curves,
evaluation table and a few sample generations. Every piece of text from data
or models is HTML-escaped.
"""
from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import help_field, parse_config
from ..errors import ConfigError
from ..jsonl import atomic_write
from .collect import Section, collect
from .plots import curves_png

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.ok{color:#1a7f37}.failed{color:#c62828}.cached{color:#777}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em;max-height:18em}
details{margin:.4em 0}img{max-width:100%}.gen td{max-width:30em;white-space:pre-wrap}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return esc(value)


def timings_table(sections: list[Section]) -> str:
    rows = []
    for s in sections:
        state = "cached" if s.cached else s.status
        css = {"done": "ok", "failed": "failed", "cached": "cached"}.get(state, "")
        seconds = f"{s.seconds:.1f}s" if s.seconds is not None else "–"
        rows.append(f"<tr><td>{esc(s.name)}</td><td>{esc(s.kind)}</td><td class='{css}'>{esc(state)}</td>"
                    f"<td>{seconds}</td></tr>")
    return "<table><tr><th>stage</th><th>type</th><th>status</th><th>time</th></tr>" + "".join(rows) + "</table>"


def results_table(results: dict[str, Any]) -> str:
    rows = []
    for name, metric in (results.get("metrics") or {}).items():
        if not isinstance(metric, dict):
            continue
        ci = metric.get("ci")
        interval = f"[{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        rows.append(f"<tr><td>{esc(name)}</td><td>{fmt(metric.get('value'))}</td><td>{interval}</td>"
                    f"<td>{fmt(metric.get('n', ''))}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Evaluation</h3><table><tr><th>metric</th><th>value</th><th>95% interval</th><th>n</th></tr>"
            + "".join(rows) + "</table>")


def prompt_of(row: dict[str, Any]) -> str:
    prompt = row.get("prompt", "")
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else json.dumps(prompt)[:200]
    return str(prompt)


def generations_table(name: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><td>{esc(prompt_of(r))}</td><td>{esc(r.get('response', r.get('completion', '')))}</td>"
                   f"<td>{esc(r.get('reward', r.get('score', r.get('correct', ''))))}</td></tr>" for r in rows)
    return (f"<details open><summary>sample generations: {esc(name)}</summary><table class='gen'>"
            f"<tr><th>prompt</th><th>response</th><th>score</th></tr>{body}</table></details>")


def section_html(section: Section) -> str:
    parts = [f"<h2>{esc(section.name)} <small>({esc(section.kind)})</small></h2>"]
    if section.error:
        parts.append(f"<p class='failed'>failed: {esc(section.error)}</p>")
    image = curves_png(section.metrics, section.name) if section.metrics else None
    if image:
        parts.append(f"<img alt='metric curves of {esc(section.name)}' src='data:image/png;base64,{image}'>")
    last = next((r for r in reversed(section.metrics) if "loss" in r or "reward" in r), None)
    if last:
        cells = "".join(f"<tr><td>{esc(k)}</td><td>{fmt(v)}</td></tr>" for k, v in last.items())
        parts.append(f"<details><summary>last logged step</summary><table>{cells}</table></details>")
    if section.results:
        parts.append(results_table(section.results))
    for name, rows in section.generations.items():
        parts.append(generations_table(name, rows))
    if section.config_text:
        parts.append(f"<details><summary>resolved config</summary><pre>{esc(section.config_text)}</pre></details>")
    return "\n".join(parts)


def render_report(run_dir: str | Path) -> str:
    title, sections, record = collect(run_dir)
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    source = f"<p>pipeline: <code>{esc(record['source'])}</code></p>" if record.get("source") else ""
    body = "\n".join(section_html(s) for s in sections)
    body = safety_html(sections) + "\n" + body
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>posttrain report: {esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>posttrain report: {esc(title)}</h1>"
            f"<p>run directory <code>{esc(Path(run_dir).resolve())}</code>, written {created}</p>{source}"
            f"<h2>Stages</h2>{timings_table(sections)}\n{body}</body></html>")


def safety_html(sections: list[Section]) -> str:
    """Attack success / over-refusal before and after (posttrain.safety.report); "" without safety runs."""
    from ..safety.report import safety_section_html

    return safety_section_html([(s.name, s.directory) for s in sections],
                               [(s.name, s.results) for s in sections if s.results])


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError("run_dir", f"{run_dir} is not a directory")
    target = Path(output) if output else run_dir / "report.html"
    with atomic_write(target) as handle:
        handle.write(render_report(run_dir))
    return target


@dataclass
class ReportConfig:
    run_dir: str = help_field("", "a pipeline run directory or a single command's run directory")
    output: str | None = help_field(None, "HTML file to write (default: RUN_DIR/report.html)")


def main(argv: list[str]) -> int:
    cfg = parse_config(ReportConfig, argv, prog="posttrain report", description=__doc__.splitlines()[0], positional="run_dir")
    if not cfg.run_dir:
        raise ConfigError("run_dir", "give a run directory: posttrain report RUN_DIR")
    print(f"report: {write_report(cfg.run_dir, cfg.output)}")
    return 0
