"""Chart geometry for the report: co-occurrence heatmap, subgroup dot-and-whisker chart, class bars.

No plotting library and no markup: each function lays a chart out (positions, colours, label text) as
frozen dataclasses, and the `charts.svg.j2` macros draw them as inline SVG, escaping every label. The page
must open offline and stay small. Long labels are shortened on the chart, the full text kept for a
<title> tooltip. Label widths are estimated for the 11 px font the macros set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audit_tasks.report.data import is_missing
from audit_tasks.subgroups import STATUS_GAP, STATUS_TOO_SMALL

INK = "#1d2330"
MUTED = "#5c6577"
PASS = "#16794a"
FAIL = "#b3261e"
ACCENT = "#2457c5"
GREY = "#9aa1ad"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class Label:
    """A text label at (x, y): `short` is drawn, `text` is the tooltip."""

    x: float
    y: float
    text: str
    short: str


def _label(x: float, y: float, text: str, limit: int) -> Label:
    return Label(x, y, text, _short(text, limit))


# ---- heatmap ------------------------------------------------------------------------------------


def diverging(value: float) -> str:
    """White at 0, red towards +1, blue towards -1 (npmi's range)."""
    v = max(-1.0, min(1.0, value))
    if v >= 0:
        r, g, b = 255, round(255 - 190 * v), round(255 - 200 * v)
    else:
        r, g, b = round(255 + 200 * v), round(255 + 140 * v), 255
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class HeatCell:
    """One cell; `value` None draws an empty grey cell."""

    x: float
    y: float
    row: str
    col: str
    value: float | None
    fill: str
    ink: str
    outlined: bool


@dataclass(frozen=True)
class HeatRow:
    label: Label
    cells: tuple[HeatCell, ...]


@dataclass(frozen=True)
class Heatmap:
    width: float
    height: float
    size: int  # of a cell
    title: str
    columns: tuple[Label, ...]  # anchored where the rotated text starts
    rows: tuple[HeatRow, ...]
    legend_y: float
    legend: tuple[tuple[float, str], ...]  # (x, fill) of each swatch, -1 .. +1
    legend_low: Label  # "npmi -1" left of the swatches
    legend_high_x: float


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Mapping[tuple[str, str], float],
    *,
    flagged: frozenset[tuple[str, str]] = frozenset(),
    title: str = "npmi",
) -> Heatmap:
    """A row x column heatmap of values in [-1, 1]; flagged cells get a thick outline."""
    cell = 36
    left = min(190, 16 + 7 * max((len(_short(r, 26)) for r in rows), default=4))
    top = min(160, 20 + 5.2 * max((len(_short(c, 26)) for c in cols), default=4))
    width = max(left + cell * len(cols) + 20, left + 21 * 8 + 170)  # room for the legend
    height = top + cell * len(rows) + 34
    columns = tuple(_label(left + cell * j + cell / 2 + 4, top - 6, col, 26) for j, col in enumerate(cols))
    heat_rows = []
    for i, row in enumerate(rows):
        y = top + cell * i
        cells = []
        for j, col in enumerate(cols):
            value = values.get((row, col))
            if value is None or is_missing(value):
                cells.append(HeatCell(left + cell * j, y, row, col, None, "#f3f4f6", INK, False))
                continue
            cells.append(
                HeatCell(
                    left + cell * j,
                    y,
                    row,
                    col,
                    float(value),
                    diverging(float(value)),
                    "#fff" if abs(value) > 0.6 else INK,
                    (row, col) in flagged,
                )
            )
        heat_rows.append(HeatRow(_label(left - 6, y + cell / 2 + 4, row, 26), tuple(cells)))
    legend_y = top + cell * len(rows) + 12
    swatches = tuple((left + k * 8, diverging(-1 + k / 10)) for k in range(21))
    low = Label(left - 6, legend_y + 9, f"{title} \u22121", f"{title} \u22121")
    return Heatmap(width, height, cell, title, columns, tuple(heat_rows), legend_y, swatches, low, left + 21 * 8 + 6)


# ---- subgroup chart ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPoint:
    """One subgroup on the chart."""

    group: str
    n: int
    value: float | None
    ci_low: float | None
    ci_high: float | None
    status: str  # ok | gap | too small to judge


@dataclass(frozen=True)
class Tick:
    x: float
    text: str


@dataclass(frozen=True)
class GroupRow:
    """A drawn group: label, whisker (x0..x1, or None), dot (cx, or None), note at the right."""

    y: float  # centre line
    label: Label
    colour: str
    whisker: tuple[float, float] | None
    dot_x: float | None
    dot_fill: str
    tooltip: str
    note: str
    note_colour: str


@dataclass(frozen=True)
class SubgroupChart:
    width: int
    height: int
    metric: str
    plot_top: int
    axis_y: float
    ticks: tuple[Tick, ...]
    caption_x: float
    note_x: float
    best_x: float | None
    limit_x: float | None
    rows: tuple[GroupRow, ...]


