"""Reading a finished run for the report: its tables (images without CAMs), CAMs on demand, the previous run.

Absent tables are None (a check that was not configured); unreadable ones raise AuditError naming the file.
Only the rows the page shows are read from big tables: the first quarantine rows, the CAMs of sampled images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from audit_tasks import history
from audit_tasks.errors import AuditError
from audit_tasks.gx_results import DATA_DOCS_INDEX, VALIDATION_DIR
from audit_tasks.sample_weights import WEIGHTS_FILE
from audit_tasks.storage import StoragePath, parquet_file, parquet_schema, read_parquet, storage_path

#: Quarantine rows shown on the page; the rest stay in quarantine.parquet.
QUARANTINE_ROWS = 1000

_IMAGE_COLUMNS = (
    "image_id",
    "image_uri",
    "image_path",
    "label",
    "prediction",
    "confidence",
    "correct",
    "target_class",
    "width",
    "height",
    "regions",
    "core_share",
    "spurious_share",
    "outside_share",
    "spurious_enrichment",
    "pointing_hit",
    "has_regions",
    "spurious_flag",
    "cam_height",
    "cam_width",
)


def is_missing(value: Any) -> bool:
    """Whether a table value is absent: None or a float NaN (what the page shows as an em dash)."""
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


# ---------------------------------------------------------------------------------------------
# Reading the run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedValidation:
    """One saved GX validation result: its path relative to the run folder and what its JSON says."""

    href: str
    suite: str
    success: bool | None
    evaluated: int | None
    successful: int | None


@dataclass(frozen=True)
class RunTables:
    """What the report reads from a run folder; a table is None when its file is absent."""

    run_dir: StoragePath
    summary: dict[str, Any] | None
    gates: pd.DataFrame | None
    cooccurrence: pd.DataFrame | None
    class_balance: pd.DataFrame | None
    saliency_by_class: pd.DataFrame | None
    subgroups: pd.DataFrame | None
    confusion: pd.DataFrame | None
    quarantine_head: pd.DataFrame | None
    quarantine_total: int
    images: pd.DataFrame | None  # without the cam column; `_row` is the row number in images.parquet
    saliency_pairs: pd.DataFrame | None = None  # co-occurrence-aware saliency (saliency_pairs.parquet)
    validations: tuple[SavedValidation, ...] = ()  # the ingest's GX results (validation/*.json)
    data_docs: str | None = None  # GX Data Docs' index.html, relative to the run folder, when built
    leakage: pd.DataFrame | None = None  # multilabel prediction leakage (leakage.parquet)
    leakage_images: pd.DataFrame | None = None  # flagged pairs' worst images with b's CAM (leakage_images.parquet)
    multilabel: bool = False  # images.parquet holds predicted sets (model.task: multilabel)
    strategies: pd.DataFrame | None = None  # saliency clusters per class (strategies.parquet)
    rarity: pd.DataFrame | None = None  # accuracy by density quantile per class (rarity.parquet)
    sample_weights: pd.DataFrame | None = None  # per image: density and weights (sample_weights.parquet)

    @property
    def run_id(self) -> str:
        if self.summary and self.summary.get("run_id"):
            return str(self.summary["run_id"])
        return self.run_dir.name

    def check_status(self, name: str) -> str | None:
        """'ran', 'skipped' or None (unknown) for a check, from summary.json."""
        checks = (self.summary or {}).get("checks") or {}
        value = checks.get(name) if isinstance(checks, Mapping) else None
        return str(value) if value is not None else None


def _read(path: StoragePath) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return read_parquet(path).to_pandas()
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read this table for the report ({exc})") from exc


def _read_summary(run_dir: StoragePath) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise AuditError(f"{path}: expected a JSON object")
    return payload


def _read_quarantine(path: StoragePath, limit: int) -> tuple[pd.DataFrame | None, int]:
    if not path.is_file():
        return None, 0
    try:
        pf = parquet_file(path)
        total = pf.metadata.num_rows
        batches = []
        taken = 0
        for batch in pf.iter_batches(batch_size=limit):
            batches.append(batch.slice(0, limit - taken))
            taken += min(limit - taken, batch.num_rows)
            if taken >= limit:
                break
        if batches:
            head = pa.Table.from_batches(batches).to_pandas()
        else:
            head = pf.schema_arrow.empty_table().to_pandas()
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read this table for the report ({exc})") from exc
    return head, int(total)


def _read_images(path: StoragePath) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        names = set(parquet_schema(path).names)
        frame = read_parquet(path, [c for c in _IMAGE_COLUMNS if c in names]).to_pandas()
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read this table for the report ({exc})") from exc
    frame["_row"] = np.arange(len(frame), dtype=np.int64)
    return frame


def load_run(run_dir: StoragePath) -> RunTables:
    """Read every table the report uses from a run folder (images without their CAMs)."""
    run_dir = storage_path(run_dir)
    head, total = _read_quarantine(run_dir / "quarantine.parquet", QUARANTINE_ROWS)
    return RunTables(
        run_dir=run_dir,
        summary=_read_summary(run_dir),
        gates=_read(run_dir / "gates.parquet"),
        cooccurrence=_read(run_dir / "cooccurrence.parquet"),
        class_balance=_read(run_dir / "class_balance.parquet"),
        saliency_by_class=_read(run_dir / "saliency_by_class.parquet"),
        subgroups=_read(run_dir / "subgroups.parquet"),
        confusion=_read(run_dir / "confusion.parquet"),
        quarantine_head=head,
        quarantine_total=total,
        images=_read_images(run_dir / "images.parquet"),
        saliency_pairs=_read(run_dir / "saliency_pairs.parquet"),
        validations=_read_validations(run_dir),
        data_docs=DATA_DOCS_INDEX if (run_dir / DATA_DOCS_INDEX).is_file() else None,
        leakage=_read(run_dir / "leakage.parquet"),
        leakage_images=_read(run_dir / "leakage_images.parquet"),
        multilabel=_is_multilabel(run_dir / "images.parquet"),
        strategies=_read(run_dir / "strategies.parquet"),
        rarity=_read(run_dir / "rarity.parquet"),
        sample_weights=_read(run_dir / WEIGHTS_FILE),
    )


def _read_validations(run_dir: StoragePath) -> tuple[SavedValidation, ...]:
    """The saved GX results, by file name; one that does not parse is still listed (its link still works)."""
    folder = run_dir / VALIDATION_DIR
    if not folder.is_dir():
        return ()
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    return tuple(_saved_validation(folder / name, f"{VALIDATION_DIR}/{name}") for name in names)


def _saved_validation(path: StoragePath, href: str) -> SavedValidation:
    try:
        payload: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        payload = None
    fields: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {}
    stats = fields.get("statistics")
    stats = stats if isinstance(stats, Mapping) else {}
    success = fields.get("success")
    return SavedValidation(
        href=href,
        suite=str(fields.get("suite_name") or href.rsplit("/", 1)[-1].removesuffix(".json")),
        success=success if isinstance(success, bool) else None,
        evaluated=_count(stats.get("evaluated_expectations")),
        successful=_count(stats.get("successful_expectations")),
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_multilabel(images: StoragePath) -> bool:
    """A multilabel run's images table has the predicted sets (a multiclass one never has the column)."""
    try:
        return images.is_file() and "predicted_labels" in parquet_schema(images).names
    except (OSError, ValueError) as exc:
        raise AuditError(f"{images}: cannot read this table for the report ({exc})") from exc


