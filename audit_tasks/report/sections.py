"""What each section of the report shows, chosen from a loaded run: frozen view models, no markup.

Every function here is pure apart from rendering the sampled thumbnails: it decides which rows, images
and numbers a section shows, in which order, and formats the numbers as text; `templates/report.html.j2`
turns the views into HTML (escaping all of it). Galleries are sampled with fixed budgets so the page stays
light for any number of images, while the Parquet tables beside it keep every row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pandas as pd

from audit_tasks import history
from audit_tasks.group_metrics import OVERALL_ATTRIBUTE
from audit_tasks.report.charts import ClassBars, GroupPoint, Heatmap, SubgroupChart, class_bars, heatmap, subgroup_chart
from audit_tasks.report.data import RunDigest, RunTables, SavedValidation, is_missing, read_cams
from audit_tasks.report.format import clip, count, num, pct
from audit_tasks.report.gallery import CONFUSION_THUMBS, Figure, Thumbs, confusion_plan, saliency_plan
from audit_tasks.report.images import CORE_COLOUR, SPURIOUS_COLOUR, render_overlay
from audit_tasks.subgroups import STATUS_GAP, STATUS_TOO_SMALL

#: Passing gates listed on the page (failing gates are always all listed).
PASSED_GATES_ROWS = 200
FLAGGED_PAIRS_ROWS = 500
HEATMAP_TAGS = 12
#: Failing gates spelled out under the verdict; changed gate names listed since the previous run.
VERDICT_LINES = 12
CHANGED_GATES = 50
#: Above this many classes the confusion grid becomes a list of the most frequent confusions.
MATRIX_MAX_CLASSES = 60
MATRIX_LIST_ROWS = 300
_VERDICT_WORDS = {"passed": "PASSED", "failed": "FAILED", "inconclusive": "INCONCLUSIVE", None: "NO VERDICT"}
_GATE_COLUMNS = ["check", "subject", "metric", "value", "threshold", "passed", "detail"]


# ---------------------------------------------------------------------------------------------
# Small pieces the templates draw
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Badge:
    """A status mark; `kind` is its CSS class (pass, fail, skip, small), or "" for plain text."""

    kind: str
    text: str


def _badge(passed: bool | None, *, yes: str = "pass", no: str = "FAIL") -> Badge:
    if passed is None:
        return Badge("skip", "n/a")
    return Badge("pass", yes) if passed else Badge("fail", no)


@dataclass(frozen=True)
class Delta:
    """A change since the previous run; `kind` is its CSS class: up (worse), down (better), note, or ""."""

    text: str
    kind: str


def _delta(now: Any, before: Any, *, as_pct: bool = False, better: str | None = "lower") -> Delta | None:
    """The change from `before` to `now`, marked worse or better (`better`: lower, higher or None)."""
    if is_missing(now) or is_missing(before):
        return None
    try:
        d = float(now) - float(before)
    except (TypeError, ValueError):
        return None
    if abs(d) < 1e-12:
        return Delta("no change", "note")
    text = f"{d * 100:+.1f} pts" if as_pct else (f"{d:+,.0f}" if float(d).is_integer() else f"{d:+.3f}")
    if better is None:
        return Delta(text, "")
    worse = d > 0 if better == "lower" else d < 0
    return Delta(text, "up" if worse else "down")


@dataclass(frozen=True)
class GatesLine:
    """The one-line gate summary at the top of a check's section."""

    mark: Badge
    total: int


def _gates_for(run: RunTables, check: str) -> pd.DataFrame:
    if run.gates is None:
        return pd.DataFrame(columns=_GATE_COLUMNS)
    return run.gates[run.gates["check"] == check]


def _gates_line(run: RunTables, check: str) -> GatesLine | None:
    gates = _gates_for(run, check)
    if not len(gates):
        return None
    failed = int((~gates["passed"].astype(bool)).sum())
    return GatesLine(_badge(failed == 0, yes="all passed", no=f"{failed} failed"), len(gates))


def _threshold(run: RunTables, check: str, hint: str) -> float | None:
    gates = _gates_for(run, check)
    for prefer in (True, False):
        for g in gates.itertuples(index=False):
            if is_missing(g.threshold):
                continue
            if not prefer or hint in str(g.metric):
                return float(g.threshold)
    return None


def _skip_message(run: RunTables, check: str, table_name: str) -> str:
    status = run.check_status(check)
    if status == "skipped" or status is None:
        return f"check not configured / skipped (no {table_name} in this run)"
    return f"the check is recorded as {status}, but {table_name} is missing from the run folder"


# ---------------------------------------------------------------------------------------------
# Verdict
# ---------------------------------------------------------------------------------------------


def _gate_name(row: Any) -> str:
    return f"{row.check}/{row.subject}/{row.metric}"


def _gate_rows(gates: pd.DataFrame) -> list[Any]:
    """Failing gates first, then warned and waived ones, then by check, subject and metric."""
    frame = gates.copy()
    frame["_failed"] = ~frame["passed"].astype(bool)
    frame["_noted"] = frame["status"].isin(["warn", "waived"]) if "status" in frame.columns else False
    frame = frame.sort_values(
        ["_failed", "_noted", "check", "subject", "metric"], ascending=[False, False, True, True, True], kind="stable"
    )
    return list(frame.itertuples(index=False))


def _verdict_status(run: RunTables) -> str | None:
    """passed | failed | inconclusive from summary.json (else from the gates), or None without either."""
    summary = run.summary or {}
    if summary.get("verdict") in ("passed", "failed", "inconclusive"):
        return str(summary["verdict"])
    if summary.get("passed") is not None:
        return "passed" if summary["passed"] is True else "failed"
    if run.gates is not None:
        return "passed" if bool(run.gates["passed"].astype(bool).all()) else "failed"
    return None


@dataclass(frozen=True)
class VerdictLine:
    """A failing gate under the verdict: with its value against the threshold, or only its name."""

    name: str
    value: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    status: str  # CSS class: passed | failed | unknown
    word: str
    run_id: str
    created_at: Any
    config: Any
    why: str
    lines: tuple[VerdictLine, ...]
    more_failed: int


