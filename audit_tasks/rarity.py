"""Rarity from the audited model's own latent structure: a density per image within its class, accuracy by
density quantile, and the tail-gap gate.

Embedding: the input of the model's last Linear (its penultimate features), collected by the CAM pass's own
forward (saliency.CamEngine(collect_features=True)). The features are centred and projected on their first
`dims` principal components (eigenvectors of the covariance of at most `_PCA_SAMPLE` rows, one projection for
every class, so
that "rare" is measured in the directions the model itself uses most).

Density, `method: histogram` (the default, after the DB-VAE lab of MIT 6.S191): per class and per component,
a histogram of `bins` equal-width bins over the class's range; an image's value in one dimension is the
probability of its bin (count / class size, not the lab's per-width density, so alpha means the same at
any feature scale). The lab combines dimensions by the **max** of the per-dimension weights 1/(h + alpha),
which is 1/(min_i h_i + alpha): the image's single rarest dimension. With 16 dimensions nearly every image
sits in some dimension's tail bin, so that max ranks the tails of unrelated (often noise) dimensions beside a
real rare subgroup. Our default (`combine: product`) multiplies the per-dimension probabilities (a naive-Bayes
density, in log space), each dimension's log-probability weighted by its principal component's share of the
variance (weights summing to 1, so the result is a weighted geometric mean on the 0..1 scale of one bin's
probability): the directions the model's features really vary in decide, the low-variance tail of the kept
components does not. `combine: max` is the lab's exact combination (unweighted).
`method: knn`: 1 / (distance to the k-th nearest neighbour in the class), the neighbours drawn from a
reference sample of at most `_KNN_REFERENCE` images per class (bounded memory and time). kNN measures local
density: a compact subgroup with more than k members is dense to it, so choose k above the size of the
subgroups it should find.

Either density is finally scaled so that the class's densest image has 1: a density is "how typical for its
class", in (0, 1], and `alpha` in 1/(density + alpha) bounds the weight of the rarest images at 1/alpha
before the weights are normalised (audit_tasks.sample_weights).

The check: per class, the images sorted by density are cut into `quantiles` equal parts (q1 rarest). The
gap is the accuracy of the commonest quantile minus that of the rarest; it is flagged when the one-sided
Newcombe test (stats.newcombe_exceedance_pvalue, the subgroup check's rule) establishes gap > max_tail_gap
at the check's confidence, Holm-adjusted over the judged classes. A class whose rarest or commonest
quantile has fewer than `min_images` images is not judged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audit_tasks.config import RarityCheck
from audit_tasks.errors import ManifestError
from audit_tasks.gates import GateResult
from audit_tasks.stats import (
    bonferroni_confidence,
    holm_adjust,
    newcombe_exceedance_pvalue,
    newcombe_interval,
    wilson_interval,
)

CHECK_NAME = "rarity"
METRIC = "tail_gap"
STATUS_OK = "ok"
STATUS_GAP = "tail gap"
STATUS_TOO_SMALL = "too small to judge"
MSG_MISSING_COLUMN = "the rarity check needs a {column!r} column ({why})"
MSG_FEATURES_SHAPE = "features must be a 2-D array with one row per image; got shape {shape}"
MSG_DETAIL_SMALL = "{cls}: a quantile has fewer than {min_images} images; not judged"
MSG_DETAIL = (
    "{cls}: accuracy {common:.3f} on the commonest density quantile vs {rare:.3f} on the rarest (gap {gap:+.3f}, "
    "interval {low:+.3f}..{high:+.3f}); {verdict} the allowed {limit:.3f}"
)
#: Rows of the PCA fit, and of the kNN reference per class: bounded memory and time at any size.
_PCA_SAMPLE = 20_000
_KNN_REFERENCE = 2_000
_PROJECT_ROWS = 65_536
_SEED = 0
#: A value is "shared" by the rarest images when its share there is at least this and this many times the class's.
_SHARED_MIN_SHARE = 0.25
_SHARED_MIN_LIFT = 1.5
_SHARED_PER_COLUMN = 3

RARITY_COLUMNS = (
    "label",
    "quantile",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "density_low",
    "density_high",
    "gap",
    "gap_ci_low",
    "gap_ci_high",
    "pvalue",
    "flagged",
    "status",
    "shared",
)


@dataclass(frozen=True)
class RarityResult:
    """`quantiles`: one row per class and density quantile (RARITY_COLUMNS); `gates`: one per class."""

    quantiles: pd.DataFrame
    gates: list[GateResult]


def reduce_features(features: np.ndarray, dims: int, *, seed: int = _SEED) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features centred and projected on their first `dims` principal components (float32), and each
    component's share of the variance the kept components carry (sums to 1).

    The components come from at most `_PCA_SAMPLE` rows; D <= dims keeps every dimension (rotated).
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(MSG_FEATURES_SHAPE.format(shape=x.shape))
    if len(x) == 0:
        k = min(dims, x.shape[1])
        return np.zeros((0, k), dtype=np.float32), np.full(k, 1.0 / max(k, 1))
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= _PCA_SAMPLE else x[rng.choice(len(x), _PCA_SAMPLE, replace=False)]
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = sample - mean
    # The D x D covariance's eigendecomposition: the SVD's components at a fraction of its cost for N >> D.
    eigenvalues, eigenvectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))
    order = np.argsort(eigenvalues)[::-1]
    k = min(dims, x.shape[1])
    variance = np.clip(eigenvalues[order[:k]], 0, None)
    share = variance / variance.sum() if variance.sum() > 0 else np.full(k, 1.0 / k)
    vt = eigenvectors[:, order[:k]].T.astype(np.float32)
    basis = np.ascontiguousarray(vt[:k].T)
    offset = mean @ basis  # (x - mean) @ basis without a centred copy of x
    z = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), _PROJECT_ROWS):
        z[start : start + _PROJECT_ROWS] = x[start : start + _PROJECT_ROWS] @ basis - offset
    return z, share


def histogram_density(
    z: np.ndarray, *, bins: int, combine: str = "product", weights: np.ndarray | None = None
) -> np.ndarray:
    """Per image of one class: its bins' probabilities combined over dimensions (see the module docstring).

    `weights` (one per dimension, summing to 1; default equal) weigh each dimension's log-probability in the
    product: the principal components' variance shares, so that low-variance components, mostly noise, do
    not decide rarity by their tails.
    """
    n, d = z.shape
    if n == 0:
        return np.zeros(0)
    log_p = np.zeros((n, d))
    for j in range(d):
        column = z[:, j]
        low, high = float(column.min()), float(column.max())
        if high <= low:
            continue  # one value: every image is in the same bin, probability 1
        index = np.minimum(((column - low) / (high - low) * bins).astype(np.int64), bins - 1)
        counts = np.bincount(index, minlength=bins)
        log_p[:, j] = np.log(counts[index] / n)
    if combine == "max":  # the lab: the weight of the rarest dimension, so the density of that dimension
        return np.exp(log_p.min(axis=1))
    w = np.full(d, 1.0 / d) if weights is None else np.asarray(weights, dtype=float)
    return np.exp(log_p @ w)


def knn_density(z: np.ndarray, *, k: int, seed: int = _SEED) -> np.ndarray:
    """Per image of one class: 1 / distance to its k-th nearest neighbour in a reference sample of the class."""
    n = len(z)
    if n < 2:
        return np.ones(n)
    rng = np.random.default_rng(seed)
    ref_index = np.arange(n) if n <= _KNN_REFERENCE else np.sort(rng.choice(n, _KNN_REFERENCE, replace=False))
    reference = z[ref_index].astype(np.float64)
    kk = min(k, len(reference) - 1)
    ref_sq = (reference**2).sum(axis=1)
    out = np.empty(n)
    for start in range(0, n, 4096):  # blocks of 4096 x 2000 distances: bounded memory
        block = z[start : start + 4096].astype(np.float64)
        dist2 = (block**2).sum(axis=1)[:, None] + ref_sq[None, :] - 2 * block @ reference.T
        np.maximum(dist2, 0, out=dist2)
        # A reference image is its own nearest neighbour at distance 0: skip it by taking the (k+1)-th.
        in_ref = np.isin(np.arange(start, start + len(block)), ref_index)
        nth = np.where(in_ref, kk, kk - 1)
        part = np.partition(dist2, kk, axis=1)
        out[start : start + len(block)] = np.sqrt(part[np.arange(len(block)), nth])
    scale = float(np.median(out[out > 0])) if np.any(out > 0) else 1.0
    return 1.0 / np.maximum(out, scale * 1e-6)


def class_densities(features: np.ndarray, labels: Sequence[Any], check: RarityCheck) -> np.ndarray:
    """Each image's density within its class, scaled so each class's densest image has 1 (NaN: no label)."""
    z, share = reduce_features(features, check.dims)
    series = pd.Series(list(labels), dtype=object)
    density = np.full(len(series), np.nan)
    for _, index in series.groupby(series, sort=True).indices.items():
        part = z[index]
        if check.method == "knn":
            raw = knn_density(part, k=check.k)
        else:
            raw = histogram_density(part, bins=check.bins, combine=check.combine, weights=share)
        top = float(raw.max()) if len(raw) else 1.0
        density[index] = raw / top if top > 0 else 1.0
    return density


def density_quantiles(density: np.ndarray, labels: Sequence[Any], quantiles: int) -> np.ndarray:
    """1 (rarest) .. `quantiles` (commonest) per image within its class: equal-size parts of the density order."""
    series = pd.Series(list(labels), dtype=object)
    out = np.zeros(len(series), dtype=np.int64)
    for _, index in series.groupby(series, sort=True).indices.items():
        order = index[np.argsort(density[index], kind="stable")]
        for q, part in enumerate(np.array_split(order, quantiles), start=1):
            out[part] = q
    return out


def check_rarity(
    frame: pd.DataFrame,
    density: np.ndarray,
    *,
    check: RarityCheck,
    describe: Sequence[str] = (),
) -> RarityResult:
    """Accuracy by density quantile per class (`label`, `correct` columns), the tail-gap rule and its gates.

    `describe`: columns (attributes, `tags`, image properties) summarised for the rarest quantile ("shared").
    Raises ManifestError when a column is missing.
    """
    for column, why in (("label", "the class of each image"), ("correct", "whether the model was right")):
        if column not in frame.columns:
            raise ManifestError(MSG_MISSING_COLUMN.format(column=column, why=why))
    frame = frame.reset_index(drop=True)
    known = frame["label"].notna().to_numpy() & ~np.isnan(density)
    frame, density = frame[known].reset_index(drop=True), density[known]
    quantile = density_quantiles(density, frame["label"].tolist(), check.quantiles)
    correct = frame["correct"].fillna(False).astype(bool).to_numpy()
    rows: list[dict[str, Any]] = []
    classes = sorted(frame["label"].astype(str).unique())
    labels = frame["label"].astype(str).to_numpy()
    for cls in classes:
        in_class = labels == cls
        for q in range(1, check.quantiles + 1):
            mask = in_class & (quantile == q)
            n = int(mask.sum())
            rows.append(
                {
                    "label": cls,
                    "quantile": q,
                    "n": n,
                    "correct": int(correct[mask].sum()),
                    "density_low": float(density[mask].min()) if n else math.nan,
                    "density_high": float(density[mask].max()) if n else math.nan,
                    "shared": _shared(frame, mask, in_class, describe) if q == 1 and n else None,
                }
            )
    table = pd.DataFrame(rows, columns=["label", "quantile", "n", "correct", "density_low", "density_high", "shared"])
    low, high = wilson_interval(table["correct"].to_numpy(), table["n"].to_numpy(), check.confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["accuracy"] = table["correct"] / table["n"].where(table["n"] > 0)
    table["ci_low"], table["ci_high"] = low, high
    table = _judge(table, check)
    gates = [_gate(row, check) for row in table[table["quantile"] == 1].itertuples(index=False)]
    return RarityResult(quantiles=table[list(RARITY_COLUMNS)], gates=gates)


def _judge(table: pd.DataFrame, check: RarityCheck) -> pd.DataFrame:
    """Per class: the gap commonest - rarest, its p-value (Holm over judged classes) and interval, on every row."""
    rare = table[table["quantile"] == 1].set_index("label")
    common = table[table["quantile"] == check.quantiles].set_index("label").reindex(rare.index)
    s1, t1 = common["correct"].to_numpy(float), common["n"].to_numpy(float)
    s2, t2 = rare["correct"].to_numpy(float), rare["n"].to_numpy(float)
    judged = (t1 >= check.min_images) & (t2 >= check.min_images)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = s1 / t1 - s2 / t2
    alpha = 1 - check.confidence
    raw = np.where(judged, newcombe_exceedance_pvalue(s1, t1, s2, t2, check.max_tail_gap), np.nan)
    adjusted = holm_adjust(raw) if len(raw) else raw
    family = int(judged.sum())
    level = 1 - 2 * alpha if family <= 1 else bonferroni_confidence(1 - 2 * alpha, family)
    ci_low, ci_high = newcombe_interval(s1, t1, s2, t2, level) if len(raw) else (raw, raw)
    with np.errstate(invalid="ignore"):
        flagged = judged & (gap > check.max_tail_gap) & (adjusted <= alpha)
    status = np.where(~judged, STATUS_TOO_SMALL, np.where(flagged, STATUS_GAP, STATUS_OK))
    per_class = pd.DataFrame(
        {
            "gap": gap,
            "gap_ci_low": np.asarray(ci_low, dtype=float),
            "gap_ci_high": np.asarray(ci_high, dtype=float),
            "pvalue": np.asarray(adjusted, dtype=float),
            "flagged": flagged.astype(bool),
            "status": status.astype(str),
        },
        index=rare.index,
    )
    return table.join(per_class, on="label")


def _shared(frame: pd.DataFrame, rare: np.ndarray, in_class: np.ndarray, columns: Sequence[str]) -> str:
    """What the rarest images share, as JSON: values over-represented in the rarest quantile vs the class
    (share there >= 25% and lift >= 1.5; numeric columns read as the class's tertiles low/mid/high)."""
    found: list[dict[str, Any]] = []
    for column in columns:
        if column not in frame.columns:
            continue
        values = frame[column][in_class]
        if column == "tags":
            exploded = values.explode().dropna()
            counts_class = exploded.value_counts()
            rare_tags = frame[column][rare].explode().dropna()
            counts_rare = rare_tags.value_counts()
            n_class, n_rare = int(in_class.sum()), int(rare.sum())
        else:
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                numeric = pd.to_numeric(values, errors="coerce")
                if numeric.notna().sum() < 3 or numeric.nunique() < 3:
                    continue
                cuts = numeric.quantile([1 / 3, 2 / 3]).to_numpy()
                labelled = pd.Series(
                    np.where(numeric <= cuts[0], "low", np.where(numeric <= cuts[1], "mid", "high")),
                    index=values.index,
                ).where(numeric.notna())
            else:
                labelled = values.astype(object).where(values.notna())
            counts_class = labelled.dropna().astype(str).value_counts()
            counts_rare = labelled[rare[in_class]].dropna().astype(str).value_counts()
            n_class, n_rare = int(in_class.sum()), int(rare.sum())
        for value, hits in counts_rare.items():
            share = hits / n_rare
            lift = share / (counts_class.get(value, hits) / n_class)
            if share >= _SHARED_MIN_SHARE and lift >= _SHARED_MIN_LIFT:
                found.append({"column": column, "value": str(value), "share": round(share, 3), "lift": round(lift, 2)})
    found.sort(key=lambda f: -f["lift"])
    kept: list[dict[str, Any]] = []
    per_column: dict[str, int] = {}
    for item in found:
        if per_column.get(item["column"], 0) < _SHARED_PER_COLUMN:
            kept.append(item)
            per_column[item["column"]] = per_column.get(item["column"], 0) + 1
    return json.dumps(kept)


def _gate(row: Any, check: RarityCheck) -> GateResult:
    judged = row.status != STATUS_TOO_SMALL
    return GateResult(
        check=CHECK_NAME,
        subject=str(row.label),
        metric=METRIC,
        value=None if math.isnan(row.gap) else float(row.gap),
        threshold=float(check.max_tail_gap),
        passed=not row.flagged,
        detail=_detail(row, check),
        judged=judged,
    )


def _detail(row: Any, check: RarityCheck) -> str:
    if row.status == STATUS_TOO_SMALL:
        return MSG_DETAIL_SMALL.format(cls=row.label, min_images=check.min_images)
    return MSG_DETAIL.format(
        cls=row.label,
        common=row.gap + row.accuracy,
        rare=row.accuracy,
        gap=row.gap,
        low=row.gap_ci_low,
        high=row.gap_ci_high,
        verdict="exceeds" if row.flagged else "is within",
        limit=check.max_tail_gap,
    )
