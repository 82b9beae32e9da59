"""Image probe and content hash: sizes as displayed, formats and modes, and every refusal's reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from audit_tasks.errors import ImageError
from audit_tasks.images import ImageInfo, content_hash, probe_image
from fixtures_ingest import write_jpeg, write_png, write_png_header_only, write_truncated_jpeg

LIMITS = {"max_pixels": 50_000_000, "min_side": 8}


def test_probe_reads_size_format_and_mode(tmp_path: Path) -> None:
    info = probe_image(write_jpeg(tmp_path / "a.jpg", (40, 30)), **LIMITS)
    assert info == ImageInfo(
        width=40, height=30, format="JPEG", mode="RGB", orientation=1, jpeg_quality=info.jpeg_quality
    )
    assert info.jpeg_quality is not None and 1 <= info.jpeg_quality <= 100


@pytest.mark.parametrize(
    "orientation,size", [(1, (40, 20)), (3, (40, 20)), (5, (20, 40)), (6, (20, 40)), (8, (20, 40))]
)
def test_exif_orientation_gives_the_displayed_size(tmp_path: Path, orientation: int, size: tuple[int, int]) -> None:
    info = probe_image(write_jpeg(tmp_path / "r.jpg", (40, 20), orientation=orientation), **LIMITS)
    assert (info.width, info.height) == size and info.orientation == orientation


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_jpeg_modes_are_accepted(tmp_path: Path, mode: str) -> None:
    assert probe_image(write_jpeg(tmp_path / "m.jpg", mode=mode), **LIMITS).mode == mode


@pytest.mark.parametrize("mode,expected", [("I;16", "I;16"), ("L", "L"), ("P+alpha", "P"), ("RGBA", "RGBA")])
def test_png_modes_are_accepted(tmp_path: Path, mode: str, expected: str) -> None:
    assert probe_image(write_png(tmp_path / "m.png", mode=mode), **LIMITS).mode == expected


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="image file not found"):
        probe_image(tmp_path / "none.jpg", **LIMITS)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a regular file"):
        probe_image(tmp_path, **LIMITS)


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "z.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"image file is empty \(0 bytes\): z\.jpg"):
        probe_image(tmp_path / "z.jpg", **LIMITS)


def test_text_named_jpg_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.jpg").write_text("hello, not an image\n", encoding="utf-8")
    with pytest.raises(ImageError, match=r"not a recognised image format: t\.jpg \(20 bytes\)"):
        probe_image(tmp_path / "t.jpg", **LIMITS)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="truncated or corrupt image t.jpg: JPEG has no end-of-image marker"):
        probe_image(write_truncated_jpeg(tmp_path / "t.jpg"), **LIMITS)


def test_jpeg_with_trailing_bytes_after_eoi_is_accepted(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "trailer.jpg", (32, 32))
    path.write_bytes(path.read_bytes() + b"VENDOR-TRAILER" * 20)
    assert probe_image(path, **LIMITS).width == 32


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    path = write_png(tmp_path / "t.png", (64, 64))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ImageError, match="truncated or corrupt image t.png: PNG has no IEND chunk"):
        probe_image(path, **LIMITS)


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = write_png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    assert path.stat().st_size < 200
    with pytest.raises(ImageError, match=r"image too large: bomb\.png declares 10,000,000,000 pixels"):
        probe_image(path, **LIMITS)


def test_size_over_max_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = write_png_header_only(tmp_path / "big.png", 9000, 9000)
    with pytest.raises(
        ImageError, match=r"PNG declares 9000x9000 = 81,000,000 pixels, over max_image_pixels 50,000,000"
    ):
        probe_image(path, **LIMITS)


def test_image_with_a_side_under_min_side_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"image too small: 4x30, a side is under min_image_side 8"):
        probe_image(write_png(tmp_path / "thin.png", (4, 30)), **LIMITS)


def test_content_hash_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 10_000  # over one read chunk
    path.write_bytes(data)
    assert content_hash(path) == hashlib.sha256(data).hexdigest()


def test_content_hash_differs_for_different_images(tmp_path: Path) -> None:
    assert content_hash(write_jpeg(tmp_path / "a.jpg", seed=1)) != content_hash(write_jpeg(tmp_path / "b.jpg", seed=2))
