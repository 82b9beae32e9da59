"""Image header probe and content hash: cheap checks that keep broken or hostile files out of the catalog.

`probe_image` reads the header (PIL's lazy `Image.open`), refuses a declared size over `max_pixels` before
any pixel is decoded, and checks for truncation cheaply:

* JPEG: the file must end with the EOI marker (FF D9, trailing padding allowed). Files that do not (a
  camera trailer after EOI, or a real truncation) get a draft decode at 1/8 scale, which raises on a
  truncated stream and is cheap otherwise.
* PNG: the file must end with the IEND chunk; if it does not, the image is fully decoded to tell a
  trailer from a truncation.
* Other formats: a full decode (they are rare in datasets; the pixel limit bounds the cost).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from audit_tasks.errors import ImageError
from audit_tasks.image_properties import jpeg_quality
from audit_tasks.storage import StoragePath, storage_path

_EXIF_ORIENTATION = 0x0112
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_TAIL_BYTES = 64
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageInfo:
    """What the audit needs to know about an image without decoding it: its displayed size and format."""

    width: int  # as displayed: after the EXIF orientation (swapped for orientations 5-8)
    height: int
    format: str  # PIL format name: JPEG, PNG, ...
    mode: str  # PIL mode: RGB, L, CMYK, P, I;16, ...
    orientation: int = 1  # EXIF orientation tag (1 = as stored)
    jpeg_quality: float | None = None  # libjpeg quality estimated from the header's tables (JPEG only)


def probe_image(path: StoragePath | str, *, max_pixels: int, min_side: int) -> ImageInfo:
    """Read an image's header and check it is usable, without decoding the pixels when it can.

    Raises:
        ImageError: missing file, not a regular file, zero bytes, not an image, declared size over
            `max_pixels` (decompression bomb), a side under `min_side`, or a truncated/corrupt file.
    """
    path = storage_path(path)
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a regular file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"image file is empty (0 bytes): {path.name}")
    with warnings.catch_warnings():
        # PIL warns above its own limit and raises above twice it; our limit is checked explicitly below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with path.open("rb") as handle, Image.open(handle) as image:
                width, height = image.size
                fmt = image.format or "unknown"
                mode = image.mode
                if width * height > max_pixels:
                    raise ImageError(
                        f"image too large: {fmt} declares {width}x{height} = {width * height:,} pixels,"
                        f" over max_image_pixels {max_pixels:,} (decompression-bomb guard; nothing was decoded)"
                    )
                orientation = _orientation(image)
                # The tables are parsed with the header: no pixel is decoded.
                quality = jpeg_quality(getattr(image, "quantization", None)) if fmt == "JPEG" else None
                _check_complete(path, image, fmt, size)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            declared = re.search(r"\((\d+) pixels\)", str(exc))
            count = f"{int(declared.group(1)):,} pixels" if declared else "a size PIL refuses"
            raise ImageError(
                f"image too large: {path.name} declares {count}, over max_image_pixels {max_pixels:,}"
                " (decompression-bomb guard; nothing was decoded)"
            ) from None
        except UnidentifiedImageError:
            raise ImageError(f"not a recognised image format: {path.name} ({size} bytes)") from None
        except Exception as exc:  # noqa: BLE001 - a hostile file can trip any error in a decoder plugin
            raise ImageError(f"corrupt image {path.name}: {type(exc).__name__}: {exc}") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if min(width, height) < min_side:
        raise ImageError(f"image too small: {width}x{height}, a side is under min_image_side {min_side}")
    return ImageInfo(width=width, height=height, format=fmt, mode=mode, orientation=orientation, jpeg_quality=quality)


def content_hash(path: StoragePath | str) -> str:
    """SHA-256 of the file's bytes (hex), read in 1 MiB chunks so memory stays flat for large files."""
    digest = hashlib.sha256()
    with storage_path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a good image; treat as upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_complete(path: StoragePath, image: Image.Image, fmt: str, size: int) -> None:
    """Raise ImageError when the file is truncated (see the module docstring for the method per format)."""
    with path.open("rb") as handle:
        handle.seek(max(0, size - _TAIL_BYTES))
        tail = handle.read()
    if fmt == "JPEG":
        if tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            return
        image.draft(image.mode, (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
        _decode(image, path, "JPEG has no end-of-image marker")
    elif fmt == "PNG":
        if tail.endswith(_PNG_IEND):
            return
        _decode(image, path, "PNG has no IEND chunk at its end")
    else:
        _decode(image, path, f"{fmt} cannot be decoded")


def _decode(image: Image.Image, path: StoragePath, why: str) -> None:
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - as in probe_image: any decoder error means this file is unusable
        raise ImageError(f"truncated or corrupt image {path.name}: {why} ({exc})") from None
