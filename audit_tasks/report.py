"""The HTML report of a finished run, rendered from the run folder's tables alone.

One self-contained page (inline CSS and SVG, thumbnails as data URIs, no script, no network): the
verdict first, then the evidence per check. Galleries are sampled with fixed budgets so the page stays
light for any number of images, while the Parquet tables beside it keep every row. Rendering is
deterministic: the same tables give a byte-identical page (no render-time clock).
"""

from __future__ import annotations

import math

from typing import IO, Any, Callable, Mapping

import numpy as np
import pandas as pd

from audit_tasks import history
from audit_tasks.errors import AuditError
from audit_tasks.report_charts import GroupPoint, class_bars, heatmap, subgroup_chart
from audit_tasks.report_data import QUARANTINE_ROWS, RunDigest, RunTables, find_previous, load_run, read_cams
from audit_tasks.report_html import badge, count, esc, is_missing, num, page, pct, section, skipped, table
from audit_tasks.report_images import CORE_COLOUR, SPURIOUS_COLOUR, Overlay, render_overlay
from audit_tasks.storage import StoragePath, storage_path
from audit_tasks.tables import write_text

__all__ = ["QUARANTINE_ROWS", "REPORT_FILE", "RunDigest", "RunTables", "build_html", "find_previous", "load_run",
           "render_report"]

REPORT_FILE = "report.html"
#: Thumbnails on the whole page, per gallery: the page-weight budget (about 4-6 KB each).
CONFUSION_THUMBS = 240
SALIENCY_THUMBS = 192
#: Passing gates listed on the page (failing gates are always all listed).
PASSED_GATES_ROWS = 200
FLAGGED_PAIRS_ROWS = 500
HEATMAP_TAGS = 12
#: Above this many classes the confusion grid becomes a list of the most frequent confusions.
MATRIX_MAX_CLASSES = 60
MATRIX_LIST_ROWS = 300
TOO_SMALL = "too small to judge"
OVERALL = "__overall__"
DASH = " \u2014 "
DOT = " \u00b7 "
FLAG_BADGE = '<br><span class="badge fail">flagged</span>'

# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _gate_name(row: Any) -> str:
    return f"{row.check}/{row.subject}/{row.metric}"


def _gate_rows(gates: pd.DataFrame) -> list[Any]:
    frame = gates.copy()
    frame["_failed"] = ~frame["passed"].astype(bool)
    frame = frame.sort_values(["_failed", "check", "subject", "metric"], ascending=[False, True, True, True], kind="stable")
    return list(frame.itertuples(index=False))


_VERDICT_WORDS = {"passed": "PASSED", "failed": "FAILED", "inconclusive": "INCONCLUSIVE", None: "NO VERDICT"}


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


def _value_vs_threshold(row: Any) -> str:
    return f"{num(row.value)} vs threshold {num(row.threshold)}"


def _verdict_block(run: RunTables) -> str:
    status = _verdict_status(run)
    passed = None if status is None else status == "passed"
    word, cls = _VERDICT_WORDS[status], status if status in ("passed", "failed") else "unknown"
    lines = []
    if status == "inconclusive":
        reason = str((run.summary or {}).get("inconclusive_reason") or "nothing was judged")
        why = (f"No verdict: {reason}. A run without evidence is not a clean audit, so it does not "
               "start retraining.")
    elif run.gates is not None:
        failed = [g for g in _gate_rows(run.gates) if not bool(g.passed)]
        total = len(run.gates)
        if total == 0:
            why = "No gate was evaluated (every check skipped)."
        elif passed:
            why = f"All {total:,} gates passed."
        else:
            why = f"{len(failed):,} of {total:,} gates failed."
        for g in failed[:12]:
            lines.append(
                f"<li><strong>{esc(_gate_name(g))}</strong>: {_value_vs_threshold(g)}"
                f"{DASH + esc(g.detail) if isinstance(g.detail, str) and g.detail else ''}</li>"
            )
        if len(failed) > 12:
            lines.append(f"<li>and {len(failed) - 12:,} more failed gates (see the gate table below)</li>")
    elif run.summary is not None:
        names = [str(n) for n in run.summary.get("failed_gates") or []]
        why = "Every gate passed." if passed else f"{len(names):,} gate(s) failed."
        lines = [f"<li>{esc(n)}</li>" for n in names[:12]]
    else:
        why = "No gates.parquet or summary.json in this run folder: the gate stage did not finish."
    meta = [f"run <strong>{esc(run.run_id)}</strong>"]
    if run.summary and run.summary.get("created_at"):
        meta.append(f"created {esc(run.summary['created_at'])}")
    if run.summary and run.summary.get("config"):
        meta.append(f"config {esc(run.summary['config'])}")
    return (
        f'<header class="verdict {cls}"><div class="inner"><h1>Image bias audit{DOT}{DOT.join(meta)}</h1>'
        f'<div class="word" id="verdict">{word}</div><p class="why">{esc(why)}</p>'
        f'{"<ul>" + "".join(lines) + "</ul>" if lines else ""}</div></header>'
    )


