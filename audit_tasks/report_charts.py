"""Inline SVG charts for the report: co-occurrence heatmap, subgroup dot-and-whisker chart, class bars.

Plain strings, no plotting library: the page must open offline and stay small. Every label is escaped
(SVG <text> and <title> inside HTML follow the same escaping rules); long labels are shortened on the
chart with the full text in a <title> tooltip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from audit_tasks.report_html import esc, is_missing

_FONT = 11


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _f(x: float) -> str:
    """Coordinates with one decimal: enough for the eye, stable across platforms."""
    return f"{x:.1f}"


def _diverging(value: float) -> str:
    """White at 0, red towards +1, blue towards -1 (npmi's range)."""
    v = max(-1.0, min(1.0, value))
    if v >= 0:
        r, g, b = 255, round(255 - 190 * v), round(255 - 200 * v)
    else:
        r, g, b = round(255 + 200 * v), round(255 + 140 * v), 255
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Mapping[tuple[str, str], float],
    *,
    flagged: frozenset[tuple[str, str]] = frozenset(),
    title: str = "npmi",
) -> str:
    """A row x column heatmap of values in [-1, 1]; flagged cells get a thick outline."""
    cell = 36
    left = min(190, 16 + 7 * max((len(_short(r, 26)) for r in rows), default=4))
    top = min(160, 20 + 5.2 * max((len(_short(c, 26)) for c in cols), default=4))
    width = max(left + cell * len(cols) + 20, left + 21 * 8 + 170)  # room for the legend
    height = top + cell * len(rows) + 34
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" font-size="{_FONT}"><title>{esc(title)}</title>'
    ]
    for j, col in enumerate(cols):
        x = left + cell * j + cell / 2
        parts.append(
            f'<text transform="translate({_f(x + 4)},{_f(top - 6)}) rotate(-50)" text-anchor="start">'
            f"<title>{esc(col)}</title>{esc(_short(col, 26))}</text>"
        )
    for i, row in enumerate(rows):
        y = top + cell * i
        parts.append(
            f'<text x="{_f(left - 6)}" y="{_f(y + cell / 2 + 4)}" text-anchor="end"><title>{esc(row)}</title>'
            f"{esc(_short(row, 26))}</text>"
        )
        for j, col in enumerate(cols):
            x = left + cell * j
            value = values.get((row, col))
            if value is None or is_missing(value):
                parts.append(
                    f'<rect x="{_f(x)}" y="{_f(y)}" width="{cell}" height="{cell}" fill="#f3f4f6" stroke="#fff"/>'
                )
                continue
            stroke = ' stroke="#111" stroke-width="2.5"' if (row, col) in flagged else ' stroke="#fff"'
            ink = "#fff" if abs(value) > 0.6 else "#1d2330"
            parts.append(
                f'<g><title>{esc(row)} \u2192 {esc(col)}: {esc(title)} {value:.3f}</title>'
                f'<rect x="{_f(x)}" y="{_f(y)}" width="{cell}" height="{cell}" fill="{_diverging(float(value))}"{stroke}/>'
                f'<text x="{_f(x + cell / 2)}" y="{_f(y + cell / 2 + 4)}" text-anchor="middle" fill="{ink}" '
                f'font-size="10">{value:.2f}</text></g>'
            )
    # Legend: -1 .. 0 .. +1
    ly = top + cell * len(rows) + 12
    for k in range(21):
        v = -1 + k / 10
        parts.append(f'<rect x="{_f(left + k * 8)}" y="{_f(ly)}" width="8" height="10" fill="{_diverging(v)}"/>')
    parts.append(f'<text x="{_f(left - 6)}" y="{_f(ly + 9)}" text-anchor="end">{esc(title)} \u22121</text>')
    parts.append(f'<text x="{_f(left + 21 * 8 + 6)}" y="{_f(ly + 9)}">+1 (outlined: flagged)</text>')
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class GroupPoint:
    """One subgroup on the chart."""

    group: str
    n: int
    value: float | None
    ci_low: float | None
    ci_high: float | None
    status: str  # ok | gap | too small to judge


