"""Read manifests (CSV, JSON Lines, Parquet) into one normalised shape, without ever crashing on a bad row.

A problem with the whole file (unreadable, empty, a required column missing) raises ManifestError naming
the file. A problem with one row (bytes that are not UTF-8, a line that is not JSON, too many CSV fields)
does not: the row is kept with its reason in the private column `_row_error`, so the ingest can quarantine
exactly that row. Values are strings (or None), `tags` a list of strings, `regions` the raw JSON string.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from audit_tasks.errors import ManifestError
from audit_tasks.storage import StoragePath, open_input, read_parquet, storage_path

#: Private column carrying a row-level parse problem (None when the row parsed cleanly).
ROW_ERROR = "_row_error"
#: File suffixes read_manifest understands, by format.
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
REGION_KINDS = ("core", "spurious", "context")
_REGION_KEYS = {"kind", "name", "box"}

# ---------------------------------------------------------------------------------------------
# Whole manifests
# ---------------------------------------------------------------------------------------------


def read_manifest(path: StoragePath | str, *, required: Sequence[str] = ("image_uri",)) -> pd.DataFrame:
    """Read one manifest into a DataFrame of strings, `tags` as list[str], `regions` as raw JSON text.

    Column names are stripped of surrounding whitespace (case is kept). Every column is kept; the private
    column `_row_error` holds a reason for rows that could not be decoded/parsed, else None.

    Raises:
        ManifestError: unknown suffix, unreadable or zero-byte file, duplicate/empty column names, or a
            column in `required` missing. The message names the file.
    """
    path = storage_path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(
            f"{path.name}: unsupported manifest format {path.suffix or '(no suffix)'!r}"
            f" (use one of {', '.join(sorted(SUFFIXES))})"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path.name}: cannot read manifest: {exc.strerror or exc}") from exc
    if not data:
        raise ManifestError(f"{path.name}: empty file (0 bytes): a manifest needs at least a header")
    if kind == "csv":
        columns, rows = _parse_csv(data, path.name)
    elif kind == "jsonl":
        columns, rows = _parse_jsonl(data, path.name)
    else:
        columns, rows = _parse_parquet(data, path.name)
    return _finish(columns, rows, path.name, required)


def read_manifest_table(path: StoragePath | str, *, required: Sequence[str] = ("image_uri",)) -> pa.Table:
    """Read a manifest straight into Arrow, vectorised, for million-row manifests that never touch images.

    Every column but `tags` becomes a string column; `tags` becomes list<string> normalised as in
    `parse_tags`; `_row_error` is null, except when a CSV/JSON Lines file that Arrow refuses (bytes that are
    not UTF-8, ragged rows, bad JSON) falls back to `read_manifest` (row-wise, slower), which fills it in.

    Raises:
        ManifestError: as `read_manifest`.
    """
    path = storage_path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(f"{path.name}: unsupported manifest format {path.suffix or '(no suffix)'!r}")
    if not path.is_file():
        raise ManifestError(f"{path.name}: manifest file not found: {path}")
    if path.stat().st_size == 0:
        raise ManifestError(f"{path.name}: empty file (0 bytes): a manifest needs at least a header")
    try:
        if kind == "csv":
            names = pacsv.open_csv(open_input(path)).schema.names
            table = pacsv.read_csv(
                open_input(path),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
        elif kind == "jsonl":
            table = pajson.read_json(open_input(path))
        else:
            table = read_parquet(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        if kind in ("csv", "jsonl"):  # bad bytes, ragged rows, odd JSON: the row-wise reader names each bad row
            return _frame_to_table(read_manifest(path, required=required))
        raise ManifestError(f"{path.name}: cannot read manifest: {exc}") from exc
    except OSError as exc:
        raise ManifestError(f"{path.name}: cannot read manifest: {exc}") from exc
    if table.num_columns == 0 and table.num_rows == 0:  # JSON Lines with no records: zero rows, as read_manifest
        table = pa.table({name: pa.array([], pa.string()) for name in required})
    names = [n.strip() for n in table.column_names]
    _check_names(names, path.name)
    table = table.rename_columns(names)
    for name in required:
        if name not in names:
            raise ManifestError(_missing_message(path.name, name, names))
    columns = {}
    for name in names:
        column = table.column(name)
        if name == "tags":
            columns[name] = _tags_array(column)
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            columns[name] = column.cast(pa.string())
        elif pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
            columns[name] = column.cast(pa.string())  # same text as read_manifest: "41", "true"
        else:  # floats, nested values (regions as a list), dates...: as read_manifest writes them
            columns[name] = pa.array([cell_text(v) for v in column.to_pylist()], pa.string())
    if ROW_ERROR in columns:
        raise ManifestError(f"{path.name}: column '{ROW_ERROR}' is reserved")
    columns[ROW_ERROR] = pa.nulls(table.num_rows, pa.string())
    return pa.table(columns)


# ---------------------------------------------------------------------------------------------
# Fields
# ---------------------------------------------------------------------------------------------


def parse_tags(value: Any) -> list[str]:
    """Tags as a list of stripped, non-empty, de-duplicated strings (first occurrence order kept).

    Accepts a list/tuple/array of values or one `|`-separated string; None/NaN/"" mean no tags.
    """
    if value is None:
        return []
    if isinstance(value, float) and math.isnan(value):
        return []
    if isinstance(value, str):
        items: Iterable[Any] = value.split("|")
    elif isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        items = list(value)
    else:
        items = [value]
    seen: dict[str, None] = {}
    for item in items:
        if item is None or (isinstance(item, float) and math.isnan(item)):
            continue
        text = str(item).strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


def parse_region_boxes(raw: Any, *, width: int | None = None, height: int | None = None) -> list[dict[str, Any]]:
    """Parse and validate a manifest's regions value (JSON text or an already-parsed list) into
    `[{"kind", "name", "box"}]`, boxes in pixels of the original image.

    Boxes are `[x0, y0, x1, y1]` in pixels with x0 < x1 and y0 < y1, all >= 0; when `width`/`height` are
    given the box must also lie inside the image (x1 <= width, y1 <= height). None/NaN/"" mean no regions.

    Raises:
        ValueError: with a message naming the region (by position) and what is wrong with it.
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return []
    if isinstance(raw, (bytes, bytearray)):
        raise ValueError("regions must be JSON text, got bytes")
    if isinstance(raw, str):
        if not raw.strip():
            return []
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"regions is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:
            raise ValueError("regions is not valid JSON: nested too deeply") from None
    else:
        value = raw
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"regions must be a JSON list of objects, got {_json_kind(value)}")
    out = []
    for i, region in enumerate(value):
        out.append(_parse_region(region, i, width, height))
    return out


