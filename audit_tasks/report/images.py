"""Grad-CAM overlay thumbnails for the report: small JPEGs as data URIs, so the page needs no other file.

The stored CAM (native resolution, ReLU'd, not normalised) is upsampled bilinearly to the thumbnail,
scaled to its own maximum, coloured with a jet lookup table and alpha-blended over a thumbnail of the
original image; core (green) and spurious (red) boxes are drawn scaled from original pixels.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw

from audit_tasks.storage import FileOpener

CORE_COLOUR = (0, 190, 60)
SPURIOUS_COLOUR = (235, 20, 20)
_JPEG_QUALITY = 72
_ALPHA = 0.5
# Originals larger than this are not decoded for a thumbnail (decompression-bomb guard).
_MAX_SOURCE_PIXELS = 60_000_000


def jet_lut(size: int = 256) -> np.ndarray:
    """A (size, 3) uint8 jet colour map: blue (cold) through green and yellow to red (hot)."""
    x = np.linspace(0.0, 1.0, size)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.round(np.stack([r, g, b], axis=1) * 255.0).astype(np.uint8)


_JET = jet_lut()


@dataclass(frozen=True)
class Box:
    """One region box, in the original image's pixel coordinates."""

    kind: str
    name: str
    x0: float
    y0: float
    x1: float
    y1: float


def parse_boxes(regions: Any) -> list[Box]:
    """The boxes of an images.parquet `regions` JSON string; malformed entries are skipped (display only)."""
    if regions is None or (isinstance(regions, float) and np.isnan(regions)):
        return []
    try:
        items = json.loads(regions) if isinstance(regions, str) else regions
    except (TypeError, ValueError):
        return []
    boxes = []
    for item in items if isinstance(items, (list, tuple)) else []:
        if not isinstance(item, dict):
            continue
        box: Any = item.get("box")  # anything but four numbers is skipped below
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            continue
        boxes.append(Box(str(item.get("kind", "")), str(item.get("name", "")), x0, y0, x1, y1))
    return boxes


def thumb_dims(width: Any, height: Any, thumb_size: int) -> tuple[int, int]:
    """Thumbnail (width, height) keeping the original aspect ratio, longest side = thumb_size."""
    try:
        w, h = float(width), float(height)
    except (TypeError, ValueError):
        return thumb_size, thumb_size
    if not (w > 0 and h > 0) or np.isnan(w) or np.isnan(h):
        return thumb_size, thumb_size
    scale = thumb_size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def colourise(cam: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Upsample a 2-D CAM bilinearly to `size` (w, h); return (RGB uint8 heat, normalised map in [0, 1])."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    cam = np.maximum(cam, 0.0)
    resized = np.asarray(Image.fromarray(cam).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    peak = float(resized.max()) if resized.size else 0.0
    norm = resized / peak if peak > 0 else np.zeros_like(resized)
    index = np.clip(np.round(norm * 255.0), 0, 255).astype(np.uint8)
    return _JET[index], norm


def _load_original(path: Any, size: tuple[int, int], opener: Callable[[str], IO[bytes]]) -> Image.Image | None:
    """The original image as an RGB thumbnail of `size`, or None when it cannot be read (missing, not an image)."""
    if not isinstance(path, str) or not path:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with opener(path) as handle, Image.open(handle) as img:
                if img.width * img.height > _MAX_SOURCE_PIXELS:
                    return None
                img.draft("RGB", (size[0] * 2, size[1] * 2))
                return img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    except Exception:  # noqa: BLE001 - a thumbnail is optional: any unreadable source (or store error) shows none
        return None


@dataclass(frozen=True)
class Overlay:
    """A rendered thumbnail: the data URI, its size, and whether the original image was found."""

    data_uri: str
    width: int
    height: int
    has_original: bool


def render_overlay(
    cam: Sequence[float] | np.ndarray | None,
    cam_height: Any,
    cam_width: Any,
    *,
    image_path: Any,
    width: Any,
    height: Any,
    regions: Any,
    thumb_size: int,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> Overlay:
    """One thumbnail: CAM heat over the original (or the heat alone when the file is gone), boxes drawn.

    `opener` opens `image_path` (default: local files, and URIs with fsspec's own credentials).
    """
    size = thumb_dims(width, height, thumb_size)
    original = _load_original(image_path, size, opener or FileOpener())
    heat_rgb: np.ndarray | None = None
    try:
        ch, cw = int(cam_height), int(cam_width)
        values = np.asarray(cam if cam is not None else [], dtype=np.float32)
        if ch > 0 and cw > 0 and values.size == ch * cw:
            heat_rgb, _ = colourise(values.reshape(ch, cw), size)
    except (TypeError, ValueError):
        heat_rgb = None
    if heat_rgb is None:
        base = np.asarray(original, dtype=np.float32) if original is not None else np.full((size[1], size[0], 3), 128.0)
        out = base
    elif original is None:
        out = heat_rgb.astype(np.float32)
    else:
        out = (1.0 - _ALPHA) * np.asarray(original, dtype=np.float32) + _ALPHA * heat_rgb.astype(np.float32)
    img = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    _draw_boxes(img, parse_boxes(regions), width, height)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Overlay(uri, size[0], size[1], original is not None)


def _draw_boxes(img: Image.Image, boxes: list[Box], width: Any, height: Any) -> None:
    try:
        sx = img.width / float(width)
        sy = img.height / float(height)
    except (TypeError, ValueError, ZeroDivisionError):
        return
    if not (np.isfinite(sx) and np.isfinite(sy)) or sx <= 0 or sy <= 0:
        return
    draw = ImageDraw.Draw(img)
    # Spurious boxes last so they stay visible where they overlap a core box.
    for box in sorted(boxes, key=lambda b: b.kind == "spurious"):
        colour = SPURIOUS_COLOUR if box.kind == "spurious" else CORE_COLOUR if box.kind == "core" else (255, 255, 255)
        x0, x1 = sorted((box.x0 * sx, box.x1 * sx))
        y0, y1 = sorted((box.y0 * sy, box.y1 * sy))
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(img.width - 1.0, x1), min(img.height - 1.0, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
