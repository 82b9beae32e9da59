"""The catalog: the cumulative Parquet dataset of ingested rows, one part per ingest run, and its ledger.

Layout under `dataset.catalog`: `ingest_date=<date>/run-<run_id>.parquet` (one part per run, hive-style, so
`pq.read_table(catalog)` works too) and `_ledger.parquet` (one row per manifest content ever ingested or
refused, with its run and counts).

Beside it, `_measured/run-<run_id>.parquet`: the pixel properties (audit_tasks.image_properties) the
scoring stage measured on the images of that run, by `image_id`. They are measured where the pixels are
decoded anyway, and kept here so that whole-catalog checks see every image ever scored. The leading `_`
keeps them out of `pq.read_table(catalog)`.

Crash safety comes from the order of writes: a run's part is written (atomically) first and its ledger rows
(atomically) last, and readers trust only parts whose run the ledger lists. A crash in between leaves an
orphan part that nothing reads; writing the same run again replaces it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pyarrow as pa

from audit_tasks.errors import ManifestError
from audit_tasks.image_properties import PIXEL_COLUMNS, PIXEL_FIELDS, PROPERTY_FIELDS
from audit_tasks.paths import safe_child
from audit_tasks.storage import StoragePath, exclusive_lock, parquet_schema, read_parquet, storage_path
from audit_tasks.tables import write_table

LEDGER_NAME = "_ledger.parquet"
#: Folder of the measured pixel properties, one part per scoring run.
MEASURED_DIR = "_measured"
MEASURED_SCHEMA = pa.schema([pa.field("image_id", pa.string(), nullable=False), *PIXEL_FIELDS])
_LOCK_NAME = ".ingest.lock"
#: Ledger status of a manifest whose rows were accepted or quarantined one by one.
STATUS_INGESTED = "ingested"
#: Ledger status of a manifest refused as a whole (unreadable, a required column missing).
STATUS_FAILED = "failed"
#: The catalog's row order (and the columns `read_catalog` always reads).
_ORDER = ("ingest_date", "run_id", "manifest", "row_number")

#: The fixed columns of every catalog part; every other manifest column follows them as a string.
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
    *PROPERTY_FIELDS,  # nullable: null where not measured, absent from older parts (read as null)
]
#: The names of CATALOG_FIELDS, in order.
CATALOG_COLUMNS = tuple(f.name for f in CATALOG_FIELDS)
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("manifest", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("ingest_date", pa.string()),
        pa.field("status", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("accepted", pa.int64()),
        pa.field("quarantined", pa.int64()),
        pa.field("reason", pa.string()),
    ]
)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_catalog(
    catalog: StoragePath, *, run_id: str | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The catalog's rows (every committed run, or one run's), ordered by ingest date, run, manifest, row.

    `columns` reads only those columns (plus the ordering keys), e.g. tags and attributes for co-occurrence;
    a named column no part has is simply absent, as in a catalog that never had it.
    """
    catalog = storage_path(catalog)
    parts = _committed_parts(catalog, read_ledger(catalog), exclude=None)
    if run_id is not None:
        parts = [p for p in parts if _part_run(p) == run_id]
    wanted = None if columns is None else list(dict.fromkeys([*_ORDER, *columns]))
    frame = _to_pandas(_parts_table(parts, wanted))
    if frame.empty:
        empty = pa.schema(CATALOG_FIELDS).empty_table()
        return _to_pandas(empty if wanted is None else empty.select([n for n in wanted if n in empty.column_names]))
    return frame.sort_values(list(_ORDER), kind="stable").reset_index(drop=True)


def read_catalog_table(
    catalog: StoragePath,
    *,
    columns: Sequence[str] | None = None,
    dictionary: Sequence[str] = (),
    exclude_run: str | None = None,
) -> pa.Table:
    """The committed catalog as one Arrow table, in part order, for whole-catalog checks over millions of rows
    (no pandas conversion, no Python list per row); `columns` only, when given.

    `dictionary` names string columns (or `tags`) to read dictionary-encoded: few distinct values over
    millions of rows then cost one small dictionary per part instead of a string per cell.
    `exclude_run` leaves that run's rows out (an ingest re-running a run compares it with every other run).
    """
    catalog = storage_path(catalog)
    parts = _committed_parts(catalog, read_ledger(catalog), exclude=exclude_run)
    return _parts_table(parts, columns, dictionary=dictionary)


def read_ledger(catalog: StoragePath) -> pd.DataFrame:
    """The ledger: one row per manifest content ever ingested or refused, with its run and counts."""
    path = storage_path(catalog) / LEDGER_NAME
    if not path.exists():
        return LEDGER_SCHEMA.empty_table().to_pandas()
    try:
        return read_parquet(path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"the ingest ledger {path} cannot be read ({exc}); restore it from backup") from exc


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


@contextmanager
def catalog_lock(catalog: StoragePath) -> Iterator[None]:
    """Hold the catalog's writer lock: two ingests at once would both read the ledger before either commits,
    and land the same manifests twice. (Object storage has no locks; see `storage.exclusive_lock`.)"""
    with exclusive_lock(storage_path(catalog), _LOCK_NAME):
        yield


def catalog_schema(extra_columns: Sequence[str]) -> pa.Schema:
    """The catalog part's schema: the fixed columns, then every other manifest column as string."""
    return pa.schema(CATALOG_FIELDS + [pa.field(c, pa.string()) for c in extra_columns])


def catalog_frame(records: Sequence[Mapping[str, Any]], extra_columns: Sequence[str]) -> pd.DataFrame:
    """Catalog rows (dicts with the fixed columns and `extra_columns`) as a frame of the part's schema,
    `tags` as Python lists."""
    schema = catalog_schema(extra_columns)
    return _to_pandas(pa.Table.from_pylist(list(records), schema=schema) if records else schema.empty_table())