def regions_json(regions: Sequence[dict[str, Any]]) -> str | None:
    """The normalised JSON text of parsed regions (None when there are none)."""
    if not regions:
        return None
    return json.dumps([{"kind": r["kind"], "name": r["name"], "box": list(r["box"])} for r in regions])


def _parse_region(region: Any, i: int, width: int | None, height: int | None) -> dict[str, Any]:
    where = f"region {i}"
    if not isinstance(region, dict):
        raise ValueError(f"{where} must be an object with kind, name, box; got {_json_kind(region)}")
    unknown = set(region) - _REGION_KEYS
    if unknown:
        raise ValueError(
            f"{where} has unknown key(s) {', '.join(sorted(map(str, unknown)))} (allowed: box, kind, name)"
        )
    missing = _REGION_KEYS - set(region)
    if missing:
        raise ValueError(f"{where} lacks key(s) {', '.join(sorted(missing))}")
    kind = region["kind"]
    if kind not in REGION_KINDS:
        raise ValueError(f"{where} has kind {kind!r}; it must be 'core', 'spurious' or 'context'")
    name = region["name"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where} needs a non-empty string name, got {name!r}")
    box = region["box"]
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"{where} ({name}) box must be a list of 4 numbers [x0, y0, x1, y1], got {box!r}")
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where} ({name}) box must hold finite numbers, got {box!r}")
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0:
        raise ValueError(f"{where} ({name}) box {list(box)} has a negative coordinate")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"{where} ({name}) box {list(box)} is empty or inverted (need x0 < x1 and y0 < y1)")
    if width is not None and height is not None and (x1 > width or y1 > height):
        raise ValueError(f"{where} ({name}) box {list(box)} lies outside the {width}x{height} image")
    return {"kind": kind, "name": name.strip(), "box": list(box)}


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


