"""Ingest: new manifests in the landing folder -> catalog rows, quarantine rows, and the ledger.

Every row of every manifest ends in exactly one of `accepted` or `quarantined`, with a reason for the
latter. Order per row: parse, resolve the image path under the root, probe the image, validate with Great
Expectations (the built-in rules and the team's own suite, see audit_tasks.gx_suite), hash the content,
de-duplicate (against the catalog's other runs and earlier rows of this run).

The catalog itself (parts, ledger, lock) is `audit_tasks.catalog`. Crash safety and idempotence come from
its order of writes: the run's part first, the ledger last. A crash in between leaves the manifests still
pending; re-running the same run id reprocesses exactly the manifests the ledger lists for it and rewrites
its part identically.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from audit_tasks.catalog import (
    CATALOG_COLUMNS,
    STATUS_FAILED,
    STATUS_INGESTED,
    catalog_frame,
    catalog_lock,
    commit_run,
    read_catalog_table,
    read_ledger,
    write_part,
)
from audit_tasks.config import AuditConfig, IngestCheck
from audit_tasks.errors import ConfigError, ImageError, ManifestError, PathEscapeError
from audit_tasks.gates import GateResult
from audit_tasks.gx_results import SuiteValidation
from audit_tasks.gx_suite import build_suite, check_suite
from audit_tasks.image_properties import PROPERTY_FIELDS, empty_properties, header_properties
from audit_tasks.images import content_hash, probe_image
from audit_tasks.manifest import ROW_ERROR, parse_region_boxes, read_manifest, regions_json
from audit_tasks.paths import resolve_under
from audit_tasks.run_ids import check_run_id
from audit_tasks.storage import StoragePath, filesystem, is_remote, public_uri, storage_path
from audit_tasks.validation import check_rows, is_empty_cell

if TYPE_CHECKING:
    from upath import UPath

#: Columns the ingest fills itself; a manifest may not carry them (it would be silently overwritten).
INGEST_RECORDED_COLUMNS = (
    "run_id",
    "ingest_date",
    "manifest",
    "row_number",
    "image_path",
    "content_sha256",
    "width",
    "height",
    *(f.name for f in PROPERTY_FIELDS),
    "reason",
    "stage",
)
_REQUIRED = ("image_uri", "label")
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", "~")

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["manifest", "sha256", "rows", "accepted", "quarantined", "status", "reason"]


@dataclass(frozen=True)
class IngestResult:
    """What one ingest run did: the rows it cataloged, the rows it refused, and one line per manifest.

    `manifests` accounts for every row: rows == accepted + quarantined. A manifest refused as a whole
    (unreadable, a required column missing) is one row of `quarantined` (row_number null) and counts its
    rows there (at least 1, so a file whose rows cannot even be counted still weighs in the gate).
    """

    run_id: str
    ingest_date: str
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    manifests: pd.DataFrame
    catalog_part: StoragePath | None = None
    # Each Great Expectations suite run, bounded, for the run folder (audit_tasks.gx_results).
    validations: tuple[SuiteValidation, ...] = ()

    @property
    def rows_in(self) -> int:
        return int(self.manifests["rows"].sum()) if len(self.manifests) else 0


def ingest(config: AuditConfig, run_id: str, *, today: date | None = None) -> IngestResult:
    """Ingest every new manifest in `dataset.landing` under `run_id` (see the module docstring).

    Args:
        today: the ingest date of a first run (default: today). A re-run keeps its first run's date.

    Raises:
        ConfigError: no dataset section, a run id that breaks the rule of audit_tasks.run_ids, or a
            `checks.ingest.suite` GX refuses (raised before any row moves).
        ManifestError: a re-run whose manifests are no longer in the landing folder.
    """
    dataset = config.require_dataset()
    check_run_id(run_id)
    check = config.checks.ingest
    suite = build_suite(check.suite) if check is not None and check.suite is not None else None  # before any row
    catalog = storage_path(dataset.catalog)
    with catalog_lock(catalog):
        return _ingest(config, run_id, catalog, today, suite)


def _ingest(
    config: AuditConfig, run_id: str, catalog: StoragePath, today: date | None, suite: Any = None
) -> IngestResult:
    dataset = config.require_dataset()
    ledger = read_ledger(catalog)
    mine = ledger[ledger["run_id"] == run_id]
    ingest_date = str(mine["ingest_date"].iloc[0]) if len(mine) else (today or date.today()).isoformat()

    files = _landing_files(storage_path(dataset.landing))
    hashes = {f: _manifest_hash(f) for f in files}
    if len(mine):
        wanted = set(mine["sha256"].dropna())
        unhashed = set(mine["manifest"][mine["sha256"].isna()])
        selected = [f for f in files if hashes[f] in wanted or (hashes[f] is None and f.name in unhashed)]
        found = {hashes[f] for f in selected}
        lost = sorted(set(mine["manifest"][mine["sha256"].notna() & ~mine["sha256"].isin(found)]))
        if lost:
            raise ManifestError(
                f"cannot re-run ingest {run_id!r}: manifest(s) {', '.join(lost)} are no longer in the landing"
                f" folder {dataset.landing} with the content that run ingested; restore them or use a new run id"
            )
    else:
        done = set(ledger["sha256"].dropna())
        selected = [f for f in files if hashes[f] is None or hashes[f] not in done]

    known = read_catalog_table(
        catalog,
        columns=["run_id", "manifest", "row_number", "image_id", "content_sha256"],
        exclude_run=run_id,
    ).to_pandas()
    classes = list(config.model.classes) if config.model is not None else None
    work = _Run(
        run_id=run_id,
        ingest_date=ingest_date,
        image_root=storage_path(dataset.image_root),
        allowed_schemes=dataset.allowed_schemes,
        max_pixels=dataset.max_image_pixels,
        min_side=dataset.min_image_side,
        attributes=config.attribute_columns(),
        classes=classes,
        suite=suite,
        # A multilabel model's truth is the tags: a row may come without a label (COCO `--label none`).
        label_required=config.model is None or config.model.task != "multilabel",
    )
    for path in selected:
        work.read(path, hashes[path])
    work.validate()
    work.deduplicate(known)
    result = work.result()

    part = None
    if len(selected) or len(mine):
        part = write_part(catalog, run_id, ingest_date, result.accepted)
        commit_run(catalog, ledger, run_id, ingest_date, result.manifests)  # last: commits the run
    return IngestResult(
        run_id, ingest_date, result.accepted, result.quarantined, result.manifests, part, work.validations
    )


def ingest_gate(result: IngestResult, check: IngestCheck) -> list[GateResult]:
    """The ingest gate: the fraction of this run's input rows that were quarantined must stay under the limit."""
    rows = result.rows_in
    quarantined = int(result.manifests["quarantined"].sum()) if len(result.manifests) else 0
    fraction = quarantined / rows if rows else 0.0
    if rows:
        top = (
            result.quarantined["reason"].map(_reason_kind).value_counts().head(3)
            if len(result.quarantined)
            else pd.Series(dtype=int)
        )
        causes = "; ".join(f"{n} x {r}" for r, n in top.items())
        detail = f"{quarantined} of {rows} rows quarantined ({fraction:.1%})" + (
            f"; most common: {causes}" if causes else ""
        )
    else:
        detail = "no new rows to ingest"
    return [
        GateResult(
            check="ingest",
            subject="all manifests",
            metric="quarantine_fraction",
            value=float(fraction),
            threshold=float(check.max_quarantine_fraction),
            passed=fraction <= check.max_quarantine_fraction,
            detail=detail,
            judged=rows > 0,
        )
    ]


