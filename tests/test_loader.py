"""Streaming loader: every odd image mode decodes upright to RGB; broken files are reported, never raised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit_tasks.loader import decode_image, iter_image_batches

S = 16


def _batches(paths, **kwargs):
    rows = pd.DataFrame({"image_path": [str(p) for p in paths]})
    options = dict(input_size=S, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), batch_size=4, num_workers=0, device="cpu")
    options.update(kwargs)
    return list(iter_image_batches(rows, **options))


def _solid(path, color=(200, 30, 30), size=(40, 30), fmt=None):
    Image.new("RGB", size, color).save(path, fmt)
    return path


def test_truncated_jpeg_and_text_file_are_quarantined_without_raising(tmp_path):
    good = _solid(tmp_path / "good.jpg")
    data = _solid(tmp_path / "full.jpg", size=(200, 200)).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    missing = tmp_path / "missing.png"
    batches = _batches([good, truncated, text, missing, good])
    positions = [p for b in batches for p in b.positions]
    failures = dict(f for b in batches for f in b.failures)
    assert positions == [0, 4]
    assert sorted(failures) == [1, 2, 3]
    assert "truncated" in failures[1]
    assert "not a readable image" in failures[2]
    assert "not found" in failures[3]


def test_batches_keep_row_order_and_shapes(tmp_path):
    paths = [_solid(tmp_path / f"{i}.png", color=(i * 20, 0, 0)) for i in range(6)]
    batches = _batches(paths)
    assert [b.positions for b in batches] == [[0, 1, 2, 3], [4, 5]]
    assert batches[0].images.shape == (4, 3, S, S) and batches[0].images.dtype.is_floating_point
    reds = [float(img[0].mean()) for b in batches for img in b.images]
    assert reds == pytest.approx([i * 20 / 255 for i in range(6)], abs=1e-3)


def test_normalisation_uses_mean_and_std(tmp_path):
    path = _solid(tmp_path / "a.png", color=(255, 0, 51))
    (batch,) = _batches([path], mean=(0.5, 0.5, 0.1), std=(0.5, 0.25, 0.1))
    assert batch.images[0, :, 0, 0].tolist() == pytest.approx([1.0, -2.0, 1.0], abs=1e-5)


def test_parallel_workers_give_the_same_batches(tmp_path):
    paths = [_solid(tmp_path / f"{i}.png", color=(i * 30, 10, 10)) for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    paths.insert(2, tmp_path / "bad.png")
    serial = _batches(paths)
    parallel = _batches(paths, num_workers=2)
    assert serial and [b.positions for b in serial] == [b.positions for b in parallel]
    assert [b.failures for b in serial] == [b.failures for b in parallel]
    for a, b in zip(serial, parallel, strict=True):
        assert np.allclose(a.images.numpy(), b.images.numpy())


def test_exif_rotated_jpeg_is_decoded_upright(tmp_path):
    path = _rotated_jpeg(tmp_path / "rotated.jpg")  # stored left half red; orientation 6 puts it on top
    tensor = decode_image(str(path), S).float()
    top, bottom = tensor[:, : S // 2 - 2], tensor[:, S // 2 + 2 :]
    assert top[0].mean() > 200 and top[2].mean() < 60
    assert bottom[2].mean() > 200 and bottom[0].mean() < 60


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(path, quality=95)
    red, green, blue = decode_image(str(path), S).float().mean(dim=(1, 2)).tolist()
    assert red > 200 and green < 50 and blue < 50


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (30, 20), 77).save(path)
    tensor = decode_image(str(path), S)
    assert tensor.shape == (3, S, S) and (tensor == 77).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    tensor = decode_image(str(path), S)
    assert abs(int(tensor[0, 0, 0]) - 127) <= 1 and (tensor[0] == tensor[2]).all()


def test_palette_with_transparency_decodes(tmp_path, recwarn):
    image = Image.new("P", (30, 30), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.info["transparency"] = 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    tensor = decode_image(str(path), S)
    assert tensor[:, 0, 0].tolist() == [10, 200, 30]
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def test_image_over_the_pixel_limit_is_refused(tmp_path):
    path = _solid(tmp_path / "big.png", size=(100, 100))
    (batch,) = _batches([path], max_pixels=5000)
    assert batch.positions == [] and "more than the limit" in batch.failures[0][1]
    assert batch.images.shape == (0, 3, S, S)


def _rotated_jpeg(path):
    """40x20 stored with its left half red, EXIF orientation 6: upright, the red half is the top."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return path


def _good_cmyk_rotated_and_truncated_jpegs(folder):
    """JPEGs the device decoder must treat like PIL: plain, CMYK, EXIF-rotated, truncated."""
    good = _solid(folder / "a.jpg", size=(64, 48))
    cmyk = folder / "cmyk.jpg"
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(cmyk)
    rotated = _rotated_jpeg(folder / "rotated.jpg")
    data = _solid(folder / "big.jpg", size=(300, 300)).read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    return [good, cmyk, rotated, folder / "cut.jpg"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_jpeg_decode_matches_pil_and_quarantines_bad_files(tmp_path):
    import torch

    paths = _good_cmyk_rotated_and_truncated_jpegs(tmp_path)
    (gpu,) = _batches(paths, device="cuda", gpu_decode=True)
    (cpu,) = _batches(paths, device="cpu", gpu_decode=False)
    assert gpu.positions == cpu.positions == [0, 1, 2]
    assert [p for p, _ in gpu.failures] == [3]
    assert torch.allclose(gpu.images.cpu(), cpu.images, atol=0.05)


def test_torchvision_jpeg_path_matches_pil_and_reports_bad_files(tmp_path):
    """The device-decode path (nvjpeg on CUDA) run with torchvision's CPU decoder: same pixels, same failures."""
    import torch

    paths = _good_cmyk_rotated_and_truncated_jpegs(tmp_path)
    (device,) = _batches(paths, gpu_decode=True)
    (pil,) = _batches(paths, gpu_decode=False)
    assert device.positions == pil.positions == [0, 1, 2]
    assert [p for p, _ in device.failures] == [3]
    assert torch.allclose(device.images, pil.images, atol=0.05)


def test_exif_rotated_jpegs_skip_the_device_decoder(tmp_path):
    """nvjpeg ignores EXIF orientation on the GPU, so such files are decoded (upright) by PIL instead."""
    from audit_tasks.loader import _read_jpeg

    with open(_rotated_jpeg(tmp_path / "rotated.jpg"), "rb") as handle:
        assert _read_jpeg(handle, max_pixels=10_000) is None
    with open(_solid(tmp_path / "plain.jpg", size=(40, 20)), "rb") as handle:
        assert _read_jpeg(handle, max_pixels=10_000) is not None
