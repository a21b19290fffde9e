"""Paths of the data files shipped in the package (`posttrain/resources/data/`).

    demo_data_path("instruct_chat.jsonl")

Files (made by scripts/make_demo_data.py; see docs/data-formats.md):
instruct_alpaca.jsonl, instruct_chat.jsonl, instruct_heldout.jsonl,
sample_prompt_completion.jsonl, sample_preference.jsonl, sample_ranked.jsonl,
sample_unpaired.jsonl.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "resources" / "data"


def demo_data_path(name: str) -> Path:
    """The path of a shipped data file; an unknown name lists the files there."""
    path = DATA_DIR / name
    if not path.exists():
        known = ", ".join(sorted(p.name for p in DATA_DIR.glob("*.jsonl")))
        raise FileNotFoundError(f"no shipped data file {name!r} (files: {known})")
    return path
