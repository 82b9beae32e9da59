"""Run history: `runs.parquet` beside the run folders, one row per run id, so a trend over nights is one query.

The index is small and rewritten whole on each record (read, upsert, write aside, rename) under an
advisory file lock, so two runs finishing together do not lose each other's row. Re-recording a run id
replaces its row: recording is idempotent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from audit_tasks.errors import AuditError
from audit_tasks.storage import StoragePath, exclusive_lock, read_parquet, storage_path
from audit_tasks.subgroups import STATUS_TOO_SMALL
from audit_tasks.tables import write_table

RUNS_FILE = "runs.parquet"
_LOCK_FILE = ".runs.parquet.lock"

#: The headline metrics a run row carries (all optional: a skipped check leaves its metrics null).
HEADLINE_FIELDS: dict[str, pa.DataType] = {
    "max_flagged_fraction": pa.float64(),  # saliency: largest per-class fraction of flagged images
    "n_flagged_classes": pa.int64(),  # saliency: classes over max_flagged_fraction
    "worst_subgroup_gap": pa.float64(),  # subgroups: largest gap to the best group (judged groups only)
    "n_flagged_groups": pa.int64(),  # subgroups: groups over max_gap
    "n_flagged_pairs": pa.int64(),  # cooccurrence: flagged tag/attribute pairs
}

#: Other names callers use for the same metrics (accepted by record_run, stored under the canonical name).
HEADLINE_ALIASES = {"max_subgroup_gap": "worst_subgroup_gap", "flagged_pairs": "n_flagged_pairs"}

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), metadata={"meaning": b"run creation time, UTC"}),
        pa.field("passed", pa.bool_()),
        pa.field("verdict", pa.string(), metadata={"meaning": b"passed | failed | inconclusive"}),
        pa.field("n_failed_gates", pa.int64(), nullable=False),
        pa.field("failed_gates", pa.list_(pa.string())),
        pa.field("n_ingested", pa.int64(), metadata={"unit": b"rows"}),
        pa.field("n_quarantined", pa.int64(), metadata={"unit": b"rows"}),
        pa.field("n_audited", pa.int64(), metadata={"unit": b"images"}),
        pa.field("counts_json", pa.string(), metadata={"meaning": b"summary.json counts, as JSON"}),
        pa.field("checks_json", pa.string(), metadata={"meaning": b"summary.json checks (ran/skipped), as JSON"}),
        *[
            pa.field(name, dtype, metadata={"unit": b"fraction" if dtype == pa.float64() else b"count"})
            for name, dtype in HEADLINE_FIELDS.items()
        ],
        pa.field("report", pa.string(), metadata={"meaning": b"report.html path relative to the output dir"}),
        pa.field("model_fingerprint", pa.string(), metadata={"meaning": b"hash of the audited checkpoint and recipe"}),
        pa.field(
            "audit_fingerprint",
            pa.string(),
            metadata={"meaning": b"hash of the dataset locations, model fingerprint and checks config (same audit)"},
        ),
    ]
)


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 time (a summary's created_at) as an aware UTC datetime; None when absent or unparsable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def headline_metrics(
    saliency_by_class: pd.DataFrame | None,
    subgroups: pd.DataFrame | None,
    cooccurrence: pd.DataFrame | None,
) -> dict[str, float | int | None]:
    """The run's headline numbers from its check tables (None for a check whose table is absent)."""
    out: dict[str, float | int | None] = dict.fromkeys(HEADLINE_FIELDS)
    if saliency_by_class is not None and len(saliency_by_class):
        fractions = pd.to_numeric(saliency_by_class.get("flagged_fraction"), errors="coerce")
        out["max_flagged_fraction"] = _float(fractions.max())
        if "flagged" in saliency_by_class:
            out["n_flagged_classes"] = int(saliency_by_class["flagged"].fillna(False).astype(bool).sum())
    if subgroups is not None and len(subgroups):
        judged = subgroups
        if "status" in subgroups:
            judged = subgroups[subgroups["status"] != STATUS_TOO_SMALL]
        gaps = pd.to_numeric(judged.get("gap"), errors="coerce") if len(judged) else pd.Series(dtype=float)
        out["worst_subgroup_gap"] = _float(gaps.max()) if len(gaps) else None
        if "flagged" in subgroups:
            out["n_flagged_groups"] = int(subgroups["flagged"].fillna(False).astype(bool).sum())
    if cooccurrence is not None and "flagged" in cooccurrence:
        out["n_flagged_pairs"] = int(cooccurrence["flagged"].fillna(False).astype(bool).sum())
    return out


