"""Write a manifest frame as CSV, JSON Lines or Parquet (by the target's suffix), atomically.

The formats are the ones `audit_tasks.manifest` reads, with the same suffixes, so what an importer writes
reads back as the same rows whatever the format: CSV joins `tags` with `|`, JSON Lines keeps `tags` and
`regions` as JSON lists, Parquet stores `tags` as list<string> and every other column as text.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import pandas as pd
import pyarrow as pa

from audit_tasks.errors import ConfigError
from audit_tasks.manifest import SUFFIXES
from audit_tasks.storage import StoragePath, atomic_path, storage_path
from audit_tasks.tables import write_table

MSG_UNKNOWN_SUFFIX = "{name}: cannot tell the manifest format from {suffix!r}; end the name with one of {known}"
MSG_PIPE_IN_TAG = (
    "{name}: tag {tag!r} (row {row}) holds '|', which separates tags in a CSV manifest; write .jsonl or .parquet"
)


def write_manifest(frame: pd.DataFrame, target: StoragePath | str) -> StoragePath:
    """Write `frame` (an importer's manifest) to `target`; the file appears whole or not at all.

    Raises:
        ConfigError: the suffix names no manifest format, or a CSV would split a tag holding '|'.
    """
    target = storage_path(target)
    kind = SUFFIXES.get(target.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise ConfigError(MSG_UNKNOWN_SUFFIX.format(name=target.name, suffix=target.suffix or "(none)", known=known))
    if kind == "parquet":
        return write_table(_arrow(frame), target, name="manifest")
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        if kind == "csv":
            _write_csv(frame, handle, target.name)
        else:
            _write_jsonl(frame, handle)
    return target


def _write_csv(frame: pd.DataFrame, handle: Any, name: str) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(list(frame.columns))
    columns = [frame[c].tolist() for c in frame.columns]
    tags_at = list(frame.columns).index("tags") if "tags" in frame.columns else None
    for i, row in enumerate(zip(*columns, strict=True)):
        cells = ["" if v is None else v for v in row]
        if tags_at is not None:
            tags = row[tags_at] or []
            for tag in tags:
                if "|" in tag:
                    raise ConfigError(MSG_PIPE_IN_TAG.format(name=name, tag=tag, row=i + 1))
            cells[tags_at] = "|".join(tags)
        writer.writerow(cells)


def _write_jsonl(frame: pd.DataFrame, handle: Any) -> None:
    names = list(frame.columns)
    for row in zip(*(frame[c].tolist() for c in names), strict=True):
        record = dict(zip(names, row, strict=True))
        if record.get("regions") is not None:
            record["regions"] = json.loads(record["regions"])
        if "tags" in record:
            record["tags"] = list(record["tags"] or [])
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _arrow(frame: pd.DataFrame) -> pa.Table:
    columns = {}
    for name in frame.columns:
        values = frame[name].tolist()
        if name == "tags":
            columns[name] = pa.array([list(v or []) for v in values], pa.list_(pa.string()))
        else:
            columns[name] = pa.array(values, pa.string())
    return pa.table(columns)
