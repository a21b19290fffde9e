"""Plain-text tables for the terminal, and JSON-safe numbers for reports."""
from __future__ import annotations

import math
from typing import Any, Sequence


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: floats rounded, None/NaN as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_p(p: float | None) -> str:
    """A p-value: 3 decimals, or 2 significant digits when below 0.001 (never a bare 0.000)."""
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """Left-aligned first column, right-aligned numbers, one header rule."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None (JSON has no NaN) and numpy scalars by Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