def _counts(run: RunTables) -> dict[str, Any]:
    counts = dict((run.summary or {}).get("counts") or {})
    if "audited" not in counts and run.images is not None:
        counts["audited"] = len(run.images)
    if "quarantined" not in counts and run.quarantine_head is not None:
        counts["quarantined"] = run.quarantine_total
    return counts


def _delta(now: Any, before: Any, *, as_pct: bool = False, better: str | None = "lower") -> str:
    """The change from `before` to `now`, coloured red when worse, green when better (`better`: lower/higher/None)."""
    if is_missing(now) or is_missing(before):
        return ""
    try:
        d = float(now) - float(before)
    except (TypeError, ValueError):
        return ""
    if abs(d) < 1e-12:
        return '<span class="note">no change</span>'
    text = f"{d * 100:+.1f} pts" if as_pct else (f"{d:+,.0f}" if float(d).is_integer() else f"{d:+.3f}")
    if better is None:
        return f"<span>{esc(text)}</span>"
    worse = d > 0 if better == "lower" else d < 0
    return f'<span class="{"up" if worse else "down"}">{esc(text)}</span>'


def _since(delta: str) -> str:
    return f'<div class="d">{delta} since previous</div>' if delta else ""


_HEADLINE_LABELS = {
    "max_flagged_fraction": ("worst class flagged fraction (saliency)", True),
    "n_flagged_classes": ("classes flagged (saliency)", False),
    "worst_subgroup_gap": ("worst subgroup gap", True),
    "n_flagged_groups": ("groups over the gap (subgroups)", False),
    "n_flagged_pairs": ("flagged pairs (co-occurrence)", False),
}


def _summary_section(run: RunTables, previous: RunDigest | None, headline: dict[str, Any]) -> str:
    counts = _counts(run)
    prev_counts = previous.counts if previous else {}
    order = ["ingested", "quarantined", "audited"] + sorted(k for k in counts if k not in {"ingested", "quarantined", "audited"})
    cards = []
    for key in order:
        if key not in counts:
            continue
        delta = _delta(counts.get(key), prev_counts.get(key), better="lower" if key == "quarantined" else None) if previous else ""
        cards.append(
            f'<div class="card"><div class="k">{esc(key.replace("_", " "))}</div><div class="v">{count(counts.get(key))}</div>'
            f"{_since(delta)}</div>"
        )
    checks = (run.summary or {}).get("checks") or {}
    chips = "".join(
        f'<span class="chip {"ran" if str(v) == "ran" else "skipped"}">{esc(k)}: {esc(v)}</span>'
        for k, v in sorted(checks.items())
    ) if isinstance(checks, Mapping) else ""
    body = [f'<div class="cards">{"".join(cards)}</div>' if cards else '<p class="note">No counts recorded.</p>']
    if chips:
        body.append(f'<div class="chips">{chips}</div>')
    body.append("<h3>Change since the previous run</h3>")
    body.append(_change_block(run, previous, headline))
    body.append("<h3>Gates</h3>")
    body.append(_gates_table(run.gates) if run.gates is not None else skipped("no gates.parquet in this run folder"))
    return section("summary", "Summary", "".join(body))


def _change_block(run: RunTables, previous: RunDigest | None, headline: dict[str, Any]) -> str:
    if previous is None:
        return '<p class="note">No previous run found beside this one: nothing to compare with.</p>'
    status = _verdict_status(run)
    now_failed = set()
    if run.gates is not None:
        now_failed = {_gate_name(g) for g in run.gates.itertuples(index=False) if not bool(g.passed)}
    elif run.summary is not None:
        now_failed = {str(n) for n in run.summary.get("failed_gates") or []}
    before_failed = set(previous.failed_gates)

    before = previous.verdict or (None if previous.passed is None else "passed" if previous.passed else "failed")
    parts = [
        f"<p>Previous run <strong>{esc(previous.run_id)}</strong>"
        f"{' (created ' + esc(previous.created_at) + ')' if previous.created_at else ''}: "
        f"{esc(_VERDICT_WORDS[before])} \u2192 now {esc(_VERDICT_WORDS[status])}.</p>"
    ]
    new = sorted(now_failed - before_failed)
    fixed = sorted(before_failed - now_failed)
    if new:
        parts.append("<p><strong>Newly failing:</strong> " + ", ".join(esc(n) for n in new[:50])
                     + (f" and {len(new) - 50:,} more" if len(new) > 50 else "") + "</p>")
    if fixed:
        parts.append("<p><strong>Now passing:</strong> " + ", ".join(esc(n) for n in fixed[:50])
                     + (f" and {len(fixed) - 50:,} more" if len(fixed) > 50 else "") + "</p>")
    if not new and not fixed:
        parts.append('<p class="note">The same gates fail (or pass) as in the previous run.</p>')
    rows = []
    for key, (label, is_fraction) in _HEADLINE_LABELS.items():
        now, before = headline.get(key), previous.headline.get(key)
        if is_missing(now) and is_missing(before):
            continue
        fmt = pct if is_fraction else count
        rows.append([esc(label), fmt(before), fmt(now), _delta(now, before, as_pct=is_fraction)])
    if rows:
        parts.append(table(["headline metric", "previous", "now", "change"], rows, numeric=(1, 2, 3)))
    return "".join(parts)


