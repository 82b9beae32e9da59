"""Ingest: new manifests in the landing folder -> catalog rows, quarantine rows, and the ledger.

Every row of every manifest ends in exactly one of `accepted` or `quarantined`, with a reason for the
latter. Order per row: parse, resolve the image path under the root, probe the image, validate with Great
Expectations, hash the content, de-duplicate (against the catalog's other runs and earlier rows of this run).

Crash safety and idempotence come from the order of writes: the run's catalog part is written (atomically)
first and the ledger (atomically) last, and readers trust only catalog parts whose run is in the ledger.
A crash in between leaves an orphan part that nothing reads and the manifests still pending; re-running the
same run id reprocesses exactly the manifests the ledger lists for it and rewrites its part identically.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa

from audit_tasks.config import AuditConfig, IngestCheck
from audit_tasks.errors import ConfigError, ImageError, ManifestError, PathEscapeError
from audit_tasks.gates import GateResult
from audit_tasks.images import content_hash, probe_image
from audit_tasks.manifest import ROW_ERROR, parse_regions, read_manifest, regions_json
from audit_tasks.paths import resolve_under, safe_child
from audit_tasks.run_ids import check_run_id
from audit_tasks.storage import (
    StoragePath,
    exclusive_lock,
    filesystem,
    is_remote,
    parquet_schema,
    public_uri,
    read_parquet,
    storage_path,
)
from audit_tasks.tables import write_table
from audit_tasks.validation import is_missing, validate_rows

LEDGER_NAME = "_ledger.parquet"
_LOCK_NAME = ".ingest.lock"
STATUS_INGESTED = "ingested"
STATUS_FAILED = "failed"
#: Columns the ingest fills itself; a manifest may not carry them (it would be silently overwritten).
RESERVED_COLUMNS = (
    "run_id", "ingest_date", "manifest", "row_number", "image_path", "content_sha256", "width", "height",
    "reason", "stage",
)
_REQUIRED = ("image_uri", "label")
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", "~")
#: The catalog's row order (and the columns `read_catalog` always reads).
_ORDER = ("ingest_date", "run_id", "manifest", "row_number")

log = logging.getLogger(__name__)

CATALOG_FIELDS = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("ingest_date", pa.string(), nullable=False),
    pa.field("manifest", pa.string(), nullable=False),
    pa.field("row_number", pa.int64(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_path", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("regions", pa.string()),
    pa.field("width", pa.int64(), nullable=False),
    pa.field("height", pa.int64(), nullable=False),
]
LEDGER_SCHEMA = pa.schema([
    pa.field("manifest", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("ingest_date", pa.string()),
    pa.field("status", pa.string()),
    pa.field("rows", pa.int64()),
    pa.field("accepted", pa.int64()),
    pa.field("quarantined", pa.int64()),
    pa.field("reason", pa.string()),
])
MANIFEST_COLUMNS = ["manifest", "sha256", "rows", "accepted", "quarantined", "status", "reason"]
QUARANTINE_TAIL = ["manifest", "row_number", "reason", "stage"]


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

    @property
    def rows_in(self) -> int:
        return int(self.manifests["rows"].sum()) if len(self.manifests) else 0


def ingest(config: AuditConfig, run_id: str, *, today: date | None = None) -> IngestResult:
    """Ingest every new manifest in `dataset.landing` under `run_id` (see the module docstring).

    Args:
        today: the ingest date of a first run (default: today). A re-run keeps its first run's date.

    Raises:
        ConfigError: no dataset section, or a run id that breaks the rule of audit_tasks.run_ids.
        ManifestError: a re-run whose manifests are no longer in the landing folder.
    """
    dataset = config.require_dataset()
    check_run_id(run_id)
    catalog = storage_path(dataset.catalog)
    # Two ingests at once would both read the ledger before either commits, and land the same manifests twice.
    with exclusive_lock(catalog, _LOCK_NAME):
        return _ingest(config, run_id, catalog, today)


def _ingest(config: AuditConfig, run_id: str, catalog: StoragePath, today: date | None) -> IngestResult:
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

    others = _committed_parts(catalog, ledger, exclude=run_id)
    known = _read_parts(others, columns=["run_id", "manifest", "row_number", "image_id", "content_sha256"])
    classes = list(config.model.classes) if config.model is not None else None
    work = _Run(
        run_id=run_id, ingest_date=ingest_date, image_root=storage_path(dataset.image_root),
        allowed_schemes=dataset.allowed_schemes, max_pixels=dataset.max_image_pixels,
        min_side=dataset.min_image_side, attributes=config.attribute_columns(), classes=classes,
    )
    for path in selected:
        work.read(path, hashes[path])
    work.validate()
    work.deduplicate(known)
    result = work.result()

    part = None
    if len(selected) or len(mine):
        part = _write_part(catalog, run_id, ingest_date, result.accepted)
        _write_ledger(catalog, ledger, run_id, ingest_date, result.manifests)  # last: commits the run
    return IngestResult(run_id, ingest_date, result.accepted, result.quarantined, result.manifests, part)


def read_catalog(catalog: StoragePath, *, run_id: str | None = None,
                 columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The catalog's rows (every committed run, or one run's), ordered by ingest date, run, manifest, row.

    `columns` reads only those columns (plus the ordering keys), e.g. tags and attributes for co-occurrence;
    a named column no part has is simply absent, as in a catalog that never had it.
    """
    catalog = storage_path(catalog)
    ledger = read_ledger(catalog)
    parts = _committed_parts(catalog, ledger, exclude=None)
    if run_id is not None:
        parts = [p for p in parts if _part_run(p) == run_id]
    wanted = None if columns is None else list(dict.fromkeys([*_ORDER, *columns]))
    frame = _read_parts(parts, wanted)
    if frame.empty:
        empty = pa.schema(CATALOG_FIELDS).empty_table()
        return _to_pandas(empty if wanted is None else empty.select([n for n in wanted if n in empty.column_names]))
    return frame.sort_values(list(_ORDER), kind="stable").reset_index(drop=True)


