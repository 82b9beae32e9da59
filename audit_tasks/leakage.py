"""Prediction leakage in a multilabel model: does the presence of class a make the model predict class b?

A model trained where every laptop had a mouse beside it learns to say "mouse" whenever it sees a
laptop. For every ordered pair (a, b) of model classes that co-occur at least once in the true sets
(an image's tags among the model's classes), the check compares two false-positive rates of b:

* ``fp_rate_with_a``: among the images with a and without b (``n_a_without_b``), the share predicted b;
* ``fp_rate_without_a``: among the images with neither a nor b (``n_neither``), the share predicted b.

``gap`` is the first minus the second: how much more often b is predicted, wrongly, because a is there.

Gate rule (thresholds from ``checks.leakage``)
----------------------------------------------
1. A pair is *judged* when both sides have at least ``min_support`` images; other pairs are written with
   status ``too small to judge`` and a gate that passes with ``judged = false``.
2. A judged pair is flagged (status ``leak``, failing gate) when a one-sided test establishes
   ``gap > max_rate_gap``: the p-value is read off Newcombe's hybrid score interval for the difference
   of two independent proportions (stats.newcombe_exceedance_pvalue, the test the subgroup check uses),
   and ``multiple_comparisons`` adjusts it over every judged pair of the check (``holm``, default;
   ``bonferroni``; ``none``), at family-wise level ``1 - confidence``.
3. ``ci_low``/``ci_high`` are the Newcombe interval of the gap at the per-pair level of Bonferroni
   (two-sided ``1 - 2 (1 - confidence) / M`` over the M judged pairs; ``1 - 2 (1 - confidence)`` with
   ``none``): its low end is the one-sided lower bound that holds for every pair at once, so
   ``ci_low > max_rate_gap`` always flags. Holm's step-down rejects everything Bonferroni rejects and a
   little more when several pairs leak, so under ``holm`` a flagged pair's ``ci_low`` can sit just under
   the threshold; ``pvalue`` (adjusted) is then at most ``1 - confidence``.

Gates: one per pair, check ``leakage``, subject ``<a> -> <b>``, metric ``fp_rate_gap``, value = gap,
threshold = ``max_rate_gap``. Computation only: the stage (audit_tasks.pipeline.stage_leakage) reads the
images table and writes ``leakage.parquet``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audit_tasks.config import PAIR_ARROW, LeakageCheck
from audit_tasks.errors import ManifestError
from audit_tasks.gates import GateResult
from audit_tasks.group_metrics import class_indicator
from audit_tasks.stats import bonferroni_confidence, holm_adjust, newcombe_exceedance_pvalue, newcombe_interval
from audit_tasks.subgroups import STATUS_TOO_SMALL
from audit_tasks.subgroups import format_number as _fmt

__all__ = [
    "CHECK_NAME",
    "LEAKAGE_COLUMNS",
    "METRIC",
    "MSG_MISSING_COLUMN",
    "STATUS_LEAK",
    "STATUS_OK",
    "WORST_COLUMNS",
    "LeakageResult",
    "check_leakage",
    "pair_subject",
    "worst_images",
]

CHECK_NAME = "leakage"
METRIC = "fp_rate_gap"
STATUS_OK = "ok"
STATUS_LEAK = "leak"
#: The contract's columns first, in its order, then what this check adds.
LEAKAGE_COLUMNS = (
    "tag_a",
    "tag_b",
    "n_a_without_b",
    "fp_rate_with_a",
    "fp_rate_without_a",
    "gap",
    "ci_low",
    "ci_high",
    "flagged",
    "n_neither",
    "pvalue",
    "status",
)
WORST_COLUMNS = ("tag_a", "tag_b", "rank", "image_id", "position", "score_b")

# Error messages (tests assert them word for word).
MSG_MISSING_COLUMN = (
    "images table has no column {column!r} ({why}); the leakage check needs a multilabel run (model.task: multilabel)"
)


@dataclass(frozen=True)
class LeakageResult:
    """The leakage check's pair table (LEAKAGE_COLUMNS, one row per co-occurring ordered pair) and its gates."""

    pairs: pd.DataFrame
    gates: list[GateResult]

    @property
    def flagged(self) -> pd.DataFrame:
        return self.pairs[self.pairs["flagged"]]