# ---------------------------------------------------------------------------------------------
# Format readers: each returns (columns, rows) with rows as dicts of raw values + optional ROW_ERROR
# ---------------------------------------------------------------------------------------------


def _parse_csv(data: bytes, name: str) -> tuple[list[str], list[dict[str, Any]]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # surrogateescape keeps undecodable bytes visible per field, so only the rows holding them are rejected.
    text = data.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    try:
        header = next(reader, None)
        while header is not None and not header:
            header = next(reader, None)
    except csv.Error as exc:
        raise ManifestError(f"{name}: the CSV header cannot be parsed: {exc}") from exc
    if header is None:
        raise ManifestError(f"{name}: no header line (the file holds only blank lines)")
    columns = [_clean_text(h)[0].strip() for h in header]
    if any(_clean_text(h)[1] for h in header):
        raise ManifestError(f"{name}: the CSV header has bytes that are not valid UTF-8: {columns}")
    _check_names(columns, name)
    rows: list[dict[str, Any]] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The csv module cannot resume after a hard error: everything after it is one unparsable row.
            rows.append({ROW_ERROR: f"CSV cannot be parsed from here on: {exc}"})
            break
        if not fields:
            continue
        row: dict[str, Any] = {}
        errors = []
        # Not strict: a short row leaves its last columns unset, and a long one is reported just below.
        for column, raw in zip(columns, fields, strict=False):
            value, bad = _clean_text(raw)
            if bad:
                errors.append(f"column '{column}' has bytes that are not valid UTF-8 ({bad})")
            row[column] = value if value != "" else None
        if len(fields) > len(columns):
            errors.append(f"row has {len(fields)} fields but the header has {len(columns)}")
        row[ROW_ERROR] = "; ".join(errors) or None
        rows.append(row)
    return columns, rows


def _clean_text(raw: str) -> tuple[str, str]:
    """Undo surrogateescape: (text with bad bytes shown as \\xNN, description of the bad bytes or "")."""
    try:
        raw.encode("utf-8")
        return raw, ""
    except UnicodeEncodeError:
        pass
    data = raw.encode("utf-8", errors="surrogateescape")
    bad = sorted({f"0x{ord(c) - 0xDC00:02x}" for c in raw if 0xDC80 <= ord(c) <= 0xDCFF})
    return data.decode("utf-8", errors="backslashreplace"), "bytes " + ", ".join(bad[:5])


def _parse_jsonl(data: bytes, name: str) -> tuple[list[str], list[dict[str, Any]]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    columns: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            shown = line.decode("utf-8", errors="backslashreplace")
            rows.append({ROW_ERROR: f"line {lineno} has bytes that are not valid UTF-8 ({exc.reason}): {shown[:200]}"})
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            rows.append({ROW_ERROR: f"line {lineno} is not valid JSON: {exc.msg} at column {exc.colno}"})
            continue
        except RecursionError:
            rows.append({ROW_ERROR: f"line {lineno} is not valid JSON: nested too deeply"})
            continue
        if not isinstance(record, dict):
            rows.append({ROW_ERROR: f"line {lineno} must be a JSON object, got {_json_kind(record)}"})
            continue
        row: dict[str, Any] = {}
        for key, value in record.items():
            key = str(key).strip()
            if not key:
                raise ManifestError(f"{name}: line {lineno} has a key with an empty name")
            columns.setdefault(key, None)
            row[key] = value
        row[ROW_ERROR] = None
        rows.append(row)
    return list(columns), rows


def _parse_parquet(data: bytes, name: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"{name}: not a readable Parquet file: {exc}") from exc
    columns = [c.strip() for c in table.column_names]
    _check_names(columns, name)
    table = table.rename_columns(columns)
    rows = table.to_pylist()
    for row in rows:
        row[ROW_ERROR] = None
    return columns, rows


# ---------------------------------------------------------------------------------------------
# Normalisation shared by every format
# ---------------------------------------------------------------------------------------------


def _finish(columns: list[str], rows: list[dict[str, Any]], name: str, required: Sequence[str]) -> pd.DataFrame:
    if ROW_ERROR in columns:
        raise ManifestError(f"{name}: column '{ROW_ERROR}' is reserved")
    if not columns:  # JSON Lines with no parsable record: nothing to check; bad lines keep their reasons
        columns = list(required)
    for column in required:
        if column not in columns:
            raise ManifestError(_missing_message(name, column, columns))
    out: dict[str, list[Any]] = {c: [] for c in columns}
    errors: list[Any] = []
    for row in rows:
        for column in columns:
            value = row.get(column)
            if column == "tags":
                out[column].append(parse_tags(value))
            else:
                out[column].append(cell_text(value))
        errors.append(row.get(ROW_ERROR))
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in out.items()})
    frame[ROW_ERROR] = pd.Series(errors, dtype=object)
    frame.index = pd.RangeIndex(len(frame))
    return frame


