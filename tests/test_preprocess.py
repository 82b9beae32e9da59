"""Preprocess plans: the model's own resize / crop as tensor ops, matching timm and transformers, and region
boxes mapped through the same geometry (clipped by the crop, dropped when cut away)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from audit_tasks.config import ModelConfig, SaliencyConfig
from audit_tasks.loader import decode_planned, iter_image_batches
from audit_tasks.modelio import load_model
from audit_tasks.preprocess import (
    PreprocessPlan,
    map_boxes,
    processor_plan,
    resize_crop,
    squash_plan,
    visible_regions,
)
from audit_tasks.scoring import score_images
from fixtures_models import CLASSES, hf_convnext

#: shorter side to 73, centre crop 64 (timm's convnext at 64 px: floor(64 / 0.875) = 73)
CROP = PreprocessPlan(
    kind="model",
    resize="shorter",
    resize_to=(73, 73),
    crop=(64, 64),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    interpolation="bicubic",
)
SIZES = [(120, 90), (91, 150), (64, 64), (300, 97)]


def _blocky(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An image of 6 px blocks: a one-pixel shift changes it a lot, so geometry errors show."""
    blocks = np.random.default_rng(seed).integers(0, 255, (height // 6 + 1, width // 6 + 1, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((6, 6, 1), dtype=np.uint8))[:height, :width]


def _unnormalise(tensor: torch.Tensor, mean, std) -> torch.Tensor:
    return (tensor * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255


@pytest.mark.parametrize("size", SIZES)
def test_resize_crop_matches_timm_eval_transform(size):
    import timm
    from timm.data import create_transform, resolve_model_data_config

    from audit_tasks.preprocess import timm_plan

    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    plan = timm_plan(model, 64)
    assert plan == PreprocessPlan(
        kind="model",
        resize="shorter",
        resize_to=(73, 73),
        crop=(64, 64),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation="bicubic",
    )
    data = {**resolve_model_data_config(model), "input_size": (3, 64, 64)}
    array = _blocky(*size)
    theirs = _unnormalise(create_transform(**data)(Image.fromarray(array)), data["mean"], data["std"])
    ours = resize_crop(torch.from_numpy(array).permute(2, 0, 1), plan).float()
    assert ours.shape == theirs.shape == (3, 64, 64)
    # PIL's bicubic against torch's antialiased bicubic: a fraction of a level; a 1 px shift costs ~15-20
    assert float((ours - theirs).abs().mean()) < 1.0


@pytest.mark.parametrize("size", SIZES)
def test_resize_crop_matches_transformers_convnext_processor(size):
    from transformers import ConvNextImageProcessor

    processor = ConvNextImageProcessor(size={"shortest_edge": 64})
    plan = processor_plan(processor.to_dict())
    assert (plan.resize, plan.resize_to, plan.crop, plan.crop_rounding) == ("shorter", (73, 73), (64, 64), "floor")
    array = _blocky(*size)
    theirs = processor(Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    theirs = _unnormalise(theirs, plan.mean, plan.std)
    ours = resize_crop(torch.from_numpy(array).permute(2, 0, 1), plan).float()
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().mean()) < 1.0


def test_vit_processor_is_a_squash_to_height_and_width():
    from transformers import ViTImageProcessor

    plan = processor_plan(ViTImageProcessor(size={"height": 32, "width": 48}).to_dict())
    assert (plan.resize, plan.resize_to, plan.crop, plan.input_size) == ("squash", (32, 48), None, (32, 48))


def test_large_convnext_processor_warps_without_crop():
    plan = processor_plan({"size": {"shortest_edge": 384}, "crop_pct": 0.875})
    assert (plan.resize, plan.resize_to, plan.crop) == ("squash", (384, 384), None)


def test_squash_maps_boxes_linearly():
    boxes, visible = map_boxes([[10, 20, 50, 80]], (100, 200), squash_plan(64, (0, 0, 0), (1, 1, 1)))
    np.testing.assert_allclose(boxes, [[6.4, 6.4, 32.0, 25.6]])
    assert visible.tolist() == [True]


def test_crop_clips_a_cut_box_and_hides_one_cut_away():
    # 120x90 -> resized 97x73, crop window x 16..80, y 4..68 (resized pixels)
    assert CROP.resized_size((120, 90)) == (97, 73)
    assert CROP.crop_window((120, 90)) == (16, 4, 80, 68)
    sx, sy = 97 / 120, 73 / 90  # the longer side is truncated, so the two scales differ slightly
    boxes, visible = map_boxes([[40, 30, 80, 60], [0, 0, 30, 90], [0, 0, 10, 90]], (120, 90), CROP)
    assert visible.tolist() == [True, True, False]
    np.testing.assert_allclose(boxes[0], [40 * sx - 16, 30 * sy - 4, 80 * sx - 16, 60 * sy - 4])
    np.testing.assert_allclose(boxes[1], [0, 0, 30 * sx - 16, 64])  # cut at the left and bottom edges


def test_mapped_boxes_land_on_the_pixels_the_model_sees():
    """A white rectangle drawn in the original lands where map_boxes puts its box (within a pixel)."""
    array = np.zeros((150, 91, 3), dtype=np.uint8)
    box = [20, 40, 70, 110]
    array[box[1] : box[3], box[0] : box[2]] = 255
    seen = resize_crop(torch.from_numpy(array).permute(2, 0, 1), CROP)[0].float()
    (mapped,), _ = map_boxes([box], (91, 150), CROP)
    rows = torch.nonzero(seen.mean(dim=1) > 127).flatten()
    cols = torch.nonzero(seen.mean(dim=0) > 127).flatten()
    found = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    np.testing.assert_allclose(found, mapped, atol=1.0)


def test_visible_regions_drop_regions_cut_away_and_keep_original_pixel_units():
    regions = [
        {"kind": "core", "name": "dog", "box": [40, 30, 80, 60]},
        {"kind": "spurious", "name": "mark", "box": [0, 0, 10, 90]},
    ]
    view = visible_regions(regions, (120, 90), CROP)
    assert [r["name"] for r in view.regions] == ["dog"]
    sx, sy = 97 / 120, 73 / 90
    np.testing.assert_allclose(view.origin, (16 / sx, 4 / sy))
    np.testing.assert_allclose(view.size, (64 / sx, 64 / sy))
    np.testing.assert_allclose(view.regions[0]["box"], [40 - 16 / sx, 30 - 4 / sy, 80 - 16 / sx, 60 - 4 / sy])


def test_loader_feeds_the_planned_input(tmp_path):
    paths = []
    for i, size in enumerate(SIZES):
        path = tmp_path / f"{i}.png"
        Image.fromarray(_blocky(*size, seed=i)).save(path)
        paths.append(str(path))
    rows = pd.DataFrame({"image_path": paths})
    (batch,) = iter_image_batches(
        rows, input_size=999, mean=(0, 0, 0), std=(1, 1, 1), batch_size=8, plan=CROP, device="cpu"
    )
    assert batch.images.shape == (len(SIZES), 3, 64, 64)
    expected = (decode_planned(paths[3], CROP).float() - 127.5) / 127.5
    torch.testing.assert_close(batch.images[3], expected)


def test_loader_plans_from_the_upright_size_of_a_rotated_jpeg(tmp_path):
    """EXIF orientation 6 (rotated 90 degrees): the plan's geometry uses the upright width and height."""
    array = _blocky(120, 90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    upright = np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270))
    assert upright.shape[:2] == (120, 90)
    ours = decode_planned(str(path), CROP).float()
    reference = resize_crop(torch.from_numpy(upright.copy()).permute(2, 0, 1), CROP).float()
    assert float((ours - reference).abs().mean()) < 3.0


def test_scoring_with_a_crop_drops_regions_cut_away_and_reports_peaks_on_the_whole_image(tmp_path):
    """A Hugging Face ConvNeXt (shorter side 73, crop 64): boxes are judged as the model saw them."""
    hf_convnext(tmp_path / "convnext")
    config = ModelConfig(
        source="huggingface", arch="convnext", checkpoint=tmp_path / "convnext", classes=CLASSES, target_layer="auto"
    )
    model = load_model(config)
    core = {"kind": "core", "name": "dog", "box": [40, 30, 80, 60]}
    regions = {  # 120x90: the model sees x 19.8..99.0 and y 4.9..83.8 of the original
        "cut-away": [core, {"kind": "spurious", "name": "mark", "box": [0, 0, 10, 90]}],
        "clipped": [core, {"kind": "spurious", "name": "mark", "box": [10, 0, 30, 90]}],
        "all-gone": [{"kind": "spurious", "name": "mark", "box": [0, 0, 10, 90]}],
    }
    records = []
    for i, (image_id, boxes) in enumerate(regions.items()):
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(_blocky(120, 90, seed=i)).save(path)
        records.append(
            {
                "image_id": image_id,
                "image_path": str(path),
                "label": CLASSES[0],
                "width": 120,
                "height": 90,
                "regions": json.dumps(boxes),
            }
        )
    result = score_images(
        model,
        pd.DataFrame(records),
        model_config=config,
        saliency_config=SaliencyConfig(batch_size=4, num_workers=0, device="cpu"),
        attributes=[],
        run_id="crop",
    )
    images = result.images.set_index("image_id")
    assert result.rejected.empty
    assert (images["cam_height"] == 8).all() and (images["cam_width"] == 8).all()
    cut = images.loc["cut-away"]
    assert cut["has_regions"] and np.isfinite(cut["core_share"])
    assert np.isnan(cut["spurious_share"]) and np.isnan(cut["spurious_enrichment"])
    assert "mark" not in json.loads(cut["region_shares"]) and not cut["spurious_flag"]
    clipped = images.loc["clipped"]
    assert np.isfinite(clipped["spurious_share"]) and "mark" in json.loads(clipped["region_shares"])
    assert not images.loc["all-gone", "has_regions"]
    assert images["peak_x"].between(19.7 / 120, 99.1 / 120).all()
    assert images["peak_y"].between(4.8 / 90, 83.9 / 90).all()


def test_raw_jpeg_path_applies_the_same_plan(tmp_path):
    """The device-decode path (forced on the CPU here) resizes and crops by the plan like the PIL path."""
    paths = []
    for i, size in enumerate(SIZES):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(_blocky(*size, seed=i)).save(path, quality=95)
        paths.append(str(path))
    rows = pd.DataFrame({"image_path": paths})
    options = dict(input_size=999, mean=(0, 0, 0), std=(1, 1, 1), batch_size=8, plan=CROP, device="cpu")
    (device_path,) = iter_image_batches(rows, gpu_decode=True, **options)
    (pil_path,) = iter_image_batches(rows, gpu_decode=False, **options)
    assert device_path.images.shape == pil_path.images.shape == (len(SIZES), 3, 64, 64)
    assert float((device_path.images - pil_path.images).abs().mean()) < 3.0 / 127.5
