"""Subgroup performance check: per-group metrics with confidence intervals, gaps to the best group, gates.

`check_subgroups` builds one `GroupMetricFrame` (audit_tasks.group_metrics: the metrics, their
intervals, the group labels) over the configured attributes and applies the gate rule below to each
attribute and, with `intersections: true`, to every combination of 2..k attributes. For more than two
classes without ``positive_class`` a per-class metric is judged for every class, one-vs-rest, and named
``recall[<class>]`` etc.

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
   se_group^2) with bootstrap standard errors (audit_tasks.stats).
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

The engine's and the statistics' public names are re-exported here, so `from audit_tasks.subgroups
import GroupMetricFrame, wilson_interval` keeps working; new code imports them from their homes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit_tasks.config import SubgroupCheck
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.gates import GateResult
from audit_tasks.group_metrics import (
    BY_GROUP_COLUMNS,
    DIFFERENCE_COLUMNS,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    MSG_BAD_POSITIVE,
    MSG_DUPLICATE_CLASSES,
    MSG_LENGTH,
    MSG_MISSING_VALUE,
    MSG_NEEDS_POSITIVE,
    MSG_NOT_A_CLASS,
    MSG_UNKNOWN_FEATURE,
    MSG_UNKNOWN_GROUP,
    MSG_UNKNOWN_METRIC,
    OVERALL_ATTRIBUTE,
    OVERALL_GROUP,
    PER_CLASS_METRICS,
    SEPARATOR,
    UNKNOWN,
    GroupMetricFrame,
    MetricEstimate,
    SubgroupMetric,
    check_metric,
)
from audit_tasks.stats import bonferroni_confidence, newcombe_interval, wilson_interval

__all__ = [
    "BY_GROUP_COLUMNS",
    "CHECK_NAME",
    "CONFUSION_COLUMNS",
    "DIFFERENCE_COLUMNS",
    "GROUPS_COLUMNS",
    "METRICS",
    "METRIC_NAMES",
    "MSG_BAD_POSITIVE",
    "MSG_DUPLICATE_CLASSES",
    "MSG_LENGTH",
    "MSG_MISSING_COLUMN",
    "MSG_MISSING_VALUE",
    "MSG_NEEDS_POSITIVE",
    "MSG_NOT_A_CLASS",
    "MSG_UNKNOWN_FEATURE",
    "MSG_UNKNOWN_GROUP",
    "MSG_UNKNOWN_METRIC",
    "OVERALL_ATTRIBUTE",
    "OVERALL_COLUMNS",
    "OVERALL_GROUP",
    "SEPARATOR",
    "STATUS_GAP",
    "STATUS_OK",
    "STATUS_TOO_SMALL",
    "UNKNOWN",
    "GroupMetricFrame",
    "MetricEstimate",
    "SubgroupMetric",
    "SubgroupResult",
    "check_subgroups",
    "newcombe_interval",
    "wilson_interval",
]

#: The metric names under their older name here (one tuple: audit_tasks.group_metrics.METRIC_NAMES).
METRICS = METRIC_NAMES

STATUS_OK = "ok"
STATUS_GAP = "gap"
#: Status of a group whose metric is undefined or rests on fewer than min_group_size images.
STATUS_TOO_SMALL = "too small to judge"
CHECK_NAME = "subgroups"

GROUPS_COLUMNS = ("attribute", "group", "n", "metric", "value", "ci_low", "ci_high", "gap", "flagged", "status")
CONFUSION_COLUMNS = ("attribute", "group", "label", "prediction", "n")
OVERALL_COLUMNS = ("metric", "n", "support", "value", "ci_low", "ci_high")

# Error messages (tests assert them word for word); the engine's are in audit_tasks.group_metrics.
MSG_MISSING_COLUMN = "predictions table has no column {column!r} ({why}); its columns are: {columns}"


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
    check_metric(check.metric)
    attributes = tuple(dict.fromkeys(check.attributes))
    for column, why in [(label_column, "labels"), (prediction_column, "predictions")] + [
        (a, "attribute named in checks.subgroups.attributes") for a in attributes
    ]:
        if column not in frame.columns:
            raise ManifestError(
                MSG_MISSING_COLUMN.format(column=column, why=why, columns=", ".join(map(str, frame.columns)))
            )
    base = GroupMetricFrame(
        y_true=frame[label_column],
        y_pred=frame[prediction_column],
        sensitive_features=frame[list(attributes)],
        classes=classes,
        confidence=check.confidence,
        n_bootstrap=check.n_bootstrap,
    )
    if positive_class is not None and positive_class not in base.classes:
        raise ConfigError(MSG_BAD_POSITIVE.format(cls=positive_class, classes=", ".join(base.classes)))

    combos: list[tuple[str, ...]] = [(a,) for a in attributes]
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
    return SubgroupResult(
        groups=groups[list(GROUPS_COLUMNS)],
        confusion=pd.concat(confusion, ignore_index=True),
        overall=overall,
        gates=gates,
    )


def _metric_variants(
    metric: str, frame: GroupMetricFrame, positive_class: str | None
) -> list[tuple[str, str, str | None]]:
    """(name in tables, metric, positive class): one per class for per-class metrics of >2 classes."""
    if metric not in PER_CLASS_METRICS or not frame.classes:
        return [(metric, metric, None)]
    if positive_class is not None or len(frame.classes) <= 2:
        return [(metric, metric, frame.classes[frame.resolve_positive(metric, positive_class)])]
    return [(f"{metric}[{c}]", metric, c) for c in frame.classes]


def _judge(
    gmf: GroupMetricFrame, attribute: str, label: str, metric: str, positive: str | None, check: SubgroupCheck
) -> tuple[pd.DataFrame, list[GateResult]]:
    """Apply the gate rule to one attribute and metric."""
    table = gmf.by_group(metric, positive_class=positive)
    value = table["value"].to_numpy(float)
    support = table["support"].to_numpy(np.int64)
    judgeable = ~np.isnan(value) & (support >= check.min_group_size)
    m = int(judgeable.sum())
    lower_better = metric in LOWER_IS_BETTER
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
            adjusted = bonferroni_confidence(check.confidence, pairs)
            diffs = gmf.differences(metric, reference=gmf.groups[best], positive_class=positive, confidence=adjusted)
            gap_low = (-diffs["diff_high"] if lower_better else diffs["diff_low"]).to_numpy(float)
    flagged = judgeable & (gap > check.max_gap) & (gap_low > check.max_gap)
    status = np.where(~judgeable, STATUS_TOO_SMALL, np.where(flagged, STATUS_GAP, STATUS_OK))
    out = pd.DataFrame(
        {
            "attribute": pd.Series([attribute] * len(table), dtype=str),
            "group": table["group"].astype(str),
            "n": table["n"].astype(np.int64),
            "metric": pd.Series([label] * len(table), dtype=str),
            "value": value,
            "ci_low": table["ci_low"].to_numpy(float),
            "ci_high": table["ci_high"].to_numpy(float),
            "gap": gap,
            "flagged": flagged.astype(bool),
            "status": pd.Series(status, dtype=str),
        }
    )
    context = _Context(
        attribute=attribute,
        label=label,
        metric=metric,
        positive=positive,
        check=check,
        best=best,
        m=m,
        adjusted=adjusted,
        table=table,
    )
    gates = [
        GateResult(
            check=CHECK_NAME,
            subject=f"{attribute}={row.group}",
            metric=label,
            value=None if math.isnan(gap[i]) else float(gap[i]),
            threshold=float(check.max_gap),
            passed=not bool(flagged[i]),
            detail=_detail(context, i, bool(judgeable[i]), gap[i], gap_low[i]),
            judged=bool(judgeable[i]) and m >= 2,
        )  # a gap needs a second judgeable group
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
    head = (
        f"{ctx.label} {_fmt(row['value'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] "
        f"for {ctx.attribute}={row['group']}"
    )
    if i == ctx.best:
        return f"{head} is the best of {ctx.m} judgeable group(s) (n={n})"
    best = ctx.table.iloc[ctx.best]
    versus = f"{head} vs {_fmt(best['value'])} for {ctx.attribute}={best['group']}"
    conf = f"{_fmt(100 * ctx.check.confidence)}% confidence" + (
        f" adjusted for {ctx.m} groups" if ctx.check.multiple_comparisons == "bonferroni" else ""
    )
    if gap > ctx.check.max_gap and gap_low > ctx.check.max_gap:
        return f"{versus} (gap {_fmt(gap)} > {_fmt(ctx.check.max_gap)}, at least {_fmt(gap_low)} at {conf}, n={n})"
    if gap > ctx.check.max_gap:
        return (
            f"{versus} (gap {_fmt(gap)} > {_fmt(ctx.check.max_gap)} but not established: at least "
            f"{_fmt(gap_low)} at {conf}, n={n})"
        )
    return f"{versus} (gap {_fmt(gap)} <= {_fmt(ctx.check.max_gap)}, n={n})"


def _support_phrase(ctx: _Context, row: pd.Series) -> str:
    n, support, minimum = int(row["n"]), int(row["support"]), ctx.check.min_group_size
    if ctx.metric not in PER_CLASS_METRICS:
        if math.isnan(row["value"]) and n >= minimum:
            return f"{ctx.label} is undefined, n={n}"
        return f"n={n} < {minimum}"
    what = {"recall": "labelled", "tpr": "labelled", "precision": "predicted", "fpr": "not labelled"}[ctx.metric]
    return (
        f"{support} images {what} {ctx.positive!r} < {minimum}, n={n}"
        if support
        else f"no images {what} {ctx.positive!r}, n={n}"
    )


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
    for metric in METRIC_NAMES:
        for label, name, positive in _metric_variants(metric, base, positive_class):
            est = base.overall(name, positive_class=positive)
            rows.append(
                {
                    "metric": label,
                    "n": est.n,
                    "support": est.support,
                    "value": est.value,
                    "ci_low": est.ci_low,
                    "ci_high": est.ci_high,
                }
            )
    out = pd.DataFrame(rows, columns=list(OVERALL_COLUMNS))
    out["metric"] = out["metric"].astype(str)
    for column in ("n", "support"):
        out[column] = out[column].astype(np.int64)
    return out


def _empty_groups() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "attribute": pd.Series([], dtype=str),
            "group": pd.Series([], dtype=str),
            "n": pd.Series([], dtype=np.int64),
            "metric": pd.Series([], dtype=str),
            "value": pd.Series([], dtype=float),
            "ci_low": pd.Series([], dtype=float),
            "ci_high": pd.Series([], dtype=float),
            "gap": pd.Series([], dtype=float),
            "flagged": pd.Series([], dtype=bool),
            "status": pd.Series([], dtype=str),
        }
    )
