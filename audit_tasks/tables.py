"""Atomic writers for the run's files, on local disk or object storage (see `audit_tasks.storage`).

A reader (or a re-run after a crash) therefore sees either the whole previous file or the whole new one,
never half of one. Every Parquet file carries the schema version and the table's name in its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit_tasks.storage import StoragePath, atomic_path, parquet_schema, read_parquet, storage_path

__all__ = ["SCHEMA_VERSION", "atomic_path", "read_table", "table_metadata", "write_json", "write_table", "write_text"]

#: Bumped whenever a table's columns change meaning or type.
SCHEMA_VERSION = "1"
_METADATA_KEY = b"audit_tasks"


def write_table(
    table: pa.Table | pd.DataFrame, target: StoragePath, *, name: str | None = None, schema: pa.Schema | None = None
) -> StoragePath:
    """Write a table to Parquet atomically, with the schema version and table name in its metadata."""
    if isinstance(table, pd.DataFrame):
        if schema is not None:
            from audit_tasks.schemas import conform

            table = conform(table, schema)
        else:
            table = pa.Table.from_pandas(table, preserve_index=False)
    elif schema is not None:
        table = table.cast(schema)
    meta = dict(table.schema.metadata or {})
    target = storage_path(target)
    meta[_METADATA_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, "table": name or target.stem}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return target


def read_table(path: StoragePath, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one of our Parquet files back into pandas, only `columns` when given (e.g. skip the CAMs)."""
    return read_parquet(storage_path(path), columns).to_pandas()


def table_metadata(path: StoragePath) -> dict[str, Any]:
    """The audit_tasks metadata (schema version, table name) of a Parquet file."""
    meta = parquet_schema(storage_path(path)).metadata or {}
    raw = meta.get(_METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_json(payload: Any, target: StoragePath) -> StoragePath:
    """Write JSON atomically (sorted keys, so re-runs give byte-identical files)."""
    return write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", target)


def write_text(text: str, target: StoragePath) -> StoragePath:
    """Write a text file (e.g. report.html) atomically."""
    target = storage_path(target)
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
