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
3. A judgeable group is flagged (``status == "gap"``, failing gate) only when ``gap > max_gap`` AND a
   one-sided test establishes it: H0 "the group trails the reference by at most max_gap" against H1 "by
   more than max_gap", with the p-value read off the interval used to describe the gap (stats:
   the level at which the lower end of Newcombe's hybrid score interval for a difference of two
   independent proportions, built from the two Wilson intervals, equals ``max_gap``; for the macro
   metrics a normal test on gap / sqrt(se_ref^2 + se_group^2) with bootstrap standard errors).
4. Comparing every group with the best observed one is a many-comparison problem (intersections have
   dozens of groups, and the best of many small groups is lucky). The family is the whole check: every
   ordered (better, worse) pair of judgeable groups of every attribute, intersection and metric variant,
   ``M = sum m * (m - 1)``. Each flag rests on one of these pairs (the group against the best), and
   ``multiple_comparisons: holm`` (default) runs Holm's step-down over the family's p-values (only the
   comparisons with the best are computed; Holm on a subset of a family of M, with M in the
   denominators, stays family-wise valid: stats.holm_adjust). So some flag of the check is false (its
   group does not truly trail some group by more than ``max_gap``) at most ``1 - confidence`` of the time,
   whatever the number of groups and attributes, up to the approximate coverage of the score intervals.
   Holm rejects everything Bonferroni (``bonferroni``: each p-value times M) rejects, and more when
   several gaps are real. ``none`` tests each comparison at ``1 - confidence`` alone: more real gaps on
   small groups are caught, at the price of false alarms that grow with the number of groups.
   bench/false_alarms.py measures the false-alarm rate and the power by simulation.
5. Intersections (``intersections: true``): a flagged intersection group is a failure of its own only
   when the flagged groups it belongs to do not explain its gap: it must be worse than each flagged
   parent (every group of a sub-combination of its attributes, dark&day -> fur_tone=dark, lighting=day)
   by more than ``max_gap``, established one-sided at the Bonferroni share ``(1 - confidence) / M``.
   Otherwise its row has ``flagged`` false and status ``explained by fur_tone=dark``, its gate passes,
   and the parent's gate detail ends with ``also low: dark&day, dark&night``. An intersection flagged
   while no parent is (only dark&female low) stays a failure. ``intersections: report_all`` keeps every
   flagged intersection a failure of its own; ``false`` judges single attributes only.

So a real gap with enough images fails; the same gap on a dozen images is too small to judge; and an
observed gap just above ``max_gap``, or a chance fluctuation between big groups, passes (its gate detail
says the gap is not established).

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
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from audit_tasks.config import SubgroupCheck
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.gates import GateResult
from audit_tasks.group_metrics import (
    BOOTSTRAP_METRICS,
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
    MULTILABEL_ONLY_METRICS,
    OVERALL_ATTRIBUTE,
    OVERALL_GROUP,
    PER_CLASS_METRICS,
    SEPARATOR,
    UNKNOWN,
    GroupMetricFrame,
    MetricEstimate,
    MultilabelVariant,
    SubgroupMetric,
    check_metric,
    class_indicator,
    multilabel_variants,
)
from audit_tasks.stats import (
    holm_adjust,
    newcombe_exceedance_pvalue,
    newcombe_interval,
    normal_exceedance_pvalue,
    wilson_interval,
)

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
    "MSG_MULTILABEL_ONLY",
    "MSG_NEEDS_POSITIVE",
    "MSG_NOT_A_CLASS",
    "MSG_UNKNOWN_FEATURE",
    "MSG_UNKNOWN_GROUP",
    "MSG_UNKNOWN_METRIC",
    "OVERALL_ATTRIBUTE",
    "OVERALL_COLUMNS",
    "OVERALL_GROUP",
    "SEPARATOR",
    "STATUS_EXPLAINED",
    "STATUS_GAP",
    "STATUS_OK",
    "STATUS_TOO_SMALL",
    "UNKNOWN",
    "GroupMetricFrame",
    "MetricEstimate",
    "SubgroupMetric",
    "SubgroupResult",
    "check_subgroups",
    "check_subgroups_multilabel",
    "format_number",
    "newcombe_interval",
    "wilson_interval",
]