def _gates_table(gates: pd.DataFrame) -> str:
    if not len(gates):
        return '<p class="note">No gates were evaluated.</p>'
    rows = []
    shown_passed = 0
    hidden = 0
    for g in _gate_rows(gates):
        if bool(g.passed):
            if shown_passed >= PASSED_GATES_ROWS:
                hidden += 1
                continue
            shown_passed += 1
        not_judged = bool(g.passed) and getattr(g, "judged", True) is False
        mark = '<span class="badge skip">not judged</span>' if not_judged else badge(bool(g.passed))
        rows.append([mark, esc(g.check), esc(g.subject), esc(g.metric), num(g.value), num(g.threshold),
                     esc(g.detail if isinstance(g.detail, str) else "")])
    out = table(["", "check", "subject", "metric", "value", "threshold", "detail"], rows, numeric=(4, 5))
    if hidden:
        out += f'<p class="note">{hidden:,} more passing gates are in gates.parquet.</p>'
    return out


def _skip_message(run: RunTables, check: str, table_name: str) -> str:
    status = run.check_status(check)
    if status == "skipped" or status is None:
        return f"check not configured / skipped (no {table_name} in this run)"
    return f"the check is recorded as {status}, but {table_name} is missing from the run folder"


def _gates_for(run: RunTables, check: str) -> pd.DataFrame:
    if run.gates is None:
        return pd.DataFrame(columns=["check", "subject", "metric", "value", "threshold", "passed", "detail"])
    return run.gates[run.gates["check"] == check]


def _threshold(run: RunTables, check: str, hint: str) -> float | None:
    gates = _gates_for(run, check)
    for prefer in (True, False):
        for g in gates.itertuples(index=False):
            if is_missing(g.threshold):
                continue
            if not prefer or hint in str(g.metric):
                return float(g.threshold)
    return None


def _check_gates(run: RunTables, check: str) -> str:
    gates = _gates_for(run, check)
    if not len(gates):
        return ""
    failed = int((~gates["passed"].astype(bool)).sum())
    return (f'<p>Gates: {badge(failed == 0, yes="all passed", no=f"{failed} failed")} '
            f'<span class="note">({len(gates):,} gate(s) for this check; details in the gate table)</span></p>')


