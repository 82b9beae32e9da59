"""Streaming image batches: decode and preprocess in parallel workers, memory bounded, bad files reported.

Each image is decoded with PIL (EXIF orientation applied, any mode converted to 8-bit RGB: CMYK,
16-bit, grayscale, palette with transparency), resized WHOLE to a square (no crop, so region boxes map
linearly onto the model input) and shipped as uint8; the float conversion and normalisation happen on
the target device (a quarter of the bytes to move). Workers of a torch DataLoader decode in parallel with
a bounded prefetch (`num_workers * prefetch` batches in flight), so memory does not grow with the number
of rows. A file that cannot be decoded (corrupt, truncated, not an image, too many pixels) becomes a
`(position, reason)` failure in its batch; it never raises.

With a model's own preprocessing (`plan`, see audit_tasks.preprocess: resize the shorter side, centre crop),
the worker decodes with PIL (libjpeg's draft scaling down to no less than the resize), then resizes and
crops with torch ops (`preprocess.resize_crop`, antialiased), computing the geometry from the image's full
upright size so that region boxes map through exactly the same plan.

On CUDA, JPEG files can be decoded on the GPU (`torchvision.io.decode_jpeg(device="cuda")`): workers
then only read the bytes and probe the header, and the device decodes and resizes the batch.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from audit_tasks.preprocess import PreprocessPlan, resize_crop
from audit_tasks.storage import FileOpener

#: Refuse images with more pixels than this before decoding them (DatasetConfig.max_image_pixels' default).
MAX_IMAGE_PIXELS = 50_000_000
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


@dataclass(frozen=True)
class ImageBatch:
    """Decoded rows of one batch: `images[i]` is the row at position `positions[i]` of the input frame."""

    positions: list[int]
    images: Tensor  # (n, 3, H, W) float32, normalised, on the device (S x S when squashed)
    failures: list[tuple[int, str]]


def iter_image_batches(
    rows: pd.DataFrame,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    max_pixels: int = MAX_IMAGE_PIXELS,
    gpu_decode: bool | None = None,
    prefetch: int = 2,
    opener: Callable[[str], IO[bytes]] | None = None,
    plan: PreprocessPlan | None = None,
) -> Iterator[ImageBatch]:
    """Yield ImageBatch objects for `rows` (an `image_path` column of files or URIs), in row order.

    `opener` opens an `image_path` for reading (default: local files, and URIs with fsspec's credentials);
    `storage.FileOpener(image_root)` opens object-store images with the image root's filesystem.

    `gpu_decode`: None = decode JPEGs with torchvision on the device when it is CUDA; True = always
    (also on the CPU); False = always PIL in the workers.
    A batch whose every image failed still comes out (empty `images`), so every row is accounted for.
    `plan`: a model's own preprocessing (kind "model"); its mean/std and input size replace the arguments.
    None or a squash plan: the whole image resized to input_size (no crop).
    """
    if "image_path" not in rows.columns:
        raise ValueError("rows need an 'image_path' column")
    if batch_size < 1 or input_size < 1:
        raise ValueError("batch_size and input_size must be positive")
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    use_gpu_decode = on_gpu if gpu_decode is None else gpu_decode
    planned = plan if plan is not None and plan.kind == "model" else None
    if planned is not None:
        mean, std = planned.mean, planned.std
    dataset = _Decode(
        [str(p) for p in rows["image_path"]],
        input_size,
        max_pixels,
        raw_jpeg=use_gpu_decode,
        opener=opener or FileOpener(),
        plan=planned,
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=on_gpu,
        prefetch_factor=prefetch if num_workers > 0 else None,
        persistent_workers=False,
    )
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
    for decoded, raw, failures in loader:
        positions = [p for p, _ in decoded]
        tensors = [t for _, t in decoded]
        if raw:
            gpu_ok, gpu_tensors, gpu_failures = _decode_on_device(raw, input_size, device, max_pixels, planned)
            positions += gpu_ok
            tensors += gpu_tensors
            failures = failures + gpu_failures
        if tensors:
            order = np.argsort(positions, kind="stable")
            positions = [positions[i] for i in order]
            stacked = torch.stack([tensors[i].to(device, non_blocking=True) for i in order])
            images = (stacked.float() - mean_t) / std_t
        else:
            height, width = planned.input_size if planned is not None else (input_size, input_size)
            images = torch.empty((0, 3, height, width), device=device)
        yield ImageBatch(positions=positions, images=images, failures=sorted(failures))


def decode_image(source: str | IO[bytes], input_size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    """One file -> (3, S, S) uint8, upright, RGB, resized whole; raises ValueError/OSError on bad files."""
    with Image.open(source) as opened:
        _check_pixels(opened.size, max_pixels)
        if opened.format == "JPEG":
            opened.draft("RGB", (input_size, input_size))  # let libjpeg scale down while decoding
        image = ImageOps.exif_transpose(opened)
        image = _to_rgb(image)
        image = image.resize((input_size, input_size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_planned(source: str | IO[bytes], plan: PreprocessPlan, max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    """One file -> (3, H, W) uint8 by a model's plan: upright, RGB, resized and centre-cropped with torch ops.

    The plan's geometry is computed from the full upright size (before libjpeg's draft scaling), the same
    size region boxes are given in.
    """
    with Image.open(source) as opened:
        _check_pixels(opened.size, max_pixels)
        width, height = opened.size
        if _orientation(opened) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        if opened.format == "JPEG":
            resized = plan.resized_size((width, height))
            side = min(resized) if plan.resize == "shorter" else max(resized)
            opened.draft("RGB", (side, side))  # libjpeg scales down, never below the resize
        image = _to_rgb(ImageOps.exif_transpose(opened))
        array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return resize_crop(tensor, plan, (width, height))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (16-bit and 32-bit integer modes are scaled, not clipped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.int64)
        top = 65535 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255
        scaled = np.clip(values * 255 // max(top, 1), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scaled = np.clip(values * (255.0 if values.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's palette-transparency warning; alpha is then dropped
    return image.convert("RGB") if image.mode != "RGB" else image


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ValueError(f"image has {width}x{height} pixels, more than the limit of {max_pixels}")
    if width < 1 or height < 1:
        raise ValueError(f"image has an empty size {width}x{height}")


class _Decode(Dataset):
    """Map-style dataset over file paths; only the path list is held, never decoded images."""

    def __init__(
        self,
        paths: list[str],
        input_size: int,
        max_pixels: int,
        *,
        raw_jpeg: bool,
        opener: Callable[[str], IO[bytes]],
        plan: PreprocessPlan | None = None,
    ) -> None:
        self.plan = plan
        self.paths = paths
        self.input_size = input_size
        self.max_pixels = max_pixels
        self.raw_jpeg = raw_jpeg
        self.opener = opener

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[str, int, Any]:
        path = self.paths[position]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with self.opener(path) as handle:
                    if self.raw_jpeg:
                        raw = _read_jpeg(handle, self.max_pixels)
                        if raw is not None:
                            return "raw", position, raw
                        handle.seek(0)
                    if self.plan is not None:
                        return "ok", position, decode_planned(handle, self.plan, self.max_pixels)
                    return "ok", position, decode_image(handle, self.input_size, self.max_pixels)
        except Exception as exc:  # noqa: BLE001 - any decoder failure quarantines this one image
            return "fail", position, _reason(path, exc)


def _read_jpeg(handle: IO[bytes], max_pixels: int) -> Tensor | None:
    """The file's bytes when it is a complete plain RGB/gray JPEG (header and end marker); None otherwise."""
    data = handle.read()
    if not data.startswith(_JPEG_MAGIC) or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or no end-of-image marker (truncated): PIL decides and reports
    with Image.open(io.BytesIO(data)) as probe:  # header only: size and mode, no decode
        _check_pixels(probe.size, max_pixels)
        if probe.mode not in ("RGB", "L"):
            return None  # CMYK and friends go through PIL
        if _orientation(probe) != 1:
            return None  # nvjpeg ignores EXIF orientation on the GPU: PIL turns these upright
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: treat as upright, as the ingest probe does
        return 1