def read_catalog_table(catalog: StoragePath, *, columns: Sequence[str] | None = None,
                       dictionary: Sequence[str] = ()) -> pa.Table:
    """The committed catalog as one Arrow table, in part order, for whole-catalog checks over millions of rows
    (no pandas conversion, no Python list per row); `columns` only, when given.

    `dictionary` names string columns (or `tags`) to read dictionary-encoded: few distinct values over
    millions of rows then cost one small dictionary per part instead of a string per cell.
    """
    catalog = storage_path(catalog)
    return _parts_table(_committed_parts(catalog, read_ledger(catalog), exclude=None), columns, dictionary=dictionary)


def read_ledger(catalog: StoragePath) -> pd.DataFrame:
    """The ledger: one row per manifest content ever ingested or refused, with its run and counts."""
    path = storage_path(catalog) / LEDGER_NAME
    if not path.exists():
        return LEDGER_SCHEMA.empty_table().to_pandas()
    try:
        return read_parquet(path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"the ingest ledger {path} cannot be read ({exc}); restore it from backup") from exc


def ingest_gate(result: IngestResult, check: IngestCheck) -> list[GateResult]:
    """The ingest gate: the fraction of this run's input rows that were quarantined must stay under the limit."""
    rows = result.rows_in
    quarantined = int(result.manifests["quarantined"].sum()) if len(result.manifests) else 0
    fraction = quarantined / rows if rows else 0.0
    if rows:
        top = (
            result.quarantined["reason"].map(_reason_kind).value_counts().head(3)
            if len(result.quarantined) else pd.Series(dtype=int)
        )
        causes = "; ".join(f"{n} x {r}" for r, n in top.items())
        detail = f"{quarantined} of {rows} rows quarantined ({fraction:.1%})" + (f"; most common: {causes}" if causes else "")
    else:
        detail = "no new rows to ingest"
    return [GateResult(
        check="ingest", subject="all manifests", metric="quarantine_fraction", value=float(fraction),
        threshold=float(check.max_quarantine_fraction), passed=fraction <= check.max_quarantine_fraction,
        detail=detail, judged=rows > 0,
    )]


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

    def __init__(self, *, run_id: str, ingest_date: str, image_root: StoragePath, allowed_schemes: Sequence[str],
                 max_pixels: int, min_side: int, attributes: Sequence[str], classes: list[str] | None) -> None:
        self.run_id = run_id
        self.ingest_date = ingest_date
        self.image_root = image_root
        self.allowed_schemes = tuple(allowed_schemes)
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.attributes = tuple(attributes)
        self.classes = classes
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
        reserved = sorted(present & set(RESERVED_COLUMNS))
        if reserved:
            raise ManifestError(
                f"{name}: column(s) {', '.join(reserved)} are reserved for what the ingest records; rename them"
            )
        found = ", ".join(c for c in frame.columns if c != ROW_ERROR) or "none"
        for column in _REQUIRED:
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
        if is_missing(uri):
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
        return None

    # -- across the run ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Great Expectations over every row still standing, in one suite run."""
        live = [r for r in self.rows if r["reason"] is None]
        if not live:
            return
        frame = pd.DataFrame([r["values"] for r in live]).drop(columns=[ROW_ERROR], errors="ignore")
        frame["manifest"] = [r["manifest"] for r in live]
        frame["row_number"] = [r["row_number"] for r in live]
        frame["width"] = [r["width"] for r in live]
        frame["height"] = [r["height"] for r in live]
        reasons = validate_rows(frame, classes=self.classes, attributes=self.attributes)
        for row, reason in zip(live, reasons.tolist()):
            row["reason"] = reason

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
            image_id = row["sha256"][:16] if is_missing(given) else str(given).strip()
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
        fixed = {f.name for f in CATALOG_FIELDS}
        return [c for c in self.columns if c not in fixed]

    def _accepted_frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        extras = self._extra_columns()
        records = []
        for r in rows:
            v = r["values"]
            raw_regions = v.get("regions")
            regions = regions_json(parse_regions(raw_regions)) if not is_missing(raw_regions) else None
            record = {
                "run_id": self.run_id, "ingest_date": self.ingest_date, "manifest": r["manifest"],
                "row_number": r["row_number"], "image_id": r["image_id"], "image_uri": str(v["image_uri"]).strip(),
                "image_path": r["path"], "content_sha256": r["sha256"], "label": _stripped(v.get("label")),
                "tags": list(v.get("tags") or []), "regions": regions, "width": r["width"], "height": r["height"],
            }
            record.update({c: _stripped(v.get(c)) for c in extras})
            records.append(record)
        schema = catalog_schema(extras)
        return _to_pandas(pa.Table.from_pylist(records, schema=schema) if records else schema.empty_table())

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


