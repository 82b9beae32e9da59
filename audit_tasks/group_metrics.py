"""The general group-metric engine: confusion counts per group of sensitive features, and every metric,
interval, difference and ratio derived from them.

Every subgroup statistic goes through one object, `GroupMetricFrame` (like fairlearn's MetricFrame): it
counts the confusion matrix of every group once (one `np.bincount` over combined integer codes, no loop
over rows), and derives everything else from those counts. The gate rule that judges the groups lives
in `audit_tasks.subgroups`; the interval maths in `audit_tasks.stats`.

Metrics (the registry: `METRIC_NAMES`, typed as `SubgroupMetric`)
-----------------------------------------------------------------
``accuracy``; per-class ``recall`` (= ``tpr``), ``fpr`` and ``precision`` of a positive class (one
class against the rest); ``macro_recall`` and ``macro_precision``, the mean of the per-class values over
the classes for which that value is defined in the group (a class with no true images has no recall, a
class never predicted has no precision; sklearn's ``recall_score(average="macro")`` would count those as
0 instead, so the two agree whenever every class is present). The positive class is ``positive_class``
when given; otherwise, for a binary problem, the second entry of ``classes`` (or, without ``classes``,
the lexically last label seen); for more than two classes a per-class metric needs ``positive_class``.

Intervals: Wilson score intervals for the proportions, Newcombe's hybrid score interval for their
differences; for the macro metrics a percentile bootstrap of the group's images (seeded, drawn as
multinomial resamples of the group's confusion counts, which is the same distribution as resampling its
rows) and a normal interval on differences with the two bootstrap standard errors. Missing, NaN or empty
attribute values are the group ``unknown``, never dropped.

Labels: a group of one feature is its value; of several, the values joined by ``&`` with a ``&`` or
``%`` inside a value percent-encoded; a frame without features has the one group ``__all__``, which
tables over several attributes list under the attribute ``__overall__``.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.manifest import parse_tags
from audit_tasks.stats import (
    bootstrap_std_error,
    check_confidence,
    check_resamples,
    multinomial_bootstrap,
    newcombe_interval,
    normal_interval,
    percentile_interval,
    wilson_interval,
)

__all__ = [
    "BY_GROUP_COLUMNS",
    "DIFFERENCE_COLUMNS",
    "LOWER_IS_BETTER",
    "BOOTSTRAP_METRICS",
    "MACRO_METRICS",
    "METRIC_NAMES",
    "MULTILABEL_METRICS",
    "MULTILABEL_ONLY_METRICS",
    "OVERALL_ATTRIBUTE",
    "OVERALL_GROUP",
    "PER_CLASS_METRICS",
    "SEPARATOR",
    "UNKNOWN",
    "GroupMetricFrame",
    "MetricEstimate",
    "SubgroupMetric",
    "MultilabelVariant",
    "check_metric",
    "class_indicator",
    "multilabel_variants",
]

#: Every metric a GroupMetricFrame computes: the names `checks.subgroups.metric` accepts.
SubgroupMetric = Literal[
    "accuracy",
    "recall",
    "tpr",
    "fpr",
    "precision",
    "macro_recall",
    "macro_precision",
    "f1",
    "exact_match",
    "hamming_accuracy",
]
METRIC_NAMES: tuple[str, ...] = typing.get_args(SubgroupMetric)
#: Metrics of one positive class against the rest (`positive_class`).
PER_CLASS_METRICS = frozenset({"recall", "tpr", "fpr", "precision", "f1"})
#: Means over classes; their intervals come from the bootstrap.
MACRO_METRICS = frozenset({"macro_recall", "macro_precision"})
#: Metrics that are no proportion (no score interval): percentile bootstrap, normal test on differences.
BOOTSTRAP_METRICS = MACRO_METRICS | {"f1"}
#: Metrics of a multilabel model (`model.task: multilabel`), per class for recall, precision and f1;
#: `accuracy` of a set prediction is its exact match.
MULTILABEL_METRICS = frozenset({"accuracy", "exact_match", "hamming_accuracy", "recall", "precision", "f1"})
#: Metrics only a multilabel model has.
MULTILABEL_ONLY_METRICS = frozenset({"exact_match", "hamming_accuracy"})
#: Proportions of correct items: every image (accuracy, exact_match) or every image-class cell (hamming).
_ACCURACY_LIKE = frozenset({"accuracy", "exact_match", "hamming_accuracy"})
#: Metrics where the best group has the lowest value.
LOWER_IS_BETTER = frozenset({"fpr"})
_METRIC_SEED = {name: i for i, name in enumerate(METRIC_NAMES)}

#: The group of missing, NaN and blank attribute values.
UNKNOWN = "unknown"
#: Joins the attributes of an intersection (`gender&skin_tone`) and its values (`female&dark`).
SEPARATOR = "&"
#: Attribute under which tables over several attributes list all images together.
OVERALL_ATTRIBUTE = "__overall__"
#: The one group of a frame without sensitive features (all images).
OVERALL_GROUP = "__all__"

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
MSG_UNKNOWN_FEATURE = "{name!r} is not a sensitive feature of this frame; its features are: {names}"
MSG_UNKNOWN_GROUP = "{group!r} is not a group of this frame"

# Largest code space combined densely before codes are re-factorised.
_DENSE_LIMIT = 1 << 22


def check_metric(metric: str) -> None:
    """ConfigError naming the known metrics unless `metric` is one of `METRIC_NAMES`."""
    if metric not in METRIC_NAMES:
        raise ConfigError(MSG_UNKNOWN_METRIC.format(metric=metric, known=", ".join(METRIC_NAMES)))


def _intersection_part(value: str) -> str:
    """A value inside an intersection label, with '%' and the separator percent-encoded ('R&D' -> 'R%26D'),
    so that 'R&D' x 'female' ('R%26D&female') cannot be read as the three values 'R', 'D', 'female'."""
    return value.replace("%", "%25").replace(SEPARATOR, "%26")


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


def _encode_classes(
    y_true: pd.Series, y_pred: pd.Series, classes: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
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
        classes = tuple(sorted({u for *_, names in factorised for u in names if u is not None}))
    else:
        classes = tuple(str(c) for c in classes)
        if len(set(classes)) != len(classes):
            raise ConfigError(MSG_DUPLICATE_CLASSES.format(classes=", ".join(classes)))
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for what, series, codes, names in factorised:
        lookup = np.array([-1 if name is None else index.get(name, -1) for name in names], dtype=np.int32)
        bad = np.flatnonzero(lookup < 0)
        if bad.size:
            position = int(np.flatnonzero(codes == bad[0])[0])
            raise ManifestError(
                MSG_NOT_A_CLASS.format(
                    what=what, value=names[bad[0]], row=_row_name(series, position), classes=", ".join(classes)
                )
            )
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


def _group_ids(
    codes: list[np.ndarray], sizes: list[int], n_rows: int, cells_per_group: int
) -> tuple[np.ndarray, int, bool]:
    """Combine per-column codes into one group id per row: mixed radix, re-factorised when the space explodes.

    Returns (ids, size of the id space, whether ids were re-factorised and so no longer decode by radix).
    """
    gid = np.zeros(n_rows, dtype=np.int64)
    space = 1
    compacted = False
    for column_codes, size in zip(codes, sizes, strict=True):
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
            keys = (
                np.stack([c[first[observed]] for c in codes], axis=1)
                if codes
                else np.zeros((observed.size, 0), np.int64)
            )
        elif codes:
            keys = np.stack(np.unravel_index(observed, [max(len(lv), 1) for lv in levels]), axis=1).astype(np.int64)
        else:
            keys = np.zeros((observed.size, 0), np.int64)
        order = np.lexsort(keys.T[::-1]) if keys.shape[1] else np.arange(observed.size)
        self._init(
            names=tuple(str(c) for c in features.columns),
            levels=tuple(levels),
            keys=keys[order],
            counts=counts[observed[order]].astype(np.int64),
            classes=class_names,
            confidence=confidence,
            n_bootstrap=n_bootstrap,
            random_state=random_state,
        )

    def _init(
        self,
        *,
        names: tuple[str, ...],
        levels: tuple[tuple[str, ...], ...],
        keys: np.ndarray,
        counts: np.ndarray,
        classes: tuple[str, ...],
        confidence: float,
        n_bootstrap: int,
        random_state: int,
    ) -> None:
        check_confidence(confidence)
        check_resamples(n_bootstrap, "n_bootstrap")
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
            self._labels = tuple(SEPARATOR.join(parts[j][key[j]] for j in range(len(names))) for key in keys.tolist())
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
        return pd.DataFrame(
            {name: [self._levels[j][c] for c in self._keys[:, j].tolist()] for j, name in enumerate(self._names)},
            index=pd.RangeIndex(len(self._labels)),
        )

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
        return pd.DataFrame(
            {
                "group": pd.Series(np.array(self._labels, dtype=object)[g], dtype=str),
                "label": pd.Series(classes[t], dtype=str),
                "prediction": pd.Series(classes[p], dtype=str),
                "n": self._counts[g, t, p].astype(np.int64),
            }
        )

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
            names=tuple(self._names[i] for i in index),
            levels=tuple(self._levels[i] for i in index),
            keys=keys,
            counts=counts,
            classes=self._classes,
            confidence=self._confidence,
            n_bootstrap=self._n_bootstrap,
            random_state=self._seed,
        )

    # --- metrics -----------------------------------------------------------------------------

    def resolve_positive(self, metric: str, positive_class: str | None) -> int:
        """Index of the positive class for a per-class metric (see the module docstring for the default)."""
        check_metric(metric)
        if positive_class is not None:
            if positive_class not in self._classes:
                raise ConfigError(MSG_BAD_POSITIVE.format(cls=positive_class, classes=", ".join(self._classes)))
            return self._classes.index(positive_class)
        if len(self._classes) > 2:
            raise ConfigError(MSG_NEEDS_POSITIVE.format(metric=metric, k=len(self._classes)))
        return len(self._classes) - 1

    def by_group(
        self, metric: str, *, positive_class: str | None = None, confidence: float | None = None
    ) -> pd.DataFrame:
        """One row per group: group, n, support, value, ci_low, ci_high, std_error (always this frame)."""
        return self._table(self._counts, self._labels, metric, positive_class, confidence, scope="groups")

    def overall(
        self, metric: str, *, positive_class: str | None = None, confidence: float | None = None
    ) -> MetricEstimate:
        """The metric over all images of the frame."""
        total = self._counts.sum(axis=0, keepdims=True)
        row = self._table(total, (OVERALL_GROUP,), metric, positive_class, confidence, scope="overall").iloc[0]
        return MetricEstimate(
            metric=metric,
            n=int(row["n"]),
            support=int(row["support"]),
            value=float(row["value"]),
            ci_low=float(row["ci_low"]),
            ci_high=float(row["ci_high"]),
            std_error=float(row["std_error"]),
        )

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

    def differences(
        self, metric: str, *, reference: str, positive_class: str | None = None, confidence: float | None = None
    ) -> pd.DataFrame:
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
        if metric in BOOTSTRAP_METRICS:
            se = table["std_error"].to_numpy(float)
            low, high = normal_interval(diff, np.sqrt(se[ref] ** 2 + se**2), conf)
        else:
            s, t = self._proportion(self._counts, metric, self._positive_or_none(metric, positive_class))
            low, high = newcombe_interval(s[ref], t[ref], s, t, conf)
        low, high = np.asarray(low, float).copy(), np.asarray(high, float).copy()
        diff[ref] = low[ref] = high[ref] = 0.0 if not math.isnan(value[ref]) else math.nan
        return pd.DataFrame(
            {"group": pd.Series(self._labels, dtype=str), "difference": diff, "diff_low": low, "diff_high": high}
        )

    def proportion_counts(self, metric: str, *, positive_class: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(successes, trials) per group of a proportion metric: the counts its Wilson interval rests on.

        Raises ConfigError for a bootstrapped metric (it is no proportion) or an unknown metric.
        """
        check_metric(metric)
        if metric in BOOTSTRAP_METRICS:
            raise ConfigError(MSG_UNKNOWN_METRIC.format(metric=metric, known="the proportion metrics"))
        s, t = self._proportion(self._counts, metric, self._positive_or_none(metric, positive_class))
        return np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)

    # --- internals ---------------------------------------------------------------------------

    def _positive_or_none(self, metric: str, positive_class: str | None) -> int | None:
        if metric not in PER_CLASS_METRICS or not self._classes:  # no classes: no images, every value is NaN
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
        if metric in _ACCURACY_LIKE or c is None:
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

    @staticmethod
    def _f1_cells(counts: np.ndarray, c: int) -> np.ndarray:
        """(groups, 4) counts of the positive class c: true positives, false positives, false negatives, the rest."""
        tp = counts[:, c, c]
        fp = counts[:, :, c].sum(axis=1) - tp
        fn = counts[:, c, :].sum(axis=1) - tp
        return np.stack([tp, fp, fn, counts.sum(axis=(1, 2)) - tp - fp - fn], axis=1)

    @staticmethod
    def _f1_value(cells: np.ndarray) -> np.ndarray:
        """2 TP / (2 TP + FP + FN) along the last axis; NaN where the class is neither true nor predicted."""
        tp, fp, fn = cells[..., 0], cells[..., 1], cells[..., 2]
        denominator = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), np.nan)

    def _bootstrap(self, counts: np.ndarray, metric: str, scope: str, c: int | None = None) -> np.ndarray:
        """(groups, n_bootstrap) replicates of a bootstrapped metric: multinomial resamples of each group's images."""
        key = (metric, self._n_bootstrap, scope if c is None else f"{scope}:{c}")
        if key in self._replicates:
            return self._replicates[key]
        rng = np.random.default_rng([self._seed, _METRIC_SEED[metric], 0 if scope == "groups" else 1, c or 0])
        if metric == "f1" and c is not None:
            out = multinomial_bootstrap(self._f1_cells(counts, c), self._n_bootstrap, self._f1_value, rng)
        else:
            hit, miss = self._macro_cells(counts, metric)
            k = hit.shape[1]
            out = multinomial_bootstrap(
                np.concatenate([hit, miss], axis=1),
                self._n_bootstrap,
                lambda draws: self._macro_value(draws[..., :k], draws[..., k:]),
                rng,
            )
        out.flags.writeable = False
        self._replicates[key] = out
        return out

    def _table(
        self,
        counts: np.ndarray,
        labels: Sequence[str],
        metric: str,
        positive_class: str | None,
        confidence: float | None,
        *,
        scope: str,
    ) -> pd.DataFrame:
        check_metric(metric)
        conf = self._confidence if confidence is None else confidence
        n = counts.sum(axis=(1, 2)).astype(np.int64)
        c = self._positive_or_none(metric, positive_class)
        if metric == "f1" and c is not None:
            cells = self._f1_cells(counts, c)
            value = self._f1_value(cells)
            support = cells[:, :3].sum(axis=1)  # images labelled or predicted the positive class
            reps = self._bootstrap(counts, metric, scope, c)
            low, high = percentile_interval(reps, conf)
            se = bootstrap_std_error(reps)
            undefined = np.isnan(value)
            low, high, se = (np.where(undefined, np.nan, x) for x in (low, high, se))
        elif metric in MACRO_METRICS:
            hit, miss = self._macro_cells(counts, metric)
            value = self._macro_value(hit, miss)
            support = n
            reps = self._bootstrap(counts, metric, scope)
            low, high = percentile_interval(reps, conf)
            se = bootstrap_std_error(reps)
            undefined = np.isnan(value)  # no image in the group: its replicates are NaN too
            low, high, se = (np.where(undefined, np.nan, x) for x in (low, high, se))
        else:
            s, t = self._proportion(counts, metric, c)
            support = t.astype(np.int64)
            with np.errstate(invalid="ignore", divide="ignore"):
                value = np.where(t > 0, s / np.where(t > 0, t, 1), np.nan)
                se = np.sqrt(value * (1 - value) / t)
            low, high = wilson_interval(s, t, conf)
        return pd.DataFrame(
            {
                "group": pd.Series(list(labels), dtype=str),
                "n": n,
                "support": np.asarray(support, dtype=np.int64),
                "value": np.asarray(value, float),
                "ci_low": np.asarray(low, float),
                "ci_high": np.asarray(high, float),
                "std_error": np.asarray(se, float),
            },
            columns=list(BY_GROUP_COLUMNS),
        )


