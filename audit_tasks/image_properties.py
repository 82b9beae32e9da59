"""Image-property shortcuts: cheap per-image properties and their quantile bins.

A model can tell wolves from huskies by brightness alone when every wolf photo is brighter. Such a shortcut
is in the data, whatever the model, and shows once the images are measured. Measuring costs a decode, so
each property is measured where its input is already at hand:

* From the header, at ingest (no pixel is decoded; the probe has the file open anyway): `aspect` (width /
  height as displayed), `format` (PIL's name: JPEG, PNG, ...) and `jpeg_quality`: the libjpeg quality
  (1..100) whose scaled standard luminance table sums to the file's table 0, or null where the format is
  not JPEG or the file carries no table. They are catalog columns (`prop_aspect`, ...).
* From the pixels, in the scoring stage, on the batch the model sees (decoded there anyway, on the GPU when
  there is one), so they cost a few vector operations per batch instead of a second decode:
  `brightness` (mean luma, ITU-R 601, 0..1), `contrast` (standard deviation of the luma, 0..1),
  `colourfulness` (Hasler & Susstrunk 2003, ``sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)``
  on 0..255 channels, ``rg = R - G``, ``yb = (R + G) / 2 - B``), `sharpness` (variance of the 4-neighbour
  Laplacian of the 0..255 luma, on the thumbnail, so it compares images with each other, not with other
  tools' full-size figures) and `border_uniformity` (standard deviation of the luma, 0..1, over the
  outer 5% frame, at least one pixel each side: 0 for a flat studio border or letterbox), all on a box-averaged
  thumbnail of at most 128 pixels a side (as the sharpness says, they compare images with each other). They are columns
  of the images table and are kept beside the catalog (`catalog.write_measured_properties`), one part per
  run, so the co-occurrence check judges every image ever scored, not only tonight's.

An image that cannot be measured has null properties; measuring never raises and never quarantines.

Binning (`bin_properties`) turns each numeric property into ``q1..q<bins>`` by its rank among the rows
given (average rank for ties, so equal values share a bin and a property that never varies falls in one
bin; nulls stay null, which the co-occurrence check reads as "unknown"). The bins are relative to the rows
binned: the checks bin over the whole catalog, so `brightness=q5` means the same images in the
co-occurrence and the subgroup tables, and a run's few new rows do not give unstable edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    import torch

    from audit_tasks.images import ImageInfo

#: The image properties a config may name, in the catalog's order.
ImagePropertyName = Literal[
    "brightness",
    "contrast",
    "colourfulness",
    "sharpness",
    "border_uniformity",
    "aspect",
    "jpeg_quality",
    "format",
    "width",
    "height",
]
IMAGE_PROPERTY_NAMES: tuple[ImagePropertyName, ...] = get_args(ImagePropertyName)
#: Longest side of the thumbnail the pixel properties are measured on (a box average of the model's input).
THUMBNAIL_SIDE = 128
#: Share of each side that makes the border frame.
BORDER_SHARE = 0.05
#: Property name -> column (catalog or images table). `width` and `height` are the catalog's own columns.
PROPERTY_COLUMNS: dict[str, str] = {n: n if n in ("width", "height") else f"prop_{n}" for n in IMAGE_PROPERTY_NAMES}
#: Every property a config may name.
PROPERTY_NAMES = tuple(PROPERTY_COLUMNS)
#: Measured from the pixels in the scoring stage.
PIXEL_PROPERTIES = ("brightness", "contrast", "colourfulness", "sharpness", "border_uniformity")
#: Read from the header at ingest (besides the catalog's own width and height).
HEADER_PROPERTIES = ("aspect", "jpeg_quality", "format")
#: Properties taken as they are (categories), not binned.
CATEGORICAL_PROPERTIES = frozenset({"format"})
#: The nullable catalog columns the ingest adds (older catalogs lack them; they read as null there).
PROPERTY_FIELDS = [
    pa.field(PROPERTY_COLUMNS[name], pa.string() if name in CATEGORICAL_PROPERTIES else pa.float64())
    for name in HEADER_PROPERTIES
]
#: The pixel-property columns of the images table and of the measured-properties parts beside the catalog.
PIXEL_FIELDS = [pa.field(PROPERTY_COLUMNS[name], pa.float64()) for name in PIXEL_PROPERTIES]
PIXEL_COLUMNS: tuple[str, ...] = tuple(f.name for f in PIXEL_FIELDS)

# libjpeg's standard luminance quantisation table (Annex K), for the quality estimate.
_STD_LUMINANCE = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29]
    + [51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103]
    + [121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)


def header_properties(info: ImageInfo) -> dict[str, Any]:
    """The catalog's property cells of a probed image (catalog column -> value), from its header alone."""
    return {
        "prop_aspect": info.width / info.height if info.width and info.height else None,
        "prop_jpeg_quality": info.jpeg_quality,
        "prop_format": info.format,
    }


def empty_properties() -> dict[str, Any]:
    """The catalog's property cells of an image that was not probed: all null."""
    return {f.name: None for f in PROPERTY_FIELDS}


def pixel_properties(rgb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Brightness, contrast, colourfulness, sharpness and border uniformity (column -> (N,) float64 tensor
    on the batch's device) of a batch of (N, 3, H, W) RGB images on a 0..255 scale.

    Measured on a thumbnail of at most THUMBNAIL_SIDE pixels a side (a box average of the batch), so they
    cost a small fraction of the model's pass whatever the input size; all are orientation-free per-image
    reductions.
    """
    import torch  # here, not at the top: the catalog and the ingest import this module and need no torch

    rgb = rgb.float()
    factor = -(-max(rgb.shape[-2:]) // THUMBNAIL_SIDE)
    if factor > 1:
        rgb = torch.nn.functional.avg_pool2d(rgb, factor, ceil_mode=True)
    weights = rgb.new_tensor([[0.299, 0.587, 0.114], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
    luma, rg, yb = torch.einsum("kc,nchw->knhw", weights, rgb).unbind(0)  # one pass for the three planes
    rg_var, rg_mean = torch.var_mean(rg, dim=(1, 2), correction=0)
    yb_var, yb_mean = torch.var_mean(yb, dim=(1, 2), correction=0)
    luma_var, luma_mean = torch.var_mean(luma, dim=(1, 2), correction=0)
    n, height, width = luma.shape
    if height >= 3 and width >= 3:
        laplacian = luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:] + luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1]
        laplacian = laplacian - 4 * luma[:, 1:-1, 1:-1]
        sharpness = laplacian.flatten(1).var(dim=1, correction=0)
    else:
        sharpness = luma.new_zeros(n)
    dy, dx = max(1, round(height * BORDER_SHARE)), max(1, round(width * BORDER_SHARE))
    edges = [luma[:, :dy], luma[:, -dy:], luma[:, :, :dx], luma[:, :, -dx:]]
    frame = torch.cat([edge.flatten(1) for edge in edges], dim=1)
    values = {
        "prop_brightness": luma_mean / 255.0,
        "prop_contrast": luma_var.sqrt() / 255.0,
        "prop_colourfulness": (rg_var + yb_var).sqrt() + 0.3 * (rg_mean**2 + yb_mean**2).sqrt(),
        "prop_sharpness": sharpness,
        "prop_border_uniformity": frame.std(dim=1, correction=0) / 255.0,
    }
    return {name: value.double() for name, value in values.items()}


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
