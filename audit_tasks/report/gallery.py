"""Which images the report's galleries show, and their thumbnails: sampled under a fixed page budget.

Per confusion cell and per class the most spurious-looking images come first (flagged, then highest
spurious share, ties by image id), so a gallery shows the worst offenders while the page stays light
for any number of images; images.parquet keeps every one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pandas as pd

from audit_tasks.report.data import is_missing
from audit_tasks.report.format import pct
from audit_tasks.report.images import Overlay, render_overlay

#: Thumbnails on the whole page, per gallery: the page-weight budget (about 4-6 KB each).
CONFUSION_THUMBS = 240
SALIENCY_THUMBS = 192


@dataclass(frozen=True)
class Figure:
    """One gallery thumbnail and its caption."""

    data_uri: str
    width: int
    height: int
    box_width: int
    uri: str
    name: str
    label: Any
    prediction: Any
    confidence: str | None
    core: str
    spurious: str
    outside: str
    flagged: bool
    has_original: bool


def sort_worst(frame: pd.DataFrame) -> pd.DataFrame:
    """Most spurious-looking first: flagged, then highest spurious share; ties by image id (deterministic)."""
    keys = frame.assign(
        _flag=frame["spurious_flag"].fillna(False).astype(bool) if "spurious_flag" in frame else False,
        _spur=(
            pd.to_numeric(frame["spurious_share"], errors="coerce").fillna(-1.0) if "spurious_share" in frame else -1.0
        ),
        _id=frame["image_id"].astype(str) if "image_id" in frame else frame["_row"].astype(str),
    )
    return keys.sort_values(["_flag", "_spur", "_id"], ascending=[False, False, True], kind="stable")


class Thumbs:
    """Renders each selected image's overlay once per report (local cache, not module state)."""

    def __init__(
        self,
        images: pd.DataFrame,
        cams: dict[int, np.ndarray],
        thumb_size: int,
        opener: Callable[[str], IO[bytes]] | None,
    ) -> None:
        self._images = images
        self._cams = cams
        self._size = thumb_size
        self._opener = opener
        self._cache: dict[int, Overlay] = {}

    def figure(self, row: int) -> Figure:
        r = self._images.iloc[row]
        if row not in self._cache:
            self._cache[row] = render_overlay(
                self._cams.get(row),
                r.get("cam_height"),
                r.get("cam_width"),
                image_path=r.get("image_path"),
                width=r.get("width"),
                height=r.get("height"),
                regions=r.get("regions"),
                thumb_size=self._size,
                opener=self._opener,
            )
        ov = self._cache[row]
        uri = str(r.get("image_uri", "") or "")
        conf = r.get("confidence")
        return Figure(
            data_uri=ov.data_uri,
            width=ov.width,
            height=ov.height,
            box_width=max(ov.width, 104) + 12,
            uri=uri,
            name=uri.rstrip("/").rsplit("/", 1)[-1] or uri,
            label=r.get("label"),
            prediction=r.get("prediction"),
            confidence=None if is_missing(conf) else pct(conf, 0),
            core=pct(r.get("core_share"), 0),
            spurious=pct(r.get("spurious_share"), 0),
            outside=pct(r.get("outside_share"), 0),
            flagged=bool(r.get("spurious_flag")) if not is_missing(r.get("spurious_flag")) else False,
            has_original=ov.has_original,
        )

    def figures(self, rows: list[int]) -> tuple[Figure, ...]:
        return tuple(self.figure(r) for r in rows)


def confusion_plan(images: pd.DataFrame, max_gallery: int) -> dict[tuple[str, str], list[int]]:
    """Which images each confusion cell shows: a bounded sample, worst first, errors get the budget first."""
    if max_gallery <= 0 or not len(images):
        return {}
    keyed = images.assign(_l=images["label"].astype(str), _p=images["prediction"].astype(str))
    sizes = keyed.groupby(["_l", "_p"]).size()
    cells = sorted(sizes.index, key=lambda c: (c[0] == c[1], -int(sizes[c]), c))
    per_cell = max(1, min(max_gallery, CONFUSION_THUMBS // max(1, len(cells))))
    budget = CONFUSION_THUMBS
    heads = sort_worst(keyed).groupby(["_l", "_p"], sort=False).head(per_cell)
    by_cell = {c: list(g["_row"]) for c, g in heads.groupby(["_l", "_p"], sort=False)}
    plan = {}
    for cell in cells:
        take = by_cell.get(cell, [])[: min(per_cell, budget)]
        if not take:
            break
        plan[cell] = take
        budget -= len(take)
    return plan


def saliency_plan(images: pd.DataFrame, max_gallery: int) -> dict[str, list[int]]:
    """Which images each class's gallery shows (by the class the CAM explains): a bounded sample, worst first."""
    if max_gallery <= 0 or not len(images):
        return {}
    column = "target_class" if "target_class" in images else "label"
    keyed = images.assign(_c=images[column].astype(str))
    classes = sorted(keyed["_c"].unique())
    per_class = max(1, min(max_gallery, SALIENCY_THUMBS // max(1, len(classes))))
    heads = sort_worst(keyed).groupby("_c", sort=False).head(per_class)
    plan: dict[str, list[int]] = {}
    budget = SALIENCY_THUMBS
    grouped = {c: list(g["_row"]) for c, g in heads.groupby("_c", sort=False)}
    for c in classes:
        take = grouped.get(c, [])[: min(per_class, budget)]
        if not take:
            break
        plan[c] = take
        budget -= len(take)
    return plan