def subgroup_chart(
    points: Sequence[GroupPoint],
    *,
    metric: str,
    best: float | None,
    threshold: float | None,
) -> str:
    """Dot-and-whisker chart of a metric per group: CI whiskers, the best group and the gap threshold drawn."""
    label_w, plot_w, right = 230, 520, 150
    row_h, top = 24, 40
    width = label_w + plot_w + right
    height = top + row_h * len(points) + 36
    lows = [p.ci_low for p in points if not is_missing(p.ci_low)] + [
        p.value for p in points if not is_missing(p.value)
    ]
    if not is_missing(threshold):
        lows.append(float(threshold))  # type: ignore[arg-type]
    highs = [p.ci_high for p in points if not is_missing(p.ci_high)] + [
        p.value for p in points if not is_missing(p.value)
    ]
    lo = max(0.0, math.floor((min(lows) if lows else 0.0) * 10 - 0.5) / 10)
    hi = min(1.0, math.ceil((max(highs) if highs else 1.0) * 10 + 0.5) / 10)
    if hi - lo < 0.2:
        lo, hi = max(0.0, hi - 0.2), max(hi, 0.2)

    def sx(v: float) -> float:
        return label_w + (max(lo, min(hi, v)) - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="{_FONT}"><title>{esc(metric)} per group</title>'
    ]
    # Axis and grid.
    axis_y = top + row_h * len(points) + 4
    steps = 5
    for k in range(steps + 1):
        v = lo + (hi - lo) * k / steps
        x = sx(v)
        parts.append(f'<line x1="{_f(x)}" y1="{top - 6}" x2="{_f(x)}" y2="{_f(axis_y)}" stroke="#eceef2"/>')
        parts.append(f'<text x="{_f(x)}" y="{_f(axis_y + 14)}" text-anchor="middle">{v:.2f}</text>')
    parts.append(
        f'<text x="{label_w + plot_w / 2}" y="{_f(axis_y + 29)}" text-anchor="middle" fill="#5c6577">'
        f"{esc(metric)} (dot) with confidence interval (whisker)</text>"
    )
    if not is_missing(best):
        xb = sx(float(best))  # type: ignore[arg-type]
        parts.append(f'<line x1="{_f(xb)}" y1="{top - 10}" x2="{_f(xb)}" y2="{_f(axis_y)}" stroke="#16794a" stroke-width="1.5"/>')
        parts.append(f'<text x="{_f(xb)}" y="{top - 14}" text-anchor="middle" fill="#16794a">best</text>')
    if not is_missing(threshold):
        xt = sx(float(threshold))  # type: ignore[arg-type]
        parts.append(
            f'<line x1="{_f(xt)}" y1="{top - 24}" x2="{_f(xt)}" y2="{_f(axis_y)}" stroke="#b3261e" '
            f'stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
        parts.append(
            f'<text x="{_f(xt)}" y="{top - 27}" text-anchor="middle" fill="#b3261e">gap limit</text>'
        )
    for i, p in enumerate(points):
        cy = top + row_h * i + row_h / 2
        small = p.status == "too small to judge"
        colour = "#9aa1ad" if small else "#b3261e" if p.status == "gap" else "#2457c5"
        parts.append(
            f'<text x="{label_w - 8}" y="{_f(cy + 4)}" text-anchor="end"><title>{esc(p.group)}</title>'
            f"{esc(_short(p.group, 34))}</text>"
        )
        if not is_missing(p.ci_low) and not is_missing(p.ci_high):
            x0, x1 = sx(float(p.ci_low)), sx(float(p.ci_high))  # type: ignore[arg-type]
            parts.append(
                f'<line x1="{_f(x0)}" y1="{_f(cy)}" x2="{_f(x1)}" y2="{_f(cy)}" stroke="{colour}" stroke-width="2"/>'
                f'<line x1="{_f(x0)}" y1="{_f(cy - 5)}" x2="{_f(x0)}" y2="{_f(cy + 5)}" stroke="{colour}" stroke-width="2"/>'
                f'<line x1="{_f(x1)}" y1="{_f(cy - 5)}" x2="{_f(x1)}" y2="{_f(cy + 5)}" stroke="{colour}" stroke-width="2"/>'
            )
        if not is_missing(p.value):
            fill = "#fff" if small else colour
            parts.append(
                f'<circle cx="{_f(sx(float(p.value)))}" cy="{_f(cy)}" r="5" fill="{fill}" stroke="{colour}" '
                f'stroke-width="2"><title>{esc(p.group)}: {float(p.value):.3f} (n={p.n})</title></circle>'  # type: ignore[arg-type]
            )
        note = f"n={p.n:,}" + (" \u00b7 too small to judge" if small else " \u00b7 over the gap" if p.status == "gap" else "")
        parts.append(
            f'<text x="{label_w + plot_w + 10}" y="{_f(cy + 4)}" fill="{colour if not small else "#5c6577"}">'
            f"{esc(note)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def class_bars(
    items: Sequence[tuple[str, float | None, bool]],
    *,
    threshold: float | None,
    label: str,
) -> str:
    """Horizontal bars of a fraction per class (e.g. flagged fraction) with the threshold drawn."""
    label_w, plot_w, right = 200, 440, 70
    row_h, top = 22, 22
    width = label_w + plot_w + right
    height = top + row_h * len(items) + 30
    values = [v for _, v, _ in items if not is_missing(v)]
    hi = max([1e-9, *values, *( [float(threshold)] if not is_missing(threshold) else [] )])  # type: ignore[list-item]
    hi = min(1.0, math.ceil(hi * 10 + 0.5) / 10) if hi <= 1 else hi

    def sx(v: float) -> float:
        return label_w + min(v, hi) / hi * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="{_FONT}"><title>{esc(label)}</title>'
    ]
    for i, (name, value, flagged) in enumerate(items):
        y = top + row_h * i
        parts.append(
            f'<text x="{label_w - 8}" y="{_f(y + 15)}" text-anchor="end"><title>{esc(name)}</title>'
            f"{esc(_short(name, 30))}</text>"
        )
        if is_missing(value):
            parts.append(f'<text x="{label_w + 4}" y="{_f(y + 15)}" fill="#5c6577">no data</text>')
            continue
        colour = "#b3261e" if flagged else "#2457c5"
        parts.append(
            f'<rect x="{label_w}" y="{_f(y + 4)}" width="{_f(max(1.0, sx(float(value)) - label_w))}" height="14" '  # type: ignore[arg-type]
            f'fill="{colour}"><title>{esc(name)}: {float(value):.3f}</title></rect>'  # type: ignore[arg-type]
            f'<text x="{_f(sx(float(value)) + 6)}" y="{_f(y + 15)}">{float(value) * 100:.1f}%</text>'  # type: ignore[arg-type]
        )
    axis_y = top + row_h * len(items) + 4
    parts.append(f'<line x1="{label_w}" y1="{top}" x2="{label_w}" y2="{_f(axis_y)}" stroke="#5c6577"/>')
    if not is_missing(threshold):
        xt = sx(float(threshold))  # type: ignore[arg-type]
        parts.append(
            f'<line x1="{_f(xt)}" y1="{top - 6}" x2="{_f(xt)}" y2="{_f(axis_y)}" stroke="#b3261e" '
            f'stroke-dasharray="5 3" stroke-width="1.5"/>'
            f'<text x="{_f(xt)}" y="{top - 9}" text-anchor="middle" fill="#b3261e">limit {float(threshold) * 100:.0f}%</text>'  # type: ignore[arg-type]
        )
    parts.append(
        f'<text x="{label_w + plot_w / 2}" y="{_f(axis_y + 20)}" text-anchor="middle" fill="#5c6577">{esc(label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
