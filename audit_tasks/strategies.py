"""Saliency strategies without boxes: cluster each class's Grad-CAMs and flag a fixed spot off the object.

In the spirit of spectral relevance analysis (SpRAy, Lapuschkin et al. 2019): a model that answers from a
cue at a fixed place (a watermark, a corner tag) looks there in every image that carries it, so those
images' maps form a tight cluster whose hot spot does not move with the object. The stored maps
(`images.parquet` `cam`) are enough: no second model pass, no boxes.

Per class (the class the CAM explains: `target_class`, else `label`):
  1. Each map is ReLU'd and normalised to sum 1; a map with no positive energy is left out (counted in
     `method`). The feature is the square root of the map (Euclidean distance = Hellinger distance).
  2. Spectral clustering: a kNN graph (`neighbours`) with a self-tuning Gaussian affinity (each map's scale
     is its distance to its 7th neighbour), the normalised Laplacian's smallest eigenvalues, k from the
     largest eigengap (at most `max_clusters`), k-means on the row-normalised eigenvectors.
  3. Scale: a class with more than `max_sample` maps is clustered on a seeded random sample of that size;
     every other map goes to the cluster with the nearest centroid (mean feature). `method` says so.
  4. Per cluster: size and share of the class, accuracy, the mean map, its mass on the border ring, the
     corner quarters and the central half, the modal peak cell, the share of peaks within 1 cell of it
     (`peak_consistency`), the hot spot's mean position (peak refined to sub-cell precision by the 3x3
     centre of mass) and its RMS spread across images, `compactness`: the share of the map in the 3x3 cells
     at the peak divided by their share of the area (a uniform map scores 1; a clipped window at a corner or
     edge is judged by its own area, so a spot in a corner is not penalised).

Flag rule (thresholds from `StrategiesCheck`): a cluster is a suspect strategy when
  - at least half its images carry core boxes: more than `max_off_object_share` of its map lies off them
    (1 - `core_share`, as `audit_tasks.regions` measures it), else
  - its hot spot is fixed and off-centre: `peak_consistency >= min_peak_consistency`, `spot_spread <=
    max_spot_spread` (the spot does not move), `compactness >= min_compactness` (a spot, not a wash) and
    the mean hot spot lies outside the central square of side `central_region`.
Suspect clusters at the same place (modal peaks within 1 cell; or all off-object ones) are one strategy,
since spectral clustering may split one cue's images by what else their maps show; a strategy with at
least `min_images` maps and `min_cluster_share` of the class flags every cluster in it.
Centred objects never flag (their spot is central, however steady); objects that move never flag (their
spots spread, even inside one cluster, by far more than a fixed cue's). A fixed off-centre place that
really is the object (every photo framed the same off-centre way) cannot be told from a cue without
boxes: give core boxes and the off-object test decides instead.

Gate `strategies/<class>/fixed_spot_share` per class: the share of the class's maps in flagged clusters
against `min_cluster_share`; a class with fewer than `min_images` maps passes, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg, sparse
from scipy.sparse.linalg import eigsh

from audit_tasks.config import StrategiesCheck
from audit_tasks.gates import GateResult
from audit_tasks.regions import TOO_FEW, row_regions

__all__ = [
    "CLUSTER_COLUMNS",
    "Clustering",
    "StrategiesResult",
    "check_strategies",
    "cluster_maps",
    "describe_location",
    "normalise_maps",
]

CLUSTER_COLUMNS = (
    "class",
    "cluster",
    "n",
    "share",
    "accuracy",
    "border_mass",
    "corner_mass",
    "centre_mass",
    "peak_row",
    "peak_col",
    "peak_x",
    "peak_y",
    "peak_consistency",
    "spot_spread",
    "compactness",
    "off_object_share",
    "images_with_core",
    "flagged",
    "description",
    "method",
    "mean_map",
    "map_height",
    "map_width",
    "examples",
)
#: Seed of the sample and of k-means: the same maps give the same clusters.
SEED = 17
#: Member images per cluster named in `examples` (the report draws them).
EXAMPLES = 4
#: Neighbour whose distance sets a map's affinity scale (Zelnik-Manor and Perona's self-tuning choice).
_SCALE_NEIGHBOUR = 7
#: Up to this many maps the eigenvectors come from a dense solver (exact, and fast at that size).
_DENSE_UP_TO = 200
_KMEANS_INITS = 8

MSG_NO_MAPS = (
    "images table has no cam, cam_height and cam_width columns: the strategies check needs the stored Grad-CAMs"
)
MSG_NO_CLASS = "images table has neither target_class nor label: the strategies check cannot group maps by class"


@dataclass(frozen=True)
class Clustering:
    """Cluster labels (0 = largest) for every map, the number of clusters and how they were found."""

    labels: np.ndarray
    k: int
    method: str


@dataclass(frozen=True)
class StrategiesResult:
    """One row per class x cluster (CLUSTER_COLUMNS) and one gate per class."""

    clusters: pd.DataFrame
    gates: list[GateResult]


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------


def normalise_maps(cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, h, w) maps -> (ReLU'd maps scaled to sum 1, mask of maps with positive energy); why: clusters
    should group where a model looks, not how strongly."""
    maps = np.nan_to_num(np.asarray(cams, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    maps = np.maximum(maps, 0.0)
    total = maps.sum(axis=(1, 2))
    alive = total > 0
    out = np.zeros_like(maps)
    out[alive] = maps[alive] / total[alive, None, None]
    return out, alive


@dataclass(frozen=True)
class _Spots:
    """Per map: the arg-max cell, the sub-cell hot-spot position (fractions of width/height), compactness."""

    row: np.ndarray
    col: np.ndarray
    x: np.ndarray
    y: np.ndarray
    compactness: np.ndarray


def _hot_spots(maps: np.ndarray) -> _Spots:
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).argmax(axis=1)
    row, col = flat // w, flat % w
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)))
    offsets = np.arange(-1, 2)
    ii = np.arange(n)[:, None, None]
    window = padded[
        ii, row[:, None, None] + 1 + offsets[None, :, None], col[:, None, None] + 1 + offsets[None, None, :]
    ]
    mass = window.sum(axis=(1, 2))
    rows_in = np.minimum(row + 1, h - 1) - np.maximum(row - 1, 0) + 1
    cols_in = np.minimum(col + 1, w - 1) - np.maximum(col - 1, 0) + 1
    safe = np.where(mass > 0, mass, 1.0)
    dy = (window.sum(axis=2) * offsets).sum(axis=1) / safe
    dx = (window.sum(axis=1) * offsets).sum(axis=1) / safe
    concentration = mass / (rows_in * cols_in / (h * w))  # the window's share over its area's share
    return _Spots(row, col, (col + 0.5 + dx) / w, (row + 0.5 + dy) / h, concentration)