def _cooccurrence_section(run: RunTables) -> str:
    co = run.cooccurrence
    if co is None:
        return section("cooccurrence", "Co-occurrence", skipped(_skip_message(run, "cooccurrence", "cooccurrence.parquet")))
    body = [_check_gates(run, "cooccurrence")]
    body.append('<p class="note">Normalised pointwise mutual information (npmi) between a tag and another tag or an '
                "attribute value: +1 they always appear together, 0 independent, \u22121 never together.</p>")
    usable = co[pd.to_numeric(co["npmi"], errors="coerce").notna()].copy() if len(co) else co
    if len(usable):
        usable["npmi"] = pd.to_numeric(usable["npmi"], errors="coerce")
        usable = usable.sort_values(["npmi", "tag_a", "tag_b"], ascending=[False, True, True], kind="stable")
        rows: list[str] = []
        cols: list[str] = []
        for a, b in zip(usable["tag_a"].astype(str), usable["tag_b"].astype(str)):
            if a not in rows and len(rows) < HEATMAP_TAGS:
                rows.append(a)
            if b not in cols and len(cols) < HEATMAP_TAGS:
                cols.append(b)
            if len(rows) >= HEATMAP_TAGS and len(cols) >= HEATMAP_TAGS:
                break
        values = {(str(a), str(b)): float(v) for a, b, v in zip(usable["tag_a"], usable["tag_b"], usable["npmi"])
                  if str(a) in rows and str(b) in cols}
        flagged_pairs = frozenset(
            (str(a), str(b)) for a, b, f in zip(usable["tag_a"], usable["tag_b"], usable["flagged"].fillna(False))
            if bool(f)
        ) if "flagged" in usable else frozenset()
        body.append(f"<h3>Strongest associations</h3>{heatmap(rows, cols, values, flagged=flagged_pairs)}")
    else:
        body.append('<p class="note">No pair had enough support to compute an association.</p>')
    flagged = co[co["flagged"].fillna(False).astype(bool)] if "flagged" in co and len(co) else co.iloc[0:0]
    body.append(f"<h3>Flagged pairs ({len(flagged):,})</h3>")
    if len(flagged):
        flagged = flagged.sort_values(["p_b_given_a", "tag_a", "tag_b"], ascending=[False, True, True], kind="stable")
        rows_html = []
        for r in flagged.head(FLAGGED_PAIRS_ROWS).itertuples(index=False):
            rows_html.append([
                f"{esc(r.tag_a)} \u2192 {esc(r.tag_b)}",
                f"{count(r.n_ab)} / {count(r.n_a)}",
                f"{num(r.p_b_given_a)} <span class=note>[{num(r.ci_low)}, {num(r.ci_high)}]</span>",
                num(getattr(r, "lift", None), 2),
                num(r.npmi),
                f'<p class="sentence">{esc(getattr(r, "message", ""))}</p>',
                esc(_suggestions(getattr(r, "suggested_additions", None))),
            ])
        body.append(table(["pair (a \u2192 b)", "a with b / a", "P(b | a) [CI]", "lift", "npmi",
                           "curator's note", "suggested additions"], rows_html, numeric=(1, 3, 4)))
        if len(flagged) > FLAGGED_PAIRS_ROWS:
            body.append(f'<p class="note">{len(flagged) - FLAGGED_PAIRS_ROWS:,} more flagged pairs are in cooccurrence.parquet.</p>')
    else:
        body.append('<p class="note">No pair was flagged.</p>')
    if run.class_balance is not None and len(run.class_balance):
        cb = run.class_balance.sort_values(["n", "label"], ascending=[False, True], kind="stable")
        body.append("<h3>Class balance</h3>")
        body.append(table(["label", "images", "share"],
                          [[esc(r.label), count(r.n), pct(r.share)] for r in cb.itertuples(index=False)],
                          numeric=(1, 2)))
    return section("cooccurrence", "Co-occurrence", "".join(body))




def _suggestions(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _subgroup_points(frame: pd.DataFrame) -> tuple[list[GroupPoint], float | None, bool]:
    judged = frame[frame["status"].astype(str) != TOO_SMALL] if "status" in frame else frame
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
        ["_v", "group"], ascending=[not higher_better, True], na_position="last", kind="stable")
    for r in ordered.itertuples(index=False):
        points.append(GroupPoint(
            group=str(r.group),
            n=int(r.n) if not is_missing(r.n) else 0,
            value=None if is_missing(r.value) else float(r.value),
            ci_low=None if is_missing(r.ci_low) else float(r.ci_low),
            ci_high=None if is_missing(r.ci_high) else float(r.ci_high),
            status=str(getattr(r, "status", "ok")),
        ))
    return points, best, higher_better


def _subgroups_section(run: RunTables) -> str:
    sg = run.subgroups
    if sg is None:
        return section("subgroups", "Subgroups", skipped(_skip_message(run, "subgroups", "subgroups.parquet")))
    max_gap = _threshold(run, "subgroups", "gap")
    metric = str(sg["metric"].iloc[0]) if len(sg) and "metric" in sg else "metric"
    body = [_check_gates(run, "subgroups")]
    body.append(
        f'<p class="note">{esc(metric)} per group with its confidence interval. The green line is the best judged '
        f"group, the dashed red line the allowed gap from it"
        f"{' (max_gap ' + num(max_gap) + ')' if max_gap is not None else ' (threshold not recorded in gates.parquet)'}"
        f". Hollow grey dots: groups too small to judge.</p>"
    )
    attributes = sorted(sg["attribute"].astype(str).unique(), key=lambda a: ("&" in a, a)) if len(sg) else []
    for attribute in attributes:
        frame = sg[sg["attribute"].astype(str) == attribute]
        points, best, higher_better = _subgroup_points(frame)
        limit = None
        if best is not None and max_gap is not None:
            limit = best - max_gap if higher_better else best + max_gap
        n_small = sum(p.status == TOO_SMALL for p in points)
        n_gap = sum(p.status == "gap" for p in points)
        tags = []
        if n_gap:
            tags.append(f'<span class="badge fail">{n_gap} over the gap</span>')
        if n_small:
            tags.append(f'<span class="badge small">{n_small} too small to judge</span>')
        body.append(f"<h3>{esc(attribute)} {' '.join(tags)}</h3>")
        body.append(subgroup_chart(points, metric=metric, best=best, threshold=limit))
    if not attributes:
        body.append('<p class="note">No subgroup rows.</p>')
    else:
        rows = []
        for r in sg.sort_values(["attribute", "group"], kind="stable").itertuples(index=False):
            status = str(getattr(r, "status", ""))
            status_html = (badge(False, no="gap") if status == "gap" else
                           '<span class="badge small">too small to judge</span>' if status == TOO_SMALL else esc(status))
            rows.append([esc(r.attribute), esc(r.group), count(r.n), num(r.value),
                         f"[{num(r.ci_low)}, {num(r.ci_high)}]", num(r.gap), status_html])
        body.append(f"<details><summary>All {len(sg):,} subgroup rows</summary>"
                    f"{table(['attribute', 'group', 'n', esc(metric), 'CI', 'gap', 'status'], rows, numeric=(2, 3, 5))}"
                    "</details>")
    return section("subgroups", "Subgroups", "".join(body))