def read_cams(path: StoragePath, rows: list[int]) -> dict[int, np.ndarray]:
    """The CAMs of the given images.parquet rows, read one row group at a time (memory stays bounded)."""
    wanted = np.array(sorted(set(rows)), dtype=np.int64)
    out: dict[int, np.ndarray] = {}
    if not len(wanted) or not path.is_file():
        return out
    pf = parquet_file(path)
    if "cam" not in pf.schema_arrow.names:
        return out
    offset = 0
    for rg in range(pf.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        local = wanted[(wanted >= offset) & (wanted < offset + n)] - offset
        if len(local):
            chunk = pf.read_row_group(rg, columns=["cam"]).column("cam").take(local)
            for r, value in zip(local, chunk.to_pylist(), strict=True):
                out[int(r + offset)] = np.asarray(value if value is not None else [], dtype=np.float32)
        offset += n
    return out


# ---------------------------------------------------------------------------------------------
# Previous run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDigest:
    """What the "change since the previous run" block compares: verdict, failed gates, counts, headline."""

    run_id: str
    created_at: str | None
    passed: bool | None
    failed_gates: tuple[str, ...]
    counts: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    verdict: str | None = None  # passed | failed | inconclusive (None: recorded before verdicts existed)


def _digest_from_folder(run_dir: StoragePath) -> RunDigest | None:
    summary = _read_summary(run_dir) if run_dir.is_dir() else None
    if summary is None:
        return None
    return RunDigest(
        run_id=str(summary.get("run_id") or run_dir.name),
        created_at=str(summary["created_at"]) if summary.get("created_at") is not None else None,
        passed=summary.get("passed"),
        failed_gates=tuple(str(g) for g in summary.get("failed_gates") or []),
        counts=dict(summary.get("counts") or {}),
        headline=history.read_headline(run_dir),
        verdict=_known_verdict(summary.get("verdict")),
    )


def _digest_from_history(output_dir: StoragePath, run_id: str) -> RunDigest | None:
    runs = history.read_runs(output_dir)
    rows = runs[runs["run_id"] == run_id]
    if not len(rows):
        return None
    row = rows.iloc[0]
    created = history.parse_time(row["created_at"]) if not pd.isna(row["created_at"]) else None
    return RunDigest(
        run_id=run_id,
        created_at=created.isoformat() if created else None,
        passed=None if pd.isna(row["passed"]) else bool(row["passed"]),
        failed_gates=tuple(row["failed_gates"] if row["failed_gates"] is not None else ()),
        counts=json.loads(row["counts_json"]) if isinstance(row["counts_json"], str) else {},
        headline={k: (None if is_missing(row[k]) or pd.isna(row[k]) else row[k]) for k in history.HEADLINE_FIELDS},
        verdict=_known_verdict(row["verdict"]),
    )


def _known_verdict(value: Any) -> str | None:
    return value if value in ("passed", "failed", "inconclusive") else None


def find_previous(run: RunTables, previous_run_dir: StoragePath | None) -> RunDigest | None:
    """The previous run of the same audit: the one given, else the run history's, else the latest older
    sibling folder. A run whose summary has an `audit_fingerprint` is compared only with runs of the same
    fingerprint (same dataset, model and checks): after a change there is nothing like-for-like before it,
    and summary.json's `baseline_reason` says so."""
    if previous_run_dir is not None:
        return _digest_from_folder(storage_path(previous_run_dir))
    output_dir = run.run_dir.parent
    created_at = (run.summary or {}).get("created_at")
    fingerprint = (run.summary or {}).get("audit_fingerprint")
    if (output_dir / history.RUNS_FILE).is_file():
        prev_id = history.previous_run(output_dir, run.run_id, created_at=created_at, audit_fingerprint=fingerprint)
        if prev_id is not None:
            return _digest_from_folder(output_dir / prev_id) or _digest_from_history(output_dir, prev_id)
        if fingerprint is not None:
            return None
    mine = history.parse_time(created_at)
    if mine is None:
        return None
    best: tuple[Any, str, StoragePath] | None = None
    for sibling in sorted(p for p in output_dir.iterdir() if p.is_dir() and p != run.run_dir):
        summary_path = sibling / "summary.json"
        if not summary_path.is_file():
            continue
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        when = history.parse_time(summary.get("created_at")) if isinstance(summary, dict) else None
        if when is None or (when, sibling.name) >= (mine, run.run_dir.name):
            continue
        if fingerprint is not None and summary.get("audit_fingerprint") not in (None, fingerprint):
            continue
        if best is None or (when, sibling.name) > (best[0], best[1]):
            best = (when, sibling.name, sibling)
    return _digest_from_folder(best[2]) if best else None