def pair_subject(a: str, b: str) -> str:
    """The gate subject of a pair: ``laptop -> mouse``."""
    return f"{a} {PAIR_ARROW} {b}"


def check_leakage(
    frame: pd.DataFrame,
    *,
    classes: Sequence[str],
    check: LeakageCheck,
    truth_column: str = "tags",
    predicted_column: str = "predicted_labels",
) -> LeakageResult:
    """The pair table and gates of the rule above, from each image's true tags and predicted set.

    Raises ManifestError when a column is missing.
    """
    for column, why in ((truth_column, "the true classes"), (predicted_column, "the predicted classes")):
        if column not in frame.columns:
            raise ManifestError(MSG_MISSING_COLUMN.format(column=column, why=why))
    classes = [str(c) for c in classes]
    truth = class_indicator(frame[truth_column].tolist(), classes)
    predicted = class_indicator(frame[predicted_column].tolist(), classes)
    pairs = _pair_table(truth, predicted, classes, check)
    gates = [_gate(row, check) for row in pairs.itertuples(index=False)]
    return LeakageResult(pairs=pairs, gates=gates)


def _pair_table(truth: np.ndarray, predicted: np.ndarray, classes: list[str], check: LeakageCheck) -> pd.DataFrame:
    """Counts by four matrix products over the images (never a loop per image and pair), then the statistics."""
    t = truth.astype(np.int64)
    absent = 1 - t
    false_positive = (~truth & predicted).astype(np.int64)  # b predicted where b is not true
    both = t.T @ t  # [a, b]: images with a and b
    n1 = t.T @ absent  # a without b
    k1 = t.T @ false_positive  # a without b, b predicted
    n2 = absent.T @ absent  # neither a nor b
    k2 = absent.T @ false_positive  # neither, b predicted
    a_idx, b_idx = np.nonzero((both > 0) & ~np.eye(len(classes), dtype=bool))
    s1, t1 = k1[a_idx, b_idx], n1[a_idx, b_idx]
    s2, t2 = k2[a_idx, b_idx], n2[a_idx, b_idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate1, rate2 = s1 / t1, s2 / t2
    gap = rate1 - rate2
    judged = (t1 >= check.min_support) & (t2 >= check.min_support)
    family = int(judged.sum())
    alpha = 1 - check.confidence
    raw = np.where(judged, newcombe_exceedance_pvalue(s1, t1, s2, t2, check.max_rate_gap), np.nan)
    if check.multiple_comparisons == "holm":
        adjusted = holm_adjust(raw)
    elif check.multiple_comparisons == "bonferroni":
        adjusted = np.minimum(1.0, raw * family)
    else:
        adjusted = raw
    per_pair = 1 - 2 * alpha if check.multiple_comparisons == "none" or family <= 1 else None
    level = per_pair if per_pair is not None else bonferroni_confidence(1 - 2 * alpha, family)
    ci_low, ci_high = newcombe_interval(s1, t1, s2, t2, level)
    with np.errstate(invalid="ignore"):
        flagged = judged & (gap > check.max_rate_gap) & (adjusted <= alpha)
    status = np.where(~judged, STATUS_TOO_SMALL, np.where(flagged, STATUS_LEAK, STATUS_OK))
    return pd.DataFrame(
        {
            "tag_a": pd.Series([classes[i] for i in a_idx], dtype=str),
            "tag_b": pd.Series([classes[j] for j in b_idx], dtype=str),
            "n_a_without_b": t1.astype(np.int64),
            "n_neither": t2.astype(np.int64),
            "fp_rate_with_a": rate1.astype(float),
            "fp_rate_without_a": rate2.astype(float),
            "gap": gap.astype(float),
            "ci_low": np.asarray(ci_low, dtype=float),
            "ci_high": np.asarray(ci_high, dtype=float),
            "pvalue": np.asarray(adjusted, dtype=float),
            "flagged": flagged.astype(bool),
            "status": pd.Series(status, dtype=str),
        },
        columns=list(LEAKAGE_COLUMNS),
    )


def _gate(row: Any, check: LeakageCheck) -> GateResult:
    judged = row.status != STATUS_TOO_SMALL
    return GateResult(
        check=CHECK_NAME,
        subject=pair_subject(row.tag_a, row.tag_b),
        metric=METRIC,
        value=None if math.isnan(row.gap) else float(row.gap),
        threshold=float(check.max_rate_gap),
        passed=not row.flagged,
        detail=_detail(row, check),
        judged=judged,
    )


def _detail(row: Any, check: LeakageCheck) -> str:
    """The gate's sentence: both rates, the gap's interval, and why it passed or failed."""
    a, b = row.tag_a, row.tag_b
    if row.status == STATUS_TOO_SMALL:
        return (
            f"{STATUS_TOO_SMALL} ({row.n_a_without_b} images with {a} without {b}, "
            f"{row.n_neither} with neither; {check.min_support} needed on each side)"
        )
    head = (
        f"{b} predicted on {_pct(row.fp_rate_with_a)} of {row.n_a_without_b} images with {a} and without {b} vs "
        f"{_pct(row.fp_rate_without_a)} of {row.n_neither} with neither: gap {_fmt(row.gap)} "
        f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]"
    )
    test = f"one-sided p {row.pvalue:.2g} ({check.multiple_comparisons}) at {_fmt(100 * check.confidence)}% confidence"
    if row.flagged:
        return f"{head} > {_fmt(check.max_rate_gap)}, established: {test}"
    if row.gap > check.max_rate_gap:
        return f"{head} > {_fmt(check.max_rate_gap)} but not established: {test}"
    return f"{head} <= {_fmt(check.max_rate_gap)}"


