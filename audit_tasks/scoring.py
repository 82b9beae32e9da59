"""Scoring: stream the audit rows through the model and the Grad-CAM engine into the images table.

Per batch everything stays on the device (decode on the device where possible, normalise, forward, CAM,
region metrics); the batch's results come to the host once. Rows that cannot be scored (a label the model
does not know when CAMs explain labels, malformed regions, an image that does not decode) come back in
`rejected` with a reason, never as an exception, so every input row ends in exactly one of the two tables.

With the model's own preprocessing (a resize and centre crop, audit_tasks.preprocess), the CAM covers only
the crop: region boxes are mapped through the same plan (clipped to the crop; a box cut away entirely is
dropped for that image), and the peak is reported as a fraction of the original image again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from audit_tasks import schemas
from audit_tasks.config import ModelConfig, SaliencyCheck, SaliencyConfig
from audit_tasks.errors import ImageError
from audit_tasks.group_metrics import class_indicator
from audit_tasks.image_properties import PIXEL_COLUMNS, pixel_properties
from audit_tasks.loader import iter_image_batches
from audit_tasks.manifest import parse_tags
from audit_tasks.modelio import cam_target, preprocess_plan
from audit_tasks.preprocess import PreprocessPlan, visible_regions
from audit_tasks.regions import METRIC_COLUMNS, flag_images, region_metrics, row_regions
from audit_tasks.saliency import CamResult, GradCAM

#: The images table's columns before the attributes, and after them (docs/ARCHITECTURE.md).
HEAD_COLUMNS = (
    "run_id",
    "image_id",
    "image_uri",
    "image_path",
    "label",
    "prediction",
    "confidence",
    "correct",
    "target_class",
    "width",
    "height",
)
TAIL_COLUMNS = (
    "tags",
    "regions",
    *METRIC_COLUMNS,
    "spurious_flag",
    *PIXEL_COLUMNS,
    "cam",
    "cam_height",
    "cam_width",
)
#: Columns only a multilabel run has, after `target_class` (docs/ARCHITECTURE.md): the predicted set and every
#: class's sigmoid probability in model class order. A multiclass images table has neither.
MULTILABEL_COLUMNS = ("predicted_labels", "scores")
REJECTED_COLUMNS = ("position", "image_id", "reason")
#: The column `score_images(collect_features=True)` adds after the images table's own: the penultimate features
#: (list<float32>); the merge stage moves it to `_stages/features.parquet` so images.parquet does not grow.
FEATURES_COLUMN = "features"
UNKNOWN_LABEL = "label {label!r} is not one of the model's classes ({classes})"
MISSING_LABEL = "row has no label, and saliency.target is 'label'"
BAD_SIZE = "row has regions but no valid width/height ({width!r} x {height!r})"
#: Region kinds with their own share columns (`<kind>_share`, `<kind>_enrichment`).
_CROPPABLE_KINDS = ("core", "spurious")


@dataclass(frozen=True)
class ScoringResult:
    """The scored rows (images table columns) and the rows that could not be scored (position, image_id, reason)."""

    images: pd.DataFrame
    rejected: pd.DataFrame


def resolve_device(name: str) -> torch.device:
    """'auto' means the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def image_columns(attributes: Sequence[str], *, multilabel: bool = False) -> list[str]:
    extra = MULTILABEL_COLUMNS if multilabel else ()
    return [*HEAD_COLUMNS, *extra, *attributes, *TAIL_COLUMNS]


def true_labels(tags: Any, classes: Sequence[str]) -> list[str]:
    """A multilabel image's true set: its tags that are model classes, in class order (the `label` is not used).

    One rule with the checks': group_metrics.class_indicator.
    """
    present = class_indicator([tags], classes)[0]
    return [c for c, on in zip(classes, present, strict=True) if on]