def subgroup_chart(
    points: Sequence[GroupPoint],
    *,
    metric: str,
    best: float | None,
    threshold: float | None,
) -> SubgroupChart:
    """Dot-and-whisker chart of a metric per group: CI whiskers, the best group and the gap threshold drawn."""
    label_w, plot_w, right = 230, 520, 150
    row_h, top = 24, 40
    values = [p.value for p in points if p.value is not None and not is_missing(p.value)]
    lows = [p.ci_low for p in points if p.ci_low is not None and not is_missing(p.ci_low)] + values
    if threshold is not None and not is_missing(threshold):
        lows.append(float(threshold))
    highs = [p.ci_high for p in points if p.ci_high is not None and not is_missing(p.ci_high)] + values
    lo = max(0.0, math.floor((min(lows) if lows else 0.0) * 10 - 0.5) / 10)
    hi = min(1.0, math.ceil((max(highs) if highs else 1.0) * 10 + 0.5) / 10)
    if hi - lo < 0.2:
        lo, hi = max(0.0, hi - 0.2), max(hi, 0.2)

    def sx(v: float) -> float:
        return label_w + (max(lo, min(hi, v)) - lo) / (hi - lo) * plot_w

    axis_y = top + row_h * len(points) + 4
    ticks = tuple(Tick(sx(lo + (hi - lo) * k / 5), f"{lo + (hi - lo) * k / 5:.2f}") for k in range(6))
    rows = []
    for i, p in enumerate(points):
        cy = top + row_h * i + row_h / 2
        small = p.status == STATUS_TOO_SMALL
        colour = GREY if small else FAIL if p.status == STATUS_GAP else ACCENT
        whisker = None
        if p.ci_low is not None and p.ci_high is not None and not is_missing(p.ci_low) and not is_missing(p.ci_high):
            whisker = (sx(float(p.ci_low)), sx(float(p.ci_high)))
        value = None if p.value is None or is_missing(p.value) else float(p.value)
        note = f"n={p.n:,}" + (
            f" \u00b7 {STATUS_TOO_SMALL}" if small else " \u00b7 over the gap" if p.status == STATUS_GAP else ""
        )
        rows.append(
            GroupRow(
                y=cy,
                label=_label(label_w - 8, cy + 4, p.group, 34),
                colour=colour,
                whisker=whisker,
                dot_x=None if value is None else sx(value),
                dot_fill="#fff" if small else colour,
                tooltip=f"{p.group}: {value:.3f} (n={p.n})" if value is not None else "",
                note=note,
                note_colour=MUTED if small else colour,
            )
        )
    return SubgroupChart(
        width=label_w + plot_w + right,
        height=top + row_h * len(points) + 36,
        metric=metric,
        plot_top=top,
        axis_y=axis_y,
        ticks=ticks,
        caption_x=label_w + plot_w / 2,
        note_x=label_w + plot_w + 10,
        best_x=None if best is None or is_missing(best) else sx(float(best)),
        limit_x=None if threshold is None or is_missing(threshold) else sx(float(threshold)),
        rows=tuple(rows),
    )


# ---- class bars ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One class: its label, and its bar (width, value text) unless it has no value."""

    y: float  # top of the row
    label: Label
    value: float | None
    length: float
    end_x: float
    colour: str


@dataclass(frozen=True)
class ClassBars:
    width: int
    height: int
    label: str
    left: int
    top: int
    axis_y: float
    caption_x: float
    bars: tuple[Bar, ...]
    limit_x: float | None
    limit_text: str


def class_bars(
    items: Sequence[tuple[str, float | None, bool]],
    *,
    threshold: float | None,
    label: str,
) -> ClassBars:
    """Horizontal bars of a fraction per class (e.g. flagged fraction) with the threshold drawn."""
    label_w, plot_w, right = 200, 440, 70
    row_h, top = 22, 22
    limit = None if threshold is None or is_missing(threshold) else float(threshold)
    values = [float(v) for _, v, _ in items if v is not None and not is_missing(v)]
    hi = max([1e-9, *values, *([limit] if limit is not None else [])])
    hi = min(1.0, math.ceil(hi * 10 + 0.5) / 10) if hi <= 1 else hi

    def sx(v: float) -> float:
        return label_w + min(v, hi) / hi * plot_w

    bars = []
    for i, (name, value, flagged) in enumerate(items):
        y = top + row_h * i
        known = None if value is None or is_missing(value) else float(value)
        end = sx(known) if known is not None else label_w
        bars.append(
            Bar(
                y,
                _label(label_w - 8, y + 15, name, 30),
                known,
                max(1.0, end - label_w),
                end,
                FAIL if flagged else ACCENT,
            )
        )
    return ClassBars(
        width=label_w + plot_w + right,
        height=top + row_h * len(items) + 30,
        label=label,
        left=label_w,
        top=top,
        axis_y=top + row_h * len(items) + 4,
        caption_x=label_w + plot_w / 2,
        bars=tuple(bars),
        limit_x=None if limit is None else sx(limit),
        limit_text="" if limit is None else f"limit {limit * 100:.0f}%",
    )