def verdict(run: RunTables) -> Verdict:
    status = _verdict_status(run)
    passed = None if status is None else status == "passed"
    lines: list[VerdictLine] = []
    more = 0
    if status == "inconclusive":
        reason = str((run.summary or {}).get("inconclusive_reason") or "nothing was judged")
        why = f"No verdict: {reason}. A run without evidence is not a clean audit, so it does not start retraining."
    elif run.gates is not None:
        failed = [g for g in _gate_rows(run.gates) if not bool(g.passed)]
        total = len(run.gates)
        if total == 0:
            why = "No gate was evaluated (every check skipped)."
        elif passed:
            why = f"All {total:,} gates passed."
        else:
            why = f"{len(failed):,} of {total:,} gates failed."
        lines = [
            VerdictLine(
                _gate_name(g),
                f"{num(g.value)} vs threshold {num(g.threshold)}",
                g.detail if isinstance(g.detail, str) else "",
            )
            for g in failed[:VERDICT_LINES]
        ]
        more = max(0, len(failed) - VERDICT_LINES)
    elif run.summary is not None:
        names = [str(n) for n in run.summary.get("failed_gates") or []]
        why = "Every gate passed." if passed else f"{len(names):,} gate(s) failed."
        lines = [VerdictLine(n) for n in names[:VERDICT_LINES]]
    else:
        why = "No gates.parquet or summary.json in this run folder: the gate stage did not finish."
    facts = run.summary or {}
    return Verdict(
        status=status if status in ("passed", "failed") else "unknown",
        word=_VERDICT_WORDS[status],
        run_id=run.run_id,
        created_at=facts.get("created_at") or None,
        config=facts.get("config") or None,
        why=why,
        lines=tuple(lines),
        more_failed=more,
    )


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    key: str
    value: str
    delta: Delta | None


@dataclass(frozen=True)
class Chip:
    check: str
    status: Any
    ran: bool


@dataclass(frozen=True)
class HeadlineRow:
    label: str
    before: str
    now: str
    change: Delta | None


@dataclass(frozen=True)
class Change:
    """The comparison with the previous run."""

    run_id: str
    created_at: str | None
    before: str
    now: str
    newly_failing: tuple[str, ...]
    newly_failing_more: int
    now_passing: tuple[str, ...]
    now_passing_more: int
    headline: tuple[HeadlineRow, ...]


@dataclass(frozen=True)
class GateRow:
    mark: Badge
    check: Any
    subject: Any
    metric: Any
    value: str
    threshold: str
    detail: str
    baseline: str = ""  # the baseline run's value of this gate ("" without a baseline)
    waiver: str = ""  # owner, reason, expiry of the waiver naming this gate


#: A gate's status (gates.parquet `status`, audit_tasks.policy) as a badge.
_STATUS_BADGES = {
    "pass": Badge("pass", "pass"),
    "fail": Badge("fail", "FAIL"),
    "regressed": Badge("fail", "REGRESSED"),
    "waived": Badge("skip", "waived"),
    "warn": Badge("skip", "warn"),
}


@dataclass(frozen=True)
class WaiverRow:
    gate: str
    owner: str
    reason: str
    expires: str
    mark: Badge  # in force, stale (its gate passes), expired, or no gate this run


@dataclass(frozen=True)
class PolicyView:
    """The "Policy in force" block: the baseline, the allowed increases, the warn list, the waivers."""

    baseline_run: str | None
    baseline_date: str | None
    baseline_reason: str
    max_increase: tuple[tuple[str, str], ...]
    warn: tuple[str, ...]
    waivers: tuple[WaiverRow, ...]


def policy_view(run: RunTables) -> PolicyView | None:
    """The policy the gate stage applied, from summary.json (None for a run recorded before policies)."""
    summary = run.summary or {}
    policy = summary.get("policy")
    if not isinstance(policy, Mapping):
        return None
    found = summary.get("baseline")
    baseline: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    stale = set(summary.get("stale_waivers") or [])
    expired = set(summary.get("expired_waivers") or [])
    unmatched = set(summary.get("unmatched_waivers") or [])
    waivers = []
    for w in policy.get("waivers") or []:
        name = str(w.get("gate", ""))
        if name in expired:
            mark = Badge("fail", "expired")
        elif name in stale:
            mark = Badge("skip", "stale: its gate passes")
        elif name in unmatched:
            mark = Badge("skip", "no such gate this run")
        else:
            mark = Badge("pass", "in force")
        waivers.append(WaiverRow(name, str(w.get("owner", "")), str(w.get("reason", "")), str(w.get("expires")), mark))
    increases = policy.get("max_increase") or {}
    return PolicyView(
        baseline_run=str(baseline["run_id"]) if baseline.get("run_id") else None,
        baseline_date=str(baseline.get("created_at") or "") or None,
        baseline_reason=str(summary.get("baseline_reason") or ""),
        max_increase=tuple((str(k), num(v)) for k, v in sorted(increases.items())),
        warn=tuple(str(w) for w in policy.get("warn") or []),
        waivers=tuple(waivers),
    )


@dataclass(frozen=True)
class Summary:
    cards: tuple[Card, ...]
    chips: tuple[Chip, ...]
    change: Change | None  # None: no previous run
    gates: tuple[GateRow, ...] | None  # None: no gates.parquet
    hidden_gates: int
    policy: PolicyView | None = None  # None: a run recorded before policies
    no_previous: str = ""  # why no earlier run of this audit is compared (its baseline reason), when none is


_HEADLINE_LABELS = {
    "max_flagged_fraction": ("worst class flagged fraction (saliency)", True),
    "n_flagged_classes": ("classes flagged (saliency)", False),
    "worst_subgroup_gap": ("worst subgroup gap", True),
    "n_flagged_groups": ("groups over the gap (subgroups)", False),
    "n_flagged_pairs": ("flagged pairs (co-occurrence)", False),
}


def _counts(run: RunTables) -> dict[str, Any]:
    counts = dict((run.summary or {}).get("counts") or {})
    if "audited" not in counts and run.images is not None:
        counts["audited"] = len(run.images)
    if "quarantined" not in counts and run.quarantine_head is not None:
        counts["quarantined"] = run.quarantine_total
    return counts


def summary(run: RunTables, previous: RunDigest | None, headline: dict[str, Any]) -> Summary:
    counts = _counts(run)
    prev_counts = previous.counts if previous else {}
    first = ("ingested", "quarantined", "audited")
    cards = tuple(
        Card(
            key.replace("_", " "),
            count(counts.get(key)),
            _delta(counts.get(key), prev_counts.get(key), better="lower" if key == "quarantined" else None)
            if previous
            else None,
        )
        for key in [*first, *sorted(k for k in counts if k not in first)]
        if key in counts
    )
    checks = (run.summary or {}).get("checks") or {}
    chips = (
        tuple(Chip(str(k), v, str(v) == "ran") for k, v in sorted(checks.items()))
        if isinstance(checks, Mapping)
        else ()
    )
    gates, hidden = _gate_table(run.gates) if run.gates is not None else (None, 0)
    no_previous = "" if previous is not None else str((run.summary or {}).get("baseline_reason") or "")
    return Summary(
        cards, chips, _change(run, previous, headline), gates, hidden, policy_view(run), no_previous.rstrip(".")
    )