def catalog_schema(extra_columns: Sequence[str]) -> pa.Schema:
    """The catalog part's schema: the fixed columns, then every other manifest column as string."""
    return pa.schema(CATALOG_FIELDS + [pa.field(c, pa.string()) for c in extra_columns])


def quarantine_schema(manifest_columns: Sequence[str]) -> pa.Schema:
    """Quarantine rows: every manifest column as given (string), then manifest, row_number, reason, stage."""
    return pa.schema(
        [pa.field(c, pa.string()) for c in manifest_columns]
        + [pa.field("manifest", pa.string()), pa.field("row_number", pa.int64()),
           pa.field("reason", pa.string()), pa.field("stage", pa.string())]
    )


# ---------------------------------------------------------------------------------------------
# Files: landing scan, catalog parts, ledger
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
    files = []
    for path in sorted(landing.iterdir(), key=lambda p: p.name):
        if path.name.startswith((".", "~", "_")) or path.name.lower().endswith(_TEMP_SUFFIXES):
            continue
        if path.is_file():
            files.append(path)
    return files


def _bucket_exists(location: StoragePath) -> bool:
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


def _part_path(catalog: StoragePath, run_id: str, ingest_date: str) -> StoragePath:
    name = f"ingest_date={ingest_date}/run-{run_id}.parquet"
    return safe_child(catalog, name)


