"""Region metrics: exact shares on hand-built maps, the flag rule, and the 4%-patch separation."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from audit_tasks.config import SaliencyCheck
from audit_tasks.errors import ImageError
from audit_tasks.regions import (
    BY_CLASS_COLUMNS,
    METRIC_COLUMNS,
    flag_images,
    region_metrics,
    row_regions,
    summarize_saliency,
)


def _core(box, name="object"):
    return {"kind": "core", "name": name, "box": list(box)}


def _spur(box, name="patch"):
    return {"kind": "spurious", "name": name, "box": list(box)}


def test_uniform_map_scores_enrichment_one_for_any_box():
    cams = torch.ones(1, 6, 6)
    regions = [[_core([13, 7, 131, 90]), _spur([200, 150, 233, 171])]]  # boxes off the CAM grid
    m = region_metrics(cams, regions, [(240, 180)])
    assert m.loc[0, "core_enrichment"] == pytest.approx(1.0, abs=1e-5)
    assert m.loc[0, "spurious_enrichment"] == pytest.approx(1.0, abs=1e-5)
    assert m.loc[0, "core_share"] == pytest.approx((118 * 83) / (240 * 180), abs=1e-5)
    assert m.loc[0, "spurious_share"] == pytest.approx((33 * 21) / (240 * 180), abs=1e-5)


def test_all_energy_inside_box_gives_share_one():
    cams = torch.zeros(1, 6, 6)
    cams[0, 1:3, 2:4] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    box = [2 * 100, 1 * 50, 4 * 100, 3 * 50]  # exactly those cells of a 600x300 image
    m = region_metrics(cams, [[_core(box)]], [(600, 300)])
    assert m.loc[0, "core_share"] == pytest.approx(1.0)
    assert m.loc[0, "outside_share"] == pytest.approx(0.0, abs=1e-6)
    assert m.loc[0, "core_enrichment"] == pytest.approx(9.0)  # 4 of 36 cells


def test_fractional_cell_coverage_counts_the_covered_part_only():
    cams = torch.zeros(1, 6, 6)
    cams[0, 0, 0] = 1.0
    box = [0, 0, 50, 100]  # half of cell (0, 0) of a 600x600 image
    m = region_metrics(cams, [[_spur(box)]], [(600, 600)])
    assert m.loc[0, "spurious_share"] == pytest.approx(0.5)
    assert m.loc[0, "spurious_enrichment"] == pytest.approx(0.5 / (0.5 / 36))
    assert m.loc[0, "outside_share"] == pytest.approx(0.5)


def test_overlapping_boxes_count_their_union_once():
    cams = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))
    one = region_metrics(cams, [[_core([30, 30, 170, 120])]], [(200, 150)])
    twice = region_metrics(cams, [[_core([30, 30, 170, 120], "a"), _core([30, 30, 170, 120], "b")]], [(200, 150)])
    assert twice.loc[0, "core_share"] == pytest.approx(one.loc[0, "core_share"], abs=1e-6)
    assert twice.loc[0, "core_enrichment"] == pytest.approx(one.loc[0, "core_enrichment"], abs=1e-5)


def test_spurious_enrichment_is_the_max_over_regions_with_detail():
    cams = torch.zeros(1, 6, 6)
    cams[0, 0, 0] = 3.0
    cams[0, 5, 5] = 1.0
    regions = [[_spur([0, 0, 100, 100], "watermark"), _spur([500, 500, 600, 600], "corner")]]
    m = region_metrics(cams, regions, [(600, 600)])
    detail = json.loads(m.loc[0, "spurious_detail"])
    assert detail["watermark"]["share"] == pytest.approx(0.75)
    assert detail["corner"]["share"] == pytest.approx(0.25)
    assert m.loc[0, "spurious_enrichment"] == pytest.approx(0.75 * 36)
    assert m.loc[0, "spurious_share"] == pytest.approx(1.0)


def test_images_without_regions_get_nan_and_are_never_flagged():
    cams = torch.rand(2, 6, 6)
    m = region_metrics(cams, [[], [_spur([0, 0, 10, 10])]], [(100, 100), (100, 100)])
    assert list(m.columns) == list(METRIC_COLUMNS)
    assert not m.loc[0, "has_regions"] and m.loc[1, "has_regions"]
    assert math.isnan(m.loc[0, "core_share"]) and math.isnan(m.loc[0, "spurious_enrichment"])
    assert not flag_images(m, SaliencyCheck()).iloc[0]


def test_zero_map_gets_nan_shares_and_no_flag():
    m = region_metrics(torch.zeros(1, 6, 6), [[_spur([0, 0, 50, 50])]], [(100, 100)])
    assert math.isnan(m.loc[0, "spurious_share"]) and math.isnan(m.loc[0, "peak_x"])
    assert not m.loc[0, "pointing_hit"]
    assert not flag_images(m, SaliencyCheck()).iloc[0]


def test_peak_location_and_pointing_game_tolerance():
    cams = torch.zeros(3, 6, 6)
    cams[:, 2, 4] = 1.0  # centre at x = 4.5/6 = 0.75, y = 2.5/6
    size = (600, 600)  # peak at (450, 250) px
    regions = [
        [_core([400, 200, 500, 300])],  # contains the peak
        [_core([460, 200, 560, 300])],  # 10 px away: within 15 px
        [_core([470, 200, 560, 300])],
    ]  # 20 px away: a miss
    m = region_metrics(cams, regions, [size] * 3)
    assert m["peak_x"].tolist() == pytest.approx([0.75] * 3)
    assert m["peak_y"].tolist() == pytest.approx([2.5 / 6] * 3)
    assert m["pointing_hit"].tolist() == [True, True, False]


def test_row_regions_accepts_json_and_rejects_malformed_as_an_image_error():
    assert row_regions('[{"kind": "core", "name": "a", "box": [0, 0, 1, 1]}]')[0]["box"] == [0.0, 0.0, 1.0, 1.0]
    assert row_regions(None) == [] and row_regions("") == []
    for bad in (
        "not json",
        '[{"kind": "other", "box": [0,0,1,1]}]',
        '[{"kind": "core", "box": [0, 0, 1]}]',
        '{"a": 1}',
    ):
        with pytest.raises(ImageError):
            row_regions(bad, where="row 3")


# ---------------------------------------------------------------------------------------------
# The 4% patch: a model leaning on it vs one looking at the object, seen through a 6x6 CAM
# ---------------------------------------------------------------------------------------------

W, H, RES = 240, 180, 96


def _world(n: int, lean: bool, seed: int) -> tuple[torch.Tensor, list, list]:
    """Generated images (object box + a 20%x20% patch = 4% of the area) and the 6x6 CAMs a model would give.

    The high-resolution evidence is a blob on the object (clean model) or a blob on the patch with a weaker
    one on the object (leaning model); the CAM is its 6x6 average, blurred into neighbouring cells and
    thresholded like a real Grad-CAM, with noise.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid((torch.arange(RES) + 0.5) / RES, (torch.arange(RES) + 0.5) / RES, indexing="ij")
    blur = torch.tensor([[0.1, 0.2, 0.1], [0.2, 1.0, 0.2], [0.1, 0.2, 0.1]])[None, None]
    cams, regions = [], []
    for _ in range(n):
        ow, oh = (0.3 + 0.2 * torch.rand(2, generator=g)).tolist()
        side = 0.2
        ox = float(torch.rand(1, generator=g)) * (1 - ow)
        oy = float(torch.rand(1, generator=g)) * (1 - oh)
        while True:  # a patch that does not overlap the object (a watermark beside it)
            px, py = (torch.rand(2, generator=g) * (1 - side)).tolist()
            if px + side <= ox or px >= ox + ow or py + side <= oy or py >= oy + oh:
                break

        def blob(cx, cy, sx, sy):
            return torch.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2)

        obj = blob(ox + ow / 2, oy + oh / 2, ow / 3, oh / 3)
        patch = blob(px + side / 2, py + side / 2, side / 3, side / 3)
        evidence = (patch + 0.25 * obj) if lean else obj
        evidence = evidence + 0.05 * torch.rand(RES, RES, generator=g)
        cam = F.adaptive_avg_pool2d(evidence[None, None], 6)
        cam = F.conv2d(F.pad(cam, (1, 1, 1, 1), mode="replicate"), blur)[0, 0]
        cams.append((cam - 0.3 * cam.mean()).clamp_min(0))
        regions.append(
            [
                _core([ox * W, oy * H, (ox + ow) * W, (oy + oh) * H]),
                _spur([px * W, py * H, (px + side) * W, (py + side) * H]),
            ]
        )
    return torch.stack(cams), regions, [(W, H)] * n


