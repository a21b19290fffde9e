"""Metric curves as PNG images (matplotlib, no display), embedded in the report as base64."""
from __future__ import annotations

import base64
import io
import math
from typing import Any

# Curves worth looking at, grouped per panel; any other numeric metric gets its own panel.
PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("loss", ("loss", "eval/loss")),
    ("reward", ("reward", "reward/mean", "rewards/mean", "eval/reward", "score")),
    ("KL", ("kl", "kl/mean", "objective/kl")),
    ("reward margins", ("rewards/margins", "eval/rewards/margins", "margin", "eval/margin")),
    ("accuracies", ("rewards/accuracies", "eval/rewards/accuracies", "accuracy", "eval/accuracy")),
    ("chosen / rejected rewards", ("rewards/chosen", "rewards/rejected")),
]
SKIP = {"step", "epoch", "lr", "tokens", "tokens_per_s", "elapsed_s", "time"}


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and "step" in row:
            xs.append(row["step"])
            ys.append(float(value))
    return xs, ys


def panels_for(rows: list[dict[str, Any]], limit: int = 8) -> list[tuple[str, list[str]]]:
    present = {k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    chosen, used = [], set()
    for title, keys in PANELS:
        keys_here = [k for k in keys if k in present]
        if keys_here:
            chosen.append((title, keys_here))
            used.update(keys_here)
    for key in sorted(present - used - SKIP):
        if len(chosen) >= limit:
            break
        chosen.append((key, [key]))
    return chosen[:limit]


def curves_png(rows: list[dict[str, Any]], title: str) -> str | None:
    """A grid of small line plots as a base64 PNG, or None when there is nothing to draw."""
    panels = [(t, keys) for t, keys in panels_for(rows) if any(len(series(rows, k)[0]) >= 1 for k in keys)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 2.8 * lines), squeeze=False)
    for axis, (panel_title, keys) in zip(axes.flat, panels):
        for key in keys:
            xs, ys = series(rows, key)
            axis.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=key)
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if len(keys) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
