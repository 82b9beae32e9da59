"""Image-property shortcuts: the measures, the bins, the ingest columns and the label -> property pairs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from audit_tasks.catalog import read_catalog
from audit_tasks.config import AuditConfig, load_config
from audit_tasks.image_properties import bin_properties, jpeg_quality, measure_image, pixel_properties
from audit_tasks.ingest import ingest
from audit_tasks.pipeline import stage_cooccurrence
from audit_tasks.tables import read_table


def _world(
    root: Path, *, wolf_brightness: int, husky_brightness: int, n: int = 200, enabled: bool = True
) -> AuditConfig:
    """`n` wolves and `n` huskies as noisy 32x32 PNGs of the given mean grey level, no tags, one manifest."""
    for name in ("landing", "images", "catalog"):
        (root / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2 * n):
        label, level = ("wolf", wolf_brightness) if i % 2 == 0 else ("husky", husky_brightness)
        pixels = np.clip(level + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img_{i:03d}.png")
        rows.append({"image_uri": f"img_{i:03d}.png", "label": label, "tags": ""})
    with open(root / "landing" / "m.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    body = {
        "dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog"},
        "checks": {"cooccurrence": {}, "image_properties": {"enabled": enabled}},
        "output": {"dir": "reports"},
    }
    (root / "audit.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return load_config(root / "audit.yaml")


def _flagged(config: AuditConfig, tmp_path: Path) -> list[str]:
    ingest(config, "r1")
    stage_cooccurrence(config, "r1")
    pairs = read_table(tmp_path / "reports" / "r1" / "cooccurrence.parquet")
    return [
        f"{a} -> {b}" for a, b in zip(pairs["tag_a"][pairs["flagged"]], pairs["tag_b"][pairs["flagged"]], strict=True)
    ]


def test_brighter_wolves_flag_wolf_to_the_top_brightness_bin_with_no_tags(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70)
    flagged = _flagged(config, tmp_path)
    assert "brightness=q5 -> label=wolf" in flagged
    assert "brightness=q1 -> label=husky" in flagged


def test_equal_brightness_flags_nothing_about_brightness(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=128, husky_brightness=128)
    assert [p for p in _flagged(config, tmp_path) if "brightness" in p] == []
    pairs = read_table(tmp_path / "reports" / "r1" / "cooccurrence.parquet")
    assert pairs["tag_a"].str.startswith("brightness=").sum() == 10  # judged: 5 bins x 2 labels


def test_disabled_properties_are_neither_measured_nor_paired(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70, enabled=False)
    assert _flagged(config, tmp_path) == []
    assert read_catalog(config.dataset.catalog)["prop_brightness"].isna().all()


def test_a_missing_section_means_off_until_measuring_is_cheap(tmp_path: Path) -> None:
    _world(tmp_path, wolf_brightness=180, husky_brightness=70)
    body = yaml.safe_load((tmp_path / "audit.yaml").read_text())
    del body["checks"]["image_properties"]
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(body))
    config = load_config(tmp_path / "audit.yaml")
    assert not config.checks.image_properties.enabled
    assert _flagged(config, tmp_path) == []


def test_an_undecodable_image_gets_null_properties(tmp_path: Path) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert set(measure_image(path).values()) == {None}


def test_jpeg_quality_is_estimated_from_the_quantisation_tables(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for quality in (30, 75, 95):
        Image.fromarray(pixels).save(tmp_path / "q.jpg", quality=quality)
        cells = measure_image(tmp_path / "q.jpg", width=64, height=64)
        assert cells["prop_format"] == "JPEG" and cells["prop_aspect"] == 1.0
        assert abs(cells["prop_jpeg_quality"] - quality) <= 2
    assert jpeg_quality(None) is None


def test_pixel_properties_follow_their_definitions() -> None:
    flat = np.full((20, 20, 3), 51.0, dtype=np.float32)
    cells = pixel_properties(flat)
    assert cells["prop_brightness"] == pytest.approx(0.2)
    assert cells["prop_contrast"] == cells["prop_sharpness"] == cells["prop_border_uniformity"] == 0
    assert cells["prop_colourfulness"] == 0
    red = np.zeros((20, 20, 3), dtype=np.float32)
    red[..., 0] = 255
    assert pixel_properties(red)["prop_colourfulness"] == pytest.approx(0.3 * np.hypot(255, 127.5))


def test_bins_are_quantiles_ties_share_a_bin_and_nulls_stay_null() -> None:
    frame = pd.DataFrame({"prop_brightness": [0.1, 0.2, 0.3, 0.4, 0.5, None], "prop_contrast": [0.3] * 6})
    bins = bin_properties(frame, ["brightness", "contrast", "sharpness"], 5)
    assert bins["brightness"].tolist() == ["q1", "q2", "q3", "q4", "q5", None]
    assert bins["contrast"].nunique() == 1
    assert bins["sharpness"].isna().all()  # a catalog older than the properties
