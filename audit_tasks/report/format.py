"""Numbers as the page prints them: plain text (the templates escape it), an em dash for a missing value.

Also registered as template filters (`num`, `count`, `pct`) so the report and the reports page format alike.
"""

from __future__ import annotations

import math
from typing import Any

from audit_tasks.report.data import is_missing

MISSING = "\u2014"


def num(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals (integers without), or an em dash when missing."""
    if is_missing(value):
        return MISSING
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return MISSING
    if math.isinf(f):
        return "\u221e" if f > 0 else "-\u221e"
    if f.is_integer() and abs(f) < 1e15 and digits >= 0 and not isinstance(value, float):
        return f"{int(f):,}"
    return f"{f:.{digits}f}"


def count(value: Any) -> str:
    """A whole number with thousands separators."""
    if is_missing(value):
        return MISSING
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage."""
    if is_missing(value):
        return MISSING
    try:
        return f"{float(value) * 100:.{digits}f}%"
    except (TypeError, ValueError):
        return str(value)


def clip(value: Any, limit: int = 200) -> str:
    """Text cut to `limit` characters with an ellipsis."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def coord(x: float) -> str:
    """SVG coordinates with one decimal: enough for the eye, stable across platforms."""
    return f"{x:.1f}"