#: The metric names under their older name here (one tuple: audit_tasks.group_metrics.METRIC_NAMES).
METRICS = METRIC_NAMES

STATUS_OK = "ok"
STATUS_GAP = "gap"
#: Status of a group whose metric is undefined or rests on fewer than min_group_size images.
STATUS_TOO_SMALL = "too small to judge"
#: Status of a flagged intersection group whose gap its flagged parent groups explain (then the parents).
STATUS_EXPLAINED = "explained by"
#: A group over the gap in a family that is reported, not gated (the image properties' bins by default).
STATUS_GAP_REPORTED = "gap (reported, not gated)"
CHECK_NAME = "subgroups"

GROUPS_COLUMNS = ("attribute", "group", "n", "metric", "value", "ci_low", "ci_high", "gap", "flagged", "status")
CONFUSION_COLUMNS = ("attribute", "group", "label", "prediction", "n")
OVERALL_COLUMNS = ("metric", "n", "support", "value", "ci_low", "ci_high")

# Error messages (tests assert them word for word); the engine's are in audit_tasks.group_metrics.
MSG_MISSING_COLUMN = "predictions table has no column {column!r} ({why}); its columns are: {columns}"
MSG_MULTILABEL_ONLY = "subgroup metric {metric!r} needs a multilabel model (model.task: multilabel)"


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


def _require_columns(frame: pd.DataFrame, needed: list[tuple[str, str]], attributes: Sequence[str]) -> None:
    """A ManifestError naming the first missing column (truth, prediction, then the attributes) and why."""
    for column, why in needed + [(a, "attribute named in checks.subgroups.attributes") for a in attributes]:
        if column not in frame.columns:
            raise ManifestError(
                MSG_MISSING_COLUMN.format(column=column, why=why, columns=", ".join(map(str, frame.columns)))
            )


def merge_subgroup_results(main: SubgroupResult, extra: SubgroupResult, *, gated: bool = True) -> SubgroupResult:
    """The main check's result with another family's groups and gates added (its Holm family stays its
    own); the confusion matrix and the overall metrics are the main check's, over the same images.

    Not `gated`: the family's groups are listed (a gap marked STATUS_GAP_REPORTED, never flagged) and its
    gates dropped."""
    extra_groups = extra.groups
    if not gated and len(extra_groups):
        over = extra_groups["status"] == STATUS_GAP
        extra_groups = extra_groups.assign(
            flagged=False, status=extra_groups["status"].where(~over, STATUS_GAP_REPORTED)
        )
    groups = pd.concat([main.groups, extra_groups], ignore_index=True) if len(extra_groups) else main.groups
    return replace(main, groups=groups, gates=[*main.gates, *(extra.gates if gated else [])])


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
    if check.metric in MULTILABEL_ONLY_METRICS:
        raise ConfigError(MSG_MULTILABEL_ONLY.format(metric=check.metric))
    attributes = tuple(dict.fromkeys(check.attributes))
    _require_columns(frame, [(label_column, "labels"), (prediction_column, "predictions")], attributes)
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

    combos = _combos(attributes, check)
    confusion = [_confusion_rows(base.marginal(()), OVERALL_ATTRIBUTE)]
    confusion += [_confusion_rows(base.marginal(combo), SEPARATOR.join(combo)) for combo in combos]
    variants = [
        MultilabelVariant(label, metric, positive, base)
        for label, metric, positive in _metric_variants(check.metric, base, positive_class)
    ]
    overall = _overall_table(base, positive_class)
    return _judge(variants, combos, check, pd.concat(confusion, ignore_index=True), overall)