def read_headline(run_dir: StoragePath) -> dict[str, float | int | None]:
    """Headline metrics of a run folder, read from whichever of its check tables exist."""

    def load(name: str) -> pd.DataFrame | None:
        path = storage_path(run_dir) / name
        return read_parquet(path).to_pandas() if path.is_file() else None

    return headline_metrics(load("saliency_by_class.parquet"), load("subgroups.parquet"), load("cooccurrence.parquet"))


def read_runs(output_dir: StoragePath) -> pd.DataFrame:
    """Every recorded run, oldest first (an empty frame with the columns when nothing is recorded yet)."""
    path = storage_path(output_dir) / RUNS_FILE
    if not path.is_file():
        return RUNS_SCHEMA.empty_table().to_pandas()
    try:
        frame = read_parquet(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise AuditError(f"{path}: cannot read the run history ({exc}); delete it to start a new history") from exc
    for column in RUNS_SCHEMA.names:  # a history written by an older version lacks the newer columns
        if column not in frame.columns:
            frame[column] = None
    return _sorted(frame[RUNS_SCHEMA.names])


def record_run(
    output_dir: StoragePath, summary: Mapping[str, Any], headline: Mapping[str, Any] | None = None
) -> StoragePath:
    """Upsert the run's row (keyed by summary['run_id']) into `<output_dir>/runs.parquet`; returns its path.

    `summary` is the run's summary.json payload; `headline` holds any of HEADLINE_FIELDS (or their
    HEADLINE_ALIASES); `read_headline(run_dir)` computes them all from the run folder.
    Raises AuditError when the summary has no run_id or the headline has an unknown key.
    """
    run_id = summary.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise AuditError("record_run: summary has no 'run_id'")
    headline = {HEADLINE_ALIASES.get(k, k): v for k, v in (headline or {}).items()}
    unknown = sorted(set(headline) - set(HEADLINE_FIELDS))
    if unknown:
        raise AuditError(
            f"record_run: unknown headline metric(s) {', '.join(unknown)} (known: {', '.join(HEADLINE_FIELDS)})"
        )
    row = _row(run_id, summary, headline)
    output_dir = storage_path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(output_dir, _LOCK_FILE):
        existing = read_runs(output_dir)
        kept = existing[existing["run_id"] != run_id]
        new = pa.Table.from_pylist([row], schema=RUNS_SCHEMA).to_pandas()
        frame = _sorted(pd.concat([kept, new], ignore_index=True) if len(kept) else new)
        table = pa.Table.from_pandas(frame, schema=RUNS_SCHEMA, preserve_index=False)
        return write_table(table, output_dir / RUNS_FILE, name="runs")


def previous_run(
    output_dir: StoragePath, run_id: str, *, created_at: Any = None, audit_fingerprint: str | None = None
) -> str | None:
    """The run recorded just before `run_id` (by created_at, then run id), or None when there is none.

    When `run_id` is not recorded yet, `created_at` (its summary's time) places it; without either,
    the latest other recorded run is returned. With `audit_fingerprint`, only runs of the same audit
    count (same dataset, model and checks): a run of another configuration is no "before" to compare with.
    """
    runs = read_runs(output_dir)
    if audit_fingerprint is not None and len(runs):
        runs = runs[(runs["audit_fingerprint"] == audit_fingerprint) | (runs["run_id"] == run_id)]
    if not len(runs):
        return None
    mine = runs[runs["run_id"] == run_id]
    moment = parse_time(created_at)
    if len(mine):
        recorded = mine.iloc[0]["created_at"]
        moment = parse_time(recorded) if not pd.isna(recorded) else moment
    others = runs[runs["run_id"] != run_id]
    if moment is not None:
        mine_key = (moment, run_id)
        keep = [
            (t := parse_time(when) if not pd.isna(when) else None) is not None and (t, str(rid)) < mine_key
            for when, rid in zip(others["created_at"], others["run_id"], strict=True)
        ]
        others = others[keep]
    if not len(others):
        return None
    return str(others.iloc[-1]["run_id"])


def last_model_fingerprint(output_dir: StoragePath, run_id: str) -> str | None:
    """The model fingerprint of the latest recorded run other than `run_id`, or None (no such run, or one
    recorded before fingerprints existed)."""
    runs = read_runs(output_dir)
    others = runs[(runs["run_id"] != run_id) & runs["model_fingerprint"].notna()]
    return str(others.iloc[-1]["model_fingerprint"]) if len(others) else None


@dataclass(frozen=True)
class Baseline:
    """The run a policy compares with, or why there is none (`run_id` None, `reason` says why)."""

    run_id: str | None
    created_at: str | None
    reason: str


def last_clean_run(output_dir: StoragePath, run_id: str, audit_fingerprint: str | None) -> Baseline:
    """The newest passed run of the same audit (same `audit_fingerprint`) recorded before `run_id`.

    Without one, `reason` says whether this audit has no passed run yet or whether its dataset, model or
    checks changed since the last recorded run (which starts a new baseline).
    """
    runs = read_runs(output_dir)
    mine = runs[runs["run_id"] == run_id]
    others = runs[runs["run_id"] != run_id]
    moment = parse_time(mine.iloc[0]["created_at"]) if len(mine) and not pd.isna(mine.iloc[0]["created_at"]) else None
    if moment is not None:
        earlier = [(t := parse_time(w)) is not None and t <= moment for w in others["created_at"]]
        others = others[pd.Series(earlier, index=others.index, dtype=bool)]
    if audit_fingerprint is None:
        return Baseline(None, None, "this run has no audit fingerprint (no model fingerprint recorded)")
    same = others[others["audit_fingerprint"] == audit_fingerprint]
    clean = same[same["passed"].fillna(False).astype(bool)]
    if len(clean):
        row = clean.iloc[-1]
        when = parse_time(row["created_at"])
        return Baseline(str(row["run_id"]), when.isoformat(timespec="seconds") if when else None, "")
    if len(same):
        return Baseline(None, None, "no earlier run of this audit passed: this run starts the baseline")
    if len(others):
        latest = str(others.iloc[-1]["run_id"])
        return Baseline(
            None,
            None,
            f"the dataset, model or checks config changed since run {latest}: this run starts a new baseline",
        )
    return Baseline(None, None, "no earlier run recorded: this run starts the baseline")


def _row(run_id: str, summary: Mapping[str, Any], headline: Mapping[str, Any]) -> dict[str, Any]:
    counts = dict(summary.get("counts") or {})
    failed = [str(g) for g in summary.get("failed_gates") or []]
    passed = summary.get("passed")
    row: dict[str, Any] = {
        "run_id": run_id,
        "created_at": parse_time(summary.get("created_at")),
        "passed": (passed is True) if passed is not None else None,
        "verdict": summary.get("verdict") or (None if passed is None else "passed" if passed is True else "failed"),
        "n_failed_gates": len(failed),
        "failed_gates": failed,
        "n_ingested": _int(counts.get("ingested")),
        "n_quarantined": _int(counts.get("quarantined")),
        "n_audited": _int(counts.get("audited")),
        "counts_json": json.dumps(counts, sort_keys=True, default=str),
        "checks_json": json.dumps(dict(summary.get("checks") or {}), sort_keys=True, default=str),
        "report": f"{run_id}/report.html",
        "model_fingerprint": summary.get("model_fingerprint"),
        "audit_fingerprint": summary.get("audit_fingerprint"),
    }
    for name, dtype in HEADLINE_FIELDS.items():
        value = headline.get(name)
        row[name] = _int(value) if pa.types.is_integer(dtype) else _float(value)
    return row


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    if not len(frame):
        return frame.reset_index(drop=True)
    return frame.sort_values(["created_at", "run_id"], na_position="first", kind="stable").reset_index(drop=True)


def _int(value: Any) -> int | None:
    f = _float(value)
    return None if f is None else int(f)


def _float(value: Any) -> float | None:
    """A finite-or-inf float, or None for missing, NaN and non-numbers."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f
