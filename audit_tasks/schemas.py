"""Explicit pyarrow schemas of the run's tables: types, nullability and units in field metadata.

Writers conform a DataFrame to its schema before writing (`conform`), so a column's type never depends
on what one night's data happened to contain (an all-null column stays float, not null-typed).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from audit_tasks.image_properties import PIXEL_COLUMNS


def _f(
    name: str, type_: pa.DataType, nullable: bool = True, unit: str | None = None, doc: str | None = None
) -> pa.Field:
    meta = {}
    if unit:
        meta["unit"] = unit
    if doc:
        meta["doc"] = doc
    return pa.field(name, type_, nullable=nullable, metadata=meta or None)


SHARE = "fraction of the image's positive Grad-CAM energy (0..1)"
ENRICH = "share divided by the region's fraction of the image area (uniform map = 1)"
PROB = "probability (0..1)"

GATES = pa.schema(
    [
        _f(
            "check",
            pa.string(),
            False,
            doc="ingest | cooccurrence | class_balance | saliency | subgroups | leakage | strategies | rarity",
        ),
        _f("subject", pa.string(), False, doc="what the gate judges: a class, a group, a tag pair"),
        _f("metric", pa.string(), False),
        _f("value", pa.float64()),
        _f("threshold", pa.float64()),
        _f("passed", pa.bool_(), False),
        _f("detail", pa.string()),
        _f("judged", pa.bool_(), False, doc="false: passed only because there was too little data to judge"),
        _f("status", pa.string(), doc="pass | warn | fail | waived | regressed (see audit_tasks.policy)"),
        _f("baseline_value", pa.float64(), doc="the same gate's value in the baseline run (policy.baseline)"),
        _f("waiver", pa.string(), doc="the waiver naming this gate: owner, reason, expiry"),
    ]
)

COOCCURRENCE = pa.schema(
    [
        _f("tag_a", pa.string(), False),
        _f("tag_b", pa.string(), False, doc="a tag, or attribute=value"),
        _f("n_a", pa.int64(), False, unit="images"),
        _f("n_b", pa.int64(), False, unit="images"),
        _f("n_ab", pa.int64(), False, unit="images"),
        _f("n_a_only", pa.int64(), unit="images", doc="images with a but without b"),
        _f("n_b_only", pa.int64(), unit="images", doc="images with b but without a"),
        _f("p_b_given_a", pa.float64(), False, unit=PROB),
        _f("ci_low", pa.float64(), unit=PROB),
        _f("ci_high", pa.float64(), unit=PROB),
        _f("lift", pa.float64(), unit="ratio P(a,b)/(P(a)P(b))"),
        _f("npmi", pa.float64(), unit="normalised PMI (-1..1)"),
        _f("flagged", pa.bool_(), False),
        _f("message", pa.string()),
        _f("suggested_additions", pa.int64(), unit="images"),
    ]
)

CLASS_BALANCE = pa.schema(
    [
        _f("label", pa.string(), False),
        _f("n", pa.int64(), False, unit="images"),
        _f("share", pa.float64(), unit="fraction of labelled images"),
    ]
)

SALIENCY_BY_CLASS = pa.schema(
    [
        _f("class", pa.string(), False),
        _f("images", pa.int64(), False, unit="images"),
        _f("images_with_regions", pa.int64(), unit="images"),
        _f("mean_core_share", pa.float64(), unit=SHARE),
        _f("mean_spurious_share", pa.float64(), unit=SHARE),
        _f("mean_outside_share", pa.float64(), unit=SHARE),
        _f("mean_spurious_enrichment", pa.float64(), unit=ENRICH),
        _f("pointing_accuracy", pa.float64(), unit="fraction of images whose CAM peak hits a core region"),
        _f("flagged_fraction", pa.float64(), unit="fraction of region-bearing images flagged"),
        _f("flagged", pa.bool_(), False),
    ]
)

SALIENCY_PAIRS = pa.schema(
    [
        _f("class", pa.string(), False, doc="tag_a of the pair: the class whose Grad-CAM is measured"),
        _f("region", pa.string(), False, doc="tag_b of the pair: the name of the context or spurious region"),
        _f("images", pa.int64(), False, unit="class images carrying a region of that name"),
        _f("mean_share", pa.float64(), unit=SHARE),
        _f("mean_enrichment", pa.float64(), unit=ENRICH),
        _f("flagged_fraction", pa.float64(), unit="fraction of those images flagged"),
        _f("flagged", pa.bool_(), False),
    ]
)

SUBGROUPS = pa.schema(
    [
        _f("attribute", pa.string(), False, doc="an attribute, or attributes joined by & for an intersection"),
        _f("group", pa.string(), False, doc="a value, or values joined by & for an intersection"),
        _f("n", pa.int64(), False, unit="images"),
        _f("metric", pa.string(), False),
        _f("value", pa.float64(), unit=PROB),
        _f("ci_low", pa.float64(), unit=PROB),
        _f("ci_high", pa.float64(), unit=PROB),
        _f("gap", pa.float64(), unit="metric difference to the best group of the attribute"),
        _f("flagged", pa.bool_(), False),
        _f("status", pa.string(), doc="ok | gap | too small to judge"),
    ]
)

CONFUSION = pa.schema(
    [
        _f("attribute", pa.string(), False, doc="__overall__ for the whole audit"),
        _f("group", pa.string(), False),
        _f("label", pa.string(), False),
        _f("prediction", pa.string(), False),
        _f("n", pa.int64(), False, unit="images"),
    ]
)

LEAKAGE = pa.schema(
    [
        _f("tag_a", pa.string(), False, doc="the class present"),
        _f("tag_b", pa.string(), False, doc="the class absent, whose prediction is counted"),
        _f("n_a_without_b", pa.int64(), False, unit="images with a and without b"),
        _f("fp_rate_with_a", pa.float64(), unit="fraction of a-without-b images predicted b"),
        _f("fp_rate_without_a", pa.float64(), unit="fraction of neither images predicted b"),
        _f("gap", pa.float64(), unit="fp_rate_with_a - fp_rate_without_a"),
        _f("ci_low", pa.float64(), unit="gap; one-sided lower bound at the check's adjusted level"),
        _f("ci_high", pa.float64(), unit="gap; upper end of the same two-sided interval"),
        _f("flagged", pa.bool_(), False),
        _f("n_neither", pa.int64(), False, unit="images with neither a nor b"),
        _f("pvalue", pa.float64(), doc="one-sided p-value of gap > max_rate_gap, adjusted for the pairs"),
        _f("status", pa.string(), doc="ok | leak | too small to judge"),
    ]
)

LEAKAGE_IMAGES = pa.schema(
    [
        _f("tag_a", pa.string(), False),
        _f("tag_b", pa.string(), False),
        _f("rank", pa.int64(), False, doc="1 = the a-without-b image with the highest score for b"),
        _f("image_id", pa.string(), False),
        _f("score_b", pa.float64(), unit=PROB),
        _f("true_labels", pa.list_(pa.string()), doc="the image's tags among the model's classes"),
        _f("predicted_labels", pa.list_(pa.string()), doc="the classes the model predicted"),
        _f("cam", pa.list_(pa.float32()), doc="ReLU'd Grad-CAM for b at the layer's native resolution, row-major"),
        _f("cam_height", pa.int64(), unit="CAM cells"),
        _f("cam_width", pa.int64(), unit="CAM cells"),
    ]
)

STRATEGIES = pa.schema(
    [
        _f("class", pa.string(), False, doc="the class the CAMs explain"),
        _f("cluster", pa.int64(), False, doc="0 = the class's largest cluster"),
        _f("n", pa.int64(), False, unit="images"),
        _f("share", pa.float64(), False, unit="fraction of the class's clustered maps"),
        _f("accuracy", pa.float64(), unit="fraction of the cluster's images predicted correctly"),
        _f("border_mass", pa.float64(), unit=SHARE + ", outermost ring of CAM cells"),
        _f("corner_mass", pa.float64(), unit=SHARE + ", the four corner quarters (outer quarter on both axes)"),
        _f("centre_mass", pa.float64(), unit=SHARE + ", the middle half on both axes"),
        _f("peak_row", pa.int64(), unit="CAM cell (0 = top)", doc="the cluster's modal peak cell"),
        _f("peak_col", pa.int64(), unit="CAM cell (0 = left)"),
        _f("peak_x", pa.float64(), unit="fraction of image width", doc="mean sub-cell hot-spot position"),
        _f("peak_y", pa.float64(), unit="fraction of image height"),
        _f("peak_consistency", pa.float64(), unit="fraction of images whose peak is within 1 cell of the modal peak"),
        _f("spot_spread", pa.float64(), unit="fraction of the image side (RMS distance of hot spots from their mean)"),
        _f(
            "compactness",
            pa.float64(),
            unit="share in the 3x3 cells at each image's peak over their area fraction (uniform map = 1; mean)",
        ),
        _f("off_object_share", pa.float64(), unit=SHARE + ", outside the core boxes (null: no core boxes)"),
        _f("images_with_core", pa.int64(), False, unit="images with a core box"),
        _f("flagged", pa.bool_(), False),
        _f("description", pa.string(), doc="the cluster in words"),
        _f("method", pa.string(), doc="how the class was clustered (sampling, assignment, k)"),
        _f("mean_map", pa.list_(pa.float32()), doc="the members' mean normalised map, row-major (sums to 1)"),
        _f("map_height", pa.int64(), unit="CAM cells"),
        _f("map_width", pa.int64(), unit="CAM cells"),
        _f("examples", pa.list_(pa.string()), doc="image ids of a few members nearest the cluster's centre"),
    ]
)

RARITY = pa.schema(
    [
        _f("label", pa.string(), False, doc="the class"),
        _f("quantile", pa.int64(), False, doc="density quantile within the class: 1 = rarest"),
        _f("n", pa.int64(), False, unit="images"),
        _f("correct", pa.int64(), False, unit="images the model got right"),
        _f("accuracy", pa.float64(), unit="fraction of the quantile's images"),
        _f("ci_low", pa.float64(), unit="accuracy; Wilson interval at the check's confidence"),
        _f("ci_high", pa.float64(), unit="accuracy; Wilson interval at the check's confidence"),
        _f("density_low", pa.float64(), unit="density; the class's densest image = 1"),
        _f("density_high", pa.float64(), unit="density; the class's densest image = 1"),
        _f("gap", pa.float64(), unit="accuracy of the commonest quantile - the rarest (the class's, on every row)"),
        _f("gap_ci_low", pa.float64(), unit="gap; Newcombe interval at the check's adjusted level"),
        _f("gap_ci_high", pa.float64(), unit="gap; Newcombe interval at the check's adjusted level"),
        _f("pvalue", pa.float64(), doc="one-sided p-value of gap > max_tail_gap, Holm-adjusted over the classes"),
        _f("flagged", pa.bool_(), False, doc="the class's tail gap is flagged (on every row of the class)"),
        _f("status", pa.string(), doc="ok | tail gap | too small to judge"),
        _f("shared", pa.string(), doc="rarest quantile only: JSON list of {column, value, share, lift}"),
    ]
)

SAMPLE_WEIGHTS = pa.schema(
    [
        _f("image_id", pa.string(), False),
        _f("label", pa.string()),
        _f("density", pa.float64(), unit="density within the class; the densest image = 1"),
        _f("rarity_weight", pa.float64(), doc="1 / (density + alpha), mean 1 within the class"),
        _f("pair_weight", pa.float64(), doc="product of the flagged pairs' balancing weights (1: none applies)"),
        _f("weight", pa.float64(), False, doc="rarity_weight x pair_weight, capped at max_weight, mean 1"),
    ]
)

FEATURES = pa.schema(
    [
        _f("image_id", pa.string(), False),
        _f("features", pa.list_(pa.float32()), doc="input of the model's last Linear (penultimate features)"),
    ]
)

_IMAGES_FIXED = [
    _f("run_id", pa.string()),
    _f("image_id", pa.string(), False),
    _f("image_uri", pa.string(), False),
    _f("image_path", pa.string()),
    _f("label", pa.string()),
    _f("prediction", pa.string()),
    _f("confidence", pa.float64(), unit=PROB),
    _f("correct", pa.bool_()),
    _f("target_class", pa.string(), doc="the class the CAM explains"),
    # Multilabel runs only (model.task: multilabel); a multiclass images table has neither column.
    _f("predicted_labels", pa.list_(pa.string()), doc="multilabel: the classes over their threshold, class order"),
    _f("scores", pa.list_(pa.float32()), unit=PROB, doc="multilabel: sigmoid probability per class, class order"),
    _f("width", pa.int64(), unit="pixels"),
    _f("height", pa.int64(), unit="pixels"),
    _f("tags", pa.list_(pa.string())),
    _f("regions", pa.string(), doc="JSON list of {kind, name, box}"),
    _f("core_share", pa.float64(), unit=SHARE),
    _f("spurious_share", pa.float64(), unit=SHARE),
    _f("outside_share", pa.float64(), unit=SHARE),
    _f("core_enrichment", pa.float64(), unit=ENRICH),
    _f("spurious_enrichment", pa.float64(), unit=ENRICH),
    _f("spurious_detail", pa.string(), doc="JSON: spurious region name -> share, enrichment"),
    _f("region_shares", pa.string(), doc="JSON: spurious or context region name -> share, enrichment"),
    _f("peak_x", pa.float64(), unit="fraction of image width"),
    _f("peak_y", pa.float64(), unit="fraction of image height"),
    _f("pointing_hit", pa.bool_()),
    _f("has_regions", pa.bool_()),
    _f("spurious_flag", pa.bool_()),
    *[_f(c, pa.float64(), doc="image property measured on the model's input") for c in PIXEL_COLUMNS],
    _f("cam_height", pa.int64(), unit="CAM cells"),
    _f("cam_width", pa.int64(), unit="CAM cells"),
]


def images_schema(images: pd.DataFrame) -> pa.Schema:
    """The images table's schema: fixed columns, then attributes (strings), then the CAM as a fixed-size list."""
    fixed = {f.name for f in _IMAGES_FIXED}
    attributes = [c for c in images.columns if c not in fixed and c != "cam"]
    cells = 0
    if "cam_height" in images and "cam_width" in images and len(images):
        sizes = set(zip(images["cam_height"].astype(int), images["cam_width"].astype(int), strict=True))
        if len(sizes) == 1:
            h, w = sizes.pop()
            cells = h * w
    cam_type = pa.list_(pa.float32(), cells) if cells else pa.list_(pa.float32())
    fields = [f for f in _IMAGES_FIXED if f.name in images.columns]
    fields += [_f(c, pa.string(), doc="subgroup attribute") for c in attributes]
    if "cam" in images.columns:
        fields.append(_f("cam", cam_type, doc="ReLU'd Grad-CAM at the layer's native resolution, row-major"))
    return pa.schema(fields)