def check_subgroups_multilabel(
    frame: pd.DataFrame,
    *,
    check: SubgroupCheck,
    classes: Sequence[str],
    truth_column: str = "tags",
    predicted_column: str = "predicted_labels",
    positive_class: str | None = None,
) -> SubgroupResult:
    """The subgroup check of a multilabel model: the same gate rule over the multilabel metrics.

    The true set of an image is its tags among `classes`; per-class metrics (recall, precision, f1) are judged
    for every class (or only `positive_class`), named ``recall[<class>]``; ``exact_match`` (``accuracy``) and
    ``hamming_accuracy`` once (group_metrics.multilabel_variants builds their frames). F1 is no proportion:
    its intervals come from the bootstrap, as the macro metrics'. There is no confusion matrix of sets, so
    `confusion` is empty. Raises ManifestError for a missing column and ConfigError for a metric a multilabel
    model does not have.
    """
    attributes = tuple(dict.fromkeys(check.attributes))
    _require_columns(frame, [(truth_column, "true classes"), (predicted_column, "predicted classes")], attributes)
    classes = [str(c) for c in classes]
    truth = class_indicator(frame[truth_column].tolist(), classes)
    predicted = class_indicator(frame[predicted_column].tolist(), classes)
    variants = multilabel_variants(
        truth,
        predicted,
        classes,
        check.metric,
        sensitive_features=frame[list(attributes)].reset_index(drop=True),
        positive_class=positive_class,
        confidence=check.confidence,
        n_bootstrap=check.n_bootstrap,
    )
    overall = _variants_overall(variants)
    return _judge(variants, _combos(attributes, check), check, _empty_confusion(), overall)


def _combos(attributes: tuple[str, ...], check: SubgroupCheck) -> list[tuple[str, ...]]:
    """Every attribute alone and, with `intersections`, every combination of 2..k of them."""
    combos: list[tuple[str, ...]] = [(a,) for a in attributes]
    if check.intersections and len(attributes) >= 2:
        combos += [c for r in range(2, len(attributes) + 1) for c in itertools.combinations(attributes, r)]
    return combos


def _judge(
    variants: list[MultilabelVariant],
    combos: list[tuple[str, ...]],
    check: SubgroupCheck,
    confusion: pd.DataFrame,
    overall: pd.DataFrame,
) -> SubgroupResult:
    """The gate rule over every attribute combination and metric variant, as one family."""
    units = [
        _measure(v.frame.marginal(combo), combo, v.label, v.metric, v.positive, check)
        for combo in combos
        for v in variants
    ]
    _decide(units, check)
    if check.intersections is True:
        _explain(units, check)
    group_tables = [unit.frame() for unit in units]
    gates = [gate for unit in units for gate in unit.gates()]
    groups = pd.concat(group_tables, ignore_index=True) if group_tables else _empty_groups()
    return SubgroupResult(groups=groups[list(GROUPS_COLUMNS)], confusion=confusion, overall=overall, gates=gates)


def _metric_variants(
    metric: str, frame: GroupMetricFrame, positive_class: str | None
) -> list[tuple[str, str, str | None]]:
    """(name in tables, metric, positive class): one per class for per-class metrics of >2 classes."""
    if metric not in PER_CLASS_METRICS or not frame.classes:
        return [(metric, metric, None)]
    if positive_class is not None or len(frame.classes) <= 2:
        return [(metric, metric, frame.classes[frame.resolve_positive(metric, positive_class)])]
    return [(f"{metric}[{c}]", metric, c) for c in frame.classes]