def images_schema(attributes: Sequence[str], cam_cells: int, *, multilabel: bool = False) -> pa.Schema:
    """The images table's Arrow schema with `cam` as a fixed-size list of `cam_cells` float32."""
    base = schemas.images_schema(pd.DataFrame(columns=image_columns(attributes, multilabel=multilabel)))
    index = base.get_field_index("cam")
    return base.set(index, base.field(index).with_type(pa.list_(pa.float32(), cam_cells)))


def score_images(
    model: nn.Module,
    rows: pd.DataFrame,
    *,
    model_config: ModelConfig,
    saliency_config: SaliencyConfig,
    attributes: Sequence[str],
    run_id: str,
    progress: Callable[[int, int], None] | None = None,
    check: SaliencyCheck | None = None,
    opener: Callable[[str], IO[bytes]] | None = None,
    measure_properties: bool = True,
    collect_features: bool = False,
) -> ScoringResult:
    """Predict, explain and measure every row; `check` sets the per-image flag's thresholds (defaults if None).

    `opener` opens each row's `image_path` (see `loader.iter_image_batches`). `measure_properties` adds the
    pixel properties of audit_tasks.image_properties, measured on the batch the model sees (null when off).
    `collect_features` adds a `features` column: the input of the model's last Linear from the CAM pass's own
    forward (null when the model has none), for the rarity check.
    """
    check = check or SaliencyCheck()
    device = resolve_device(saliency_config.device)
    classes = list(model_config.classes)
    class_index = {name: i for i, name in enumerate(classes)}
    rows = rows.reset_index(drop=True)
    total = len(rows)
    rejected: list[tuple[int, Any, str]] = []
    multilabel = model_config.task == "multilabel"
    prepared = _prepare_rows(rows, class_index, saliency_config.target, rejected, label_optional=multilabel)
    thresholds = torch.tensor(model_config.threshold_list(), dtype=torch.float32) if multilabel else None
    usable = sorted(prepared)
    plan = preprocess_plan(model, model_config)
    target = cam_target(model, model_config)
    engine = GradCAM(
        model,
        target.path,
        layout=target.layout,
        precision=saliency_config.precision,
        channels_last=True,
        fuse_batchnorm=True,
        compile=saliency_config.compile,
        device=device,
        collect_features=collect_features,
    )
    # The batches come normalised (by the plan's mean/std for a model's own preprocessing, as the loader
    # does); the properties are defined on 0..255 pixels.
    mean, std = (plan.mean, plan.std) if plan.kind == "model" else (model_config.mean, model_config.std)
    to_pixels = _Denormalise(mean, std, device) if measure_properties else None
    parts: list[pd.DataFrame] = []
    done = total - len(usable)
    if progress is not None and done:
        progress(done, total)
    batches = iter_image_batches(
        rows.iloc[usable],
        input_size=model_config.input_size,
        mean=model_config.mean,
        std=model_config.std,
        batch_size=saliency_config.batch_size,
        num_workers=saliency_config.num_workers,
        device=device,
        opener=opener,
        plan=plan,
    )
    for batch in batches:
        for local, reason in batch.failures:
            position = usable[local]
            rejected.append((position, rows.at[position, "image_id"] if "image_id" in rows else None, reason))
        positions = [usable[local] for local in batch.positions]
        if positions:
            parts.append(
                _score_batch(
                    engine,
                    batch.images,
                    positions,
                    rows,
                    prepared,
                    classes,
                    saliency_config.target,
                    attributes,
                    run_id,
                    check,
                    plan,
                    to_pixels,
                    thresholds,
                )
            )
        done += len(positions) + len(batch.failures)
        if progress is not None:
            progress(done, total)
    columns = image_columns(attributes, multilabel=multilabel) + ([FEATURES_COLUMN] if collect_features else [])
    images = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    rejected_frame = pd.DataFrame(rejected, columns=list(REJECTED_COLUMNS)).sort_values("position", kind="stable")
    return ScoringResult(images=images, rejected=rejected_frame.reset_index(drop=True))


