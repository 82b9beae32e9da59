"""Helpers that write small images, manifests and configs for ingest tests (reused by end-to-end tests).

Import as `from fixtures_ingest import ...` (pytest puts tests/ on sys.path for rootdir-less test dirs).
"""

from __future__ import annotations

import csv
import json
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from audit_tasks.config import AuditConfig, parse_config


def make_config(
    base: Path,
    *,
    classes: Sequence[str] | None = ("doctor", "nurse"),
    attributes: Sequence[str] = (),
    ingest_threshold: float | None = None,
    **dataset: Any,
) -> AuditConfig:
    """A minimal AuditConfig under `base`: landing/, images/, catalog/ (created), a dummy model when
    `classes` is given (the ingest only reads its classes), a subgroups check over `attributes`."""
    for name in ("landing", "images"):
        (base / name).mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {"dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog", **dataset}}
    if classes is not None:
        checkpoint = base / "model.pt"
        if not checkpoint.exists():
            checkpoint.write_bytes(b"placeholder: the ingest never loads the model")
        raw["model"] = {
            "arch": "resnet18",
            "checkpoint": "model.pt",
            "classes": list(classes),
            "target_layer": "layer4",
        }
    checks: dict[str, Any] = {}
    if attributes:
        checks["subgroups"] = {"attributes": list(attributes)}
    if ingest_threshold is not None:
        checks["ingest"] = {"max_quarantine_fraction": ingest_threshold}
    if checks:
        raw["checks"] = checks
    return parse_config(raw, base_dir=base)


def _pixels(size: tuple[int, int], seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = size
    return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)


def write_jpeg(
    path: Path, size: tuple[int, int] = (32, 24), *, seed: int = 0, mode: str = "RGB", orientation: int | None = None
) -> Path:
    """A JPEG of `size` (stored pixels) with distinct content per seed; optional EXIF orientation; RGB/L/CMYK."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "CMYK": 4, "L": 1}[mode]
    array = _pixels(size, seed, channels)
    if mode == "CMYK":
        image = Image.frombytes("CMYK", size, array.tobytes())
    else:
        image = Image.fromarray(array[..., 0] if channels == 1 else array)
    kwargs: dict[str, Any] = {"quality": 90}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, "JPEG", **kwargs)
    return path


def write_png(path: Path, size: tuple[int, int] = (32, 24), *, seed: int = 0, mode: str = "RGB") -> Path:
    """A PNG in `mode`: RGB, L (grayscale), I;16 (16-bit), P+alpha (palette with a transparent index), RGBA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "I;16":
        values = np.random.default_rng(seed).integers(0, 65535, size=(h, w), dtype=np.uint16)
        image = Image.fromarray(values)
        if image.mode != "I;16":
            image = image.convert("I;16")
        image.save(path, "PNG")
        return path
    if mode == "P+alpha":
        image = Image.fromarray(_pixels(size, seed)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = 0
        image.save(path, "PNG", transparency=0)
        return path
    array = _pixels(size, seed, {"RGB": 3, "RGBA": 4, "L": 1}[mode])
    Image.fromarray(array[..., 0] if mode == "L" else array).save(path, "PNG")
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny, well-formed PNG that *declares* `width` x `height` (a decompression bomb's header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def write_truncated_jpeg(path: Path, *, keep: float = 0.5, seed: int = 0) -> Path:
    """A JPEG cut after `keep` of its bytes (no end-of-image marker)."""
    full = write_jpeg(path, (64, 64), seed=seed)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """A CSV manifest; list values (tags) are joined with `|`, dict/list regions are JSON-encoded."""
    rows = list(rows)
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c), c) for c in columns])
    return path


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), path)
    return path


def regions(*boxes: tuple[str, str, Sequence[float]]) -> str:
    """Regions JSON from (kind, name, box) triples."""
    return json.dumps([{"kind": k, "name": n, "box": list(b)} for k, n, b in boxes])


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) and column == "tags":
        return "|".join(map(str, value))
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