def _zone_masks(h: int, w: int) -> dict[str, np.ndarray]:
    """Border ring, corner quarters and central half of an h x w grid, by cell centres."""
    cy = (np.arange(h) + 0.5) / h
    cx = (np.arange(w) + 0.5) / w
    outer_y, outer_x = (cy < 0.25) | (cy > 0.75), (cx < 0.25) | (cx > 0.75)
    inner_y, inner_x = ~outer_y, ~outer_x
    border = np.zeros((h, w), dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    return {
        "border": border,
        "corner": outer_y[:, None] & outer_x[None, :],
        "centre": inner_y[:, None] & inner_x[None, :],
    }


def describe_location(x: float, y: float) -> str:
    """Where a hot spot at (x, y) (fractions of width, height) sits, in words: "the bottom-left corner" (in the
    outer quarter on both axes), "the top edge" (on one), "the top-right" or "the left" (nearer), "the centre"."""
    horizontal = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    vertical = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    outer_x, outer_y = not 0.25 <= x <= 0.75, not 0.25 <= y <= 0.75
    if horizontal and vertical:
        return f"the {vertical}-{horizontal} corner" if outer_x and outer_y else f"the {vertical}-{horizontal}"
    if horizontal:
        return f"the {horizontal} edge" if outer_x else f"the {horizontal}"
    if vertical:
        return f"the {vertical} edge" if outer_y else f"the {vertical}"
    return "the centre"


# ---------------------------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------------------------


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _knn(features: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (brute force in chunks; the sample is small), self excluded."""
    n = len(features)
    index = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k))
    for start in range(0, n, chunk):
        block = _squared_distances(features[start : start + chunk], features)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = np.inf
        part = np.argpartition(block, k - 1, axis=1)[:, :k]
        d = np.take_along_axis(block, part, axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        index[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        dist[start : start + len(block)] = np.sqrt(np.take_along_axis(d, order, axis=1))
    return index, dist


def _affinity(features: np.ndarray, neighbours: int) -> sparse.csr_matrix:
    """Symmetric kNN graph with self-tuning Gaussian weights exp(-d^2 / (s_i s_j))."""
    n = len(features)
    k = min(neighbours, n - 1)
    index, dist = _knn(features, k)
    scale = dist[:, min(_SCALE_NEIGHBOUR, k) - 1]
    positive = dist[dist > 0]
    floor = max(float(np.median(positive)) * 1e-3 if positive.size else 0.0, 1e-9)
    scale = np.maximum(scale, floor)
    rows = np.repeat(np.arange(n), k)
    cols = index.ravel()
    weights = np.exp(-(dist.ravel() ** 2) / (scale[rows] * scale[cols]))
    graph = sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def _spectrum(graph: sparse.csr_matrix, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest eigenvalues of the normalised Laplacian (ascending) and their eigenvectors."""
    degree = np.asarray(graph.sum(axis=1)).ravel()
    inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    scaled = sparse.diags(inv_sqrt) @ graph @ sparse.diags(inv_sqrt)
    n = graph.shape[0]
    if n <= _DENSE_UP_TO:
        values, vectors = linalg.eigh(scaled.toarray(), subset_by_index=[n - count, n - 1])
        values, vectors = values[::-1], vectors[:, ::-1]
    else:
        values, vectors = eigsh(scaled, k=count, which="LA", v0=rng.uniform(0.5, 1.0, n), tol=1e-8)
        order = np.argsort(-values)
        values, vectors = values[order], vectors[:, order]
    return 1.0 - values, vectors


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means from k-means++ seeds, the best of a few starts (inertia)."""
    best, best_inertia = np.zeros(len(points), dtype=np.int64), np.inf
    for _ in range(_KMEANS_INITS):
        centres = [points[rng.integers(len(points))]]
        for _ in range(1, k):
            d = _squared_distances(points, np.asarray(centres)).min(axis=1)
            total = d.sum()
            pick = rng.choice(len(points), p=d / total) if total > 0 else rng.integers(len(points))
            centres.append(points[pick])
        c = np.asarray(centres)
        labels = np.zeros(len(points), dtype=np.int64)
        for step in range(iterations):
            new = _squared_distances(points, c).argmin(axis=1)
            if step and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = points[labels == j]
                if len(members):
                    c[j] = members.mean(axis=0)
        inertia = float(_squared_distances(points, c)[np.arange(len(points)), labels].sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    return best


def _spectral(features: np.ndarray, max_clusters: int, neighbours: int, rng: np.random.Generator) -> np.ndarray:
    n = len(features)
    if n < 3 or max_clusters < 2:
        return np.zeros(n, dtype=np.int64)
    count = min(max_clusters + 1, n - 1)
    eigenvalues, vectors = _spectrum(_affinity(features, neighbours), count, rng)
    gaps = np.diff(eigenvalues)
    k = int(np.argmax(gaps)) + 1 if len(gaps) else 1
    k = min(k, max_clusters)
    if k < 2:
        return np.zeros(n, dtype=np.int64)
    embedding = vectors[:, :k]
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return _kmeans(embedding / np.where(norms > 0, norms, 1.0), k, rng)


def cluster_maps(
    maps: np.ndarray, *, max_clusters: int, neighbours: int, max_sample: int, seed: int = SEED
) -> Clustering:
    """Spectral clusters of normalised (n, h, w) maps; above `max_sample` maps, a seeded sample is
    clustered and the rest assigned to the nearest centroid. Labels are renumbered largest first."""
    n = len(maps)
    rng = np.random.default_rng(seed)
    features = np.sqrt(maps.reshape(n, -1))
    if n > max_sample:
        sample = np.sort(rng.choice(n, size=max_sample, replace=False))
        sample_labels = _spectral(features[sample], max_clusters, neighbours, rng)
        ids = np.unique(sample_labels)
        centroids = np.stack([features[sample][sample_labels == j].mean(axis=0) for j in ids])
        labels = np.empty(n, dtype=np.int64)
        for start in range(0, n, 8192):
            block = features[start : start + 8192]
            labels[start : start + len(block)] = ids[_squared_distances(block, centroids).argmin(axis=1)]
        labels[sample] = sample_labels
        how = f"sampled {max_sample:,} of {n:,} maps (seeded), assigned the rest by nearest centroid"
    else:
        labels = _spectral(features, max_clusters, neighbours, rng)
        how = f"all {n:,} maps"
    sizes = np.bincount(labels)
    order = sorted((j for j in range(len(sizes)) if sizes[j]), key=lambda j: (-sizes[j], j))
    relabel = np.full(len(sizes), -1, dtype=np.int64)
    relabel[order] = np.arange(len(order))
    k = len(order)
    method = (
        f"spectral clustering of {how}: kNN graph ({neighbours} neighbours, self-tuning affinity) on "
        f"square-root maps, {k} cluster(s) by eigengap (cap {max_clusters})"
    )
    return Clustering(relabel[labels], k, method)


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def _class_column(images: pd.DataFrame) -> str:
    if "target_class" in images.columns and images["target_class"].notna().any():
        return "target_class"
    if "label" in images.columns:
        return "label"
    raise ValueError(MSG_NO_CLASS)


def _stack_maps(cams: pd.Series, heights: pd.Series, widths: pd.Series) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The maps of the most common size as (n, h, w), and which rows they are (other sizes are left out)."""
    sizes = pd.Series(list(zip(heights.astype(int), widths.astype(int), strict=True)), index=cams.index)
    h, w = sizes.value_counts().index[0]
    keep = (sizes == (h, w)).to_numpy() & cams.map(lambda c: c is not None and len(c) == h * w).to_numpy()
    rows = np.flatnonzero(keep)
    maps = np.stack([np.asarray(cams.iloc[i], dtype=np.float64) for i in rows]).reshape(len(rows), h, w)
    return maps, rows, h, w


def _has_core(value: object) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return any(r.get("kind") == "core" for r in row_regions(value))


def check_strategies(images: pd.DataFrame, check: StrategiesCheck) -> StrategiesResult:
    """Cluster each class's maps and flag fixed off-centre (or off-object) spots; see the module docstring.

    `images`: images.parquet columns `cam`, `cam_height`, `cam_width`, `target_class` or `label`, and
    optionally `image_id`, `correct`, `regions`, `core_share`. Raises ValueError naming a missing column.
    """
    if images.empty:  # a night with nothing to audit: no class, no gate
        return StrategiesResult(_clusters_frame([]), [])
    if not {"cam", "cam_height", "cam_width"} <= set(images.columns):
        raise ValueError(MSG_NO_MAPS)
    column = _class_column(images)
    usable = images[images[column].notna() & images["cam"].notna()]
    rows: list[dict] = []
    gates: list[GateResult] = []
    for name in sorted(usable[column].astype(str).unique()):
        part = usable[usable[column].astype(str) == name]
        class_rows, gate = _check_class(name, part, check)
        rows += class_rows
        gates.append(gate)
    return StrategiesResult(_clusters_frame(rows), gates)


def _clusters_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(CLUSTER_COLUMNS))
    return frame.astype({"flagged": bool, "n": "int64", "cluster": "int64", "images_with_core": "int64"})


def _check_class(name: str, part: pd.DataFrame, check: StrategiesCheck) -> tuple[list[dict], GateResult]:
    maps, kept, h, w = _stack_maps(part["cam"], part["cam_height"], part["cam_width"])
    maps, alive = normalise_maps(maps)
    members = part.iloc[kept[alive]]
    maps = maps[alive]
    n = len(maps)
    left_out = len(part) - n
    if n < check.min_images:
        return [], _gate(name, n, 0.0, [], check)
    clustering = cluster_maps(
        maps, max_clusters=check.max_clusters, neighbours=check.neighbours, max_sample=check.max_sample
    )
    method = clustering.method
    if left_out:
        method += f"; {left_out:,} map(s) with no positive energy (or another size) left out"
    spots = _hot_spots(maps)
    zones = _zone_masks(h, w)
    correct = members["correct"] if "correct" in members.columns else pd.Series(np.nan, index=members.index)
    correct_values = pd.to_numeric(correct, errors="coerce").to_numpy(dtype=np.float64)
    core = members["regions"].map(_has_core).to_numpy(bool) if "regions" in members.columns else np.zeros(n, bool)
    core_share = (
        pd.to_numeric(members["core_share"], errors="coerce").to_numpy(dtype=np.float64)
        if "core_share" in members.columns
        else np.full(n, np.nan)
    )
    ids = members["image_id"].astype(str).to_numpy() if "image_id" in members.columns else np.array([""] * n)
    features = np.sqrt(maps.reshape(n, -1))
    stats = []
    for j in range(clustering.k):
        inside = clustering.labels == j
        stats.append(
            _cluster_stats(
                name,
                j,
                maps[inside],
                _Spots(*(getattr(spots, f)[inside] for f in ("row", "col", "x", "y", "compactness"))),
                zones,
                n_class=n,
                correct=correct_values[inside],
                core=core[inside],
                core_share=core_share[inside],
                examples=_nearest(features[inside], ids[inside]),
                method=method,
                check=check,
            )
        )
    rows = _judge(name, stats, check)
    flagged_share = float(sum(r["share"] for r in rows if r["flagged"]))
    flagged_groups = list(dict.fromkeys(r["description"] for r in rows if r["flagged"]))
    return rows, _gate(name, n, flagged_share, flagged_groups, check)


def _nearest(features: np.ndarray, ids: np.ndarray) -> list[str]:
    """The member ids nearest the cluster's centroid (ties by id), the cluster's most typical images."""
    d = ((features - features.mean(axis=0)) ** 2).sum(axis=1)
    order = np.lexsort((ids, d))
    return [str(i) for i in ids[order[:EXAMPLES]]]


def _cluster_stats(
    name: str,
    j: int,
    maps: np.ndarray,
    spots: _Spots,
    zones: dict[str, np.ndarray],
    *,
    n_class: int,
    correct: np.ndarray,
    core: np.ndarray,
    core_share: np.ndarray,
    examples: list[str],
    method: str,
    check: StrategiesCheck,
) -> dict:
    """One cluster's row, with `fixed` (a fixed off-centre or off-object spot, size aside) and why not."""
    n, h, w = maps.shape
    mean_map = maps.mean(axis=0)
    modal = int(np.bincount(spots.row * w + spots.col, minlength=h * w).argmax())
    peak_row, peak_col = divmod(modal, w)
    near = (np.abs(spots.row - peak_row) <= 1) & (np.abs(spots.col - peak_col) <= 1)
    consistency = float(near.mean())
    x, y = float(spots.x[near].mean()), float(spots.y[near].mean())
    spread = float(np.sqrt(((spots.x[near] - x) ** 2 + (spots.y[near] - y) ** 2).mean()))
    compactness = float(spots.compactness.mean())
    with_core = core & ~np.isnan(core_share)
    off_object = float((1.0 - core_share[with_core]).mean()) if with_core.any() else float("nan")
    by_boxes = bool(with_core.sum() * 2 >= n)
    if by_boxes:
        reasons = [(off_object > check.max_off_object_share, f"{_pct(1 - off_object)} of its map on the object")]
    else:
        reasons = [
            (max(abs(x - 0.5), abs(y - 0.5)) > check.central_region / 2, "central"),
            (consistency >= check.min_peak_consistency, f"peaks at one place in only {_pct(consistency)}"),
            (spread <= check.max_spot_spread, f"the spot moves: spread {spread:.2f} of the image side"),
            (compactness >= check.min_compactness, f"diffuse: compactness {compactness:.1f}"),
        ]
    return {
        "class": name,
        "cluster": j,
        "n": n,
        "share": n / n_class,
        "accuracy": float(np.nanmean(correct)) if np.isfinite(correct).any() else float("nan"),
        "border_mass": float(mean_map[zones["border"]].sum()),
        "corner_mass": float(mean_map[zones["corner"]].sum()),
        "centre_mass": float(mean_map[zones["centre"]].sum()),
        "peak_row": peak_row,
        "peak_col": peak_col,
        "peak_x": x,
        "peak_y": y,
        "peak_consistency": consistency,
        "spot_spread": spread,
        "compactness": compactness,
        "off_object_share": off_object,
        "images_with_core": int(with_core.sum()),
        "flagged": False,
        "description": "",
        "method": method,
        "mean_map": mean_map.astype(np.float32).ravel().tolist(),
        "map_height": h,
        "map_width": w,
        "examples": examples,
        "_where": describe_location(x, y),
        "_by_boxes": by_boxes,
        "_why_not": next((text for ok, text in reasons if not ok), ""),
    }


def _judge(name: str, stats: list[dict], check: StrategiesCheck) -> list[dict]:
    """Flag and describe the clusters. Clusters with a fixed spot at the same place (modal peaks within 1 cell),
    or off the object, are one strategy: spectral clustering may split one cue's images by what else their
    maps show, and the strategy is judged on its whole share."""
    fixed = [s for s in stats if not s["_why_not"]]
    groups: list[list[dict]] = []
    for s in fixed:
        home = next((g for g in groups if any(_same_place(s, t) for t in g)), None)
        if home is None:
            groups.append([s])
        else:
            home.append(s)
    for group in groups:
        n = sum(s["n"] for s in group)
        share = sum(s["share"] for s in group)
        if share < check.min_cluster_share or n < check.min_images:
            for s in group:
                s["_why_not"] = f"too small to flag: {n} images, {_pct(share)} of the class"
            continue
        main = max(group, key=lambda s: s["n"])
        lead = f"{_pct(share)} of {name} images"
        if len(group) > 1:
            lead += f" (clusters {', '.join(str(s['cluster']) for s in sorted(group, key=lambda s: s['cluster']))})"
        if main["_by_boxes"]:
            off = sum(s["off_object_share"] * s["n"] for s in group) / n
            text = (
                f"{lead}: saliency off the object ({_pct(off)} of the map outside the core boxes), "
                f"peak in {main['_where']}"
            )
        else:
            consistency = sum(s["peak_consistency"] * s["n"] for s in group) / n
            text = (
                f"{lead}: saliency on a fixed spot in {main['_where']}, away from the centre "
                f"(peak within 1 cell of the same place in {_pct(consistency)} of them)"
            )
        for s in group:
            s["flagged"] = True
            s["description"] = text
    for s in stats:
        if not s["flagged"]:
            s["description"] = (
                f"{_pct(s['share'])} of {name} images: hot spot in {s['_where']}, not flagged ({s['_why_not']})"
            )
    return [{k: v for k, v in s.items() if not k.startswith("_")} for s in stats]


def _same_place(a: dict, b: dict) -> bool:
    if a["_by_boxes"] or b["_by_boxes"]:
        return bool(a["_by_boxes"] and b["_by_boxes"])
    return abs(a["peak_row"] - b["peak_row"]) <= 1 and abs(a["peak_col"] - b["peak_col"]) <= 1


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _gate(name: str, n: int, flagged_share: float, flagged: list[str], check: StrategiesCheck) -> GateResult:
    enough = n >= check.min_images
    if not enough:
        detail = TOO_FEW.format(n=n, min_images=check.min_images)
    elif flagged:
        detail = "; ".join(flagged)
    else:
        detail = f"no cluster of the {n} maps puts its saliency on a fixed spot off the centre or off the object"
    return GateResult(
        check="strategies",
        subject=name,
        metric="fixed_spot_share",
        value=flagged_share if enough else None,
        threshold=check.min_cluster_share,
        passed=not flagged,
        detail=detail,
        judged=enough,
    )