def explain_classes(
    model: nn.Module,
    rows: pd.DataFrame,
    targets: Sequence[int],
    *,
    model_config: ModelConfig,
    saliency_config: SaliencyConfig,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> pd.DataFrame:
    """Grad-CAMs of a few rows (an `image_path` column) for explicit classes, one per row: `position`, `cam`,
    `cam_height`, `cam_width`, `score` (the target's probability, sigmoid for multilabel, else softmax).

    For the leakage report: class b's map on the images that most believe in a b that is not there, computed
    for a handful of images after scoring instead of a second pass over the dataset. Rows that fail to decode
    are left out.
    """
    rows = rows.reset_index(drop=True)
    if len(targets) != len(rows):
        raise ValueError(f"{len(targets)} targets for {len(rows)} rows")
    device = resolve_device(saliency_config.device)
    target = cam_target(model, model_config)  # the same layer, layout and preprocessing as score_images
    engine = GradCAM(model, target.path, layout=target.layout, precision=saliency_config.precision, device=device)
    out: list[dict[str, Any]] = []
    batches = iter_image_batches(
        rows,
        input_size=model_config.input_size,
        mean=model_config.mean,
        std=model_config.std,
        batch_size=saliency_config.batch_size,
        num_workers=0,
        device=device,
        opener=opener,
        plan=preprocess_plan(model, model_config),
    )
    for batch in batches:
        if not batch.positions:
            continue
        wanted = torch.tensor([int(targets[p]) for p in batch.positions], dtype=torch.long)
        result = engine.attribute(batch.images, wanted)
        logits = result.logits.float()
        probs = torch.sigmoid(logits) if model_config.task == "multilabel" else torch.softmax(logits, dim=1)
        score = probs.gather(1, wanted.to(probs.device)[:, None])[:, 0].cpu().numpy()
        cams = result.cams.float().cpu().numpy()
        for i, position in enumerate(batch.positions):
            out.append(
                {
                    "position": int(position),
                    "cam": np.ascontiguousarray(cams[i].ravel(), dtype=np.float32),
                    "cam_height": int(cams.shape[1]),
                    "cam_width": int(cams.shape[2]),
                    "score": float(score[i]),
                }
            )
    return pd.DataFrame(out, columns=["position", "cam", "cam_height", "cam_width", "score"])


@dataclass(frozen=True)
class _Row:
    target: int | None
    regions: list[dict[str, Any]]
    size: tuple[int, int]


def _prepare_rows(
    rows: pd.DataFrame,
    class_index: dict[str, int],
    target: str,
    rejected: list[tuple[int, Any, str]],
    *,
    label_optional: bool = False,
) -> dict[int, _Row]:
    """Check what the model and the metrics need from each row before any image is decoded.

    With `label_optional` (multilabel: the truth is the tags) a row without a label is kept and its CAM
    explains the top-scoring class.
    """
    prepared = {}
    n = len(rows)
    columns = zip(
        range(n),
        _column(rows, "image_id", n),
        _column(rows, "label", n),
        _column(rows, "regions", n),
        _column(rows, "width", n),
        _column(rows, "height", n),
        strict=True,
    )
    for position, image_id, raw_label, raw_regions, raw_width, raw_height in columns:
        label = _text(raw_label)
        target_index: int | None = None  # the class to explain; None: the model's prediction
        if target == "label":
            if label is None and not label_optional:
                rejected.append((position, image_id, MISSING_LABEL))
                continue
            if label is not None and label not in class_index:
                rejected.append((position, image_id, UNKNOWN_LABEL.format(label=label, classes=", ".join(class_index))))
                continue
            target_index = class_index[label] if label is not None else None
        try:
            regions = row_regions(raw_regions, where=f"row {position} ({image_id})")
        except ImageError as exc:
            rejected.append((position, image_id, str(exc)))
            continue
        width, height = _int(raw_width), _int(raw_height)
        if regions and (width is None or height is None or width < 1 or height < 1):
            rejected.append((position, image_id, BAD_SIZE.format(width=raw_width, height=raw_height)))
            continue
        prepared[position] = _Row(target_index, regions, (width or 1, height or 1))
    return prepared


def _score_batch(
    engine: GradCAM,
    images: torch.Tensor,
    positions: list[int],
    rows: pd.DataFrame,
    prepared: dict[int, _Row],
    classes: list[str],
    target: str,
    attributes: Sequence[str],
    run_id: str,
    check: SaliencyCheck,
    plan: PreprocessPlan,
    to_pixels: _Denormalise | None,
    thresholds: torch.Tensor | None = None,
) -> pd.DataFrame:
    """One batch's rows of the images table; `thresholds` (one per class) make it a multilabel batch."""
    info = [prepared[p] for p in positions]
    # Measured before the CAM pass, which may cast the batch in place under autocast.
    properties = pixel_properties(to_pixels(images)) if to_pixels is not None else {}
    result = _attribute(engine, images, None if target == "prediction" else [r.target for r in info])
    logits = result.logits.float()
    multilabel = thresholds is not None
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    confidence, prediction = probs.max(dim=1)
    cams = result.cams
    n, h, w = cams.shape
    metrics = _region_metrics(cams, info, plan)
    head = [prediction[:, None].float(), result.targets[:, None].float(), confidence[:, None]]
    k = probs.shape[1] if multilabel else 0
    if multilabel:
        head.append(probs)
    measured = [properties[c].to(cams.device, torch.float32)[:, None] for c in PIXEL_COLUMNS if c in properties]
    packed = torch.cat([*head, *measured, cams.flatten(1)], dim=1).cpu().numpy()  # one host transfer for the batch
    first_cam = 3 + k + len(measured)
    pred_idx, target_idx = packed[:, 0].astype(np.int64), packed[:, 1].astype(np.int64)
    scores = packed[:, 3 : 3 + k]
    src = rows.iloc[positions]
    labels = [_text(v) for v in src["label"]] if "label" in src else [None] * n
    widths, heights = _column(src, "width", n), _column(src, "height", n)
    frame = pd.DataFrame(
        {
            "run_id": run_id,
            "image_id": _column(src, "image_id", n),
            "image_uri": _column(src, "image_uri", n),
            "image_path": [str(p) for p in src["image_path"]],
            "label": labels,
            "prediction": [classes[i] if i < len(classes) else str(i) for i in pred_idx],
            "confidence": packed[:, 2].astype(np.float64),
            "correct": (
                _exact_match(scores, thresholds, src, classes)
                if multilabel
                else [
                    lab is not None and lab == (classes[i] if i < len(classes) else None)
                    for lab, i in zip(labels, pred_idx, strict=True)
                ]
            ),
            "target_class": [classes[i] if i < len(classes) else str(i) for i in target_idx],
            "width": [r.size[0] if _int(v) is not None else None for r, v in zip(info, widths, strict=True)],
            "height": [r.size[1] if _int(v) is not None else None for r, v in zip(info, heights, strict=True)],
        }
    )
    if multilabel:
        frame["predicted_labels"] = _predicted_sets(scores, thresholds, classes)
        frame["scores"] = list(np.ascontiguousarray(scores, dtype=np.float32))
    for attribute in attributes:
        frame[attribute] = [_text(v) for v in _column(src, attribute, n)]
    frame["tags"] = [parse_tags(v) for v in _column(src, "tags", n)]
    frame["regions"] = [_regions_json(v) for v in _column(src, "regions", n)]
    for column in metrics.columns:
        frame[column] = metrics[column].to_numpy()
    frame["spurious_flag"] = flag_images(metrics, check).to_numpy()
    for offset, column in enumerate(PIXEL_COLUMNS):
        frame[column] = packed[:, 3 + k + offset].astype(np.float64) if measured else None
    cam_values = np.ascontiguousarray(packed[:, first_cam:], dtype=np.float32)
    frame["cam"] = list(cam_values)
    frame["cam_height"] = h
    frame["cam_width"] = w
    frame["width"] = frame["width"].astype("Int64")
    frame["height"] = frame["height"].astype("Int64")
    columns = image_columns(attributes, multilabel=multilabel)
    if engine.collect_features:
        features = result.features.cpu().numpy() if result.features is not None else None
        frame[FEATURES_COLUMN] = list(features) if features is not None else [None] * n
        columns.append(FEATURES_COLUMN)
    return frame[columns]


def _attribute(engine: GradCAM, images: torch.Tensor, targets: list[int | None] | None) -> CamResult:
    """CAMs explaining `targets` (None: the top class), for a batch that may mix given and missing targets.

    A mixed batch runs as two sub-batches (given, missing), stitched back in order: no extra forward pass.
    """
    if targets is None or all(t is None for t in targets):
        return engine.attribute(images, None)
    if all(t is not None for t in targets):
        return engine.attribute(images, torch.tensor(targets, dtype=torch.long))
    given = [i for i, t in enumerate(targets) if t is not None]
    missing = [i for i, t in enumerate(targets) if t is None]
    first = engine.attribute(images[given], torch.tensor([targets[i] for i in given], dtype=torch.long))
    second = engine.attribute(images[missing], None)
    order = torch.tensor(given + missing).argsort().to(first.logits.device)
    features = None
    if first.features is not None and second.features is not None:
        features = torch.cat([first.features, second.features])[order]
    return CamResult(
        logits=torch.cat([first.logits, second.logits])[order],
        cams=torch.cat([first.cams, second.cams])[order],
        targets=torch.cat([first.targets, second.targets])[order],
        closed_form=first.closed_form and second.closed_form,
        features=features,
    )


def _predicted_sets(scores: np.ndarray, thresholds: torch.Tensor | None, classes: list[str]) -> list[list[str]]:
    """Each image's predicted set: the classes whose probability is over their threshold, in class order."""
    limits = thresholds.numpy() if thresholds is not None else np.full(scores.shape[1], 0.5)
    over = scores > limits[None, :]
    return [[classes[j] for j in np.flatnonzero(row)] for row in over]


def _exact_match(
    scores: np.ndarray, thresholds: torch.Tensor | None, src: pd.DataFrame, classes: list[str]
) -> list[bool]:
    """Multilabel `correct`: the predicted set equals the true set (the tags among the classes)."""
    predicted = _predicted_sets(scores, thresholds, classes)
    truth = [true_labels(v, classes) for v in _column(src, "tags", len(src))]
    return [p == t for p, t in zip(predicted, truth, strict=True)]


class _Denormalise:
    """Turns the loader's normalised batch back into 0..255 RGB, on the batch's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.std + self.mean


def _region_metrics(cams: torch.Tensor, info: list[_Row], plan: PreprocessPlan) -> pd.DataFrame:
    """Region metrics of the maps; with a crop, on the boxes as the model saw them (see module docstring)."""
    if plan.kind == "squash":
        return region_metrics(cams, [r.regions for r in info], [r.size for r in info])
    views = [visible_regions(r.regions, r.size, plan) for r in info]
    metrics = region_metrics(cams, [v.regions for v in views], [v.size for v in views])
    for axis, column in enumerate(("peak_x", "peak_y")):  # back to a fraction of the whole image
        origin = np.array([v.origin[axis] for v in views])
        extent = np.array([v.size[axis] for v in views])
        full = np.array([r.size[axis] for r in info], dtype=np.float64)
        metrics[column] = (origin + metrics[column].to_numpy() * extent) / full
    for kind in _CROPPABLE_KINDS:  # a kind whose every box was cut away is absent, not "no saliency there"
        gone = [
            any(r["kind"] == kind for r in row.regions) and not any(r["kind"] == kind for r in view.regions)
            for row, view in zip(info, views, strict=True)
        ]
        metrics.loc[gone, [f"{kind}_share", f"{kind}_enrichment"]] = float("nan")
    return metrics


def _column(frame: pd.DataFrame, name: str, n: int) -> list[Any]:
    return frame[name].tolist() if name in frame.columns else [None] * n


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _int(value: Any) -> int | None:
    try:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return None
        return int(value)
    except (TypeError, ValueError):
        return None


def _regions_json(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value)