# ---------------------------------------------------------------------------------------------
# Multilabel models: each metric as a frame of the same engine
# ---------------------------------------------------------------------------------------------

#: The two labels of the frames that count hits and misses (exact match, Hamming accuracy).
_HIT, _MISS = "hit", "miss"


@dataclass(frozen=True)
class MultilabelVariant:
    """One judged metric of a multilabel model: its name in the tables, the engine's metric, and its frame."""

    label: str  # `recall[mouse]`, `exact_match`, ...
    metric: str  # what `frame` computes
    positive: str | None
    frame: GroupMetricFrame


def class_indicator(sets: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """(n, classes) bool: which classes each row's set holds (a list, array or ``|``-separated string).

    Names that are not classes are ignored: a multilabel image's truth is its tags among the model's classes.
    """
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(sets), len(classes)), dtype=bool)
    for i, value in enumerate(sets):
        for name in parse_tags(value):
            j = index.get(name)
            if j is not None:
                out[i, j] = True
    return out


def multilabel_variants(
    truth: np.ndarray,
    predicted: np.ndarray,
    classes: Sequence[str],
    metric: str,
    *,
    sensitive_features: pd.DataFrame,
    positive_class: str | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 2000,
) -> list[MultilabelVariant]:
    """The frames a multilabel metric is judged on, each an ordinary GroupMetricFrame (one engine, one rule).

    Per class c (recall, precision, f1; only `positive_class` when given): the binary frame "c" vs "not c"
    of the images' true and predicted sets. `exact_match` (and `accuracy`, its synonym for set predictions):
    one frame of hit/miss per image, whose accuracy is the share of images predicted exactly. Hamming
    accuracy: hit/miss per image-class cell (n counts cells; cells of one image are not independent, so its
    interval is optimistic by up to the design effect). Raises ConfigError for a metric a multilabel model
    does not have.
    """
    if metric not in MULTILABEL_METRICS:
        known = ", ".join(sorted(MULTILABEL_METRICS))
        raise ConfigError(MSG_UNKNOWN_METRIC.format(metric=metric, known=f"{known} (multilabel)"))
    classes = [str(c) for c in classes]
    if metric in PER_CLASS_METRICS:
        if positive_class is not None and positive_class not in classes:
            raise ConfigError(MSG_BAD_POSITIVE.format(cls=positive_class, classes=", ".join(classes)))
        out = []
        for j, c in enumerate(classes):
            if positive_class is not None and c != positive_class:
                continue
            other = f"not {c}"
            frame = GroupMetricFrame(
                y_true=np.where(truth[:, j], c, other),
                y_pred=np.where(predicted[:, j], c, other),
                sensitive_features=sensitive_features,
                classes=(other, c),
                confidence=confidence,
                n_bootstrap=n_bootstrap,
            )
            out.append(MultilabelVariant(f"{metric}[{c}]", metric, c, frame))
        return out
    if metric == "hamming_accuracy":
        rows = np.repeat(np.arange(len(truth)), len(classes))
        features = sensitive_features.iloc[rows].reset_index(drop=True)
        hits = (truth == predicted).reshape(-1)
    else:
        features = sensitive_features
        hits = (truth == predicted).all(axis=1)
    frame = GroupMetricFrame(
        y_true=np.full(len(hits), _HIT),
        y_pred=np.where(hits, _HIT, _MISS),
        sensitive_features=features,
        classes=(_MISS, _HIT),
        confidence=confidence,
        n_bootstrap=n_bootstrap,
    )
    computed = "hamming_accuracy" if metric == "hamming_accuracy" else "exact_match"
    return [MultilabelVariant(metric, computed, None, frame)]


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