# ---- images: selection and figures -----------------------------------------------------------


def _sort_worst(frame: pd.DataFrame) -> pd.DataFrame:
    """Most spurious-looking first: flagged, then highest spurious share; ties by image id (deterministic)."""
    keys = frame.assign(
        _flag=frame["spurious_flag"].fillna(False).astype(bool) if "spurious_flag" in frame else False,
        _spur=pd.to_numeric(frame["spurious_share"], errors="coerce").fillna(-1.0) if "spurious_share" in frame else -1.0,
        _id=frame["image_id"].astype(str) if "image_id" in frame else frame["_row"].astype(str),
    )
    return keys.sort_values(["_flag", "_spur", "_id"], ascending=[False, False, True], kind="stable")


class _Thumbs:
    """Renders each selected image's overlay once per report (local cache, not module state)."""

    def __init__(self, images: pd.DataFrame, cams: dict[int, np.ndarray], thumb_size: int,
                 opener: Callable[[str], IO[bytes]] | None) -> None:
        self._images = images
        self._cams = cams
        self._size = thumb_size
        self._opener = opener
        self._cache: dict[int, Overlay] = {}

    def figure(self, row: int) -> str:
        r = self._images.iloc[row]
        if row not in self._cache:
            cam = self._cams.get(row)
            self._cache[row] = render_overlay(
                cam, r.get("cam_height"), r.get("cam_width"), image_path=r.get("image_path"),
                width=r.get("width"), height=r.get("height"), regions=r.get("regions"), thumb_size=self._size,
                opener=self._opener,
            )
        ov = self._cache[row]
        uri = str(r.get("image_uri", "") or "")
        name = uri.rstrip("/").rsplit("/", 1)[-1] or uri
        flagged = bool(r.get("spurious_flag")) if not is_missing(r.get("spurious_flag")) else False
        conf = r.get("confidence")
        caption = (
            f'<span title="{esc(uri)}">{esc(name)}</span><br>'
            f"{esc(r.get('label'))} \u2192 {esc(r.get('prediction'))}"
            f"{' (' + pct(conf, 0) + ')' if not is_missing(conf) else ''}<br>"
            f'<span class="sh">core {pct(r.get("core_share"), 0)} \u00b7 spur {pct(r.get("spurious_share"), 0)}'
            f' \u00b7 out {pct(r.get("outside_share"), 0)}</span>'
            f"{FLAG_BADGE if flagged else ''}"
            f"{'' if ov.has_original else '<br><span class=note>original missing: heatmap only</span>'}"
        )
        return (
            f'<figure class="{"flag" if flagged else ""}" style="width:{max(ov.width, 104) + 12}px">'
            f'<img src="{ov.data_uri}" width="{ov.width}" '
            f'height="{ov.height}" alt="Grad-CAM overlay of {esc(name)}" loading="lazy">'
            f"<figcaption>{caption}</figcaption></figure>"
        )


def _legend() -> str:
    core = "#%02x%02x%02x" % CORE_COLOUR
    spur = "#%02x%02x%02x" % SPURIOUS_COLOUR
    return (
        f'<p class="legend"><span><span class="sw" style="border-color:{core}"></span>core region</span>'
        f'<span><span class="sw" style="border-color:{spur}"></span>spurious region</span>'
        "<span>heat: Grad-CAM (blue low \u2192 red high), each map scaled to its own maximum</span></p>"
    )


def _confusion_frame(run: RunTables) -> tuple[pd.DataFrame | None, str]:
    if run.confusion is not None:
        overall = run.confusion[run.confusion["attribute"].astype(str) == OVERALL]
        if len(overall):
            return overall.groupby(["label", "prediction"], as_index=False)["n"].sum(), ""
    if run.images is not None and len(run.images) and {"label", "prediction"} <= set(run.images.columns):
        derived = run.images.groupby(["label", "prediction"], as_index=False, dropna=False).size().rename(columns={"size": "n"})
        return derived, "Counted from images.parquet (no overall rows in confusion.parquet)."
    return None, ""