def _part_run(path: StoragePath) -> str:
    return path.stem[len("run-"):]


def _all_parts(catalog: StoragePath) -> list[StoragePath]:
    if not catalog.is_dir():
        return []
    return sorted(p for p in catalog.glob("ingest_date=*/run-*.parquet") if p.is_file())


def _committed_parts(catalog: StoragePath, ledger: pd.DataFrame, *, exclude: str | None) -> list[StoragePath]:
    """Catalog parts of runs the ledger lists (an orphan part from a crashed run is never read)."""
    committed = {(str(r), str(d)) for r, d in zip(ledger["run_id"], ledger["ingest_date"]) if r != exclude}
    return [p for p in _all_parts(catalog) if (_part_run(p), p.parent.name.split("=", 1)[1]) in committed]


def _read_parts(parts: Sequence[StoragePath], columns: Sequence[str] | None = None) -> pd.DataFrame:
    return _to_pandas(_parts_table(parts, columns))


def _parts_table(parts: Sequence[StoragePath], columns: Sequence[str] | None = None, *,
                 dictionary: Sequence[str] = ()) -> pa.Table:
    """The parts concatenated in order (a column some parts lack is null there); `columns` only, when given.

    String columns named in `dictionary` (for `tags`: its elements) are read dictionary-encoded.
    """
    if not parts:
        names = list(columns) if columns else [f.name for f in CATALOG_FIELDS]
        return pa.schema([f for f in CATALOG_FIELDS if f.name in names]).empty_table()
    tables = []
    for part in parts:
        schema = parquet_schema(part)
        present = set(schema.names) if columns else set()
        encoded = [("tags.list.element" if name == "tags" else name) for name in dictionary if name in schema.names]
        table = read_parquet(part, [c for c in columns if c in present] if columns else None, partitioning=None,
                             read_dictionary=encoded or None)
        if "ingest_date" in table.column_names:
            position = table.schema.get_field_index("ingest_date")
            table = table.set_column(position, "ingest_date", table.column(position).cast(pa.string()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def _write_part(catalog: StoragePath, run_id: str, ingest_date: str, accepted: pd.DataFrame) -> StoragePath | None:
    """Write this run's catalog part (replacing any earlier attempt of the same run), or remove it if empty."""
    target = _part_path(catalog, run_id, ingest_date)
    written = None
    if len(accepted):
        extras = [c for c in accepted.columns if c not in {f.name for f in CATALOG_FIELDS}]
        table = pa.Table.from_pandas(accepted, schema=catalog_schema(extras), preserve_index=False)
        # Dictionary-typed like the hive partition key, so `pq.read_table(catalog)` can merge the two.
        position = table.schema.get_field_index("ingest_date")
        table = table.set_column(position, pa.field("ingest_date", pa.dictionary(pa.int32(), pa.string()), nullable=False),
                                 table.column(position).dictionary_encode())
        written = write_table(table, target, name="catalog")
    for stale in _all_parts(catalog):  # an earlier attempt of this run under another date, or now empty
        if _part_run(stale) == run_id and stale != written:
            stale.unlink()
    return written


def _write_ledger(catalog: StoragePath, ledger: pd.DataFrame, run_id: str, ingest_date: str, manifests: pd.DataFrame) -> None:
    mine = manifests.assign(run_id=run_id, ingest_date=ingest_date)[LEDGER_SCHEMA.names]
    kept = ledger[ledger["run_id"] != run_id]
    merged = pd.concat([kept, mine], ignore_index=True) if len(kept) else mine.reset_index(drop=True)
    write_table(merged, storage_path(catalog) / LEDGER_NAME, name="ingest_ledger", schema=LEDGER_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Cell helpers
# ---------------------------------------------------------------------------------------------


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with `tags` as Python lists (as `read_manifest` gives them), not NumPy arrays."""
    frame = table.to_pandas()
    if "tags" in frame.columns:
        frame["tags"] = pd.Series([[] if t is None else list(t) for t in frame["tags"]], index=frame.index, dtype=object)
    return frame


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
