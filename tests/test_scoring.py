"""Scoring end to end on a few generated PNGs: the images table, rejected rows, and the Arrow schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torchvision
from PIL import Image

from audit_tasks.config import ModelConfig, SaliencyConfig
from audit_tasks.scoring import image_columns, images_schema, resolve_device, score_images

CLASSES = ("cat", "dog")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).eval()


def _model_config() -> ModelConfig:
    return ModelConfig(
        arch="resnet18", checkpoint=Path("unused.pt"), classes=CLASSES, target_layer="layer4", input_size=64
    )


def _rows(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    records = []
    for i in range(5):
        width, height = 80 + 10 * i, 60
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        regions = [
            {"kind": "core", "name": "animal", "box": [5, 5, 40, 50]},
            {"kind": "spurious", "name": "watermark", "box": [60, 40, 75, 55]},
        ]
        records.append(
            {
                "image_id": f"id{i}",
                "image_uri": f"img{i}.png",
                "image_path": str(path),
                "label": CLASSES[i % 2],
                "width": width,
                "height": height,
                "tags": "cat|indoor",
                "regions": json.dumps(regions),
                "gender": "female" if i % 2 else "male",
            }
        )
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records.append({**records[0], "image_id": "broken", "image_path": str(tmp_path / "broken.png")})
    records.append({**records[1], "image_id": "unknown-label", "label": "horse"})
    records.append(
        {**records[2], "image_id": "bad-regions", "regions": '[{"kind": "core", "name": "cat", "box": [1, 2]}]'}
    )
    records.append({**records[3], "image_id": "no-regions", "regions": None})
    return pd.DataFrame(records)


def _score(model, rows, **saliency):
    calls = []
    options = {"batch_size": 3, "num_workers": 0, "device": "cpu", **saliency}
    result = score_images(
        model,
        rows,
        model_config=_model_config(),
        saliency_config=SaliencyConfig(**options),
        attributes=["gender"],
        run_id="run-1",
        progress=lambda done, total: calls.append((done, total)),
    )
    return result, calls


def test_scores_rows_into_the_images_table(tmp_path, model):
    rows = _rows(tmp_path)
    result, calls = _score(model, rows)
    images = result.images
    assert list(images.columns) == image_columns(["gender"])
    assert images["image_id"].tolist() == ["id0", "id1", "id2", "id3", "id4", "no-regions"]
    assert (images["run_id"] == "run-1").all()
    assert images["target_class"].tolist() == images["label"].tolist()
    assert images["prediction"].isin(CLASSES).all() and images["confidence"].between(0.5, 1).all()
    assert (images["correct"] == (images["prediction"] == images["label"])).all()
    assert images["tags"].iloc[0] == ["cat", "indoor"]
    assert images["has_regions"].tolist() == [True] * 5 + [False]
    assert images.loc[:4, "core_share"].between(0, 1).all() and np.isnan(images["core_share"].iloc[5])
    assert (images["cam_height"] == 2).all() and (images["cam_width"] == 2).all()
    assert all(len(cam) == 4 and cam.dtype == np.float32 and (cam >= 0).all() for cam in images["cam"])
    assert calls[-1] == (len(rows), len(rows))


def test_unscorable_rows_are_rejected_with_reasons(tmp_path, model):
    rows = _rows(tmp_path)
    rejected = _score(model, rows)[0].rejected.set_index("image_id")
    assert list(_score(model, rows)[0].rejected.columns) == ["position", "image_id", "reason"]
    assert sorted(rejected.index) == ["bad-regions", "broken", "unknown-label"]
    assert "not one of the model's classes" in rejected.loc["unknown-label", "reason"]
    assert "box" in rejected.loc["bad-regions", "reason"]
    assert "not a readable image" in rejected.loc["broken", "reason"]
    assert rejected.loc["broken", "position"] == 5


def test_cams_match_the_engine_on_the_same_pixels(tmp_path, model):
    from audit_tasks.loader import iter_image_batches
    from audit_tasks.saliency import GradCAM

    rows = _rows(tmp_path).iloc[:3]
    images = _score(model, rows)[0].images
    (batch,) = iter_image_batches(
        rows,
        input_size=64,
        mean=_model_config().mean,
        std=_model_config().std,
        batch_size=3,
        num_workers=0,
        device="cpu",
    )
    expected = GradCAM(model, "layer4").attribute(batch.images, torch.tensor([0, 1, 0])).cams.flatten(1)
    got = torch.from_numpy(np.stack(images["cam"].tolist()))
    assert (got - expected).abs().max() <= 1e-4 * float(expected.max())


def test_prediction_target_explains_the_predicted_class_and_keeps_unknown_labels(tmp_path, model):
    rows = _rows(tmp_path)
    result, _ = _score(model, rows, target="prediction")
    images = result.images
    assert (images["target_class"] == images["prediction"]).all()
    assert "unknown-label" in set(images["image_id"])
    assert not images.set_index("image_id").loc["unknown-label", "correct"]


def test_images_table_converts_to_the_fixed_size_arrow_schema(tmp_path, model):
    images = _score(model, _rows(tmp_path))[0].images
    schema = images_schema(["gender"], 4)
    table = pa.Table.from_pandas(images, schema=schema, preserve_index=False)
    assert table.schema.field("cam").type == pa.list_(pa.float32(), 4)
    assert table.num_rows == len(images)


def test_auto_device_resolves_to_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