def conform(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Build an Arrow table with exactly `schema`'s fields (missing nullable columns become nulls)."""
    arrays = []
    for field in schema:
        if field.name in frame.columns:
            values = frame[field.name]
            if pa.types.is_string(field.type):
                values = values.astype(object).where(values.notna(), None)
                values = values.map(lambda v: v if v is None or isinstance(v, str) else str(v))
            if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
                values = values.map(partial(_as_list, value_type=field.type.value_type))
            arrays.append(pa.array(values.tolist(), type=field.type, from_pandas=True))
        elif field.nullable:
            arrays.append(pa.nulls(len(frame), type=field.type))
        else:
            raise KeyError(f"table is missing required column {field.name!r}")
    return pa.Table.from_arrays(arrays, schema=schema)


def _as_list(value: Any, value_type: pa.DataType) -> list | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if pa.types.is_floating(value_type):
        return np.asarray(value, dtype=np.float32).tolist()
    return [str(v) for v in value]


def to_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as nullable strings: a quarantined row is kept exactly as text, whatever it held."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        out[column] = frame[column].map(_as_text)
    return out


def _as_text(value: Any) -> str | None:
    if isinstance(value, (list, tuple, np.ndarray)):
        return json.dumps([_as_text(v) for v in value])
    if value is None or pd.isna(value):
        return None
    return value if isinstance(value, str) else str(value)


def quarantine_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Quarantine rows as strings with `reason` and `stage` last; row_number stays numeric."""
    text = to_strings(frame.drop(columns=[c for c in ("row_number",) if c in frame.columns]))
    if "row_number" in frame.columns:
        text.insert(0, "row_number", pd.to_numeric(frame["row_number"], errors="coerce").astype("Int64"))
    for column in ("manifest", "reason", "stage"):
        if column not in text.columns:
            text[column] = None
    order = [c for c in text.columns if c not in ("reason", "stage")] + ["reason", "stage"]
    return text[order].reset_index(drop=True)