def test_default_rule_separates_a_model_leaning_on_a_small_patch():
    check = SaliencyCheck()
    clean = flag_images(region_metrics(*_world(150, lean=False, seed=1)), check)
    leaning = flag_images(region_metrics(*_world(150, lean=True, seed=2)), check)
    assert clean.mean() <= 0.05
    assert leaning.mean() >= 0.9


def test_summary_fails_the_leaning_class_and_passes_the_clean_one():
    frames = []
    for label, lean, seed in (("cat", False, 3), ("dog", True, 4)):
        cams, regions, sizes = _world(40, lean, seed)
        metrics = region_metrics(cams, regions, sizes).assign(label=label)
        frames.append(metrics)
    summary = summarize_saliency(pd.concat(frames, ignore_index=True), SaliencyCheck())
    assert list(summary.by_class.columns) == list(BY_CLASS_COLUMNS)
    by_class = summary.by_class.set_index("class")
    assert not by_class.loc["cat", "flagged"] and by_class.loc["dog", "flagged"]
    assert by_class.loc["dog", "mean_spurious_enrichment"] > 3 > by_class.loc["cat", "mean_spurious_enrichment"]
    gates = {g.subject: g for g in summary.gates}
    assert gates["cat"].passed and not gates["dog"].passed
    assert gates["dog"].check == "saliency" and gates["dog"].metric == "flagged_fraction"
    assert gates["dog"].threshold == SaliencyCheck().max_flagged_fraction


def test_summary_passes_a_class_with_too_few_images_and_says_so():
    cams, regions, sizes = _world(5, lean=True, seed=5)
    metrics = region_metrics(cams, regions, sizes).assign(label="dog")
    summary = summarize_saliency(metrics, SaliencyCheck(min_images=20))
    (gate,) = summary.gates
    assert gate.passed and "too few images to judge" in gate.detail
    assert not summary.by_class.loc[0, "flagged"]
    assert summary.by_class.loc[0, "flagged_fraction"] > 0.5


def test_flag_uses_the_configured_thresholds():
    cams, regions, sizes = _world(30, lean=True, seed=6)
    metrics = region_metrics(cams, regions, sizes)
    strict = flag_images(metrics, SaliencyCheck())
    lax = flag_images(metrics, SaliencyCheck(min_spurious_enrichment=1000.0, max_spurious_share=1.0))
    assert strict.sum() > 0 and lax.sum() == 0
