"""Atomic writers for the run's files: written aside in the same folder, fsynced, then renamed.

A reader (or a re-run after a crash) therefore sees either the whole previous file or the whole new one,
never half of one. Every Parquet file carries the schema version and the table's name in its metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Bumped whenever a table's columns change meaning or type.
SCHEMA_VERSION = "1"
_METADATA_KEY = b"audit_tasks"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over `target`, on failure delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(table: pa.Table | pd.DataFrame, target: Path, *, name: str | None = None,
                schema: pa.Schema | None = None) -> Path:
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
    meta[_METADATA_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, "table": name or Path(target).stem}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(Path(target)) as tmp:
        pq.write_table(table, tmp)
    return Path(target)


def read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one of our Parquet files back into pandas, only `columns` when given (e.g. skip the CAMs)."""
    return pq.read_table(path, columns=list(columns) if columns is not None else None).to_pandas()


def table_metadata(path: Path) -> dict[str, Any]:
    """The audit_tasks metadata (schema version, table name) of a Parquet file."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(_METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_json(payload: Any, target: Path) -> Path:
    """Write JSON atomically (sorted keys, so re-runs give byte-identical files)."""
    with atomic_path(Path(target)) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return Path(target)


def write_text(text: str, target: Path) -> Path:
    """Write a text file (e.g. report.html) atomically."""
    with atomic_path(Path(target)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