def _change(run: RunTables, previous: RunDigest | None, headline: dict[str, Any]) -> Change | None:
    if previous is None:
        return None
    now_failed: set[str] = set()
    if run.gates is not None:
        now_failed = {_gate_name(g) for g in run.gates.itertuples(index=False) if not bool(g.passed)}
    elif run.summary is not None:
        now_failed = {str(n) for n in run.summary.get("failed_gates") or []}
    before_failed = set(previous.failed_gates)
    before = previous.verdict or (None if previous.passed is None else "passed" if previous.passed else "failed")
    new = sorted(now_failed - before_failed)
    fixed = sorted(before_failed - now_failed)
    rows = []
    for key, (label, is_fraction) in _HEADLINE_LABELS.items():
        now, then = headline.get(key), previous.headline.get(key)
        if is_missing(now) and is_missing(then):
            continue
        fmt = pct if is_fraction else count
        rows.append(HeadlineRow(label, fmt(then), fmt(now), _delta(now, then, as_pct=is_fraction)))
    return Change(
        run_id=previous.run_id,
        created_at=previous.created_at,
        before=_VERDICT_WORDS[before],
        now=_VERDICT_WORDS[_verdict_status(run)],
        newly_failing=tuple(new[:CHANGED_GATES]),
        newly_failing_more=max(0, len(new) - CHANGED_GATES),
        now_passing=tuple(fixed[:CHANGED_GATES]),
        now_passing_more=max(0, len(fixed) - CHANGED_GATES),
        headline=tuple(rows),
    )


def _gate_table(gates: pd.DataFrame) -> tuple[tuple[GateRow, ...], int]:
    """Every failing gate and the first passing ones; returns the rows and how many passing gates were left out."""
    rows = []
    shown_passed = hidden = 0
    for g in _gate_rows(gates):
        status = getattr(g, "status", None)
        if bool(g.passed) and status not in ("warn", "waived"):
            if shown_passed >= PASSED_GATES_ROWS:
                hidden += 1
                continue
            shown_passed += 1
        not_judged = bool(g.passed) and getattr(g, "judged", True) is False and status in (None, "pass")
        if not_judged:
            mark = Badge("skip", "not judged")
        elif isinstance(status, str) and status in _STATUS_BADGES:
            mark = _STATUS_BADGES[status]
        else:
            mark = _badge(bool(g.passed))
        baseline = getattr(g, "baseline_value", None)
        waiver = getattr(g, "waiver", None)
        rows.append(
            GateRow(
                mark,
                g.check,
                g.subject,
                g.metric,
                num(g.value),
                num(g.threshold),
                g.detail if isinstance(g.detail, str) else "",
                "" if is_missing(baseline) else num(baseline),
                waiver if isinstance(waiver, str) else "",
            )
        )
    return tuple(rows), hidden


# ---------------------------------------------------------------------------------------------
# Co-occurrence
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairRow:
    tag_a: Any
    tag_b: Any
    n_ab: str
    n_a: str
    p_b_given_a: str
    ci_low: str
    ci_high: str
    lift: str
    npmi: str
    message: Any
    suggestions: str
    saliency: str = ""  # where class a's saliency sits on the b boxes, when measured


@dataclass(frozen=True)
class BalanceRow:
    label: Any
    n: str
    share: str


@dataclass(frozen=True)
class Cooccurrence:
    skipped: str = ""
    gates: GatesLine | None = None
    heatmap: Heatmap | None = None  # None: no pair had enough support
    flagged_total: int = 0
    flagged: tuple[PairRow, ...] = ()
    balance: tuple[BalanceRow, ...] = ()
    saliency: tuple[str, ...] = ()  # saliency sentences of measured pairs not among the flagged rows shown


def cooccurrence(run: RunTables) -> Cooccurrence:
    co = run.cooccurrence
    if co is None:
        return Cooccurrence(skipped=_skip_message(run, "cooccurrence", "cooccurrence.parquet"))
    flagged = co[co["flagged"].fillna(False).astype(bool)] if "flagged" in co and len(co) else co.iloc[0:0]
    flagged = flagged.sort_values(["p_b_given_a", "tag_a", "tag_b"], ascending=[False, True, True], kind="stable")
    sentences = _pair_saliency(run.saliency_pairs)
    pairs = tuple(
        PairRow(
            r.tag_a,
            r.tag_b,
            count(r.n_ab),
            count(r.n_a),
            num(r.p_b_given_a),
            num(r.ci_low),
            num(r.ci_high),
            num(getattr(r, "lift", None), 2),
            num(r.npmi),
            getattr(r, "message", ""),
            _suggestions(getattr(r, "suggested_additions", None)),
            sentences.pop((str(r.tag_a), str(r.tag_b)), ""),
        )
        for r in flagged.head(FLAGGED_PAIRS_ROWS).itertuples(index=False)
    )
    balance: tuple[BalanceRow, ...] = ()
    if run.class_balance is not None and len(run.class_balance):
        cb = run.class_balance.sort_values(["n", "label"], ascending=[False, True], kind="stable")
        balance = tuple(BalanceRow(r.label, count(r.n), pct(r.share)) for r in cb.itertuples(index=False))
    return Cooccurrence(
        gates=_gates_line(run, "cooccurrence"),
        heatmap=_strongest(co),
        flagged_total=len(flagged),
        flagged=pairs,
        balance=balance,
        saliency=tuple(sentences.values()),
    )