def _decode_on_device(
    raw: list[tuple[int, Tensor]],
    input_size: int,
    device: torch.device,
    max_pixels: int,
    plan: PreprocessPlan | None = None,
) -> tuple[list[int], list[Tensor], list[tuple[int, str]]]:
    """Batch-decode JPEG bytes with nvjpeg, upright, then resized whole (or by `plan`); PIL takes any image
    nvjpeg refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    positions, data = [p for p, _ in raw], [d for _, d in raw]
    try:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except RuntimeError:
        decoded = []
        for blob in data:
            try:
                decoded.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError as exc:
                decoded.append(exc)
    ok, tensors, failures = [], [], []
    for position, image in zip(positions, decoded, strict=True):
        if isinstance(image, Exception):
            try:
                encoded = io.BytesIO(data[positions.index(position)].numpy().tobytes())
                fallback = (
                    decode_planned(encoded, plan, max_pixels)
                    if plan is not None
                    else decode_image(encoded, input_size, max_pixels)
                )
                image = fallback.to(device)
            except Exception as exc:  # noqa: BLE001 - quarantine this one image
                failures.append((position, f"cannot decode JPEG: {type(exc).__name__}: {exc}"))
                continue
            ok.append(position)
            tensors.append(image)
            continue
        if plan is not None:
            ok.append(position)
            tensors.append(resize_crop(image, plan))
            continue
        resized = F.interpolate(
            image[None].float(), size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True
        )
        ok.append(position)
        tensors.append(resized[0].round_().clamp_(0, 255).to(torch.uint8))
    return ok, tensors, failures


def _collate(
    items: list[tuple[str, int, Any]],
) -> tuple[list[tuple[int, Tensor]], list[tuple[int, Tensor]], list[tuple[int, str]]]:
    decoded = [(p, t) for kind, p, t in items if kind == "ok"]
    raw = [(p, t) for kind, p, t in items if kind == "raw"]
    failures = [(p, t) for kind, p, t in items if kind == "fail"]
    return decoded, raw, failures


def _reason(path: str, exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"image file not found: {path}"
    if isinstance(exc, UnidentifiedImageError):
        return f"not a readable image: {path}"
    if "truncated" in text.replace(path, "").lower():
        return f"image file is truncated: {path}"
    return f"cannot decode image {path}: {type(exc).__name__}: {text}"
