"""Subgroup performance check: per-group metrics with confidence intervals, gaps to the best group, gates.

Every subgroup statistic goes through one object, `GroupMetricFrame`: it counts the confusion matrix of
every group once (one `np.bincount` over combined integer codes, no loop over rows), and derives any
metric, interval, difference or ratio from those counts. `check_subgroups` applies the gate rule below to
each configured attribute and, with `intersections: true`, to every combination of 2..k attributes.

Metrics
-------
``accuracy``; per-class ``recall`` (= ``tpr``), ``fpr`` and ``precision`` of a positive class (one
class against the rest); ``macro_recall`` and ``macro_precision``, the mean of the per-class values over
the classes for which that value is defined in the group (a class with no true images has no recall, a
class never predicted has no precision; sklearn's ``recall_score(average="macro")`` would count those as
0 instead, so the two agree whenever every class is present). The positive class is ``positive_class``
when given; otherwise, for a binary problem, the second entry of ``classes`` (or, without ``classes``,
the lexically last label seen); for more than two classes without ``positive_class`` the per-class
metric is judged for every class, one-vs-rest, and named ``recall[<class>]`` etc.

Intervals: Wilson score intervals for the proportions; for the macro metrics a percentile bootstrap of
the group's images (seeded, drawn as multinomial resamples of the group's confusion counts, which is the
same distribution as resampling its rows). Missing, NaN or empty attribute values are the group
``unknown``, never dropped.

Gate rule
---------
Per attribute (or intersection) and metric:

1. A group is *judgeable* when its metric is defined and rests on at least ``min_group_size`` images:
   the group's images for accuracy and the macro metrics, its images of the positive class for recall,
   its other images for fpr, its images predicted positive for precision. Other groups are
   ``too small to judge``: reported with their value, never flagged, and their gate passes with a
   detail that says so.
2. The reference is the best judgeable group (highest value; lowest for ``fpr``; ties go to the first
   group in sort order). ``gap`` is how much worse each group is than the reference (positive = worse).
3. A judgeable group is flagged (``status == "gap"``, failing gate) only when ``gap > max_gap`` AND the
   lower end of a confidence interval on the gap also exceeds ``max_gap``; i.e. the data show, at the
   configured confidence, that the group trails the reference by more than the tolerance. The interval
   on the gap is Newcombe's hybrid score interval for a difference of two independent proportions
   (built from the two groups' Wilson intervals); for the macro metrics it is gap +- z * sqrt(se_ref^2 +
   se_group^2) with bootstrap standard errors.
4. Comparing every group with the best observed one is a many-comparison problem (intersections have
   dozens of groups, and the best of many small groups is lucky). The difference intervals are
   therefore Bonferroni-adjusted over every pair of the m judgeable groups: each is a two-sided interval
   at level ``1 - (1 - confidence) / (m * (m - 1) / 2)``. With probability at least ``confidence`` all
   pairwise intervals hold at once, so some flag of an attribute is false (its group does not truly
   trail the reference by more than ``max_gap``) at most ``1 - confidence`` of the time per attribute and
   metric, night after night, whatever the number of groups (up to the approximate coverage of the
   score intervals); with two groups this is the plain interval.
   ``multiple_comparisons: none`` turns the adjustment off (each comparison at ``confidence``): more real
   gaps on small groups are caught, at the price of false alarms that grow with the number of groups.

So a real gap with enough images fails; the same gap on a dozen images is too small to judge; and an
observed gap just above ``max_gap``, or a chance fluctuation between big groups, passes (its gate detail
says the gap is not established). The price is images: accuracy 0.95 vs 0.85 with ``max_gap: 0.05`` is
flagged from about 250 images per group when there are 2 groups, 570 with 6, 970 with 24; 0.99 vs 0.95
with ``max_gap: 0.02`` from about 510 per group with 2 groups. (Without the adjustment, 24 groups of 40
images with no real gap at all failed 13 of 20 simulated nights; with it, none.)

Gates: one per (attribute, group, metric), check ``subgroups``, subject ``<attribute>=<group>``, value
= gap, threshold = ``max_gap``. There is no summary gate per attribute: a failing attribute shows up as
its failing groups. Input with no configured attribute yields the tables and no gates.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from audit_tasks.config import SubgroupCheck
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.gates import GateResult

__all__ = [
    "CONFUSION_COLUMNS",
    "GROUPS_COLUMNS",
    "METRICS",
    "OVERALL_COLUMNS",
    "GroupMetricFrame",
    "MetricEstimate",
    "SubgroupResult",
    "check_subgroups",
    "newcombe_interval",
    "wilson_interval",
]

#: Every metric a GroupMetricFrame computes (the names `checks.subgroups.metric` accepts).
METRICS = ("accuracy", "recall", "tpr", "fpr", "precision", "macro_recall", "macro_precision")
_PER_CLASS = frozenset({"recall", "tpr", "fpr", "precision"})
_MACRO = frozenset({"macro_recall", "macro_precision"})
_LOWER_IS_BETTER = frozenset({"fpr"})
_METRIC_SEED = {name: i for i, name in enumerate(METRICS)}

UNKNOWN = "unknown"
SEPARATOR = "&"
OVERALL_ATTRIBUTE = "__overall__"
OVERALL_GROUP = "__all__"
STATUS_OK = "ok"
STATUS_GAP = "gap"
STATUS_TOO_SMALL = "too small to judge"
CHECK_NAME = "subgroups"

GROUPS_COLUMNS = ("attribute", "group", "n", "metric", "value", "ci_low", "ci_high", "gap", "flagged", "status")
CONFUSION_COLUMNS = ("attribute", "group", "label", "prediction", "n")
OVERALL_COLUMNS = ("metric", "n", "support", "value", "ci_low", "ci_high")
BY_GROUP_COLUMNS = ("group", "n", "support", "value", "ci_low", "ci_high", "std_error")
DIFFERENCE_COLUMNS = ("group", "difference", "diff_low", "diff_high")

# Error messages (tests assert them word for word).
MSG_UNKNOWN_METRIC = "unknown subgroup metric {metric!r}; known metrics: {known}"
MSG_NEEDS_POSITIVE = "metric {metric!r} needs a positive class for {k} classes; pass positive_class"
MSG_BAD_POSITIVE = "positive_class {cls!r} is not one of the classes: {classes}"
MSG_DUPLICATE_CLASSES = "classes has duplicate names: {classes}"
MSG_LENGTH = "{what} has {got} rows but y_true has {expected}"
MSG_MISSING_VALUE = "{what} is missing at row {row}: every row needs a {what}"
MSG_NOT_A_CLASS = "{what} {value!r} at row {row} is not one of the classes: {classes}"
MSG_MISSING_COLUMN = "predictions table has no column {column!r} ({why}); its columns are: {columns}"
MSG_UNKNOWN_FEATURE = "{name!r} is not a sensitive feature of this frame; its features are: {names}"
MSG_UNKNOWN_GROUP = "{group!r} is not a group of this frame"

# Largest code space combined densely before codes are re-factorised; bootstrap cells per chunk.
_DENSE_LIMIT = 1 << 22
_BOOT_CHUNK_CELLS = 1 << 23


# ---------------------------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    """Two-sided normal quantile for `confidence` (0.95 -> 1.96)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1); got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: Any, trials: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for successes/trials (vectorised); NaN where trials == 0.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1, where the
    accuracies of good models live.
    """
    s = np.asarray(successes, dtype=float)
    t = np.asarray(trials, dtype=float)
    z = _z(confidence)
    z2 = z * z
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / t
        denom = 1.0 + z2 / t
        center = (p + z2 / (2.0 * t)) / denom
        half = z * np.sqrt(np.maximum(p * (1.0 - p), 0.0) / t + z2 / (4.0 * t * t)) / denom
        low = np.clip(center - half, 0.0, 1.0)
        high = np.clip(center + half, 0.0, 1.0)
    empty = t <= 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def newcombe_interval(s1: Any, t1: Any, s2: Any, t2: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for p1 - p2 of two independent proportions (vectorised).

    Built from the two Wilson intervals at the same level (Newcombe 1998, method 10):
    [d - sqrt((p1 - l1)^2 + (u2 - p2)^2), d + sqrt((u1 - p1)^2 + (p2 - l2)^2)].
    """
    s1, t1, s2, t2 = (np.asarray(x, dtype=float) for x in (s1, t1, s2, t2))
    l1, u1 = wilson_interval(s1, t1, confidence)
    l2, u2 = wilson_interval(s2, t2, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = s1 / t1, s2 / t2
    d = p1 - p2
    return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _series(values: Any, what: str, length: int | None) -> pd.Series:
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if length is not None and len(series) != length:
        raise ManifestError(MSG_LENGTH.format(what=what, got=len(series), expected=length))
    return series


def _row_name(series: pd.Series, position: int) -> str:
    return str(series.index[position])


def _encode_classes(y_true: pd.Series, y_pred: pd.Series,
                    classes: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Integer class codes of labels and predictions (vectorised: factorise, then map the few uniques)."""
    factorised = []
    for what, series in (("label", y_true), ("prediction", y_pred)):
        codes, uniques = _factorize(series)
        names = [None if _is_missing(u) else str(u) for u in uniques]
        valid = np.array([name is not None for name in names] + [False])  # last slot: code -1
        missing = np.flatnonzero(~valid[codes])
        if missing.size:
            raise ManifestError(MSG_MISSING_VALUE.format(what=what, row=_row_name(series, int(missing[0]))))
        factorised.append((what, series, codes, names))
    if classes is None:
        classes = tuple(sorted({u for *_, names in factorised for u in names}))
    else:
        classes = tuple(str(c) for c in classes)
        if len(set(classes)) != len(classes):
            raise ConfigError(MSG_DUPLICATE_CLASSES.format(classes=", ".join(classes)))
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for what, series, codes, names in factorised:
        lookup = np.array([index.get(name, -1) for name in names], dtype=np.int32)
        bad = np.flatnonzero(lookup < 0)
        if bad.size:
            position = int(np.flatnonzero(codes == bad[0])[0])
            raise ManifestError(MSG_NOT_A_CLASS.format(
                what=what, value=names[bad[0]], row=_row_name(series, position), classes=", ".join(classes)))
        out.append(lookup[codes] if lookup.size else codes)
    return out[0], out[1], classes


def _encode_attribute(series: pd.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes into sorted level names; missing, NaN and blank values all become the level `unknown` (last)."""
    codes, uniques = _factorize(series)
    names = [UNKNOWN if _is_missing(u) else str(u) for u in uniques]
    known = sorted(set(names) - {UNKNOWN})
    levels = tuple(known + [UNKNOWN]) if (UNKNOWN in names or (codes < 0).any()) else tuple(known)
    position = {name: i for i, name in enumerate(levels)}
    # The last slot serves code -1 (missing): remap[-1] is the unknown level.
    remap = np.array([position[name] for name in names] + [position.get(UNKNOWN, -1)], dtype=np.int32)
    return remap[codes], levels


def _factorize(series: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """(codes with -1 for missing, uniques): categorical codes as they are, Arrow strings via Arrow.

    Arrow's dictionary encoding is about twice as fast as pandas' factorize on Arrow-backed strings
    (what Parquet gives), and both beat a Python-object factorize by far.
    """
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return series.cat.codes.to_numpy(), list(dtype.categories)
    if isinstance(dtype, pd.ArrowDtype) or (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"):
        array = pa.array(series)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        encoded = pc.dictionary_encode(array)
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        return codes, encoded.dictionary.to_pylist()
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    return np.asarray(codes), list(uniques)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _group_ids(codes: list[np.ndarray], sizes: list[int], n_rows: int,
               cells_per_group: int) -> tuple[np.ndarray, int, bool]:
    """Combine per-column codes into one group id per row: mixed radix, re-factorised when the space explodes.

    Returns (ids, size of the id space, whether ids were re-factorised and so no longer decode by radix).
    """
    gid = np.zeros(n_rows, dtype=np.int64)
    space = 1
    compacted = False
    for column_codes, size in zip(codes, sizes):
        size = max(size, 1)
        if space * size * cells_per_group > _DENSE_LIMIT and space > 1:
            gid, space = _compact(gid)
            compacted = True
        gid = gid * size + column_codes if space > 1 else column_codes.astype(np.int64, copy=True)
        space *= size
    if space * cells_per_group > _DENSE_LIMIT and space > 1:
        gid, space = _compact(gid)
        compacted = True
    return gid, space, compacted


def _compact(gid: np.ndarray) -> tuple[np.ndarray, int]:
    raw, uniques = pd.factorize(gid)
    return np.asarray(raw, dtype=np.int64), max(len(uniques), 1)


# ---------------------------------------------------------------------------------------------
# The general object
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricEstimate:
    """One metric over one set of images: value, interval, and what it rests on."""

    metric: str
    n: int  # images in the set
    support: int  # images the metric is a proportion of (positives for recall, ...)
    value: float
    ci_low: float
    ci_high: float
    std_error: float


class GroupMetricFrame:
    """Confusion counts per group of sensitive features, and every metric derived from them.

    Like fairlearn's MetricFrame (overall, by group, difference, ratio), but the counts are computed
    once and every return type is fixed: `by_group` is always a DataFrame with `BY_GROUP_COLUMNS`,
    `overall` always a MetricEstimate, `difference`/`ratio` always a float, whatever the number of
    features or groups. Groups are the observed combinations of all features; `marginal` gives the
    frame of a subset of features without another pass over the rows. Values are plain Python/NumPy,
    labels are compared as strings.
    """

    def __init__(
        self,
        *,
        y_true: Any,
        y_pred: Any,
        sensitive_features: pd.DataFrame | pd.Series | Mapping[str, Any] | None,
        classes: Sequence[str] | None = None,
        confidence: float = 0.95,
        n_bootstrap: int = 2000,
        random_state: int = 0,
    ) -> None:
        true_series = _series(y_true, "y_true", None)
        n_rows = len(true_series)
        pred_series = _series(y_pred, "y_pred", n_rows)
        features = _feature_frame(sensitive_features, n_rows)
        t, p, class_names = _encode_classes(true_series, pred_series, classes)
        k = len(class_names)
        codes, levels = [], []
        for name in features.columns:
            c, lv = _encode_attribute(features[name])
            codes.append(c)
            levels.append(lv)
        gid, space, compacted = _group_ids(codes, [len(lv) for lv in levels], n_rows, k * k)
        cells = np.bincount((gid * k + t) * k + p, minlength=space * k * k)
        counts = cells.reshape(space, k, k)
        observed = np.flatnonzero(counts.sum(axis=(1, 2)) > 0)
        if compacted:
            first = np.zeros(space, dtype=np.int64)
            first[gid] = np.arange(n_rows, dtype=np.int64)  # any row of a group carries its keys
            keys = np.stack([c[first[observed]] for c in codes], axis=1) if codes else np.zeros((observed.size, 0), np.int64)
        elif codes:
            keys = np.stack(np.unravel_index(observed, [max(len(lv), 1) for lv in levels]), axis=1).astype(np.int64)
        else:
            keys = np.zeros((observed.size, 0), np.int64)
        order = np.lexsort(keys.T[::-1]) if keys.shape[1] else np.arange(observed.size)
        self._init(
            names=tuple(str(c) for c in features.columns), levels=tuple(levels), keys=keys[order],
            counts=counts[observed[order]].astype(np.int64), classes=class_names, confidence=confidence,
            n_bootstrap=n_bootstrap, random_state=random_state,
        )

    def _init(self, *, names: tuple[str, ...], levels: tuple[tuple[str, ...], ...], keys: np.ndarray,
              counts: np.ndarray, classes: tuple[str, ...], confidence: float, n_bootstrap: int,
              random_state: int) -> None:
        _z(confidence)  # validates
        if n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap must be >= 1; got {n_bootstrap}")
        self._names = names
        self._levels = levels
        self._keys = keys
        self._counts = counts
        self._counts.flags.writeable = False
        self._classes = classes
        self._confidence = float(confidence)
        self._n_bootstrap = int(n_bootstrap)
        self._seed = int(random_state)
        self._replicates: dict[tuple[str, int, str], np.ndarray] = {}  # pure cache of seeded draws
        if len(names) == 1:
            self._labels = tuple(levels[0][key[0]] for key in keys.tolist())
        elif names:
            parts = [[_intersection_part(v) for v in lv] for lv in levels]
            self._labels = tuple(
                SEPARATOR.join(parts[j][key[j]] for j in range(len(names))) for key in keys.tolist())
        else:
            self._labels = tuple(OVERALL_GROUP for _ in range(len(keys)))

    @classmethod
    def _from_parts(cls, **parts: Any) -> GroupMetricFrame:
        frame = cls.__new__(cls)
        frame._init(**parts)
        return frame

    # --- description -------------------------------------------------------------------------

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    @property
    def sensitive_features(self) -> tuple[str, ...]:
        return self._names

    @property
    def groups(self) -> tuple[str, ...]:
        """Group labels in sort order (values joined by '&', a '&' or '%' inside a value of an intersection
        percent-encoded; `unknown` sorts last in each feature)."""
        return self._labels

    @property
    def group_keys(self) -> pd.DataFrame:
        """One column per sensitive feature, one row per group (aligned with `groups` and `by_group`)."""
        return pd.DataFrame({name: [self._levels[j][c] for c in self._keys[:, j].tolist()]
                             for j, name in enumerate(self._names)}, index=pd.RangeIndex(len(self._labels)))

    @property
    def counts(self) -> np.ndarray:
        """Read-only confusion counts, shape (groups, classes, classes), indexed [group, label, prediction]."""
        return self._counts

    @property
    def n(self) -> int:
        return int(self._counts.sum())

    def confusion(self) -> pd.DataFrame:
        """Non-zero confusion cells: columns group, label, prediction, n (groups in order, then classes)."""
        g, t, p = np.nonzero(self._counts)
        classes = np.array(self._classes, dtype=object)
        return pd.DataFrame({
            "group": pd.Series(np.array(self._labels, dtype=object)[g], dtype=str),
            "label": pd.Series(classes[t], dtype=str),
            "prediction": pd.Series(classes[p], dtype=str),
            "n": self._counts[g, t, p].astype(np.int64),
        })

    def marginal(self, names: Sequence[str]) -> GroupMetricFrame:
        """The frame over a subset of the sensitive features (summed counts; no pass over the rows)."""
        index = []
        for name in names:
            if name not in self._names:
                raise ConfigError(MSG_UNKNOWN_FEATURE.format(name=name, names=", ".join(self._names)))
            index.append(self._names.index(name))
        sub = self._keys[:, index]
        if not index:
            inverse = np.zeros(len(sub), dtype=np.int64)
            keys = np.zeros((1 if len(sub) else 0, 0), np.int64)
        else:
            keys, inverse = np.unique(sub, axis=0, return_inverse=True)  # lexicographic = our sort order
            inverse = np.asarray(inverse).reshape(-1)
        counts = np.zeros((len(keys),) + self._counts.shape[1:], dtype=np.int64)
        np.add.at(counts, inverse, self._counts)
        return GroupMetricFrame._from_parts(
            names=tuple(self._names[i] for i in index), levels=tuple(self._levels[i] for i in index),
            keys=keys, counts=counts, classes=self._classes, confidence=self._confidence,
            n_bootstrap=self._n_bootstrap, random_state=self._seed)

    # --- metrics -----------------------------------------------------------------------------

    def resolve_positive(self, metric: str, positive_class: str | None) -> int:
        """Index of the positive class for a per-class metric (see the module docstring for the default)."""
        _check_metric(metric)
        if positive_class is not None:
            if positive_class not in self._classes:
                raise ConfigError(MSG_BAD_POSITIVE.format(cls=positive_class, classes=", ".join(self._classes)))
            return self._classes.index(positive_class)
        if len(self._classes) > 2:
            raise ConfigError(MSG_NEEDS_POSITIVE.format(metric=metric, k=len(self._classes)))
        return len(self._classes) - 1

    def by_group(self, metric: str, *, positive_class: str | None = None,
                 confidence: float | None = None) -> pd.DataFrame:
        """One row per group: group, n, support, value, ci_low, ci_high, std_error (always this frame)."""
        return self._table(self._counts, self._labels, metric, positive_class, confidence, scope="groups")

    def overall(self, metric: str, *, positive_class: str | None = None,
                confidence: float | None = None) -> MetricEstimate:
        """The metric over all images of the frame."""
        total = self._counts.sum(axis=0, keepdims=True)
        row = self._table(total, (OVERALL_GROUP,), metric, positive_class, confidence, scope="overall").iloc[0]
        return MetricEstimate(metric=metric, n=int(row["n"]), support=int(row["support"]), value=float(row["value"]),
                              ci_low=float(row["ci_low"]), ci_high=float(row["ci_high"]),
                              std_error=float(row["std_error"]))

    def difference(self, metric: str, *, positive_class: str | None = None, min_support: int = 1) -> float:
        """Largest minus smallest group value among groups with the metric defined on >= min_support images."""
        values = self._defined_values(metric, positive_class, min_support)
        return float(values.max() - values.min()) if values.size else math.nan

    def ratio(self, metric: str, *, positive_class: str | None = None, min_support: int = 1) -> float:
        """Smallest over largest group value (NaN when undefined)."""
        values = self._defined_values(metric, positive_class, min_support)
        if not values.size or values.max() == 0:
            return math.nan
        return float(values.min() / values.max())

    def differences(self, metric: str, *, reference: str, positive_class: str | None = None,
                    confidence: float | None = None) -> pd.DataFrame:
        """Per group: difference = value(reference) - value(group), with a two-sided interval at `confidence`.

        Newcombe's hybrid score interval for the proportions; reference +- z * combined bootstrap
        standard error for the macro metrics. The reference's own row is exactly 0.
        """
        if reference not in self._labels:
            raise ConfigError(MSG_UNKNOWN_GROUP.format(group=reference))
        ref = self._labels.index(reference)
        conf = self._confidence if confidence is None else confidence
        table = self.by_group(metric, positive_class=positive_class)
        value = table["value"].to_numpy(float)
        diff = value[ref] - value
        if metric in _MACRO:
            se = table["std_error"].to_numpy(float)
            half = _z(conf) * np.sqrt(se[ref] ** 2 + se ** 2)
            low, high = diff - half, diff + half
        else:
            s, t = self._proportion(self._counts, metric, self._positive_or_none(metric, positive_class))
            low, high = newcombe_interval(s[ref], t[ref], s, t, conf)
        low, high = np.asarray(low, float).copy(), np.asarray(high, float).copy()
        diff[ref] = low[ref] = high[ref] = 0.0 if not math.isnan(value[ref]) else math.nan
        return pd.DataFrame({"group": pd.Series(self._labels, dtype=str), "difference": diff,
                             "diff_low": low, "diff_high": high})

    # --- internals ---------------------------------------------------------------------------

    def _positive_or_none(self, metric: str, positive_class: str | None) -> int | None:
        if metric not in _PER_CLASS or not self._classes:  # no classes: no images, every value is NaN
            return None
        return self.resolve_positive(metric, positive_class)

    def _defined_values(self, metric: str, positive_class: str | None, min_support: int) -> np.ndarray:
        table = self.by_group(metric, positive_class=positive_class)
        keep = table["value"].notna() & (table["support"] >= min_support)
        return table.loc[keep, "value"].to_numpy(float)

    @staticmethod
    def _proportion(counts: np.ndarray, metric: str, c: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(successes, trials) per group of a proportion metric, from counts [group, label, prediction]."""
        total = counts.sum(axis=(1, 2))
        if metric == "accuracy" or c is None:
            return counts.diagonal(axis1=1, axis2=2).sum(axis=1), total
        hit = counts[:, c, c]
        if metric in ("recall", "tpr"):
            return hit, counts[:, c, :].sum(axis=1)
        if metric == "precision":
            return hit, counts[:, :, c].sum(axis=1)
        # fpr: images of other classes predicted as c, over images of other classes
        return counts[:, :, c].sum(axis=1) - hit, total - counts[:, c, :].sum(axis=1)

    @staticmethod
    def _macro_cells(counts: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Per class (hits, misses): true-class rows for macro recall, predicted-class columns for precision."""
        hit = counts.diagonal(axis1=-2, axis2=-1)
        margin = counts.sum(axis=-1) if metric == "macro_recall" else counts.sum(axis=-2)
        return hit, margin - hit

    @staticmethod
    def _macro_value(hit: np.ndarray, miss: np.ndarray) -> np.ndarray:
        """Mean over the classes whose rate is defined (hits + misses > 0); NaN when none is."""
        trials = hit + miss
        defined = trials > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = np.where(defined, hit / np.where(defined, trials, 1), 0.0)
            return rates.sum(axis=-1) / np.where(defined.any(axis=-1), defined.sum(axis=-1), np.nan)

    def _bootstrap(self, counts: np.ndarray, metric: str, scope: str) -> np.ndarray:
        """(groups, n_bootstrap) replicates of a macro metric: multinomial resamples of each group's images."""
        key = (metric, self._n_bootstrap, scope)
        if key in self._replicates:
            return self._replicates[key]
        hit, miss = self._macro_cells(counts, metric)
        cells = np.concatenate([hit, miss], axis=1).astype(float)
        n = cells.sum(axis=1)
        k = hit.shape[1]
        groups, b = len(cells), self._n_bootstrap
        out = np.full((groups, b), np.nan)
        rng = np.random.default_rng([self._seed, _METRIC_SEED[metric], 0 if scope == "groups" else 1])
        live = np.flatnonzero(n > 0)
        chunk = max(1, _BOOT_CHUNK_CELLS // max(1, b * 2 * k))
        for start in range(0, live.size, chunk):  # chunks of groups (memory bound), never rows
            idx = live[start:start + chunk]
            pvals = cells[idx] / n[idx, None]
            draws = rng.multinomial(n[idx, None].astype(np.int64), pvals[:, None, :], size=(idx.size, b))
            out[idx] = self._macro_value(draws[..., :k], draws[..., k:])
        out.flags.writeable = False
        self._replicates[key] = out
        return out

    def _table(self, counts: np.ndarray, labels: Sequence[str], metric: str, positive_class: str | None,
               confidence: float | None, *, scope: str) -> pd.DataFrame:
        _check_metric(metric)
        conf = self._confidence if confidence is None else confidence
        n = counts.sum(axis=(1, 2)).astype(np.int64)
        if metric in _MACRO:
            hit, miss = self._macro_cells(counts, metric)
            value = self._macro_value(hit, miss)
            support = n
            reps = self._bootstrap(counts, metric, scope)
            low = np.full(len(n), np.nan)
            high = np.full(len(n), np.nan)
            se = np.full(len(n), np.nan)
            ok = ~np.isnan(value) & ~np.isnan(reps).all(axis=1)
            if ok.any():
                alpha = 1 - conf
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    q = np.nanpercentile(reps[ok], [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=1)
                    se[ok] = np.nanstd(reps[ok], axis=1, ddof=1) if reps.shape[1] > 1 else 0.0
                low[ok], high[ok] = q[0], q[1]
        else:
            s, t = self._proportion(counts, metric, self._positive_or_none(metric, positive_class))
            support = t.astype(np.int64)
            with np.errstate(invalid="ignore", divide="ignore"):
                value = np.where(t > 0, s / np.where(t > 0, t, 1), np.nan)
                se = np.sqrt(value * (1 - value) / t)
            low, high = wilson_interval(s, t, conf)
        return pd.DataFrame({
            "group": pd.Series(list(labels), dtype=str),
            "n": n, "support": np.asarray(support, dtype=np.int64), "value": np.asarray(value, float),
            "ci_low": np.asarray(low, float), "ci_high": np.asarray(high, float), "std_error": np.asarray(se, float),
        }, columns=list(BY_GROUP_COLUMNS))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(MSG_UNKNOWN_METRIC.format(metric=metric, known=", ".join(METRICS)))


def _feature_frame(features: Any, n_rows: int) -> pd.DataFrame:
    if features is None:
        return pd.DataFrame(index=pd.RangeIndex(n_rows))
    if isinstance(features, pd.Series):
        frame = features.to_frame(name=features.name if features.name is not None else "feature")
    elif isinstance(features, pd.DataFrame):
        frame = features
    else:
        frame = pd.DataFrame(dict(features))
    if len(frame) != n_rows:
        raise ManifestError(MSG_LENGTH.format(what="sensitive_features", got=len(frame), expected=n_rows))
    return frame


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubgroupResult:
    """The subgroup check's tables (contract columns) and its gates."""

    groups: pd.DataFrame  # GROUPS_COLUMNS
    confusion: pd.DataFrame  # CONFUSION_COLUMNS, overall as attribute __overall__ / group __all__
    overall: pd.DataFrame  # OVERALL_COLUMNS, one row per metric over all images
    gates: list[GateResult]

    @property
    def flagged(self) -> pd.DataFrame:
        return self.groups[self.groups["flagged"]]


def check_subgroups(
    frame: pd.DataFrame,
    *,
    check: SubgroupCheck,
    classes: Sequence[str] | None = None,
    label_column: str = "label",
    prediction_column: str = "prediction",
    positive_class: str | None = None,
) -> SubgroupResult:
    """Per-group metrics, intervals, gaps and gates for the configured attributes (rule: module docstring).

    Raises ManifestError when a column is missing or a label/prediction is missing or not a class, and
    ConfigError for an unknown metric or a positive class that is not a class.
    """
    _check_metric(check.metric)
    attributes = tuple(dict.fromkeys(check.attributes))
    for column, why in [(label_column, "labels"), (prediction_column, "predictions")] + [
            (a, "attribute named in checks.subgroups.attributes") for a in attributes]:
        if column not in frame.columns:
            raise ManifestError(MSG_MISSING_COLUMN.format(column=column, why=why,
                                                          columns=", ".join(map(str, frame.columns))))
    base = GroupMetricFrame(y_true=frame[label_column], y_pred=frame[prediction_column],
                            sensitive_features=frame[list(attributes)], classes=classes,
                            confidence=check.confidence, n_bootstrap=check.n_bootstrap)
    if positive_class is not None and positive_class not in base.classes:
        raise ConfigError(MSG_BAD_POSITIVE.format(cls=positive_class, classes=", ".join(base.classes)))

    combos = [(a,) for a in attributes]
    if check.intersections and len(attributes) >= 2:
        combos += [c for r in range(2, len(attributes) + 1) for c in itertools.combinations(attributes, r)]

    group_tables, gates = [], []
    confusion = [_confusion_rows(base.marginal(()), OVERALL_ATTRIBUTE)]
    for combo in combos:
        gmf = base.marginal(combo)
        attribute = SEPARATOR.join(combo)
        confusion.append(_confusion_rows(gmf, attribute))
        for label, metric, positive in _metric_variants(check.metric, base, positive_class):
            table, combo_gates = _judge(gmf, attribute, label, metric, positive, check)
            group_tables.append(table)
            gates.extend(combo_gates)

    groups = pd.concat(group_tables, ignore_index=True) if group_tables else _empty_groups()
    overall = _overall_table(base, positive_class)
    return SubgroupResult(groups=groups[list(GROUPS_COLUMNS)], confusion=pd.concat(confusion, ignore_index=True),
                          overall=overall, gates=gates)


def _metric_variants(metric: str, frame: GroupMetricFrame,
                     positive_class: str | None) -> list[tuple[str, str, str | None]]:
    """(name in tables, metric, positive class): one per class for per-class metrics of >2 classes."""
    if metric not in _PER_CLASS or not frame.classes:
        return [(metric, metric, None)]
    if positive_class is not None or len(frame.classes) <= 2:
        return [(metric, metric, frame.classes[frame.resolve_positive(metric, positive_class)])]
    return [(f"{metric}[{c}]", metric, c) for c in frame.classes]


def _judge(gmf: GroupMetricFrame, attribute: str, label: str, metric: str, positive: str | None,
           check: SubgroupCheck) -> tuple[pd.DataFrame, list[GateResult]]:
    """Apply the gate rule to one attribute and metric."""
    table = gmf.by_group(metric, positive_class=positive)
    value = table["value"].to_numpy(float)
    support = table["support"].to_numpy(np.int64)
    judgeable = ~np.isnan(value) & (support >= check.min_group_size)
    m = int(judgeable.sum())
    lower_better = metric in _LOWER_IS_BETTER
    gap = np.full(len(table), np.nan)
    gap_low = np.full(len(table), np.nan)
    best = -1
    adjusted = check.confidence
    if m:
        candidates = np.where(judgeable, -value if lower_better else value, -np.inf)
        best = int(np.argmax(candidates))
        gap = (value - value[best]) if lower_better else (value[best] - value)
        if m >= 2:
            pairs = m * (m - 1) / 2 if check.multiple_comparisons == "bonferroni" else 1
            adjusted = 1 - (1 - check.confidence) / pairs
            diffs = gmf.differences(metric, reference=gmf.groups[best], positive_class=positive, confidence=adjusted)
            gap_low = (-diffs["diff_high"] if lower_better else diffs["diff_low"]).to_numpy(float)
    flagged = judgeable & (gap > check.max_gap) & (gap_low > check.max_gap)
    status = np.where(~judgeable, STATUS_TOO_SMALL, np.where(flagged, STATUS_GAP, STATUS_OK))
    out = pd.DataFrame({
        "attribute": pd.Series([attribute] * len(table), dtype=str),
        "group": table["group"].astype(str),
        "n": table["n"].astype(np.int64),
        "metric": pd.Series([label] * len(table), dtype=str),
        "value": value, "ci_low": table["ci_low"].to_numpy(float), "ci_high": table["ci_high"].to_numpy(float),
        "gap": gap, "flagged": flagged.astype(bool), "status": pd.Series(status, dtype=str),
    })
    context = _Context(attribute=attribute, label=label, metric=metric, positive=positive, check=check,
                       best=best, m=m, adjusted=adjusted, table=table)
    gates = [
        GateResult(check=CHECK_NAME, subject=f"{attribute}={row.group}", metric=label,
                   value=None if math.isnan(gap[i]) else float(gap[i]), threshold=float(check.max_gap),
                   passed=not bool(flagged[i]), detail=_detail(context, i, bool(judgeable[i]), gap[i], gap_low[i]),
                   judged=bool(judgeable[i]) and m >= 2)  # a gap needs a second judgeable group
        for i, row in enumerate(table.itertuples(index=False))
    ]
    return out, gates


@dataclass(frozen=True)
class _Context:
    attribute: str
    label: str
    metric: str
    positive: str | None
    check: SubgroupCheck
    best: int
    m: int
    adjusted: float
    table: pd.DataFrame


def _detail(ctx: _Context, i: int, judgeable: bool, gap: float, gap_low: float) -> str:
    """The gate's sentence: what was measured, against what, and why it passed or failed."""
    row = ctx.table.iloc[i]
    n = int(row["n"])
    if not judgeable:
        return f"{STATUS_TOO_SMALL} ({_support_phrase(ctx, row)})"
    head = f"{ctx.label} {_fmt(row['value'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] for {ctx.attribute}={row['group']}"
    if i == ctx.best:
        return f"{head} is the best of {ctx.m} judgeable group(s) (n={n})"
    best = ctx.table.iloc[ctx.best]
    versus = f"{head} vs {_fmt(best['value'])} for {ctx.attribute}={best['group']}"
    conf = f"{_fmt(100 * ctx.check.confidence)}% confidence" + (
        f" adjusted for {ctx.m} groups" if ctx.check.multiple_comparisons == "bonferroni" else "")
    if gap > ctx.check.max_gap and gap_low > ctx.check.max_gap:
        return f"{versus} (gap {_fmt(gap)} > {_fmt(ctx.check.max_gap)}, at least {_fmt(gap_low)} at {conf}, n={n})"
    if gap > ctx.check.max_gap:
        return (f"{versus} (gap {_fmt(gap)} > {_fmt(ctx.check.max_gap)} but not established: at least "
                f"{_fmt(gap_low)} at {conf}, n={n})")
    return f"{versus} (gap {_fmt(gap)} <= {_fmt(ctx.check.max_gap)}, n={n})"


def _support_phrase(ctx: _Context, row: pd.Series) -> str:
    n, support, minimum = int(row["n"]), int(row["support"]), ctx.check.min_group_size
    if ctx.metric not in _PER_CLASS:
        if math.isnan(row["value"]) and n >= minimum:
            return f"{ctx.label} is undefined, n={n}"
        return f"n={n} < {minimum}"
    what = {"recall": "labelled", "tpr": "labelled", "precision": "predicted", "fpr": "not labelled"}[ctx.metric]
    return f"{support} images {what} {ctx.positive!r} < {minimum}, n={n}" if support else \
        f"no images {what} {ctx.positive!r}, n={n}"


def _fmt(x: float) -> str:
    """Up to three decimals, trailing zeros dropped (0.950 -> 0.95, 95.000 -> 95)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    text = f"{float(x):.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _confusion_rows(gmf: GroupMetricFrame, attribute: str) -> pd.DataFrame:
    table = gmf.confusion()
    table.insert(0, "attribute", pd.Series([attribute] * len(table), dtype=str))
    return table[list(CONFUSION_COLUMNS)]


def _overall_table(base: GroupMetricFrame, positive_class: str | None) -> pd.DataFrame:
    rows = []
    for metric in METRICS:
        for label, name, positive in _metric_variants(metric, base, positive_class):
            est = base.overall(name, positive_class=positive)
            rows.append({"metric": label, "n": est.n, "support": est.support, "value": est.value,
                         "ci_low": est.ci_low, "ci_high": est.ci_high})
    out = pd.DataFrame(rows, columns=list(OVERALL_COLUMNS))
    out["metric"] = out["metric"].astype(str)
    for column in ("n", "support"):
        out[column] = out[column].astype(np.int64)
    return out


def _empty_groups() -> pd.DataFrame:
    return pd.DataFrame({
        "attribute": pd.Series([], dtype=str), "group": pd.Series([], dtype=str), "n": pd.Series([], dtype=np.int64),
        "metric": pd.Series([], dtype=str), "value": pd.Series([], dtype=float), "ci_low": pd.Series([], dtype=float),
        "ci_high": pd.Series([], dtype=float), "gap": pd.Series([], dtype=float), "flagged": pd.Series([], dtype=bool),
        "status": pd.Series([], dtype=str),
    })


def _intersection_part(value: str) -> str:
    """A value inside an intersection label, with '%' and the separator percent-encoded ('R&D' -> 'R%26D'),
    so that 'R&D' x 'female' ('R%26D&female') cannot be read as the three values 'R', 'D', 'female'."""
    return value.replace("%", "%25").replace(SEPARATOR, "%26")
