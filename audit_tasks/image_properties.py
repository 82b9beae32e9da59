"""Image-property shortcuts: cheap per-image properties measured at ingest, and their quantile bins.

A model can tell wolves from huskies by brightness alone when every wolf photo is brighter. Such a shortcut
shows in the data before any model is trained, if the ingest measures the image itself. Each image is
decoded once, small: a JPEG through PIL's `draft` (DCT scaling, 1/2 to 1/8, no full decode), any image then
thumbnailed to at most `THUMBNAIL_SIDE` pixels. On that thumbnail:

* `brightness`: mean luma (ITU-R 601), 0..1.
* `contrast`: standard deviation of the luma, 0..1.
* `colourfulness`: Hasler & Süsstrunk (2003), ``sqrt(sd_rg² + sd_yb²) + 0.3 sqrt(mean_rg² + mean_yb²)`` on
  0..255 channels (``rg = R - G``, ``yb = (R + G) / 2 - B``).
* `sharpness`: variance of the 4-neighbour Laplacian of the luma (0..255); measured on the thumbnail, so
  it compares images with each other, not with other tools' full-size figures.
* `border_uniformity`: standard deviation of the luma (0..1) over the outer 5% frame (at least one pixel
  each side): 0 for a flat studio border or letterbox, larger for a busy border.
* `aspect`: width / height as displayed (from the header probe), `format` (PIL's name: JPEG, PNG, ...)
  and `jpeg_quality`: the libjpeg quality (1..100) whose scaled standard luminance table sums to the
  file's table 0, or null where the format is not JPEG or the file carries no table.

A file that cannot be measured gets nulls (the row is ingested or quarantined exactly as before):
measuring never raises.

Binning (`bin_properties`) turns each numeric property into ``q1..q<bins>`` by its rank among the rows
given (average rank for ties, so equal values share a bin and a property that never varies falls in one
bin; nulls stay null, which the co-occurrence check reads as "unknown"). The bins are relative to the rows
binned: the co-occurrence stage bins over the rows it reads (the whole catalog), so the bins describe
the data the check judges; a run's few new rows would give unstable edges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from audit_tasks.config import IMAGE_PROPERTY_NAMES
from audit_tasks.storage import StoragePath, storage_path

#: Longest side of the thumbnail the properties are measured on.
THUMBNAIL_SIDE = 128
#: Share of each side that makes the border frame.
BORDER_SHARE = 0.05
#: Property name -> catalog column. `width` and `height` are the catalog's own columns.
PROPERTY_COLUMNS: dict[str, str] = {n: n if n in ("width", "height") else f"prop_{n}" for n in IMAGE_PROPERTY_NAMES}
#: Every property a config may name.
PROPERTY_NAMES = tuple(PROPERTY_COLUMNS)
#: Properties taken as they are (categories), not binned.
CATEGORICAL_PROPERTIES = frozenset({"format"})
#: The nullable catalog columns the ingest adds (older catalogs lack them; they read as null there).
PROPERTY_FIELDS = [
    pa.field(PROPERTY_COLUMNS[name], pa.string() if name == "format" else pa.float64())
    for name in PROPERTY_NAMES
    if PROPERTY_COLUMNS[name] not in ("width", "height")
]

# libjpeg's standard luminance quantisation table (Annex K), for the quality estimate.
_STD_LUMINANCE = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29]
    + [51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103]
    + [121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)


def empty_properties() -> dict[str, Any]:
    """The catalog's property cells of an image that could not be measured: all null."""
    return {f.name: None for f in PROPERTY_FIELDS}


def measure_image(path: StoragePath | str, *, width: int | None = None, height: int | None = None) -> dict[str, Any]:
    """The property cells (catalog column -> value) of one image; all null when it cannot be decoded.

    `width` and `height` (as displayed, from the probe) give the aspect.
    """
    cells = empty_properties()
    try:
        with storage_path(path).open("rb") as handle, Image.open(handle) as image:
            cells["prop_format"] = image.format
            if image.format == "JPEG":
                cells["prop_jpeg_quality"] = jpeg_quality(getattr(image, "quantization", None))
                image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            small = image.convert("RGB")
            small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            pixels = np.asarray(small, dtype=np.float32)
    except Exception:  # noqa: BLE001 - any decoder error: the image is simply not measured
        return empty_properties()
    cells.update(pixel_properties(pixels))
    if width and height:
        cells["prop_aspect"] = width / height
    return cells


def pixel_properties(rgb: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, colourfulness, sharpness and border uniformity of an HxWx3 0..255 array (all
    orientation-free, so the thumbnail is not rotated by its EXIF orientation)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    rg = r - g
    yb = 0.5 * (r + g) - b
    colourfulness = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))
    height, width = luma.shape
    sharpness = 0.0
    if height >= 3 and width >= 3:
        laplacian = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
        sharpness = float(laplacian.var())
    dy, dx = max(1, round(height * BORDER_SHARE)), max(1, round(width * BORDER_SHARE))
    frame = np.concatenate([luma[:dy].ravel(), luma[-dy:].ravel(), luma[:, :dx].ravel(), luma[:, -dx:].ravel()])
    return {
        "prop_brightness": float(luma.mean()) / 255.0,
        "prop_contrast": float(luma.std()) / 255.0,
        "prop_colourfulness": colourfulness,
        "prop_sharpness": sharpness,
        "prop_border_uniformity": float(frame.std()) / 255.0,
    }


def jpeg_quality(tables: Mapping[int, Sequence[int]] | None) -> float | None:
    """The libjpeg quality (1..100) whose scaled standard luminance table best matches table 0 (by its sum),
    or None when there is no table 0 of 64 entries."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    scale = 100.0 * float(np.sum(tables[0])) / float(_STD_LUMINANCE.sum())
    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0
    return float(min(100.0, max(1.0, round(quality))))


def bin_labels(bins: int) -> list[str]:
    """`q1` .. `q<bins>`, lowest first."""
    return [f"q{i}" for i in range(1, bins + 1)]


def bin_properties(frame: pd.DataFrame, properties: Sequence[str], bins: int) -> pd.DataFrame:
    """One string column per property (named after it: `brightness`) of quantile bins over `frame`'s rows.

    Numeric properties get ``q1..q<bins>`` by average rank (ties share a bin); `format` is kept as it is.
    A property whose column the frame lacks (a catalog older than the properties) is all null.
    """
    out = pd.DataFrame(index=frame.index)
    labels = np.asarray(bin_labels(bins), dtype=object)
    for name in properties:
        column = PROPERTY_COLUMNS[name]
        if column not in frame.columns:
            out[name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        elif name in CATEGORICAL_PROPERTIES:
            out[name] = frame[column].astype(object).where(frame[column].notna(), None)
        else:
            values = pd.to_numeric(frame[column], errors="coerce")
            ranks = values.rank(method="average", pct=True)
            codes = np.clip(np.ceil(ranks.to_numpy(dtype=float) * bins), 1, bins)
            cells = np.full(len(frame), None, dtype=object)
            known = ~np.isnan(codes)
            cells[known] = labels[codes[known].astype(int) - 1]
            out[name] = pd.Series(cells, index=frame.index, dtype=object)
    return out