# ---------------------------------------------------------------------------------------------
# The run's working state
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    manifests: pd.DataFrame


class _Run:
    """Collects rows across the run's manifests; rows carry (manifest order, row number) keys."""

    def __init__(
        self,
        *,
        run_id: str,
        ingest_date: str,
        image_root: StoragePath,
        allowed_schemes: Sequence[str],
        max_pixels: int,
        min_side: int,
        attributes: Sequence[str],
        classes: list[str] | None,
        suite: Any = None,
        label_required: bool = True,
    ) -> None:
        self.run_id = run_id
        self.ingest_date = ingest_date
        self.image_root = image_root
        self.allowed_schemes = tuple(allowed_schemes)
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.attributes = tuple(attributes)
        self.classes = classes
        self.suite = suite  # the user's GX ExpectationSuite (audit_tasks.gx_suite), or None
        self.label_required = label_required
        self.validations: tuple[SuiteValidation, ...] = ()
        self.manifests: list[dict[str, Any]] = []
        self.columns: dict[str, None] = {}  # every manifest column, first-seen order
        self.rows: list[dict[str, Any]] = []  # one per manifest row: values + bookkeeping
        self.faults: list[dict[str, Any]] = []  # manifest-level quarantine rows

    # -- per manifest ---------------------------------------------------------------------------

    def read(self, path: StoragePath, sha256: str | None) -> None:
        entry = {"manifest": path.name, "sha256": sha256, "rows": 0, "status": STATUS_INGESTED, "reason": None}
        self.manifests.append(entry)
        frame = None
        try:
            if sha256 is None:
                raise ManifestError(f"{path.name}: cannot read manifest (permission or I/O error)")
            frame = read_manifest(path)
            self._check_columns(frame, path.name)
        except ManifestError as exc:
            rows = len(frame) if frame is not None else 0
            entry.update(rows=max(rows, 1), status=STATUS_FAILED, reason=str(exc))
            self.faults.append({"manifest": path.name, "row_number": None, "reason": str(exc)})
            return
        entry["rows"] = len(frame)
        for column in frame.columns:
            if column != ROW_ERROR:
                self.columns.setdefault(column, None)
        for i, values in enumerate(frame.to_dict("records")):
            row = {"manifest": path.name, "row_number": i + 1, "values": values, "reason": None}
            self.rows.append(row)
            row["reason"] = values.get(ROW_ERROR) or self._locate(row, values)

    def _check_columns(self, frame: pd.DataFrame, name: str) -> None:
        present = set(frame.columns)
        reserved = sorted(present & set(INGEST_RECORDED_COLUMNS))
        if reserved:
            raise ManifestError(
                f"{name}: column(s) {', '.join(reserved)} are reserved for what the ingest records; rename them"
            )
        found = ", ".join(c for c in frame.columns if c != ROW_ERROR) or "none"
        for column in _REQUIRED if self.label_required else ("image_uri",):
            if column not in present:
                raise ManifestError(f"{name}: missing required column '{column}' (columns found: {found})")
        for column in self.attributes:
            if column not in present:
                raise ManifestError(
                    f"{name}: missing attribute column '{column}' that the config's checks use (columns found: {found})"
                )

    def _locate(self, row: dict[str, Any], values: dict[str, Any]) -> str | None:
        """Resolve and probe the row's image; return a reason, or None and fill path/size/hash."""
        uri = values.get("image_uri")
        if is_empty_cell(uri):
            return "image_uri is empty"
        try:
            path = resolve_under(self.image_root, str(uri), allowed_schemes=self.allowed_schemes)
            info = probe_image(path, max_pixels=self.max_pixels, min_side=self.min_side)
            sha = content_hash(path)
        except (PathEscapeError, ImageError) as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read image {uri!r}: {exc.strerror or exc}"
        row.update(path=public_uri(path), width=info.width, height=info.height, sha256=sha)
        row["properties"] = header_properties(info)  # free: read from the header the probe parsed
        return None

    # -- across the run ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Great Expectations: the user's suite over every row read (one pass), then the built-in rules over
        every row still standing (one pass, and one more for image-id uniqueness). A row already refused
        keeps its first reason; one the user's suite fails is refused with the suite's reason after the
        built-in rules' own."""
        results: list[SuiteValidation] = []
        found: dict[int, str] = {}
        if self.suite is not None and self.rows:
            columns = list(self.columns)
            given = pd.DataFrame([{c: r["values"].get(c) for c in columns} for r in self.rows], columns=columns)
            check = check_suite(self.suite, given)
            results.append(check.validation)
            found = {i: reason for i, reason in enumerate(check.reasons) if reason is not None}
        live = [(i, r) for i, r in enumerate(self.rows) if r["reason"] is None]
        if live:
            frame = pd.DataFrame([r["values"] for _, r in live]).drop(columns=[ROW_ERROR], errors="ignore")
            frame["manifest"] = [r["manifest"] for _, r in live]
            frame["row_number"] = [r["row_number"] for _, r in live]
            frame["width"] = [r["width"] for _, r in live]
            frame["height"] = [r["height"] for _, r in live]
            checked = check_rows(
                frame,
                classes=self.classes,
                attributes=self.attributes,
                prior=[found.get(i) for i, _ in live],
                label_required=self.label_required,
            )
            for (_, row), reason in zip(live, checked.reasons.tolist(), strict=True):
                row["reason"] = reason
            results[:0] = checked.results
        self.validations = tuple(results)

    def deduplicate(self, known: pd.DataFrame) -> None:
        """First occurrence wins, by content hash and by image id, against the catalog then this run."""
        by_sha: dict[str, str] = {}
        by_id: dict[str, tuple[str, str]] = {}  # image_id -> (sha, where)
        for rec in known.itertuples(index=False):
            where = f"run {rec.run_id}, manifest {rec.manifest} row {rec.row_number}"
            by_sha.setdefault(rec.content_sha256, f"{rec.image_id} ({where})")
            by_id.setdefault(rec.image_id, (rec.content_sha256, where))
        for row in self.rows:
            if row["reason"] is not None:
                continue
            given = row["values"].get("image_id")
            image_id = row["sha256"][:16] if is_empty_cell(given) else str(given).strip()
            where = f"manifest {row['manifest']} row {row['row_number']}"
            if row["sha256"] in by_sha:
                row["reason"] = f"duplicate image content of {by_sha[row['sha256']]}"
            elif image_id in by_id:
                _, other = by_id[image_id]
                row["reason"] = f"image_id {image_id!r} is already used for different image content ({other})"
            else:
                row["image_id"] = image_id
                by_sha[row["sha256"]] = f"{image_id} ({where})"
                by_id[image_id] = (row["sha256"], where)

    # -- results ----------------------------------------------------------------------------------

    def result(self) -> _Outcome:
        accepted = [r for r in self.rows if r["reason"] is None]
        refused = [r for r in self.rows if r["reason"] is not None]
        counts: dict[str, list[int]] = {}
        for r in self.rows:
            counts.setdefault(r["manifest"], [0, 0])[r["reason"] is not None] += 1
        for entry in self.manifests:
            if entry["status"] == STATUS_FAILED:
                entry["accepted"], entry["quarantined"] = 0, entry["rows"]
            else:
                entry["accepted"], entry["quarantined"] = counts.get(entry["manifest"], [0, 0])
        manifests = pd.DataFrame(self.manifests, columns=MANIFEST_COLUMNS)
        for column in ("rows", "accepted", "quarantined"):
            manifests[column] = manifests[column].astype("int64")
        return _Outcome(self._accepted_frame(accepted), self._quarantine_frame(refused), manifests)

    def _extra_columns(self) -> list[str]:
        return [c for c in self.columns if c not in CATALOG_COLUMNS]

    def _accepted_frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        extras = self._extra_columns()
        records = []
        for r in rows:
            v = r["values"]
            raw_regions = v.get("regions")
            regions = regions_json(parse_region_boxes(raw_regions)) if not is_empty_cell(raw_regions) else None
            record = {
                "run_id": self.run_id,
                "ingest_date": self.ingest_date,
                "manifest": r["manifest"],
                "row_number": r["row_number"],
                "image_id": r["image_id"],
                "image_uri": str(v["image_uri"]).strip(),
                "image_path": r["path"],
                "content_sha256": r["sha256"],
                "label": _stripped(v.get("label")),
                "tags": list(v.get("tags") or []),
                "regions": regions,
                "width": r["width"],
                "height": r["height"],
                **(r.get("properties") or empty_properties()),
            }
            record.update({c: _stripped(v.get(c)) for c in extras})
            records.append(record)
        return catalog_frame(records, extras)

    def _quarantine_frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        columns = list(self.columns)
        records = []
        for fault in self.faults:
            records.append({**{c: None for c in columns}, **fault, "stage": "ingest"})
        for r in rows:
            record = {c: _as_given(r["values"].get(c)) for c in columns}
            record.update(manifest=r["manifest"], row_number=r["row_number"], reason=r["reason"], stage="ingest")
            records.append(record)
        order = {entry["manifest"]: i for i, entry in enumerate(self.manifests)}
        records.sort(key=lambda rec: (order[rec["manifest"]], rec["row_number"] or 0))
        schema = quarantine_schema(columns)
        table = pa.Table.from_pylist(records, schema=schema) if records else schema.empty_table()
        return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)  # row_number may be null


