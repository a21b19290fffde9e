"""Find what a run directory holds: stages, configs, metric curves, eval results, generations.

Works on a pipeline run (`pipeline.json` + one folder per stage) and on a single
command's run directory (`config.yaml`, `metrics.jsonl`, `results.json`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENERATION_GLOBS = ("generations.jsonl", "*generations*.jsonl", "before.jsonl", "after.jsonl", "rollouts.jsonl",
                    "round-*/samples.jsonl")


@dataclass
class Section:
    """One run (a pipeline stage, or the run itself)."""

    name: str
    kind: str
    directory: Path
    status: str = "done"
    seconds: float | None = None
    cached: bool = False
    config_text: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None
    generations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None


def read_jsonl_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the report shows what is readable
        if isinstance(row, dict):
            rows.append(row)
        if limit and len(rows) >= limit:
            break
    return rows


def collect_section(name: str, kind: str, directory: Path, status: dict[str, Any] | None = None) -> Section:
    status = status or {}
    section = Section(name, kind, directory, status.get("status", "done"), status.get("seconds"),
                      bool(status.get("cached")), error=status.get("error"))
    if (directory / "config.yaml").exists():
        section.config_text = (directory / "config.yaml").read_text(encoding="utf-8")
    if (directory / "metrics.jsonl").exists():
        section.metrics = read_jsonl_rows(directory / "metrics.jsonl")
    if (directory / "results.json").exists():
        try:
            section.results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            section.results = None
    seen: set[Path] = set()
    for pattern in GENERATION_GLOBS:
        for path in sorted(directory.glob(pattern)):
            if path not in seen and path.is_file():
                seen.add(path)
                section.generations[str(path.relative_to(directory))] = read_jsonl_rows(path, limit=6)
    return section


def collect(run_dir: str | Path) -> tuple[str, list[Section], dict[str, Any]]:
    """(title, sections, pipeline record or {})."""
    run_dir = Path(run_dir)
    pipeline_file = run_dir / "pipeline.json"
    if pipeline_file.exists():
        record = json.loads(pipeline_file.read_text(encoding="utf-8"))
        sections = [collect_section(s["name"], s["type"], Path(s["dir"]), s) for s in record.get("stages", [])]
        return record.get("name", run_dir.name), sections, record
    return run_dir.name, [collect_section(run_dir.name, "run", run_dir)], {}
