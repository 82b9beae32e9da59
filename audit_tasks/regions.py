"""Region metrics: does a CAM's energy sit on the object (core regions) or on a shortcut (spurious ones)?

Geometry. With `preprocess: squash` the model sees the whole image resized to a square (no crop), so a box
[x0, y0, x1, y1] in original (EXIF-upright) pixels maps linearly onto the CAM grid: divide by (width,
height). With a model's own resize and centre crop, the scoring stage first maps the boxes into the visible
window (audit_tasks.preprocess.visible_regions) and passes the window's size here. Each CAM
cell is a constant patch of the map; a region covers a *fraction* of each cell, computed exactly for
one box (area-weighted coverage) and, for a union of boxes, on a sub-grid of `s x s` samples per cell
(exact unless two boxes of one union overlap inside one sub-sample). A 4% patch on a 6x6 CAM thus
counts only the part of each cell it really covers, never whole cells.

Per image (`region_metrics`), with E = the map's positive energy (sum of its ReLU'd cells):
  core_share      energy inside the union of core boxes / E
  spurious_share  energy inside the union of spurious boxes / E
  outside_share   energy outside every region / E
  *_enrichment    share / the region's fraction of the image area (a uniform map scores 1);
                  spurious_enrichment is the MAX over spurious regions (boxes grouped by name), and
                  `spurious_detail` (JSON) gives each spurious region's share and enrichment
  region_shares   JSON: every named spurious or context region (boxes grouped by name) -> share,
                  enrichment; what the co-occurrence-aware saliency check (saliency_pairs.py) reads
  peak_x, peak_y  centre of the arg-max cell as a fraction of width / height
  pointing_hit    the peak, in original pixels, lies inside a core box grown by `pointing_tolerance_px`
                  (15 px, as in the published pointing game)
  has_regions     the image carries at least one region
Images without regions, or whose map has no positive energy, get NaN shares and are never flagged.

Flag rule (`flag_images`, thresholds from `SaliencyCheck`): an image with a spurious region is flagged when
  spurious_share > max_spurious_share                   (most of the evidence is the shortcut), or
  spurious_enrichment >= min_spurious_enrichment and    (a cue gets several times its area's share ...
  (core_share < min_core_share or                       ... while the object gets little of the energy,
   spurious_enrichment > core_enrichment)               ... or less per unit area than the cue).
Shares alone cannot judge a small cue: a 4% watermark holding 25% of the energy is 6x enriched yet far
below any share threshold. Enrichment alone would flag a cue that sits beside an object the model does
look at (a coarse CAM spills onto it), hence the comparison with the object: a model that looks at the
object concentrates more energy per unit area on it than on the spill. An image without core regions
is judged on the cue alone (core_share is 0 there). The defaults (0.5, 3.0, 0.3) separate a model that
leans on a ~4% patch seen through a 6x6 CAM from one that looks at the object (tests/test_regions.py
shows it on generated maps).

Per class (`summarize_saliency`, by the image's label): means over the region-bearing images, pointing
accuracy over images with a core region, the flagged fraction over images with a spurious region, and a
`saliency` gate per class that fails when the flagged fraction exceeds `max_flagged_fraction`. A class with
fewer than `min_images` judgeable images passes, saying it has too few to judge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from audit_tasks import manifest
from audit_tasks.config import SaliencyCheck
from audit_tasks.errors import ImageError
from audit_tasks.gates import GateResult

#: Columns `region_metrics` returns, in this order.
METRIC_COLUMNS = (
    "core_share",
    "spurious_share",
    "outside_share",
    "core_enrichment",
    "spurious_enrichment",
    "spurious_detail",
    "region_shares",
    "peak_x",
    "peak_y",
    "pointing_hit",
    "has_regions",
)
BY_CLASS_COLUMNS = (
    "class",
    "images",
    "images_with_regions",
    "mean_core_share",
    "mean_spurious_share",
    "mean_outside_share",
    "mean_spurious_enrichment",
    "pointing_accuracy",
    "flagged_fraction",
    "flagged",
)
POINTING_TOLERANCE_PX = 15.0
#: Region kinds measured by name in `region_shares` (another object or a cue, never the object itself).
NAMED_KINDS = ("spurious", "context")
TOO_FEW = "too few images to judge (n={n} < min_images={min_images})"


@dataclass(frozen=True)
class SaliencySummary:
    """The saliency check's outcome: one row per class and one gate per class."""

    by_class: pd.DataFrame
    gates: list[GateResult]


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def row_regions(value: Any, *, where: str = "regions") -> list[dict[str, Any]]:
    """A row's regions (JSON text, list of dicts, or empty/None) as validated {kind, name, box} dicts, or an
    ImageError naming `where`, so the scoring stage can reject that one row.

    What is valid is `manifest.parse_region_boxes`'s rule (boxes are not checked against the image size here).
    """
    try:
        return manifest.parse_region_boxes(value)
    except ValueError as exc:
        raise ImageError(f"{where}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Per-image metrics
# ---------------------------------------------------------------------------------------------


def region_metrics(
    cams: Tensor,
    regions: Sequence[Sequence[Mapping[str, Any]]],
    sizes: Sequence[tuple[float, float]],
    *,
    pointing_tolerance_px: float = POINTING_TOLERANCE_PX,
    samples_per_cell: int | None = None,
) -> pd.DataFrame:
    """Per-image region metrics (columns METRIC_COLUMNS) for (N, h, w) maps on any device.

    `regions[i]` are image i's parsed regions (see `row_regions`), `sizes[i]` its original
    (width, height) in pixels. All per-cell work is batched tensor code on the maps' device; results
    come to the host once.
    """
    n, h, w = cams.shape
    if len(regions) != n or len(sizes) != n:
        raise ValueError(f"got {n} maps but {len(regions)} region lists and {len(sizes)} sizes")
    device = cams.device
    cams = cams.detach().float().clamp_min(0)
    energy = cams.sum(dim=(1, 2))
    flat_peak = cams.flatten(1).argmax(dim=1)
    peak_x = ((flat_peak % w).float() + 0.5) / w
    peak_y = (torch.div(flat_peak, w, rounding_mode="floor").float() + 0.5) / h

    plan = _GroupPlan.build(regions, sizes)
    size_t = torch.as_tensor(np.asarray(sizes, dtype=np.float64).reshape(n, 2), dtype=torch.float32, device=device)
    if plan.groups:
        s = samples_per_cell or max(1, min(8, math.ceil(64 / max(h, w))))
        boxes = torch.as_tensor(plan.boxes, dtype=torch.float32, device=device)
        coverage = _union_coverage(boxes, torch.as_tensor(plan.box_group, device=device), len(plan.groups), h, w, s)
        group_image = torch.as_tensor(plan.group_image, device=device)
        inside = (cams[group_image] * coverage).sum(dim=(1, 2))
        area = coverage.mean(dim=(1, 2))
        share = inside / energy[group_image]
        enrichment = torch.where(area > 0, share / area, torch.full_like(share, float("nan")))
        hit = _pointing(peak_x, peak_y, size_t, plan, device, pointing_tolerance_px)
    else:
        share = enrichment = torch.zeros(0, device=device)
        hit = torch.zeros(n, dtype=torch.bool, device=device)
    # One trip to the host for everything.
    host = [t.cpu().numpy() for t in (energy, peak_x, peak_y, share, enrichment, hit)]
    energy_h, peak_x_h, peak_y_h, share_h, enrich_h, hit_h = host
    return _assemble(n, plan, energy_h, peak_x_h, peak_y_h, share_h, enrich_h, hit_h)


@dataclass(frozen=True)
class _GroupPlan:
    """Which boxes form which union ("group") of which image; built on the host from the box lists."""

    boxes: list[list[float]]  # normalised [x0, y0, x1, y1] per (group, box) pair
    box_group: list[int]
    groups: list[tuple[int, str, str]]  # (image, role, name); role: core | spurious | all | region | named
    group_image: list[int]
    core_boxes_px: list[tuple[int, list[float]]]  # (image, pixel box) for the pointing game

    @classmethod
    def build(cls, regions: Sequence[Sequence[Mapping[str, Any]]], sizes: Sequence[tuple[float, float]]) -> _GroupPlan:
        boxes: list[list[float]] = []
        box_group: list[int] = []
        groups: list[tuple[int, str, str]] = []
        core_px: list[tuple[int, list[float]]] = []

        def add(image: int, index: dict[tuple[str, str], int], role: str, name: str, box: list[float]) -> None:
            """Put `box` in the image's group (role, name); `index` maps the image's groups to their numbers."""
            key = (role, name)
            if key not in index:
                index[key] = len(groups)
                groups.append((image, role, name))
            boxes.append(box)
            box_group.append(index[key])

        for image, (image_regions, (width, height)) in enumerate(zip(regions, sizes, strict=True)):
            if not image_regions:
                continue
            index: dict[tuple[str, str], int] = {}
            for role in ("core", "spurious", "all"):  # every image with regions gets these three groups
                index[(role, "")] = len(groups)
                groups.append((image, role, ""))
            for region in image_regions:
                x0, y0, x1, y1 = region["box"]
                box = [x0 / width, y0 / height, x1 / width, y1 / height]
                add(image, index, region["kind"], "", box)
                add(image, index, "all", "", box)
                if region["kind"] in NAMED_KINDS:
                    add(image, index, "named", region["name"], box)
                if region["kind"] == "spurious":
                    add(image, index, "region", region["name"], box)
                elif region["kind"] == "core":
                    core_px.append((image, list(region["box"])))
        return cls(boxes, box_group, groups, [g[0] for g in groups], core_px)


def _axis_coverage(lo: Tensor, hi: Tensor, cells: int) -> Tensor:
    """(P, cells): the fraction of each of `cells` equal intervals of [0, 1] inside [lo, hi]."""
    edges = torch.linspace(0, 1, cells + 1, device=lo.device)
    left, right = edges[:-1], edges[1:]
    overlap = torch.minimum(hi[:, None], right) - torch.maximum(lo[:, None], left)
    return (overlap.clamp_min(0) * cells).clamp_max(1)


def _union_coverage(boxes: Tensor, box_group: Tensor, groups: int, h: int, w: int, s: int) -> Tensor:
    """(G, h, w) fraction of each CAM cell covered by each group's union of boxes."""
    cover = (
        _axis_coverage(boxes[:, 1], boxes[:, 3], h * s)[:, :, None]
        * _axis_coverage(boxes[:, 0], boxes[:, 2], w * s)[:, None, :]
    )
    union = torch.zeros(groups, h * s * w * s, device=boxes.device)
    index = box_group[:, None].expand(-1, h * s * w * s)
    union.scatter_reduce_(0, index, cover.flatten(1), reduce="amax", include_self=True)
    union = union.view(groups, 1, h * s, w * s)
    return torch.nn.functional.avg_pool2d(union, s)[:, 0] if s > 1 else union[:, 0]


def _pointing(
    peak_x: Tensor, peak_y: Tensor, sizes: Tensor, plan: _GroupPlan, device: torch.device, tolerance: float
) -> Tensor:
    n = peak_x.shape[0]
    if not plan.core_boxes_px:
        return torch.zeros(n, dtype=torch.bool, device=device)
    image = torch.as_tensor([i for i, _ in plan.core_boxes_px], device=device)
    box = torch.as_tensor([b for _, b in plan.core_boxes_px], dtype=torch.float32, device=device)
    px, py = peak_x[image] * sizes[image, 0], peak_y[image] * sizes[image, 1]
    inside = (
        (px >= box[:, 0] - tolerance)
        & (px <= box[:, 2] + tolerance)
        & (py >= box[:, 1] - tolerance)
        & (py <= box[:, 3] + tolerance)
    )
    counts = torch.zeros(n, dtype=torch.int32, device=device).index_add_(0, image, inside.to(torch.int32))
    return counts > 0


def _assemble(
    n: int,
    plan: _GroupPlan,
    energy: np.ndarray,
    peak_x: np.ndarray,
    peak_y: np.ndarray,
    share: np.ndarray,
    enrichment: np.ndarray,
    hit: np.ndarray,
) -> pd.DataFrame:
    nan = float("nan")
    cols: dict[str, list[Any]] = {c: [] for c in METRIC_COLUMNS}
    per_image: dict[int, dict[tuple[str, str], tuple[float, float]]] = {}
    for g, (image, role, name) in enumerate(plan.groups):
        per_image.setdefault(image, {})[(role, name)] = (float(share[g]), float(enrichment[g]))
    for i in range(n):
        groups = per_image.get(i)
        positive = bool(energy[i] > 0)
        cols["has_regions"].append(groups is not None)
        cols["peak_x"].append(float(peak_x[i]) if positive else nan)
        cols["peak_y"].append(float(peak_y[i]) if positive else nan)
        cols["pointing_hit"].append(bool(hit[i]) and positive)
        if groups is None or not positive:
            for c in ("core_share", "spurious_share", "outside_share", "core_enrichment", "spurious_enrichment"):
                cols[c].append(nan)
            cols["spurious_detail"].append("{}")
            cols["region_shares"].append("{}")
            continue
        core, spurious, every = groups[("core", "")], groups[("spurious", "")], groups[("all", "")]
        detail = _named(groups, "region")
        enrichments = [e for (role, _), (_, e) in groups.items() if role == "region" and not math.isnan(e)]
        cols["core_share"].append(core[0])
        cols["spurious_share"].append(spurious[0])
        cols["outside_share"].append(max(0.0, 1.0 - every[0]))
        cols["core_enrichment"].append(core[1])
        cols["spurious_enrichment"].append(max(enrichments) if enrichments else nan)
        cols["spurious_detail"].append(json.dumps(detail, sort_keys=True))
        cols["region_shares"].append(json.dumps(_named(groups, "named"), sort_keys=True))
    frame = pd.DataFrame(cols, columns=list(METRIC_COLUMNS))
    return frame.astype({"pointing_hit": bool, "has_regions": bool})


def _named(groups: Mapping[tuple[str, str], tuple[float, float]], role: str) -> dict[str, dict[str, float | None]]:
    """name -> {share, enrichment} of an image's groups of `role` (rounded; NaN enrichment as None)."""
    return {
        name: {"share": round(s, 6), "enrichment": None if math.isnan(e) else round(e, 6)}
        for (r, name), (s, e) in groups.items()
        if r == role
    }


# ---------------------------------------------------------------------------------------------
# Flags and the per-class summary
# ---------------------------------------------------------------------------------------------


def flag_images(metrics: pd.DataFrame, check: SaliencyCheck) -> pd.Series:
    """The per-image shortcut flag (rule in the module docstring); NaN metrics are never flagged."""
    share = metrics["spurious_share"].astype("float64")
    enrich = metrics["spurious_enrichment"].astype("float64")
    core = metrics["core_share"].astype("float64")
    judged = _judgeable(metrics)
    over_share = share > check.max_spurious_share
    core_enrich = metrics["core_enrichment"].astype("float64")
    weak_object = ~(core >= check.min_core_share) | ~(core_enrich >= enrich)  # NaN core counts as weak
    over_enriched = (enrich >= check.min_spurious_enrichment) & weak_object
    return (judged & (over_share | over_enriched)).astype(bool)


def _judgeable(metrics: pd.DataFrame) -> pd.Series:
    """Images the flag can judge: regions, positive energy, and at least one spurious region of some area."""
    return (
        metrics["has_regions"].astype(bool) & metrics["spurious_share"].notna() & metrics["spurious_enrichment"].notna()
    )


def summarize_saliency(images: pd.DataFrame, check: SaliencyCheck) -> SaliencySummary:
    """Per-class means, pointing accuracy, flagged fraction and a gate per class (grouped by `label`).

    Flags are recomputed from the metrics with `check`, so the summary always follows the thresholds given.
    """
    if images.empty:
        return SaliencySummary(pd.DataFrame(columns=list(BY_CLASS_COLUMNS)), [])
    frame = images.assign(
        _flag=flag_images(images, check), _judged=_judgeable(images), _has_core=images["core_enrichment"].notna()
    )
    rows, gates = [], []
    labels = frame["label"].astype(object).where(frame["label"].notna(), "(no label)").astype(str)
    for label, part in frame.groupby(labels, sort=True):
        with_regions = part[part["has_regions"].astype(bool)]
        judged = part[part["_judged"]]
        cored = part[part["_has_core"]]
        gate = flagged_fraction_gate(label, judged["_flag"], check, "images lean on a spurious region")
        fraction, flagged = float("nan") if gate.value is None else gate.value, not gate.passed
        rows.append(
            {
                "class": label,
                "images": len(part),
                "images_with_regions": len(with_regions),
                "mean_core_share": _mean(with_regions["core_share"]),
                "mean_spurious_share": _mean(judged["spurious_share"]),
                "mean_outside_share": _mean(with_regions["outside_share"]),
                "mean_spurious_enrichment": _mean(judged["spurious_enrichment"]),
                "pointing_accuracy": _mean(cored["pointing_hit"].astype(float)),
                "flagged_fraction": fraction,
                "flagged": flagged,
            }
        )
        gates.append(gate)
    by_class = pd.DataFrame(rows, columns=list(BY_CLASS_COLUMNS)).astype({"flagged": bool})
    return SaliencySummary(by_class=by_class, gates=gates)


def flagged_fraction_gate(subject: str, flags: pd.Series, check: SaliencyCheck, leaning: str) -> GateResult:
    """The saliency gate on one set of judged images (a class, or a class on a named region): its flagged
    fraction against `max_flagged_fraction`, judged only with at least `min_images` images.

    `leaning` says what the flagged images do, e.g. "images lean on a spurious region".
    """
    n = len(flags)
    fraction = float(flags.mean()) if n else float("nan")
    enough = n >= check.min_images
    flagged = bool(enough and fraction > check.max_flagged_fraction)
    if enough:
        detail = (
            f"{int(flags.sum())} of {n} {leaning} (flagged fraction {fraction:.3f} vs max {check.max_flagged_fraction})"
        )
    else:
        detail = TOO_FEW.format(n=n, min_images=check.min_images)
    return GateResult(
        check="saliency",
        subject=subject,
        metric="flagged_fraction",
        value=fraction if n else None,
        threshold=check.max_flagged_fraction,
        passed=not flagged,
        detail=detail,
        judged=enough,
    )


def _mean(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else float("nan")