def quarantine_schema(manifest_columns: Sequence[str]) -> pa.Schema:
    """Quarantine rows: every manifest column as given (string), then manifest, row_number, reason, stage."""
    return pa.schema(
        [pa.field(c, pa.string()) for c in manifest_columns]
        + [
            pa.field("manifest", pa.string()),
            pa.field("row_number", pa.int64()),
            pa.field("reason", pa.string()),
            pa.field("stage", pa.string()),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Files: the landing scan
# ---------------------------------------------------------------------------------------------


def _landing_files(landing: StoragePath) -> list[StoragePath]:
    """Manifest candidates: regular files in the landing folder, sorted by name.

    Skipped: hidden files (`.x`), editor/lock files (`~x`, `x~`), marker files (`_SUCCESS`), and files still
    being written (`.tmp`, `.part`, ...), so an upload in progress is picked up by the next run instead.
    An object-store prefix with no objects is an empty landing area (object stores have no empty folders).
    """
    if not landing.is_dir():
        if is_remote(landing) and not landing.exists() and _bucket_exists(landing):
            log.info("landing prefix %s holds no objects: nothing to ingest", public_uri(landing))
            return []
        raise ConfigError(f"'dataset.landing' folder does not exist: {public_uri(landing)}")
    files: list[StoragePath] = []
    entries: list[StoragePath] = list(landing.iterdir())
    for path in sorted(entries, key=lambda p: p.name):
        if path.name.startswith((".", "~", "_")) or path.name.lower().endswith(_TEMP_SUFFIXES):
            continue
        if path.is_file():
            files.append(path)
    return files


def _bucket_exists(location: UPath) -> bool:
    """Whether the bucket (container) of an object-store location exists, so that a typo in its name is an
    error rather than a landing area that stays empty night after night."""
    fs, inner = filesystem(location)
    return bool(fs.exists(inner.strip("/").split("/", 1)[0]))


def _manifest_hash(path: StoragePath) -> str | None:
    """The manifest's content hash, or None when it cannot be read (it is then refused, and retried next run:
    with no content to key the ledger on, a fixed permission must not leave it skipped forever)."""
    try:
        return content_hash(path)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Cell helpers
# ---------------------------------------------------------------------------------------------


def _stripped(value: Any) -> str | None:
    """A catalog cell: text without surrounding whitespace, so ' f' and 'f' are one subgroup."""
    text = _text(value)
    return None if text is None else text.strip()


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


def _as_given(value: Any) -> str | None:
    """A manifest cell as text for the quarantine table (tags lists joined back with `|`)."""
    if isinstance(value, (list, tuple)):
        return "|".join(str(v) for v in value)
    return _text(value)


def _reason_kind(reason: str) -> str:
    """A reason without its row-specific details, for grouping in the gate's detail line."""
    head = re.split(r"[:(]", str(reason), maxsplit=1)[0].strip()
    return re.sub(r"'[^']*'", "'…'", head)[:80]