def write_part(catalog: StoragePath, run_id: str, ingest_date: str, rows: pd.DataFrame) -> StoragePath | None:
    """Write the run's catalog part (replacing any earlier attempt of the same run), or remove it if `rows`
    is empty. Readers ignore the part until `commit_run` lists the run in the ledger."""
    catalog = storage_path(catalog)
    target = safe_child(catalog, f"ingest_date={ingest_date}/run-{run_id}.parquet")
    written = None
    if len(rows):
        extras = [c for c in rows.columns if c not in CATALOG_COLUMNS]
        table = pa.Table.from_pandas(rows, schema=catalog_schema(extras), preserve_index=False)
        # Dictionary-typed like the hive partition key, so `pq.read_table(catalog)` can merge the two.
        position = table.schema.get_field_index("ingest_date")
        table = table.set_column(
            position,
            pa.field("ingest_date", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            table.column(position).dictionary_encode(),
        )
        written = write_table(table, target, name="catalog")
    for stale in _all_parts(catalog):  # an earlier attempt of this run under another date, or now empty
        if _part_run(stale) == run_id and stale != written:
            stale.unlink()
    return written


def commit_run(
    catalog: StoragePath, ledger: pd.DataFrame, run_id: str, ingest_date: str, manifests: pd.DataFrame
) -> None:
    """Replace the run's rows of `ledger` (as read before the run) with `manifests` and write it: the
    last write of a run, which makes its catalog part visible to readers.

    `manifests` has the ledger's columns but `run_id` and `ingest_date`.
    """
    mine = manifests.assign(run_id=run_id, ingest_date=ingest_date)[LEDGER_SCHEMA.names]
    kept = ledger[ledger["run_id"] != run_id]
    merged = pd.concat([kept, mine], ignore_index=True) if len(kept) else mine.reset_index(drop=True)
    write_table(merged, storage_path(catalog) / LEDGER_NAME, name="ingest_ledger", schema=LEDGER_SCHEMA)


def write_measured_properties(catalog: StoragePath, run_id: str, images: pd.DataFrame) -> StoragePath | None:
    """Keep the pixel properties a run measured (images with none measured are left out; a run that measured
    nothing writes nothing). Re-running the run replaces its part."""
    catalog = storage_path(catalog)
    target = safe_child(catalog, f"{MEASURED_DIR}/run-{run_id}.parquet")
    if not set(PIXEL_COLUMNS) <= set(images.columns):
        return None
    measured = images.loc[images[list(PIXEL_COLUMNS)].notna().any(axis=1), ["image_id", *PIXEL_COLUMNS]]
    if measured.empty:
        if target.is_file():
            target.unlink()
        return None
    return write_table(measured.reset_index(drop=True), target, name="measured_properties", schema=MEASURED_SCHEMA)


def read_measured_properties(catalog: StoragePath) -> pd.DataFrame:
    """Every measured image's pixel properties, one row per `image_id` (the newest run's measure where an
    image was scored more than once: run ids sort by time)."""
    folder = storage_path(catalog) / MEASURED_DIR
    parts = sorted(p for p in folder.glob("run-*.parquet") if p.is_file()) if folder.is_dir() else []
    if not parts:
        return MEASURED_SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables([read_parquet(p, None, partitioning=None) for p in parts], promote_options="default")
    frame = table.to_pandas()
    return frame.drop_duplicates("image_id", keep="last").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


def _part_run(path: StoragePath) -> str:
    return path.stem[len("run-") :]


def _all_parts(catalog: StoragePath) -> list[StoragePath]:
    if not catalog.is_dir():
        return []
    return sorted(p for p in catalog.glob("ingest_date=*/run-*.parquet") if p.is_file())


def _committed_parts(catalog: StoragePath, ledger: pd.DataFrame, *, exclude: str | None) -> list[StoragePath]:
    """Catalog parts of runs the ledger lists (an orphan part from a crashed run is never read)."""
    committed = {(str(r), str(d)) for r, d in zip(ledger["run_id"], ledger["ingest_date"], strict=True) if r != exclude}
    return [p for p in _all_parts(catalog) if (_part_run(p), p.parent.name.split("=", 1)[1]) in committed]


def _parts_table(
    parts: Sequence[StoragePath], columns: Sequence[str] | None = None, *, dictionary: Sequence[str] = ()
) -> pa.Table:
    """The parts concatenated in order (a column some parts lack is null there); `columns` only, when given.

    String columns named in `dictionary` (for `tags`: its elements) are read dictionary-encoded.
    """
    if not parts:
        names = list(columns) if columns else list(CATALOG_COLUMNS)
        return pa.schema([f for f in CATALOG_FIELDS if f.name in names]).empty_table()
    tables = []
    for part in parts:
        schema = parquet_schema(part)
        present = set(schema.names) if columns else set()
        encoded = [("tags.list.element" if name == "tags" else name) for name in dictionary if name in schema.names]
        table = read_parquet(
            part,
            [c for c in columns if c in present] if columns else None,
            partitioning=None,
            read_dictionary=encoded or None,
        )
        if "ingest_date" in table.column_names:
            position = table.schema.get_field_index("ingest_date")
            table = table.set_column(position, "ingest_date", table.column(position).cast(pa.string()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with `tags` as Python lists (as `read_manifest` gives them), not NumPy arrays."""
    frame = table.to_pandas()
    if "tags" in frame.columns:
        frame["tags"] = pd.Series(
            [[] if t is None else list(t) for t in frame["tags"]], index=frame.index, dtype=object
        )
    return frame