def _confusion_plan(images: pd.DataFrame, max_gallery: int) -> dict[tuple[str, str], list[int]]:
    """Which images each confusion cell shows: a bounded sample, worst first, errors get the budget first."""
    if max_gallery <= 0 or not len(images):
        return {}
    keyed = images.assign(_l=images["label"].astype(str), _p=images["prediction"].astype(str))
    sizes = keyed.groupby(["_l", "_p"]).size()
    cells = sorted(sizes.index, key=lambda c: (c[0] == c[1], -int(sizes[c]), c))
    per_cell = max(1, min(max_gallery, CONFUSION_THUMBS // max(1, len(cells))))
    budget = CONFUSION_THUMBS
    ordered = _sort_worst(keyed)
    heads = ordered.groupby(["_l", "_p"], sort=False).head(per_cell)
    by_cell = {c: list(g["_row"]) for c, g in heads.groupby(["_l", "_p"], sort=False)}
    plan = {}
    for cell in cells:
        take = by_cell.get(cell, [])[: min(per_cell, budget)]
        if not take:
            break
        plan[cell] = take
        budget -= len(take)
    return plan


def _matrix_html(classes: list[str], counts: dict[tuple[str, str], int], plan: dict[tuple[str, str], list[int]]) -> str:
    index = {c: i for i, c in enumerate(classes)}
    row_totals = {c: 0 for c in classes}
    for (label, _), n in counts.items():
        row_totals[label] += n
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    body_rows = []
    for label in classes:
        cells = []
        for pred in classes:
            n = counts.get((label, pred), 0)
            if not n:
                cells.append("<td>0</td>")  # empty cells stay bare: a 100-class matrix has 10,000 of them
                continue
            share = n / row_totals[label] if row_totals[label] else 0.0
            colour = (f"rgba(22,121,74,{0.08 + 0.6 * share:.3f})" if label == pred
                      else f"rgba(179,38,30,{0.08 + 0.7 * share:.3f})")
            title = esc(f"true {label}, predicted {pred}: {n:,} ({share * 100:.1f}% of the row)")
            if (label, pred) in plan:
                inner = f'<a href="#cm-{index[label]}-{index[pred]}" title="{title}">{n:,}</a>'
            else:
                inner = f'<span title="{title}">{n:,}</span>'
            cells.append(f'<td style="background:{colour}">{inner}</td>')
        body_rows.append(f'<tr><th class="rowh">{esc(label)}</th>{"".join(cells)}</tr>')
    return (
        '<div class="scroll"><table class="cm"><thead><tr><th>true \u2193 / predicted \u2192</th>'
        f'{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table></div>'
    )


def _top_confusions_html(classes: list[str], counts: dict[tuple[str, str], int],
                         plan: dict[tuple[str, str], list[int]]) -> str:
    """For too many classes to draw a grid: the most frequent confusions as a list."""
    index = {c: i for i, c in enumerate(classes)}
    off = sorted(((n, l, p) for (l, p), n in counts.items() if l != p and n), key=lambda t: (-t[0], t[1], t[2]))
    rows = []
    for n, label, pred in off[:MATRIX_LIST_ROWS]:
        cell = f"{n:,}"
        if (label, pred) in plan:
            cell = f'<a href="#cm-{index[label]}-{index[pred]}">{cell}</a>'
        rows.append([esc(label), esc(pred), cell])
    note = (f'<p class="note">{len(classes):,} classes: too many to draw the matrix; the {min(len(off), MATRIX_LIST_ROWS):,} '
            f"most frequent confusions of {len(off):,} are listed (confusion.parquet keeps every cell).</p>")
    return note + table(["true label", "predicted", "images"], rows, numeric=(2,))


def _confusion_section(run: RunTables, thumbs: _Thumbs | None, plan: dict[tuple[str, str], list[int]]) -> str:
    cm, note = _confusion_frame(run)
    if cm is None:
        return section("confusion", "Confusion matrix", skipped(_skip_message(run, "subgroups", "confusion.parquet")))
    cm = cm.assign(label=cm["label"].astype(str), prediction=cm["prediction"].astype(str))
    classes = sorted(set(cm["label"]) | set(cm["prediction"]))
    index = {c: i for i, c in enumerate(classes)}
    counts: dict[tuple[str, str], int] = {}
    for r in cm.itertuples(index=False):
        counts[(r.label, r.prediction)] = counts.get((r.label, r.prediction), 0) + int(r.n)
    plan = {cell: rows for cell, rows in plan.items() if cell[0] in index and cell[1] in index}
    grid = (_matrix_html(classes, counts, plan) if len(classes) <= MATRIX_MAX_CLASSES
            else _top_confusions_html(classes, counts, plan))
    body = [f'<p class="note">Rows: true label; columns: prediction. Click a cell to see its images. {esc(note)}</p>', grid]
    if thumbs is None or run.images is None:
        body.append('<p class="note">No images.parquet in this run: no per-image drill-down (saliency check skipped).</p>')
        return section("confusion", "Confusion matrix", "".join(body))
    body.append("<h3>Images per cell</h3>" + _legend())
    body.append(f'<p class="note">Per true class, the cell with the worst offender first; in each cell flagged images, '
                f"then highest spurious share; at most {max((len(v) for v in plan.values()), default=0)} per cell and "
                f"{CONFUSION_THUMBS} on the page. images.parquet keeps every image.</p>")
    spur = (pd.to_numeric(run.images["spurious_share"], errors="coerce").fillna(-1.0).to_numpy()
            if "spurious_share" in run.images else np.full(len(run.images), -1.0))
    for label in classes:
        label_cells = [(label, pred) for pred in classes if (label, pred) in plan]
        if not label_cells:
            continue
        label_cells.sort(key=lambda c: (-max(spur[r] for r in plan[c]), c[0] == c[1], index[c[1]]))
        body.append(f"<h4>True class {esc(label)}</h4>")
        for cell in label_cells:
            rows = plan[cell]
            n = counts.get(cell, len(rows))
            body.append(
                f'<div class="cell" id="cm-{index[cell[0]]}-{index[cell[1]]}"><p><strong>{esc(cell[0])}</strong> '
                f"predicted as <strong>{esc(cell[1])}</strong>: {n:,} image(s), showing {len(rows)}</p>"
                f'<div class="gallery">{"".join(thumbs.figure(r) for r in rows)}</div></div>'
            )
    return section("confusion", "Confusion matrix", "".join(body))


def _saliency_plan(images: pd.DataFrame, max_gallery: int) -> dict[str, list[int]]:
    if max_gallery <= 0 or not len(images):
        return {}
    column = "target_class" if "target_class" in images else "label"
    keyed = images.assign(_c=images[column].astype(str))
    classes = sorted(keyed["_c"].unique())
    per_class = max(1, min(max_gallery, SALIENCY_THUMBS // max(1, len(classes))))
    heads = _sort_worst(keyed).groupby("_c", sort=False).head(per_class)
    plan: dict[str, list[int]] = {}
    budget = SALIENCY_THUMBS
    grouped = {c: list(g["_row"]) for c, g in heads.groupby("_c", sort=False)}
    for c in classes:
        take = grouped.get(c, [])[: min(per_class, budget)]
        if not take:
            break
        plan[c] = take
        budget -= len(take)
    return plan


def _saliency_section(run: RunTables, thumbs: _Thumbs | None, plan: dict[str, list[int]]) -> str:
    sc = run.saliency_by_class
    if sc is None and run.images is None:
        return section("saliency", "Saliency per class",
                       skipped(_skip_message(run, "saliency", "saliency_by_class.parquet or images.parquet")))
    body = [_check_gates(run, "saliency")]
    if sc is not None and len(sc):
        limit = _threshold(run, "saliency", "flagged")
        ordered = sc.assign(_f=pd.to_numeric(sc["flagged_fraction"], errors="coerce")).sort_values(
            ["_f", "class"], ascending=[False, True], na_position="last", kind="stable")
        items = [(str(r["class"]), None if is_missing(r["_f"]) else float(r["_f"]),
                  bool(r["flagged"]) if "flagged" in r and not is_missing(r["flagged"]) else False)
                 for _, r in ordered.iterrows()]
        body.append("<h3>Flagged fraction per class</h3>")
        body.append(class_bars(items, threshold=limit, label="fraction of the class's images flagged as shortcut-driven"))
        rows = []
        for _, r in ordered.iterrows():
            rows.append([
                esc(r["class"]), count(r.get("images")), count(r.get("images_with_regions")),
                pct(r.get("mean_core_share")), pct(r.get("mean_spurious_share")), pct(r.get("mean_outside_share")),
                num(r.get("mean_spurious_enrichment"), 2), pct(r.get("pointing_accuracy")),
                pct(r.get("flagged_fraction")), badge(not bool(r.get("flagged")), yes="ok", no="flagged"),
            ])
        body.append(table(["class", "images", "with regions", "mean core share", "mean spurious share",
                           "mean outside share", "mean spurious enrichment", "pointing accuracy",
                           "flagged fraction", ""], rows, numeric=tuple(range(1, 9))))
    elif sc is None:
        body.append(skipped(_skip_message(run, "saliency", "saliency_by_class.parquet")))
    if thumbs is not None and plan:
        body.append("<h3>Most spurious-looking maps</h3>" + _legend())
        body.append(f'<p class="note">Per class: flagged images first, then highest spurious share; at most '
                    f"{max(len(v) for v in plan.values())} per class. images.parquet keeps every map.</p>")
        for cls_name, rows in plan.items():
            body.append(f"<h4>{esc(cls_name)}</h4>"
                        f'<div class="gallery">{"".join(thumbs.figure(r) for r in rows)}</div>')
    return section("saliency", "Saliency per class", "".join(body))


_QUARANTINE_FIXED = ("manifest", "row_number", "stage", "reason")


def _quarantine_section(run: RunTables) -> str:
    q = run.quarantine_head
    if q is None:
        status = run.check_status("ingest")
        msg = ("ingest check not configured / skipped (no quarantine.parquet in this run)"
               if status in (None, "skipped") else "no quarantine.parquet in this run folder")
        return section("quarantine", "Quarantine", skipped(msg))
    total = run.quarantine_total
    if total == 0:
        return section("quarantine", "Quarantine (0)", '<p class="note">No input row was rejected.</p>')
    extra = [c for c in q.columns if c not in _QUARANTINE_FIXED]
    rows = []
    for _, r in q.iterrows():
        given = "; ".join(f"{c}={_clip(r[c])}" for c in extra if not is_missing(r[c]) and str(r[c]) != "")
        rows.append([esc(r.get("manifest")), count(r.get("row_number")), esc(r.get("stage")),
                     f"<strong>{esc(r.get('reason'))}</strong>", f'<span class="note">{esc(given)}</span>'])
    body = [table(["manifest", "row", "stage", "reason", "row as given"], rows, numeric=(1,))]
    if total > len(q):
        body.append(f'<p class="note">Showing the first {len(q):,} of {total:,} rejected rows; '
                    f"{total - len(q):,} more are in quarantine.parquet.</p>")
    return section("quarantine", f"Quarantine ({total:,})", "".join(body))


def _clip(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def build_html(run: RunTables, *, previous: RunDigest | None, max_gallery: int, thumb_size: int,
               opener: Callable[[str], IO[bytes]] | None = None) -> str:
    """The whole page for a loaded run (pure apart from reading CAMs and, through `opener`, thumbnail sources)."""
    headline = history.headline_metrics(run.saliency_by_class, run.subgroups, run.cooccurrence)
    thumbs = None
    cm_plan: dict[tuple[str, str], list[int]] = {}
    sal_plan: dict[str, list[int]] = {}
    if run.images is not None and len(run.images):
        if {"label", "prediction"} <= set(run.images.columns):
            cm_plan = _confusion_plan(run.images, max_gallery)
        sal_plan = _saliency_plan(run.images, max_gallery)
        wanted = [r for rows in cm_plan.values() for r in rows] + [r for rows in sal_plan.values() for r in rows]
        thumbs = _Thumbs(run.images, read_cams(run.run_dir / "images.parquet", wanted), thumb_size, opener)
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "Summary"), ("cooccurrence", "Co-occurrence"), ("subgroups", "Subgroups"),
        ("confusion", "Confusion matrix"), ("saliency", "Saliency"), ("quarantine", "Quarantine")))
    body = (
        _verdict_block(run)
        + f'<nav><div class="inner">{nav}</div></nav><main>'
        + _summary_section(run, previous, headline)
        + _cooccurrence_section(run)
        + _subgroups_section(run)
        + _confusion_section(run, thumbs, cm_plan)
        + _saliency_section(run, thumbs, sal_plan)
        + _quarantine_section(run)
        + '<footer>Rendered from the Parquet tables in this run folder; the tables keep every row, this page '
        "shows samples. Re-render with <code>python -m audit_tasks report --run DIR</code>.</footer></main>"
    )
    word = _VERDICT_WORDS[_verdict_status(run)]
    return page(f"{word} \u00b7 audit {run.run_id}", body)


def render_report(
    run_dir: StoragePath | str,
    *,
    previous_run_dir: StoragePath | None = None,
    max_gallery: int = 24,
    thumb_size: int = 96,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> StoragePath:
    """Render `<run_dir>/report.html` from the run's tables (atomically); returns its path.

    `previous_run_dir` overrides the previous run (else: runs.parquet, then sibling folders by created_at).
    `max_gallery` bounds the thumbnails per confusion cell and per class; `thumb_size` is their longest side.
    `opener` opens the original images for thumbnails (`storage.FileOpener(image_root)` for an object store
    whose credentials fsspec does not find by itself).
    Raises AuditError when the run folder does not exist or a table cannot be read.
    """
    run_dir = storage_path(run_dir)
    if not run_dir.is_dir():
        raise AuditError(f"run folder not found: {run_dir}")
    if max_gallery < 0:
        raise AuditError(f"max_gallery must be >= 0; got {max_gallery}")
    if not 16 <= thumb_size <= 512:
        raise AuditError(f"thumb_size must be between 16 and 512 pixels; got {thumb_size}")
    run = load_run(run_dir)
    previous = find_previous(run, previous_run_dir)
    html_text = build_html(run, previous=previous, max_gallery=max_gallery, thumb_size=thumb_size, opener=opener)
    return write_text(html_text, run_dir / REPORT_FILE)