@dataclass
class _Unit:
    """One attribute (or intersection) and metric: its groups, gaps, p-values and, once decided, flags."""

    combo: tuple[str, ...]
    label: str
    metric: str
    positive: str | None
    check: SubgroupCheck
    gmf: GroupMetricFrame
    table: pd.DataFrame
    judgeable: np.ndarray
    m: int
    best: int
    gap: np.ndarray
    pvalue: np.ndarray  # one-sided, vs the best group; NaN for the best and the unjudgeable
    adjusted: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flagged: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    family: int = 1
    explained_by: dict[int, list[str]] = field(default_factory=dict)
    also_low: dict[int, list[str]] = field(default_factory=dict)

    @property
    def attribute(self) -> str:
        return SEPARATOR.join(self.combo)

    def frame(self) -> pd.DataFrame:
        status = np.where(~self.judgeable, STATUS_TOO_SMALL, np.where(self.flagged, STATUS_GAP, STATUS_OK)).astype(
            object
        )
        for i, parents in self.explained_by.items():
            status[i] = f"{STATUS_EXPLAINED} {', '.join(parents)}"
        n = len(self.table)
        return pd.DataFrame(
            {
                "attribute": pd.Series([self.attribute] * n, dtype=str),
                "group": self.table["group"].astype(str),
                "n": self.table["n"].astype(np.int64),
                "metric": pd.Series([self.label] * n, dtype=str),
                "value": self.table["value"].to_numpy(float),
                "ci_low": self.table["ci_low"].to_numpy(float),
                "ci_high": self.table["ci_high"].to_numpy(float),
                "gap": self.gap,
                "flagged": self.flagged.astype(bool),
                "status": pd.Series(status, dtype=str),
            }
        )

    def gates(self) -> list[GateResult]:
        return [
            GateResult(
                check=CHECK_NAME,
                subject=f"{self.attribute}={row.group}",
                metric=self.label,
                value=None if math.isnan(self.gap[i]) else float(self.gap[i]),
                threshold=float(self.check.max_gap),
                passed=not bool(self.flagged[i]),
                detail=_detail(self, i),
                judged=bool(self.judgeable[i]) and self.m >= 2,  # a gap needs a second judgeable group
            )
            for i, row in enumerate(self.table.itertuples(index=False))
        ]


def _proportion_or_normal(gmf: GroupMetricFrame, metric: str, positive: str | None, table: pd.DataFrame) -> tuple:
    """What a gap test needs per group: (successes, trials) of a proportion, else (value, std_error)."""
    if metric in BOOTSTRAP_METRICS:
        return table["value"].to_numpy(float), table["std_error"].to_numpy(float)
    return gmf.proportion_counts(metric, positive_class=positive)


def _worse_pvalue(metric: str, ref: tuple, ref_index: int, grp: tuple, margin: float) -> np.ndarray:
    """One-sided p-values of "each group of `grp` is worse than group `ref_index` of `ref` by more than margin".

    Proportions: Newcombe's score interval inverted (stats.newcombe_exceedance_pvalue); the macro metrics:
    a normal test on the bootstrap standard errors (stats.normal_exceedance_pvalue).
    """
    if metric in BOOTSTRAP_METRICS:
        value, se = grp
        return normal_exceedance_pvalue(ref[0][ref_index] - value, np.hypot(ref[1][ref_index], se), margin)
    s, t = grp
    if metric in LOWER_IS_BETTER:  # worse = higher: group - reference
        return newcombe_exceedance_pvalue(s, t, ref[0][ref_index], ref[1][ref_index], margin)
    return newcombe_exceedance_pvalue(ref[0][ref_index], ref[1][ref_index], s, t, margin)


def _measure(
    gmf: GroupMetricFrame, combo: tuple[str, ...], label: str, metric: str, positive: str | None, check: SubgroupCheck
) -> _Unit:
    """Steps 1-2 of the gate rule for one attribute and metric, and each group's p-value against the best."""
    table = gmf.by_group(metric, positive_class=positive)
    value = table["value"].to_numpy(float)
    support = table["support"].to_numpy(np.int64)
    judgeable = ~np.isnan(value) & (support >= check.min_group_size)
    m = int(judgeable.sum())
    lower_better = metric in LOWER_IS_BETTER
    gap = np.full(len(table), np.nan)
    pvalue = np.full(len(table), np.nan)
    best = -1
    if m:
        candidates = np.where(judgeable, -value if lower_better else value, -np.inf)
        best = int(np.argmax(candidates))
        gap = (value - value[best]) if lower_better else (value[best] - value)
        if m >= 2:
            stats_ = _proportion_or_normal(gmf, metric, positive, table)
            pvalue = np.where(judgeable, _worse_pvalue(metric, stats_, best, stats_, check.max_gap), np.nan)
            pvalue[best] = np.nan
    return _Unit(combo, label, metric, positive, check, gmf, table, judgeable, m, best, gap, pvalue)