def cell_text(value: Any) -> str | None:
    """A cell as text: None stays None, strings are kept, other scalars and nested values become JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    try:
        return json.dumps(value, default=str, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)


def _check_names(columns: Sequence[str], name: str) -> None:
    for i, column in enumerate(columns):
        if not column:
            raise ManifestError(f"{name}: column {i + 1} has an empty name")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise ManifestError(f"{name}: column '{column}' appears more than once")
        seen.add(column)


def _missing_message(name: str, column: str, columns: Sequence[str]) -> str:
    return f"{name}: missing required column '{column}' (columns found: {', '.join(columns) or 'none'})"


def _frame_to_table(frame: pd.DataFrame) -> pa.Table:
    columns = {}
    for name in frame.columns:
        if name == "tags":
            columns[name] = pa.array(list(frame[name]), pa.list_(pa.string()))
        else:
            columns[name] = pa.array(list(frame[name]), pa.string())
    return pa.table(columns) if columns else pa.table({})


def _tags_array(column: pa.ChunkedArray) -> pa.Array:
    """Vectorised `parse_tags` over an Arrow column (string with `|` separators, or list of strings)."""
    array = column.combine_chunks()
    n = len(array)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        lists = pc.split_pattern(array.cast(pa.string()), "|")
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lists = array
    elif pa.types.is_null(array.type):
        return pa.array([[] for _ in range(n)], pa.list_(pa.string()))
    else:
        return pa.array([parse_tags(v) for v in array.to_pylist()], pa.list_(pa.string()))
    # Vectorised over every tag at once (no Python string per tag): tags become dictionary codes, and a
    # row's repeated tag is the repeated (row, code) pair, of which the first is kept.
    parents = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
    encoded = pc.utf8_trim_whitespace(pc.list_flatten(lists).cast(pa.string())).dictionary_encode()
    dictionary = encoded.dictionary
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    empty = pc.index(dictionary, "").as_py()
    keep = (codes >= 0) & (codes != empty)
    parents, codes = parents[keep], codes[keep]
    _, first = np.unique(parents * max(len(dictionary), 1) + codes, return_index=True)
    first.sort()
    parents, codes = parents[first], codes[first]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parents, minlength=n))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), dictionary.take(pa.array(codes)))