def _pair_saliency(table: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    """(class, region) -> "laptop images: 31% of the laptop saliency sits on the mouse" for each measured pair."""
    if table is None or not len(table):
        return {}
    out = {}
    for r in table.to_dict("records"):
        cls, region = str(r["class"]), str(r["region"])
        if not r["images"]:
            continue
        verdict = "pair flagged" if r["flagged"] else "pair within the limit"
        out[(cls, region)] = (
            f"{cls} images: {pct(r['mean_share'], 0)} of the {cls} saliency sits on the {region} "
            f"({count(r['images'])} images with a {region} box, {pct(r['flagged_fraction'], 0)} of them flagged; "
            f"{verdict})"
        )
    return out


def _strongest(co: pd.DataFrame) -> Heatmap | None:
    """The heatmap of the strongest associations: the tags of the highest npmi pairs, up to HEATMAP_TAGS a side."""
    usable = co[pd.to_numeric(co["npmi"], errors="coerce").notna()].copy() if len(co) else co
    if not len(usable):
        return None
    usable["npmi"] = pd.to_numeric(usable["npmi"], errors="coerce")
    usable = usable.sort_values(["npmi", "tag_a", "tag_b"], ascending=[False, True, True], kind="stable")
    rows: list[str] = []
    cols: list[str] = []
    for a, b in zip(usable["tag_a"].astype(str), usable["tag_b"].astype(str), strict=True):
        if a not in rows and len(rows) < HEATMAP_TAGS:
            rows.append(a)
        if b not in cols and len(cols) < HEATMAP_TAGS:
            cols.append(b)
        if len(rows) >= HEATMAP_TAGS and len(cols) >= HEATMAP_TAGS:
            break
    values = {
        (str(a), str(b)): float(v)
        for a, b, v in zip(usable["tag_a"], usable["tag_b"], usable["npmi"], strict=True)
        if str(a) in rows and str(b) in cols
    }
    flagged_pairs = (
        frozenset(
            (str(a), str(b))
            for a, b, f in zip(usable["tag_a"], usable["tag_b"], usable["flagged"].fillna(False), strict=True)
            if bool(f)
        )
        if "flagged" in usable
        else frozenset()
    )
    return heatmap(rows, cols, values, flagged=flagged_pairs)


def _suggestions(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Subgroups
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeChart:
    attribute: str
    tags: tuple[Badge, ...]
    chart: SubgroupChart


@dataclass(frozen=True)
class SubgroupRow:
    attribute: Any
    group: Any
    n: str
    value: str
    ci_low: str
    ci_high: str
    gap: str
    status: Badge


@dataclass(frozen=True)
class Subgroups:
    skipped: str = ""
    gates: GatesLine | None = None
    metric: str = ""
    max_gap: str | None = None  # None: threshold not recorded in gates.parquet
    charts: tuple[AttributeChart, ...] = ()
    rows: tuple[SubgroupRow, ...] = ()


def _subgroup_points(frame: pd.DataFrame) -> tuple[list[GroupPoint], float | None, bool]:
    judged = frame[frame["status"].astype(str) != STATUS_TOO_SMALL] if "status" in frame else frame
    judged = judged[pd.to_numeric(judged["value"], errors="coerce").notna()]
    best = None
    higher_better = True
    if len(judged):
        gaps = pd.to_numeric(judged["gap"], errors="coerce").abs() if "gap" in judged else None
        idx = gaps.idxmin() if gaps is not None and gaps.notna().any() else pd.to_numeric(judged["value"]).idxmax()
        best = float(judged.loc[idx, "value"])
        higher_better = best >= float(pd.to_numeric(judged["value"]).max()) - 1e-12
    points = []
    ordered = frame.assign(_v=pd.to_numeric(frame["value"], errors="coerce")).sort_values(
        ["_v", "group"], ascending=[not higher_better, True], na_position="last", kind="stable"
    )
    for r in ordered.itertuples(index=False):
        points.append(
            GroupPoint(
                group=str(r.group),
                n=int(r.n) if not is_missing(r.n) else 0,
                value=None if is_missing(r.value) else float(r.value),
                ci_low=None if is_missing(r.ci_low) else float(r.ci_low),
                ci_high=None if is_missing(r.ci_high) else float(r.ci_high),
                status=str(getattr(r, "status", "ok")),
            )
        )
    return points, best, higher_better


def _status_mark(status: str) -> Badge:
    if status == STATUS_GAP:
        return _badge(False, no=STATUS_GAP)
    return Badge("small", STATUS_TOO_SMALL) if status == STATUS_TOO_SMALL else Badge("", status)


def subgroups(run: RunTables) -> Subgroups:
    sg = run.subgroups
    if sg is None:
        return Subgroups(skipped=_skip_message(run, "subgroups", "subgroups.parquet"))
    max_gap = _threshold(run, "subgroups", "gap")
    metric = str(sg["metric"].iloc[0]) if len(sg) and "metric" in sg else "metric"
    charts = []
    attributes = sorted(sg["attribute"].astype(str).unique(), key=lambda a: ("&" in a, a)) if len(sg) else []
    for attribute in attributes:
        points, best, higher_better = _subgroup_points(sg[sg["attribute"].astype(str) == attribute])
        limit = None
        if best is not None and max_gap is not None:
            limit = best - max_gap if higher_better else best + max_gap
        n_gap = sum(p.status == STATUS_GAP for p in points)
        n_small = sum(p.status == STATUS_TOO_SMALL for p in points)
        tags = ([Badge("fail", f"{n_gap} over the gap")] if n_gap else []) + (
            [Badge("small", f"{n_small} {STATUS_TOO_SMALL}")] if n_small else []
        )
        chart = subgroup_chart(points, metric=metric, best=best, threshold=limit)
        charts.append(AttributeChart(attribute, tuple(tags), chart))
    rows = (
        tuple(
            SubgroupRow(
                r.attribute,
                r.group,
                count(r.n),
                num(r.value),
                num(r.ci_low),
                num(r.ci_high),
                num(r.gap),
                _status_mark(str(getattr(r, "status", ""))),
            )
            for r in sg.sort_values(["attribute", "group"], kind="stable").itertuples(index=False)
        )
        if attributes
        else ()
    )
    return Subgroups(
        gates=_gates_line(run, "subgroups"),
        metric=metric,
        max_gap=None if max_gap is None else num(max_gap),
        charts=tuple(charts),
        rows=rows,
    )


# ---------------------------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixCell:
    """A cell of the grid; `anchor` is the id of its gallery, when it has one. Empty cells stay bare."""

    n: int
    colour: str = ""
    title: str = ""
    anchor: str | None = None


@dataclass(frozen=True)
class MatrixRow:
    label: str
    cells: tuple[MatrixCell, ...]


@dataclass(frozen=True)
class TopConfusion:
    label: str
    prediction: str
    n: int
    anchor: str | None


@dataclass(frozen=True)
class CellGallery:
    anchor: str
    label: str
    prediction: str
    n: int
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class ClassGallery:
    label: str
    cells: tuple[CellGallery, ...]


@dataclass(frozen=True)
class Confusion:
    skipped: str = ""
    note: str = ""
    classes: tuple[str, ...] = ()
    matrix: tuple[MatrixRow, ...] | None = None  # None: too many classes, see `top`
    top: tuple[TopConfusion, ...] = ()
    off_diagonal: int = 0  # confusions with images, of which `top` lists the most frequent
    has_images: bool = False
    per_cell: int = 0
    budget: int = CONFUSION_THUMBS
    galleries: tuple[ClassGallery, ...] = ()


def _anchor(index: dict[str, int], cell: tuple[str, str]) -> str:
    return f"cm-{index[cell[0]]}-{index[cell[1]]}"


def _confusion_frame(run: RunTables) -> tuple[pd.DataFrame | None, str]:
    if run.confusion is not None:
        overall = run.confusion[run.confusion["attribute"].astype(str) == OVERALL_ATTRIBUTE]
        if len(overall):
            return overall.groupby(["label", "prediction"], as_index=False)["n"].sum(), ""
    if run.images is not None and len(run.images) and {"label", "prediction"} <= set(run.images.columns):
        derived = run.images.groupby(["label", "prediction"], as_index=False, dropna=False).size()
        note = "Counted from images.parquet (no overall rows in confusion.parquet)."
        return derived.rename(columns={"size": "n"}), note
    return None, ""


def _matrix(
    classes: list[str], counts: dict[tuple[str, str], int], plan: dict[tuple[str, str], list[int]]
) -> tuple[MatrixRow, ...]:
    index = {c: i for i, c in enumerate(classes)}
    row_totals = {c: 0 for c in classes}
    for (label, _), n in counts.items():
        row_totals[label] += n
    rows = []
    for label in classes:
        cells = []
        for pred in classes:
            n = counts.get((label, pred), 0)
            if not n:
                cells.append(MatrixCell(0))  # a 100-class matrix has 10,000 of them
                continue
            share = n / row_totals[label] if row_totals[label] else 0.0
            colour = (
                f"rgba(22,121,74,{0.08 + 0.6 * share:.3f})"
                if label == pred
                else f"rgba(179,38,30,{0.08 + 0.7 * share:.3f})"
            )
            cells.append(
                MatrixCell(
                    n,
                    colour,
                    f"true {label}, predicted {pred}: {n:,} ({share * 100:.1f}% of the row)",
                    _anchor(index, (label, pred)) if (label, pred) in plan else None,
                )
            )
        rows.append(MatrixRow(label, tuple(cells)))
    return tuple(rows)


def _top_confusions(
    classes: list[str], counts: dict[tuple[str, str], int], plan: dict[tuple[str, str], list[int]]
) -> tuple[tuple[TopConfusion, ...], int]:
    """For too many classes to draw a grid: the most frequent confusions, and how many there are in all."""
    index = {c: i for i, c in enumerate(classes)}
    off = sorted(
        ((n, label, pred) for (label, pred), n in counts.items() if label != pred and n),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    top = tuple(
        TopConfusion(label, pred, n, _anchor(index, (label, pred)) if (label, pred) in plan else None)
        for n, label, pred in off[:MATRIX_LIST_ROWS]
    )
    return top, len(off)


def confusion(run: RunTables, thumbs: Thumbs | None, plan: dict[tuple[str, str], list[int]]) -> Confusion:
    cm, note = _confusion_frame(run)
    if cm is None:
        return Confusion(skipped=_skip_message(run, "subgroups", "confusion.parquet"))
    cm = cm.assign(label=cm["label"].astype(str), prediction=cm["prediction"].astype(str))
    classes = sorted(set(cm["label"]) | set(cm["prediction"]))
    index = {c: i for i, c in enumerate(classes)}
    counts: dict[tuple[str, str], int] = {}
    for r in cm.itertuples(index=False):
        counts[(r.label, r.prediction)] = counts.get((r.label, r.prediction), 0) + int(r.n)
    plan = {cell: rows for cell, rows in plan.items() if cell[0] in index and cell[1] in index}
    matrix: tuple[MatrixRow, ...] | None = None
    top: tuple[TopConfusion, ...] = ()
    off = 0
    if len(classes) <= MATRIX_MAX_CLASSES:
        matrix = _matrix(classes, counts, plan)
    else:
        top, off = _top_confusions(classes, counts, plan)
    galleries = []
    has_images = thumbs is not None and run.images is not None
    if thumbs is not None and run.images is not None:
        spur = (
            pd.to_numeric(run.images["spurious_share"], errors="coerce").fillna(-1.0).to_numpy()
            if "spurious_share" in run.images
            else np.full(len(run.images), -1.0)
        )
        for label in classes:
            cells = [(label, pred) for pred in classes if (label, pred) in plan]
            # The cell with the worst offender first.
            cells.sort(key=lambda c: (-max(spur[r] for r in plan[c]), c[0] == c[1], index[c[1]]))
            if cells:
                galleries.append(
                    ClassGallery(
                        label,
                        tuple(
                            CellGallery(
                                _anchor(index, c), c[0], c[1], counts.get(c, len(plan[c])), thumbs.figures(plan[c])
                            )
                            for c in cells
                        ),
                    )
                )
    return Confusion(
        note=note,
        classes=tuple(classes),
        matrix=matrix,
        top=top,
        off_diagonal=off,
        has_images=has_images,
        per_cell=max((len(v) for v in plan.values()), default=0),
        galleries=tuple(galleries),
    )


# ---------------------------------------------------------------------------------------------
# Saliency
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaliencyRow:
    cls: Any
    images: str
    with_regions: str
    core: str
    spurious: str
    outside: str
    enrichment: str
    pointing: str
    flagged_fraction: str
    mark: Badge


@dataclass(frozen=True)
class Gallery:
    title: str
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class Saliency:
    skipped: str = ""
    gates: GatesLine | None = None
    bars: ClassBars | None = None
    rows: tuple[SaliencyRow, ...] = ()
    table_skipped: str = ""  # images.parquet without saliency_by_class.parquet
    per_class: int = 0
    galleries: tuple[Gallery, ...] = ()


def saliency(run: RunTables, thumbs: Thumbs | None, plan: dict[str, list[int]]) -> Saliency:
    sc = run.saliency_by_class
    if sc is None and run.images is None:
        return Saliency(skipped=_skip_message(run, "saliency", "saliency_by_class.parquet or images.parquet"))
    bars: ClassBars | None = None
    rows: tuple[SaliencyRow, ...] = ()
    if sc is not None and len(sc):
        ordered = sc.assign(_f=pd.to_numeric(sc["flagged_fraction"], errors="coerce")).sort_values(
            ["_f", "class"], ascending=[False, True], na_position="last", kind="stable"
        )
        items = [
            (
                str(r["class"]),
                None if is_missing(r["_f"]) else float(r["_f"]),
                bool(r["flagged"]) if "flagged" in r and not is_missing(r["flagged"]) else False,
            )
            for _, r in ordered.iterrows()
        ]
        bars = class_bars(
            items,
            threshold=_threshold(run, "saliency", "flagged"),
            label="fraction of the class's images flagged as shortcut-driven",
        )
        rows = tuple(
            SaliencyRow(
                r["class"],
                count(r.get("images")),
                count(r.get("images_with_regions")),
                pct(r.get("mean_core_share")),
                pct(r.get("mean_spurious_share")),
                pct(r.get("mean_outside_share")),
                num(r.get("mean_spurious_enrichment"), 2),
                pct(r.get("pointing_accuracy")),
                pct(r.get("flagged_fraction")),
                _badge(not bool(r.get("flagged")), yes="ok", no="flagged"),
            )
            for _, r in ordered.iterrows()
        )
    galleries = tuple(Gallery(c, thumbs.figures(r)) for c, r in plan.items()) if thumbs is not None else ()
    return Saliency(
        gates=_gates_line(run, "saliency"),
        bars=bars,
        rows=rows,
        table_skipped=_skip_message(run, "saliency", "saliency_by_class.parquet") if sc is None else "",
        per_class=max((len(v) for v in plan.values()), default=0),
        galleries=galleries,
    )


# ---------------------------------------------------------------------------------------------
# Saliency strategies (clusters of each class's Grad-CAMs)
# ---------------------------------------------------------------------------------------------

#: Classes drawn with their clusters' maps and thumbnails (flagged classes first); the rest are listed in words.
STRATEGY_CLASSES = 24
#: Member thumbnails per cluster (strategies.parquet names a few of the most typical members).
STRATEGY_THUMBS = 3


@dataclass(frozen=True)
class StrategyFigure:
    """A heat thumbnail: a cluster's mean map (no image under it) or one member's CAM over its image."""

    data_uri: str
    width: int
    height: int
    box_width: int
    caption: str
    title: str
    has_original: bool


@dataclass(frozen=True)
class StrategyCluster:
    cluster: int
    n: str
    share: str
    accuracy: str
    border: str
    corner: str
    centre: str
    consistency: str
    spread: str
    compactness: str
    off_object: str
    description: str
    flagged: bool
    mean_map: StrategyFigure | None
    figures: tuple[StrategyFigure, ...]
    box_width: int  # the cluster's card: its mean map and members side by side


@dataclass(frozen=True)
class StrategyClass:
    cls: str
    mark: Badge
    method: str
    flagged: tuple[str, ...]  # the flagged strategies in words (one per group of clusters)
    clusters: tuple[StrategyCluster, ...]
    drawn: bool  # False past STRATEGY_CLASSES: words and numbers only


@dataclass(frozen=True)
class Strategies:
    skipped: str = ""
    gates: GatesLine | None = None
    classes: tuple[StrategyClass, ...] = ()
    too_few: tuple[str, ...] = ()  # classes with too few maps to cluster (their gate says so)


def strategies(
    run: RunTables, *, max_gallery: int, thumb_size: int, opener: Callable[[str], IO[bytes]] | None = None
) -> Strategies:
    """Per class its clusters side by side (mean map, a few members), the flagged strategy named in words;
    `max_gallery` 0 draws no thumbnail (numbers and words only)."""
    table = run.strategies
    if table is None:
        return Strategies(skipped=_skip_message(run, "strategies", "strategies.parquet"))
    gates = _gates_for(run, "strategies")
    judged = gates["judged"].astype(bool) if "judged" in gates else pd.Series(True, index=gates.index)
    too_few = tuple(sorted(str(s) for s in gates.loc[~judged, "subject"]))
    flagged_classes = set(table.loc[table["flagged"].astype(bool), "class"].astype(str))
    names = sorted(table["class"].astype(str).unique(), key=lambda c: (c not in flagged_classes, c))
    drawn = set(names[:STRATEGY_CLASSES]) if max_gallery > 0 else set()
    members = _strategy_members(run, table, drawn, min(STRATEGY_THUMBS, max_gallery))
    cams = read_cams(run.run_dir / "images.parquet", [int(r["_row"]) for r in members.values()])
    classes = []
    for name in names:
        part = table[table["class"].astype(str) == name].sort_values("cluster", kind="stable")
        draw = name in drawn
        clusters = tuple(
            _strategy_cluster(r, members if draw else {}, cams, thumb_size, opener, draw)
            for r in part.itertuples(index=False)
        )
        flagged = tuple(dict.fromkeys(c.description for c in clusters if c.flagged))
        classes.append(
            StrategyClass(
                cls=name,
                mark=_badge(not flagged, yes="ok", no="flagged"),
                method=str(part["method"].iloc[0]) if len(part) else "",
                flagged=flagged,
                clusters=clusters,
                drawn=draw,
            )
        )
    return Strategies(gates=_gates_line(run, "strategies"), classes=tuple(classes), too_few=too_few)


def _strategy_members(run: RunTables, table: pd.DataFrame, drawn: set[str], per_cluster: int) -> dict[str, pd.Series]:
    """image id -> its images.parquet row, for the examples of the drawn classes' clusters."""
    if run.images is None or "image_id" not in run.images:
        return {}
    wanted = {
        str(i)
        for cls, ids in zip(table["class"].astype(str), table["examples"], strict=True)
        if cls in drawn and ids is not None
        for i in list(ids)[:per_cluster]
    }
    rows = run.images[run.images["image_id"].astype(str).isin(wanted)]
    return {str(r["image_id"]): r for _, r in rows.iterrows()}


def _strategy_cluster(
    r: Any,
    members: dict[str, pd.Series],
    cams: dict[int, np.ndarray],
    thumb_size: int,
    opener: Callable[[str], IO[bytes]] | None,
    draw: bool,
) -> StrategyCluster:
    mean_map = None
    if draw and r.mean_map is not None:
        overlay = render_overlay(
            r.mean_map,
            r.map_height,
            r.map_width,
            image_path=None,
            width=r.map_width,
            height=r.map_height,
            regions=None,
            thumb_size=thumb_size,
            opener=opener,
        )
        caption = f"cluster {r.cluster}: mean map"
        mean_map = StrategyFigure(
            overlay.data_uri, overlay.width, overlay.height, max(overlay.width, 104) + 12, caption, caption, False
        )
    figures = []
    for image_id in list(r.examples if r.examples is not None else []):
        source = members.get(str(image_id))
        if source is None:
            continue
        row = int(source["_row"])
        overlay = render_overlay(
            cams.get(row),
            source.get("cam_height"),
            source.get("cam_width"),
            image_path=source.get("image_path"),
            width=source.get("width"),
            height=source.get("height"),
            regions=source.get("regions"),
            thumb_size=thumb_size,
            opener=opener,
        )
        uri = str(source.get("image_uri") or image_id)
        figures.append(
            StrategyFigure(
                overlay.data_uri,
                overlay.width,
                overlay.height,
                max(overlay.width, 104) + 12,
                uri.rstrip("/").rsplit("/", 1)[-1] or uri,
                uri,
                overlay.has_original,
            )
        )
    return StrategyCluster(
        cluster=int(r.cluster),
        n=count(r.n),
        share=pct(r.share, 0),
        accuracy=pct(r.accuracy, 0),
        border=pct(r.border_mass, 0),
        corner=pct(r.corner_mass, 0),
        centre=pct(r.centre_mass, 0),
        consistency=pct(r.peak_consistency, 0),
        spread=num(r.spot_spread, 2),
        compactness=num(r.compactness, 1),
        off_object=pct(r.off_object_share, 0),
        description=str(r.description),
        flagged=bool(r.flagged),
        mean_map=mean_map,
        figures=tuple(figures),
        box_width=sum(f.width + 10 for f in ([mean_map] if mean_map else []) + figures) + 14,
    )


# ---------------------------------------------------------------------------------------------
# Prediction leakage (multilabel)
# ---------------------------------------------------------------------------------------------

#: Pairs listed in the leakage table (flagged pairs always first); leakage.parquet keeps every pair.
LEAKAGE_ROWS = 300


@dataclass(frozen=True)
class LeakageFigure:
    """One worst image of a flagged pair: its Grad-CAM for b over the image, what is there and what was said."""

    data_uri: str
    width: int
    height: int
    box_width: int
    uri: str
    name: str
    truth: str
    predicted: str
    score: str
    has_original: bool


@dataclass(frozen=True)
class LeakageRow:
    subject: str
    tag_a: str
    tag_b: str
    n_a_without_b: str
    n_neither: str
    with_a: str
    without_a: str
    gap: str
    ci: str
    mark: Badge
    figures: tuple[LeakageFigure, ...] = ()


@dataclass(frozen=True)
class Leakage:
    shown: bool = True  # False for a multiclass run, where the check does not apply (no section at all)
    skipped: str = ""
    gates: GatesLine | None = None
    threshold: str = ""
    flagged: tuple[LeakageRow, ...] = ()
    rows: tuple[LeakageRow, ...] = ()
    hidden: int = 0


_LEAKAGE_MARKS = {"leak": ("fail", "leak"), "ok": ("pass", "ok")}


def leakage(run: RunTables, *, thumb_size: int, opener: Callable[[str], IO[bytes]] | None = None) -> Leakage:
    """Every pair (flagged first, then by gap), and per flagged pair its worst images with b's Grad-CAM."""
    table = run.leakage
    if table is None and not run.multilabel:
        return Leakage(shown=False)
    if table is None:
        return Leakage(skipped=_skip_message(run, "leakage", "leakage.parquet"))
    ordered = table.assign(_g=pd.to_numeric(table["gap"], errors="coerce").fillna(-np.inf)).sort_values(
        ["flagged", "_g", "tag_a", "tag_b"], ascending=[False, False, True, True], kind="stable"
    )
    figures = _leakage_figures(run, thumb_size, opener)
    rows = tuple(_leakage_row(r, figures) for r in ordered.head(LEAKAGE_ROWS).itertuples(index=False))
    threshold = _threshold(run, "leakage", "fp_rate_gap")
    return Leakage(
        gates=_gates_line(run, "leakage"),
        threshold="" if threshold is None else num(threshold, 2),
        flagged=tuple(r for r in rows if r.mark.kind == "fail"),
        rows=rows,
        hidden=max(0, len(ordered) - LEAKAGE_ROWS),
    )


def _leakage_row(r: Any, figures: dict[tuple[str, str], tuple[LeakageFigure, ...]]) -> LeakageRow:
    kind, text = _LEAKAGE_MARKS.get(str(r.status), ("small", str(r.status)))
    return LeakageRow(
        subject=f"{r.tag_a} → {r.tag_b}",
        tag_a=str(r.tag_a),
        tag_b=str(r.tag_b),
        n_a_without_b=count(r.n_a_without_b),
        n_neither=count(r.n_neither),
        with_a=pct(r.fp_rate_with_a),
        without_a=pct(r.fp_rate_without_a),
        gap=num(r.gap, 3),
        ci=f"[{num(r.ci_low, 3)}, {num(r.ci_high, 3)}]",
        mark=Badge(kind, text),
        figures=figures.get((str(r.tag_a), str(r.tag_b)), ()),
    )


def _leakage_figures(
    run: RunTables, thumb_size: int, opener: Callable[[str], IO[bytes]] | None
) -> dict[tuple[str, str], tuple[LeakageFigure, ...]]:
    """The stored worst images of each flagged pair, drawn as overlays of the CAM for b (computed by the check)."""
    worst = run.leakage_images
    if worst is None or not len(worst):
        return {}
    images = run.images.set_index("image_id") if run.images is not None and "image_id" in run.images else None
    out: dict[tuple[str, str], list[LeakageFigure]] = {}
    for w in worst.sort_values(["tag_a", "tag_b", "rank"], kind="stable").itertuples(index=False):
        source = images.loc[w.image_id] if images is not None and w.image_id in images.index else None
        overlay = render_overlay(
            w.cam,
            w.cam_height,
            w.cam_width,
            image_path=_value(source, "image_path"),
            width=_value(source, "width"),
            height=_value(source, "height"),
            regions=None,
            thumb_size=thumb_size,
            opener=opener,
        )
        uri = str(_value(source, "image_uri") or w.image_id)
        out.setdefault((str(w.tag_a), str(w.tag_b)), []).append(
            LeakageFigure(
                data_uri=overlay.data_uri,
                width=overlay.width,
                height=overlay.height,
                box_width=max(overlay.width, 104) + 12,
                uri=uri,
                name=uri.rstrip("/").rsplit("/", 1)[-1] or uri,
                truth=", ".join(_as_names(w.true_labels)) or "(none)",
                predicted=", ".join(_as_names(w.predicted_labels)) or "(none)",
                score=pct(w.score_b, 0),
                has_original=overlay.has_original,
            )
        )
    return {pair: tuple(figs) for pair, figs in out.items()}


def _value(row: pd.Series | None, name: str) -> Any:
    return None if row is None else row.get(name)


def _as_names(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(v) for v in value]


# ---------------------------------------------------------------------------------------------
# Rarity
# ---------------------------------------------------------------------------------------------

#: Rarest images shown per class (the lowest densities in sample_weights.parquet).
RARITY_THUMBS = 8


@dataclass(frozen=True)
class RarityQuantile:
    quantile: str
    n: str
    accuracy: str
    ci: str
    density: str


@dataclass(frozen=True)
class RarityClass:
    label: str
    gap: str
    ci: str
    mark: Badge
    quantiles: tuple[RarityQuantile, ...]
    shared: tuple[str, ...]  # "tags = snow (60% of the rarest, 3.1x the class)"
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Rarity:
    skipped: str = ""
    gates: GatesLine | None = None
    threshold: str = ""
    classes: tuple[RarityClass, ...] = ()
    flagged: tuple[str, ...] = ()


_RARITY_MARKS = {"tail gap": ("fail", "tail gap"), "ok": ("pass", "ok")}


def rarity_plan(run: RunTables, per_class: int = RARITY_THUMBS) -> dict[str, list[int]]:
    """Rows of images.parquet to show per class: the lowest densities first (ties by image id)."""
    weights, images = run.sample_weights, run.images
    if weights is None or images is None or not len(weights) or "image_id" not in images:
        return {}
    rows = pd.Series(images["_row"].to_numpy(), index=images["image_id"].astype(str))
    known = weights[weights["density"].notna()].assign(_id=lambda f: f["image_id"].astype(str))
    known = known.sort_values(["density", "_id"], kind="stable")
    plan: dict[str, list[int]] = {}
    for label, group in known.groupby("label", sort=True):
        ids = [i for i in group["_id"] if i in rows.index][:per_class]
        plan[str(label)] = [int(rows[i]) for i in ids]
    return plan


def rarity(run: RunTables, thumbs: Thumbs | None, plan: dict[str, list[int]]) -> Rarity:
    """Per class: accuracy by density quantile, the tail gap's verdict, what the rarest share, the rarest images."""
    table = run.rarity
    if table is None:
        return Rarity(skipped=_skip_message(run, "rarity", "rarity.parquet"))
    classes = []
    for label, group in table.sort_values(["label", "quantile"], kind="stable").groupby("label", sort=True):
        first = group.iloc[0]
        kind, text = _RARITY_MARKS.get(str(first["status"]), ("small", str(first["status"])))
        last = int(group["quantile"].max())
        quantiles = tuple(
            RarityQuantile(
                quantile=f"q{int(r.quantile)}"
                + (" (rarest)" if r.quantile == 1 else " (commonest)" if r.quantile == last else ""),
                n=count(r.n),
                accuracy=pct(r.accuracy),
                ci=f"[{pct(r.ci_low)}, {pct(r.ci_high)}]",
                density=f"{num(r.density_low, 3)}–{num(r.density_high, 3)}",
            )
            for r in group.itertuples(index=False)
        )
        rows = plan.get(str(label), [])
        classes.append(
            RarityClass(
                label=str(label),
                gap=num(first["gap"], 3),
                ci=f"[{num(first['gap_ci_low'], 3)}, {num(first['gap_ci_high'], 3)}]",
                mark=Badge(kind, text),
                quantiles=quantiles,
                shared=_shared_lines(first["shared"]),
                figures=thumbs.figures(rows) if thumbs is not None and rows else (),
            )
        )
    threshold = _threshold(run, "rarity", "tail_gap")
    return Rarity(
        gates=_gates_line(run, "rarity"),
        threshold="" if threshold is None else num(threshold, 2),
        classes=tuple(classes),
        flagged=tuple(c.label for c in classes if c.mark.kind == "fail"),
    )


def _shared_lines(raw: Any) -> tuple[str, ...]:
    """The rarest quantile's over-represented values as sentences (the stage's JSON; unreadable: none)."""
    if is_missing(raw):
        return ()
    try:
        items = json.loads(str(raw))
    except ValueError:
        return ()
    return tuple(
        f"{i['column']} = {i['value']} ({pct(i['share'], 0)} of the rarest, {num(i['lift'], 1)}x the class)"
        for i in items
        if isinstance(i, Mapping) and {"column", "value", "share", "lift"} <= set(i)
    )


# ---------------------------------------------------------------------------------------------
# Quarantine
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineRow:
    manifest: Any
    row_number: str
    stage: Any
    reason: Any
    given: str  # the other columns as `name=value; ...`


@dataclass(frozen=True)
class Quarantine:
    title: str
    skipped: str = ""
    total: int = 0
    rows: tuple[QuarantineRow, ...] = ()
    validations: tuple[SavedValidation, ...] = ()  # the ingest's GX results, linked relative to the run folder
    data_docs: str | None = None


_QUARANTINE_FIXED = ("manifest", "row_number", "stage", "reason")


def quarantine(run: RunTables) -> Quarantine:
    q = run.quarantine_head
    if q is None:
        status = run.check_status("ingest")
        return Quarantine(
            "Quarantine",
            validations=run.validations,
            data_docs=run.data_docs,
            skipped=(
                "ingest check not configured / skipped (no quarantine.parquet in this run)"
                if status in (None, "skipped")
                else "no quarantine.parquet in this run folder"
            ),
        )
    extra = [c for c in q.columns if c not in _QUARANTINE_FIXED]
    rows = tuple(
        QuarantineRow(
            r.get("manifest"),
            count(r.get("row_number")),
            r.get("stage"),
            r.get("reason"),
            "; ".join(f"{c}={clip(r[c])}" for c in extra if not is_missing(r[c]) and str(r[c]) != ""),
        )
        for _, r in q.iterrows()
    )
    return Quarantine(
        f"Quarantine ({run.quarantine_total:,})",
        total=run.quarantine_total,
        rows=rows,
        validations=run.validations,
        data_docs=run.data_docs,
    )


# ---------------------------------------------------------------------------------------------
# The whole page
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Everything `report.html.j2` draws."""

    title: str
    verdict: Verdict
    summary: Summary
    cooccurrence: Cooccurrence
    subgroups: Subgroups
    confusion: Confusion
    saliency: Saliency
    strategies: Strategies
    leakage: Leakage
    rarity: Rarity
    quarantine: Quarantine
    core_colour: str
    spurious_colour: str


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def report(
    run: RunTables,
    *,
    previous: RunDigest | None,
    max_gallery: int,
    thumb_size: int,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> Report:
    """The views of every section (reads the sampled CAMs and, through `opener`, thumbnail sources)."""
    headline = history.headline_metrics(run.saliency_by_class, run.subgroups, run.cooccurrence)
    thumbs = None
    cm_plan: dict[tuple[str, str], list[int]] = {}
    sal_plan: dict[str, list[int]] = {}
    rare_plan: dict[str, list[int]] = {}
    if run.images is not None and len(run.images):
        if {"label", "prediction"} <= set(run.images.columns):
            cm_plan = confusion_plan(run.images, max_gallery)
        sal_plan = saliency_plan(run.images, max_gallery)
        rare_plan = rarity_plan(run, min(RARITY_THUMBS, max_gallery))
        wanted = [r for plan in (cm_plan, sal_plan, rare_plan) for rows in plan.values() for r in rows]
        thumbs = Thumbs(run.images, read_cams(run.run_dir / "images.parquet", wanted), thumb_size, opener)
    top = verdict(run)
    return Report(
        title=f"{top.word} \u00b7 audit {run.run_id}",
        verdict=top,
        summary=summary(run, previous, headline),
        cooccurrence=cooccurrence(run),
        subgroups=subgroups(run),
        confusion=confusion(run, thumbs, cm_plan),
        saliency=saliency(run, thumbs, sal_plan),
        strategies=strategies(run, max_gallery=max_gallery, thumb_size=thumb_size, opener=opener),
        leakage=leakage(run, thumb_size=thumb_size, opener=opener),
        rarity=rarity(run, thumbs, rare_plan),
        quarantine=quarantine(run),
        core_colour=_hex(CORE_COLOUR),
        spurious_colour=_hex(SPURIOUS_COLOUR),
    )
