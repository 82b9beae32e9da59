"""Image-property shortcuts: header cells at ingest, pixel measures while scoring, catalog-wide bins, the
label -> property pairs and the subgroup metric by property bin."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from audit_tasks.catalog import MEASURED_DIR, read_catalog, read_measured_properties
from audit_tasks.config import AuditConfig, load_config
from audit_tasks.image_properties import bin_properties, header_properties, jpeg_quality, pixel_properties
from audit_tasks.images import probe_image
from audit_tasks.pipeline import stage_cooccurrence, stage_ingest, stage_saliency, stage_subgroups
from audit_tasks.tables import read_table


def _world(
    root: Path,
    *,
    wolf_brightness: int,
    husky_brightness: int,
    n: int = 200,
    properties: dict | None = None,
    subgroups: bool = False,
) -> AuditConfig:
    """`n` wolves and `n` huskies as noisy 32x32 PNGs of the given mean grey level, no tags, one manifest,
    and a random two-class model (the properties do not depend on what the model learned)."""
    for name in ("landing", "images", "catalog"):
        (root / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2 * n):
        label, level = ("wolf", wolf_brightness) if i % 2 == 0 else ("husky", husky_brightness)
        pixels = np.clip(level + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img_{i:03d}.png")
        rows.append({"image_uri": f"img_{i:03d}.png", "label": label, "tags": "", "site": "north"})
    with open(root / "landing" / "m.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), root / "model.pt")
    checks: dict = {"cooccurrence": {}}
    if properties is not None:
        checks["image_properties"] = properties
    if subgroups:
        checks["subgroups"] = {"attributes": ["site"]}
    body = {
        "dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog"},
        "model": {
            "arch": "resnet18",
            "checkpoint": "model.pt",
            "classes": ["husky", "wolf"],
            "target_layer": "layer4",
            "input_size": 32,
        },
        "saliency": {"batch_size": 100, "device": "cpu", "num_workers": 0},
        "checks": checks,
        "output": {"dir": "reports"},
    }
    (root / "audit.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return load_config(root / "audit.yaml")


def _audit(config: AuditConfig, run_id: str = "r1") -> None:
    stage_ingest(config, run_id)
    stage_saliency(config, run_id)
    stage_cooccurrence(config, run_id)


def _flagged(root: Path, run_id: str = "r1") -> list[str]:
    pairs = read_table(root / "reports" / run_id / "cooccurrence.parquet")
    flagged = pairs[pairs["flagged"]]
    return [f"{a} -> {b}" for a, b in zip(flagged["tag_a"], flagged["tag_b"], strict=True)]


def test_brighter_wolves_flag_wolf_to_the_top_brightness_bin_with_no_tags(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70)
    _audit(config)
    flagged = _flagged(tmp_path)
    assert "brightness=q5 -> label=wolf" in flagged
    assert "brightness=q1 -> label=husky" in flagged


def test_equal_brightness_flags_nothing_about_brightness(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=128, husky_brightness=128)
    _audit(config)
    assert [p for p in _flagged(tmp_path) if "brightness" in p] == []
    pairs = read_table(tmp_path / "reports" / "r1" / "cooccurrence.parquet")
    assert pairs["tag_a"].str.startswith("brightness=").sum() == 10  # judged: 5 bins x 2 labels


def test_properties_are_on_when_the_section_is_missing(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70)
    assert config.checks.image_properties.enabled
    assert config.checks.image_properties.subgroups == "report"


def test_disabled_properties_are_neither_measured_nor_paired(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70, properties={"enabled": False})
    _audit(config)
    assert _flagged(tmp_path) == []
    images = read_table(tmp_path / "reports" / "r1" / "images.parquet")
    assert images["prop_brightness"].isna().all()
    assert not (tmp_path / "catalog" / MEASURED_DIR).exists()


def test_scoring_measures_the_pixels_the_model_sees(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70, n=10)
    _audit(config)
    images = read_table(tmp_path / "reports" / "r1" / "images.parquet").set_index("image_id")
    catalog = read_catalog(config.dataset.catalog).set_index("image_id")
    some = images.index[0]
    pixels = np.asarray(Image.open(catalog.loc[some, "image_path"]).convert("RGB"), dtype=np.float32)
    expected = pixel_properties(torch.from_numpy(pixels).permute(2, 0, 1)[None])  # 32x32: no resize
    for column, value in expected.items():
        assert images.loc[some, column] == pytest.approx(float(value[0]), rel=1e-4, abs=1e-4), column
    wolves = images[images["label"] == "wolf"]["prop_brightness"]
    huskies = images[images["label"] == "husky"]["prop_brightness"]
    assert wolves.min() > huskies.max()


def test_the_measures_are_kept_beside_the_catalog_and_judged_again_on_a_night_with_no_new_images(
    tmp_path: Path,
) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70)
    _audit(config, "r1")
    assert len(read_measured_properties(config.dataset.catalog)) == 400
    _audit(config, "r2")  # nothing new landed: nothing scored tonight
    assert "brightness=q5 -> label=wolf" in _flagged(tmp_path, "r2")
    assert pq_rows(tmp_path / "reports" / "r2" / "images.parquet") == 0


def pq_rows(path: Path) -> int:
    return len(read_table(path)) if path.is_file() else 0


def test_the_ingest_reads_format_aspect_and_jpeg_quality_from_the_header(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for quality in (30, 75, 95):
        Image.fromarray(pixels).save(tmp_path / "q.jpg", quality=quality)
        cells = header_properties(probe_image(tmp_path / "q.jpg", max_pixels=10**6, min_side=8))
        assert cells["prop_format"] == "JPEG" and cells["prop_aspect"] == pytest.approx(64 / 48)
        assert abs(cells["prop_jpeg_quality"] - quality) <= 2
    Image.fromarray(pixels).save(tmp_path / "p.png")
    cells = header_properties(probe_image(tmp_path / "p.png", max_pixels=10**6, min_side=8))
    assert cells["prop_format"] == "PNG" and cells["prop_jpeg_quality"] is None
    assert jpeg_quality(None) is None


def test_pixel_properties_follow_their_definitions() -> None:
    flat = torch.full((1, 3, 20, 20), 51.0)
    cells = {k: float(v[0]) for k, v in pixel_properties(flat).items()}
    assert cells["prop_brightness"] == pytest.approx(0.2)
    assert cells["prop_contrast"] == cells["prop_sharpness"] == cells["prop_border_uniformity"] == 0
    assert cells["prop_colourfulness"] == pytest.approx(0, abs=1e-4)
    red = torch.zeros((1, 3, 20, 20))
    red[:, 0] = 255
    assert float(pixel_properties(red)["prop_colourfulness"][0]) == pytest.approx(0.3 * np.hypot(255, 127.5))
    framed = torch.full((1, 3, 20, 20), 100.0)
    framed[:, :, 0, :10] = 200.0  # half the top edge is bright: the border is not uniform
    assert float(pixel_properties(framed)["prop_border_uniformity"][0]) > 0


def test_pixel_properties_are_per_image_in_a_batch() -> None:
    dark, bright = torch.full((3, 8, 8), 10.0), torch.full((3, 8, 8), 200.0)
    both = pixel_properties(torch.stack([dark, bright]))["prop_brightness"]
    alone = pixel_properties(bright[None])["prop_brightness"]
    assert float(both[1]) == pytest.approx(float(alone[0])) and float(both[0]) < float(both[1])


def test_the_subgroup_check_compares_property_bins_alone_and_never_intersects_them(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70, subgroups=True)
    _audit(config)
    stage_subgroups(config, "r1")
    groups = read_table(tmp_path / "reports" / "r1" / "subgroups.parquet")
    attributes = set(groups["attribute"])
    assert {"site", "brightness", "contrast", "format"} <= attributes
    assert not any("&" in a for a in attributes)
    assert set(groups[groups["attribute"] == "brightness"]["group"]) == {"q1", "q2", "q3", "q4", "q5"}


def test_property_subgroups_can_be_turned_off(tmp_path: Path) -> None:
    config = _world(tmp_path, wolf_brightness=180, husky_brightness=70, subgroups=True, properties={"subgroups": "off"})
    _audit(config)
    stage_subgroups(config, "r1")
    assert set(read_table(tmp_path / "reports" / "r1" / "subgroups.parquet")["attribute"]) == {"site"}


def _gap_by_brightness():
    """200 images in the lowest brightness bin half wrong, 200 in the highest all right: a clear gap."""
    from audit_tasks.config import SubgroupCheck
    from audit_tasks.subgroups import check_subgroups

    n = 200
    frame = pd.DataFrame(
        {
            "label": ["wolf"] * (2 * n),
            "prediction": ["wolf", "husky"] * (n // 2) + ["wolf"] * n,
            "site": ["north"] * (2 * n),
            "brightness": ["q1"] * n + ["q5"] * n,
        }
    )
    main = check_subgroups(frame, check=SubgroupCheck(attributes=("site",)), classes=["husky", "wolf"])
    by_bin = check_subgroups(
        frame, check=SubgroupCheck(attributes=("brightness",), intersections=False), classes=["husky", "wolf"]
    )
    return main, by_bin


def test_a_gap_across_property_bins_is_reported_and_never_gated_by_default() -> None:
    from audit_tasks.subgroups import STATUS_GAP_REPORTED, merge_subgroup_results

    main, by_bin = _gap_by_brightness()
    assert any(not g.passed for g in by_bin.gates)  # as a family of its own, the gap is established
    merged = merge_subgroup_results(main, by_bin, gated=False)
    rows = merged.groups[merged.groups["attribute"] == "brightness"].set_index("group")
    assert rows.loc["q1", "status"] == STATUS_GAP_REPORTED and not rows["flagged"].any()
    assert [g.subject for g in merged.gates] == [g.subject for g in main.gates]


def test_gate_mode_makes_a_property_bins_gap_fail() -> None:
    from audit_tasks.subgroups import merge_subgroup_results

    main, by_bin = _gap_by_brightness()
    merged = merge_subgroup_results(main, by_bin, gated=True)
    assert "brightness=q1" in {g.subject for g in merged.gates if not g.passed}


def test_bins_are_quantiles_ties_share_a_bin_and_nulls_stay_null() -> None:
    frame = pd.DataFrame({"prop_brightness": [0.1, 0.2, 0.3, 0.4, 0.5, None], "prop_contrast": [0.3] * 6})
    bins = bin_properties(frame, ["brightness", "contrast", "sharpness"], 5)
    assert bins["brightness"].tolist() == ["q1", "q2", "q3", "q4", "q5", None]
    assert bins["contrast"].nunique() == 1
    assert bins["sharpness"].isna().all()  # an image never scored