def _decide(units: list[_Unit], check: SubgroupCheck) -> None:
    """Step 3: one family over the whole check, Holm (or Bonferroni) over every ordered pair of groups."""
    alpha = 1 - check.confidence
    family = sum(u.m * (u.m - 1) for u in units)  # every (better, worse) ordered pair of judgeable groups
    pvalues = np.concatenate([u.pvalue for u in units]) if units else np.zeros(0)
    if check.multiple_comparisons == "holm" and family:
        adjusted = holm_adjust(pvalues, family)
    elif check.multiple_comparisons == "bonferroni":
        adjusted = np.minimum(1.0, pvalues * family)
    else:
        adjusted = pvalues
    start = 0
    for u in units:
        u.adjusted = adjusted[start : start + len(u.pvalue)]
        start += len(u.pvalue)
        u.family = max(family, 1)
        with np.errstate(invalid="ignore"):
            u.flagged = u.judgeable & (u.gap > check.max_gap) & (u.adjusted <= alpha)


def _explain(units: list[_Unit], check: SubgroupCheck) -> None:
    """Step 4: a flagged intersection group is its own failure only when its flagged parents do not explain it.

    Its parents are the groups of every sub-combination of its attributes it belongs to (dark&day ->
    fur_tone=dark, lighting=day). It stays failed only when it is worse than each flagged parent by more than
    max_gap, established one-sided at the check's Bonferroni share (1 - confidence) / family (the intersection
    is part of its parent, so the independent-samples test is conservative); otherwise it is listed under
    each parent it does not beat ("also low: ...") and its own gate passes.
    """
    alpha = 1 - check.confidence
    by_key = {(u.combo, u.label): u for u in units}
    for u in sorted(units, key=lambda x: len(x.combo)):
        if len(u.combo) < 2 or not u.flagged.any():
            continue
        keys = u.gmf.group_keys
        child = _proportion_or_normal(u.gmf, u.metric, u.positive, u.table)
        level = alpha if check.multiple_comparisons == "none" else alpha / u.family
        for i in np.flatnonzero(u.flagged):
            explainers: list[tuple[_Unit, int]] = []
            for r in range(1, len(u.combo)):
                for sub in itertools.combinations(u.combo, r):
                    parent = by_key[(sub, u.label)]
                    pkeys = parent.gmf.group_keys
                    mask = np.ones(len(pkeys), dtype=bool)
                    for name in sub:
                        mask &= (pkeys[name] == keys.loc[i, name]).to_numpy()
                    j = int(np.flatnonzero(mask)[0])
                    if not parent.flagged[j]:
                        continue
                    ref = _proportion_or_normal(parent.gmf, u.metric, u.positive, parent.table)
                    single = tuple(np.asarray(x)[i : i + 1] for x in child)
                    p = float(_worse_pvalue(u.metric, ref, j, single, check.max_gap)[0])
                    worse = float(u.table["value"].iloc[i] - parent.table["value"].iloc[j])  # child - parent
                    parent_gap = worse if u.metric in LOWER_IS_BETTER else -worse  # how much worse than the parent
                    if not (parent_gap > check.max_gap and p <= level):
                        explainers.append((parent, j))
            if explainers:
                u.flagged[i] = False
                u.explained_by[int(i)] = [f"{p.attribute}={p.table['group'].iloc[j]}" for p, j in explainers]
                for parent, j in explainers:
                    parent.also_low.setdefault(j, []).append(str(u.table["group"].iloc[i]))


