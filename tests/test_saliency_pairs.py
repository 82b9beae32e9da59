"""Co-occurrence-aware saliency: a class's Grad-CAM on the boxes of a co-occurring object, and its gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from audit_tasks.config import ModelConfig, SaliencyCheck, SaliencyConfig
from audit_tasks.errors import ConfigError
from audit_tasks.saliency_pairs import candidate_pairs, summarize_pairs
from audit_tasks.scoring import score_images

CLASSES = ("laptop", "cat")
SIZE, GRID = 64, 8
LAPTOP_BOX = [0, 0, 40, 40]
MOUSE_BOX = [48, 48, 64, 64]  # the bottom-right 2x2 cells of the 8x8 map


class _FixedMap(nn.Module):
    """A 'layer' whose output is one fixed spatial map whatever the image: the CAM is forced onto it."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = nn.Parameter(mask[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.expand(x.shape[0], -1, -1, -1) + 0 * x.mean()


class _Forced(nn.Module):
    """Every class score is the mean of the fixed map, so Grad-CAM returns the map itself."""

    def __init__(self, box: list[int]) -> None:
        super().__init__()
        mask = torch.zeros(GRID, GRID)
        cell = SIZE // GRID
        mask[box[1] // cell : box[3] // cell, box[0] // cell : box[2] // cell] = 1.0
        self.features = _FixedMap(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return torch.cat([pooled, 0.5 * pooled], dim=1)


def _world(tmp_path: Path, n: int = 8) -> pd.DataFrame:
    """n laptop images, each with its laptop (core) and a mouse (context) box, as COCO would give them."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        regions = [
            {"kind": "core", "name": "laptop", "box": LAPTOP_BOX},
            {"kind": "context", "name": "mouse", "box": MOUSE_BOX},
        ]
        records.append(
            {
                "image_id": f"id{i}",
                "image_uri": path.name,
                "image_path": str(path),
                "label": "laptop",
                "width": SIZE,
                "height": SIZE,
                "tags": "laptop|mouse",
                "regions": json.dumps(regions),
            }
        )
    return pd.DataFrame(records)


def _scored(tmp_path: Path, cam_box: list[int]) -> pd.DataFrame:
    result = score_images(
        _Forced(cam_box).eval(),
        _world(tmp_path),
        model_config=ModelConfig(
            arch="resnet18", checkpoint=Path("unused.pt"), classes=CLASSES, target_layer="features", input_size=SIZE
        ),
        saliency_config=SaliencyConfig(batch_size=4, num_workers=0, device="cpu"),
        attributes=[],
        run_id="run-1",
    )
    assert result.rejected.empty
    return result.images


CHECK = SaliencyCheck(min_images=5, pairs=("laptop -> mouse",))


def test_saliency_forced_onto_the_mouse_fails_the_pair_gate(tmp_path):
    images = _scored(tmp_path, MOUSE_BOX)
    summary = summarize_pairs(images, [("laptop", "mouse")], CHECK)
    row = summary.pairs.iloc[0]
    assert (row["class"], row["region"], row["images"]) == ("laptop", "mouse", 8)
    assert row["mean_share"] > 0.95 and row["mean_enrichment"] > 10
    assert row["flagged_fraction"] == 1.0 and row["flagged"]
    (gate,) = summary.gates
    assert (gate.check, gate.subject, gate.metric) == ("saliency", "laptop on mouse", "flagged_fraction")
    assert not gate.passed and gate.judged


def test_saliency_on_the_laptop_passes_the_pair_gate(tmp_path):
    images = _scored(tmp_path, LAPTOP_BOX)
    summary = summarize_pairs(images, [("laptop", "mouse")], CHECK)
    row = summary.pairs.iloc[0]
    assert row["images"] == 8 and row["mean_share"] < 0.05
    assert row["flagged_fraction"] == 0.0 and not row["flagged"]
    assert summary.gates[0].passed and summary.gates[0].judged


def test_a_context_region_is_measured_by_name_without_a_spurious_kind(tmp_path):
    images = _scored(tmp_path, MOUSE_BOX)
    shares = json.loads(images["region_shares"].iloc[0])
    assert set(shares) == {"mouse"} and shares["mouse"]["share"] > 0.95
    assert json.loads(images["spurious_detail"].iloc[0]) == {}  # the spurious check is unchanged


def test_too_few_images_pass_unjudged(tmp_path):
    images = _scored(tmp_path, MOUSE_BOX)
    summary = summarize_pairs(images, [("laptop", "mouse")], SaliencyCheck(min_images=20))
    assert summary.gates[0].passed and not summary.gates[0].judged
    assert "too few images to judge" in summary.gates[0].detail


def test_a_flagged_pair_without_boxes_is_left_out_but_a_configured_one_is_reported(tmp_path):
    images = _scored(tmp_path, MOUSE_BOX)
    pairs = [("laptop", "keyboard"), ("laptop", "charger")]
    summary = summarize_pairs(images, pairs, CHECK, configured=[("laptop", "charger")])
    assert summary.pairs["region"].tolist() == ["charger"]
    assert summary.pairs["images"].tolist() == [0] and summary.gates[0].passed and not summary.gates[0].judged


def test_candidate_pairs_come_from_flagged_class_to_tag_pairs_and_the_config():
    co = pd.DataFrame(
        {
            "tag_a": ["laptop", "laptop", "mouse", "laptop", "cat"],
            "tag_b": ["mouse", "gender=female", "laptop", "desk", "sofa"],
            "flagged": [True, True, True, False, True],
        }
    )
    got = candidate_pairs(co, [("laptop", "charger"), ("laptop", "mouse")], CLASSES, attributes=["gender"])
    assert got == [("laptop", "charger"), ("laptop", "mouse"), ("cat", "sofa")]


@pytest.mark.parametrize("bad", ["laptop mouse", "laptop -> ", "a -> b -> c"])
def test_a_pair_not_written_with_an_arrow_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="class -> region"):
        SaliencyCheck(pairs=(bad,))
