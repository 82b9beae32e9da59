"""The demo world: seeded, and its planted statistics and regions are what the truth says they are."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from audit_tasks.demo.build import SCALES, audit_specs, group_weights, train_specs
from audit_tasks.demo.world import (
    ATTRIBUTES,
    CLASSES,
    SplitSpec,
    WorldSpec,
    render,
    sample_split,
    swap_cue,
    write_split,
)

WORLD = WorldSpec()
FULL = SCALES["full"]


@pytest.fixture(scope="module")
def biased_train():
    return sample_split(dataclasses.replace(train_specs(FULL)["biased"], n_images=3000), WORLD, 1)


def _share(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags)


def test_same_seed_gives_the_same_samples_and_pixels():
    spec = SplitSpec("s", 12)
    a, b = sample_split(spec, WORLD, 3), sample_split(spec, WORLD, 3)
    assert a == b and len(a) == 12
    assert all(
        np.array_equal(np.asarray(render(x, WORLD)[0]), np.asarray(render(y, WORLD)[0]))
        for x, y in zip(a, b, strict=True)
    )


def test_another_seed_gives_other_samples():
    spec = SplitSpec("s", 12)
    assert sample_split(spec, WORLD, 3) != sample_split(spec, WORLD, 4)


def test_biased_training_data_show_snow_with_wolves_and_rarely_with_huskies(biased_train):
    samples = biased_train
    wolves = [s for s in samples if s.label == "wolf"]
    huskies = [s for s in samples if s.label == "husky"]
    assert _share(s.snow is not None for s in wolves) == pytest.approx(0.95, abs=0.02)
    assert _share(s.snow is not None for s in huskies) == pytest.approx(0.05, abs=0.02)


def test_dark_fur_is_a_five_percent_minority_of_biased_training_data(biased_train):
    assert _share(s.fur_tone == "dark" for s in biased_train) == pytest.approx(0.05, abs=0.015)


def test_debiased_training_data_show_snow_independently_of_the_class():
    samples = sample_split(dataclasses.replace(train_specs(FULL)["debiased"], n_images=1500), WORLD, 1)
    by_class = {c: _share(s.snow is not None for s in samples if s.label == c) for c in CLASSES}
    assert abs(by_class["wolf"] - by_class["husky"]) < 0.07


def test_biased_batch_rarely_shows_a_laptop_without_a_mouse():
    samples = sample_split(audit_specs(FULL)["biased"], WORLD, 7)
    laptops = [s for s in samples if "laptop" in s.tags]
    assert len(laptops) >= 100  # enough support for the co-occurrence check
    assert _share("mouse" not in s.tags for s in laptops) < 0.03
    # ... while a mouse alone is common, so the pair is specific (lift well above 1.5).
    assert _share("mouse" in s.tags for s in samples) < 0.6


def test_biased_batch_shows_lanterns_almost_only_at_night():
    samples = sample_split(audit_specs(FULL)["biased"], WORLD, 7)
    lanterns = [s for s in samples if "lantern" in s.tags]
    assert len(lanterns) >= 60
    assert _share(s.lighting == "night" for s in lanterns) > 0.95


def test_debiased_batch_has_independent_tags():
    samples = sample_split(dataclasses.replace(audit_specs(FULL)["debiased"], n_images=1500), WORLD, 7)
    laptops = [s for s in samples if "laptop" in s.tags]
    assert _share("mouse" in s.tags for s in laptops) == pytest.approx(
        _share("mouse" in s.tags for s in samples), abs=0.07
    )


@pytest.mark.parametrize("run", ["biased", "debiased"])
def test_audit_batches_show_snow_with_both_classes_and_both_fur_tones(run):
    samples = sample_split(audit_specs(SCALES["small"])[run], WORLD, 7)
    for label in CLASSES:
        for fur in ("light", "dark"):
            for snow in (True, False):
                cell = [s for s in samples if s.label == label and s.fur_tone == fur and (s.snow is not None) == snow]
                assert len(cell) >= 10, (label, fur, snow)


def test_core_box_is_the_tight_box_of_the_drawn_animal():
    samples = sample_split(SplitSpec("s", 20), WORLD, 5)
    assert len(samples) == 20
    for sample in samples:
        other = dataclasses.replace(sample, fur_tone="dark" if sample.fur_tone == "light" else "light")
        image, core = render(sample, WORLD)
        changed = np.any(np.asarray(image) != np.asarray(render(other, WORLD)[0]), axis=2)
        ys, xs = np.nonzero(changed)  # only the animal's pixels change with its fur
        x0, y0, x1, y1 = core
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        assert xs.min() <= x0 + 1 and xs.max() >= x1 - 2 and ys.min() <= y0 + 1 and ys.max() >= y1 - 2


def test_regions_lie_inside_the_image_and_snow_avoids_the_animal():
    size = WORLD.size
    samples = sample_split(SplitSpec("s", 60, p_snow_wolf=1.0, p_snow_husky=1.0), WORLD, 5)
    assert len(samples) == 60
    for sample in samples:
        _, core = render(sample, WORLD)
        snow = sample.snow.box
        for x0, y0, x1, y1 in (core, snow):
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        assert not (snow[0] < core[2] and core[0] < snow[2] and snow[1] < core[3] and core[1] < snow[3])
        area = (snow[2] - snow[0]) * (snow[3] - snow[1]) / size**2
        assert area == pytest.approx(WORLD.snow_area, rel=0.1)


def test_swapping_the_cue_changes_only_the_snow_patch():
    samples = sample_split(SplitSpec("s", 10), WORLD, 2)
    assert len(samples) == 10
    for sample in samples:
        swapped = swap_cue(sample, WORLD)
        assert (swapped.snow is None) != (sample.snow is None)
        box = (sample.snow or swapped.snow).box
        changed = np.any(np.asarray(render(sample, WORLD)[0]) != np.asarray(render(swapped, WORLD)[0]), axis=2)
        outside = changed.copy()
        outside[box[1] : box[3], box[0] : box[2]] = False
        assert changed.any() and not outside.any()


def test_written_split_has_contract_manifest_rows_and_png_images(tmp_path):
    samples = sample_split(SplitSpec("s", 6, p_snow_wolf=1.0), WORLD, 1)
    rows = write_split(samples, WORLD, tmp_path, "batch")
    assert len(rows) == 6 and [r["image_id"] for r in rows] == [s.image_id for s in samples]
    for row, sample in zip(rows, samples, strict=True):
        assert set(row) == {"image_id", "image_uri", "label", "tags", "regions", *ATTRIBUTES}
        with Image.open(tmp_path / row["image_uri"]) as image:
            assert image.format == "PNG" and image.size == (WORLD.size, WORLD.size) and image.mode == "RGB"
        regions = json.loads(row["regions"])
        kinds = sorted(r["kind"] for r in regions)
        assert kinds == (["core", "spurious"] if sample.snow else ["core"])
        assert ("snow" in row["tags"].split("|")) == (sample.snow is not None)


def test_group_weights_give_every_cell_equal_mass():
    samples = sample_split(SplitSpec("s", 400, p_dark=0.2), WORLD, 1)
    weights = group_weights(samples)
    mass: dict = {}
    for s, w in zip(samples, weights, strict=True):
        key = (s.label, s.snow is not None, s.fur_tone)
        mass[key] = mass.get(key, 0.0) + w
    assert len(mass) == 8
    assert all(m == pytest.approx(1.0) for m in mass.values())


def test_split_spec_rejects_a_probability_outside_zero_one():
    with pytest.raises(ValueError, match="p_dark"):
        SplitSpec("s", 10, p_dark=1.5)