def _detail(u: _Unit, i: int) -> str:
    """The gate's sentence: what was measured, against what, and why it passed or failed."""
    row = u.table.iloc[i]
    n = int(row["n"])
    check = u.check
    if not u.judgeable[i]:
        return f"{STATUS_TOO_SMALL} ({_support_phrase(u, row)})"
    interval = f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
    head = f"{u.label} {_fmt(row['value'])} {interval} for {u.attribute}={row['group']}"
    also = f"; also low: {', '.join(u.also_low[i])}" if i in u.also_low else ""
    if i == u.best:
        return f"{head} is the best of {u.m} judgeable group(s) (n={n})"
    best = u.table.iloc[u.best]
    versus = f"{head} vs {_fmt(best['value'])} for {u.attribute}={best['group']}"
    conf = f"{_fmt(100 * check.confidence)}% confidence" + (
        f" adjusted for {u.m} groups ({check.multiple_comparisons} over {u.family} comparisons of the check)"
        if check.multiple_comparisons != "none"
        else ""
    )
    gap, p = u.gap[i], u.adjusted[i]
    evidence = f"one-sided p {_fmt_p(p)} at {conf}, n={n}"
    if i in u.explained_by:
        return (
            f"{versus} (gap {_fmt(gap)} > {_fmt(check.max_gap)}, {evidence}) "
            f"{STATUS_EXPLAINED} {', '.join(u.explained_by[i])}: not worse than it by more than {_fmt(check.max_gap)}"
        )
    if u.flagged[i]:
        return f"{versus} (gap {_fmt(gap)} > {_fmt(check.max_gap)}, established: {evidence}){also}"
    if gap > check.max_gap:
        return f"{versus} (gap {_fmt(gap)} > {_fmt(check.max_gap)} but not established: {evidence}){also}"
    return f"{versus} (gap {_fmt(gap)} <= {_fmt(check.max_gap)}, n={n})"


def _fmt_p(p: float) -> str:
    return "nan" if math.isnan(p) else f"{p:.2g}"


def _support_phrase(ctx: _Unit, row: pd.Series) -> str:
    n, support, minimum = int(row["n"]), int(row["support"]), ctx.check.min_group_size
    if ctx.metric not in PER_CLASS_METRICS:
        if math.isnan(row["value"]) and n >= minimum:
            return f"{ctx.label} is undefined, n={n}"
        return f"n={n} < {minimum}"
    what = {
        "recall": "labelled",
        "tpr": "labelled",
        "precision": "predicted",
        "fpr": "not labelled",
        "f1": "labelled or predicted",
    }[ctx.metric]
    return (
        f"{support} images {what} {ctx.positive!r} < {minimum}, n={n}"
        if support
        else f"no images {what} {ctx.positive!r}, n={n}"
    )


def format_number(x: float) -> str:
    """Up to three decimals, trailing zeros dropped (0.950 -> 0.95, 95.000 -> 95): how gate details print numbers."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    text = f"{float(x):.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


_fmt = format_number


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


def _variants_overall(variants: list[MultilabelVariant]) -> pd.DataFrame:
    """One row per judged variant over all images (a multilabel run's `overall`)."""
    rows = []
    for v in variants:
        est = v.frame.overall(v.metric, positive_class=v.positive)
        rows.append(
            {"metric": v.label, "n": est.n, "support": est.support, "value": est.value}
            | {"ci_low": est.ci_low, "ci_high": est.ci_high}
        )
    out = pd.DataFrame(rows, columns=list(OVERALL_COLUMNS))
    out["metric"] = out["metric"].astype(str)
    for column in ("n", "support"):
        out[column] = out[column].astype(np.int64)
    return out


def _empty_confusion() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=np.int64 if name == "n" else str) for name in CONFUSION_COLUMNS})


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