def worst_images(
    frame: pd.DataFrame,
    pairs: pd.DataFrame,
    *,
    classes: Sequence[str],
    count: int,
    truth_column: str = "tags",
    scores_column: str = "scores",
) -> pd.DataFrame:
    """Per flagged pair, the `count` images with a and without b that score highest for b (ties by image id).

    Those are the images to look at: where the model most believes in a b that is not there. `position` is
    the row's position in `frame`.
    """
    flagged = pairs[pairs["flagged"]]
    if flagged.empty or count < 1 or frame.empty:
        return _empty_worst()
    classes = [str(c) for c in classes]
    index = {c: j for j, c in enumerate(classes)}
    truth = class_indicator(frame[truth_column].tolist(), classes)
    scores = np.stack([np.asarray(s, dtype=np.float64) for s in frame[scores_column]])
    ids = frame["image_id"].astype(str).to_numpy()
    parts = []
    for a, b in zip(flagged["tag_a"], flagged["tag_b"], strict=True):
        ja, jb = index[a], index[b]
        rows = np.flatnonzero(truth[:, ja] & ~truth[:, jb])
        order = np.lexsort((ids[rows], -scores[rows, jb]))[:count]
        picked = rows[order]
        parts.append(
            pd.DataFrame(
                {
                    "tag_a": a,
                    "tag_b": b,
                    "rank": np.arange(1, len(picked) + 1, dtype=np.int64),
                    "image_id": ids[picked],
                    "position": picked.astype(np.int64),
                    "score_b": scores[picked, jb],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)[list(WORST_COLUMNS)]


def _empty_worst() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tag_a": pd.Series([], dtype=str),
            "tag_b": pd.Series([], dtype=str),
            "rank": pd.Series([], dtype=np.int64),
            "image_id": pd.Series([], dtype=str),
            "position": pd.Series([], dtype=np.int64),
            "score_b": pd.Series([], dtype=float),
        }
    )


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.1f}%"
