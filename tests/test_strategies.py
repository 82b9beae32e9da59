"""Saliency strategies: clusters of a class's Grad-CAMs, and the fixed-spot flag, on generated maps and models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit_tasks.config import StrategiesCheck
from audit_tasks.strategies import (
    CLUSTER_COLUMNS,
    check_strategies,
    cluster_maps,
    describe_location,
    normalise_maps,
)

H = W = 7


def _blob(cy: float, cx: float, spread: float = 0.8) -> np.ndarray:
    """A Gaussian hot spot centred at (cy, cx) in cell units (cell centres at i + 0.5)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.exp(-((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) / (2 * spread**2))


def _objects(rng: np.random.Generator, n: int, *, centred: bool) -> list[np.ndarray]:
    """Maps of a model that looks at the object: centred with jitter, or anywhere in the frame."""
    maps = []
    for _ in range(n):
        cy, cx = 3.5 + rng.normal(0, 0.8, 2) if centred else rng.uniform(0.5, 6.5, 2)
        maps.append(_blob(cy, cx, rng.uniform(0.7, 1.3)) + rng.uniform(0, 0.05, (H, W)))
    return maps


def _corner_cue(rng: np.random.Generator, n: int, corner: tuple[float, float] = (6.3, 0.6)) -> list[np.ndarray]:
    """Maps of a model that answers from a cue in a corner, with a little of the object (centred, jittered)."""
    maps = []
    for _ in range(n):
        cy, cx = 3.5 + rng.normal(0, 1.0, 2)
        maps.append(0.3 * _blob(cy, cx) + _blob(*corner, spread=0.6) + rng.uniform(0, 0.05, (H, W)))
    return maps


def _frame(maps: list[np.ndarray], label: str = "wolf", **columns) -> pd.DataFrame:
    n = len(maps)
    frame = pd.DataFrame(
        {
            "image_id": [f"{label}{i:06d}" for i in range(n)],
            "label": label,
            "correct": True,
            "cam": [m.ravel().astype(np.float32) for m in maps],
            "cam_height": maps[0].shape[0],
            "cam_width": maps[0].shape[1],
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def _half_cue(seed: int = 0, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return _frame(_corner_cue(rng, n // 2) + _objects(rng, n - n // 2, centred=True))


def test_normalised_maps_sum_to_one_after_relu_and_dead_maps_are_masked():
    cams = np.stack([np.full((2, 2), -1.0), np.array([[1.0, -3.0], [1.0, 2.0]])])
    maps, alive = normalise_maps(cams)
    assert alive.tolist() == [False, True]
    assert maps[1].sum() == pytest.approx(1.0) and maps[1].min() == 0.0


def test_a_corner_cue_on_half_a_class_is_found_and_flagged_as_that_corner():
    result = check_strategies(_half_cue(), StrategiesCheck())
    clusters = result.clusters
    assert list(clusters.columns) == list(CLUSTER_COLUMNS)
    flagged = clusters[clusters["flagged"]]
    assert flagged["share"].sum() == pytest.approx(0.5, abs=0.05)
    assert set(zip(flagged["peak_row"], flagged["peak_col"], strict=True)) == {(6, 0)}
    assert all("bottom-left corner" in d for d in flagged["description"])
    (gate,) = result.gates
    assert gate.name == "strategies/wolf/fixed_spot_share" and not gate.passed and gate.judged
    assert gate.value == pytest.approx(flagged["share"].sum()) and "bottom-left corner" in gate.detail
    # the rest of the class (the object, centred) is not flagged
    assert not clusters[~clusters["flagged"]].empty


@pytest.mark.parametrize("corner", [(0.6, 0.6), (0.6, 6.4), (6.4, 6.4)])
def test_each_corner_is_named(corner):
    rng = np.random.default_rng(1)
    frame = _frame(_corner_cue(rng, 100, corner) + _objects(rng, 100, centred=True))
    flagged = check_strategies(frame, StrategiesCheck()).clusters.query("flagged")
    words = describe_location(corner[1] / W, corner[0] / H)
    assert not flagged.empty and all(words in d for d in flagged["description"])


def test_centred_objects_at_jittered_positions_flag_nothing():
    for seed in range(3):
        frame = _frame(_objects(np.random.default_rng(seed), 400, centred=True))
        result = check_strategies(frame, StrategiesCheck())
        assert not result.clusters["flagged"].any()
        assert result.gates[0].passed and result.gates[0].judged and result.gates[0].value == 0.0


def test_objects_exactly_in_the_centre_flag_nothing():
    rng = np.random.default_rng(2)
    maps = [_blob(3.5, 3.5) + rng.uniform(0, 0.05, (H, W)) for _ in range(200)]
    clusters = check_strategies(_frame(maps), StrategiesCheck()).clusters
    assert not clusters["flagged"].any()
    assert (clusters["peak_consistency"] == 1.0).all()  # a steady spot, but central


def test_objects_at_random_positions_flag_nothing():
    for seed in range(3):
        frame = _frame(_objects(np.random.default_rng(seed), 400, centred=False))
        result = check_strategies(frame, StrategiesCheck())
        assert not result.clusters["flagged"].any(), result.clusters["description"].tolist()


def test_the_cue_gate_can_fail_only_through_a_sizeable_share():
    """The same corner cue on 10% of the class stays under min_cluster_share (0.2): found, not flagged."""
    rng = np.random.default_rng(3)
    frame = _frame(_corner_cue(rng, 30) + _objects(rng, 270, centred=True))
    result = check_strategies(frame, StrategiesCheck())
    assert result.gates[0].passed
    corner = result.clusters[(result.clusters["peak_row"] == 6) & (result.clusters["peak_col"] == 0)]
    assert not corner.empty and all("too small to flag" in d for d in corner["description"])


def test_sampling_path_reaches_the_same_decision_and_says_so():
    frame = _half_cue(seed=4, n=6000)
    check = StrategiesCheck(max_sample=1000)
    result = check_strategies(frame, check)
    assert result.clusters["method"].str.contains("sampled 1,000 of 6,000 maps").all()
    assert result.clusters["method"].str.contains("nearest centroid").all()
    assert result.clusters["n"].sum() == 6000
    flagged = result.clusters.query("flagged")
    assert flagged["share"].sum() == pytest.approx(0.5, abs=0.05)
    assert set(zip(flagged["peak_row"], flagged["peak_col"], strict=True)) == {(6, 0)}
    unsampled = check_strategies(frame.iloc[::6].reset_index(drop=True), check)
    assert "all 1,000 maps" in unsampled.clusters["method"].iloc[0]
    assert not unsampled.gates[0].passed


def test_cluster_labels_are_deterministic_and_largest_first():
    maps, _ = normalise_maps(np.stack(_half_cue(seed=5)["cam"].map(lambda c: c.reshape(H, W)).tolist()))
    first = cluster_maps(maps, max_clusters=8, neighbours=10, max_sample=5000)
    again = cluster_maps(maps, max_clusters=8, neighbours=10, max_sample=5000)
    assert np.array_equal(first.labels, again.labels)
    sizes = np.bincount(first.labels)
    assert first.k == len(sizes) >= 2 and (np.diff(sizes) <= 0).all()


def test_max_clusters_caps_k():
    maps, _ = normalise_maps(np.stack(_objects(np.random.default_rng(6), 300, centred=False)))
    assert cluster_maps(maps, max_clusters=2, neighbours=10, max_sample=5000).k <= 2
    assert cluster_maps(maps, max_clusters=1, neighbours=10, max_sample=5000).k == 1


def _core_regions(box: list[float]) -> str:
    return json.dumps([{"kind": "core", "name": "wolf", "box": box}])


def test_with_core_boxes_the_test_is_off_object():
    """A fixed central spot is fine without boxes, but off the object when the boxes say the object is elsewhere."""
    rng = np.random.default_rng(7)
    maps = [_blob(3.5, 3.5) + rng.uniform(0, 0.05, (H, W)) for _ in range(100)]
    on_object = _frame(maps, regions=_core_regions([20, 20, 50, 50]), core_share=0.8, width=70, height=70)
    assert check_strategies(on_object, StrategiesCheck()).gates[0].passed
    off_object = on_object.assign(regions=_core_regions([0, 0, 15, 15]), core_share=0.1)
    result = check_strategies(off_object, StrategiesCheck())
    assert not result.gates[0].passed
    flagged = result.clusters.query("flagged")
    assert flagged["off_object_share"].iloc[0] == pytest.approx(0.9)
    assert all("off the object" in d for d in flagged["description"])


def test_locations_in_words():
    assert describe_location(0.1, 0.9) == "the bottom-left corner"
    assert describe_location(0.9, 0.1) == "the top-right corner"
    assert describe_location(0.3, 0.7) == "the bottom-left"
    assert describe_location(0.5, 0.1) == "the top edge"
    assert describe_location(0.8, 0.5) == "the right edge"
    assert describe_location(0.5, 0.5) == "the centre"


def test_a_class_under_min_images_is_not_judged():
    rng = np.random.default_rng(8)
    frame = _frame(_corner_cue(rng, 10))
    result = check_strategies(frame, StrategiesCheck(min_images=20))
    (gate,) = result.gates
    assert gate.passed and not gate.judged and gate.value is None and "too few" in gate.detail
    assert result.clusters.empty and list(result.clusters.columns) == list(CLUSTER_COLUMNS)


def test_each_class_gets_its_own_gate_and_accuracy_per_cluster():
    rng = np.random.default_rng(9)
    wolves = _half_cue(seed=9, n=200).assign(correct=[True] * 100 + [False] * 100)
    huskies = _frame(_objects(rng, 200, centred=True), label="husky")
    result = check_strategies(pd.concat([wolves, huskies], ignore_index=True), StrategiesCheck())
    assert [g.subject for g in result.gates] == ["husky", "wolf"]
    assert [g.passed for g in result.gates] == [True, False]
    cue = result.clusters.query("flagged")
    assert (cue["class"] == "wolf").all() and (cue["accuracy"] == 1.0).all()


def test_mass_zones_and_mean_map_describe_the_cluster():
    clusters = check_strategies(_half_cue(seed=10), StrategiesCheck()).clusters
    cue = clusters.query("flagged").iloc[0]
    rest = clusters.query("not flagged")
    assert cue["corner_mass"] > 0.4 and cue["border_mass"] > 0.4 and cue["centre_mass"] < 0.3
    assert (rest["centre_mass"] > 0.5).all()
    mean_map = np.asarray(cue["mean_map"])
    assert mean_map.shape == (H * W,) and mean_map.sum() == pytest.approx(1.0, abs=1e-5)
    assert int(mean_map.argmax()) == 6 * W + 0
    assert len(cue["examples"]) == 4


def test_no_images_gives_no_cluster_and_no_gate():
    result = check_strategies(pd.DataFrame(), StrategiesCheck())
    assert result.gates == [] and result.clusters.empty and list(result.clusters.columns) == list(CLUSTER_COLUMNS)


def test_missing_maps_are_an_error_naming_them():
    with pytest.raises(ValueError, match="needs the stored Grad-CAMs"):
        check_strategies(pd.DataFrame({"label": ["a"]}), StrategiesCheck())


# ---------------------------------------------------------------------------------------------
# The proof: a real (tiny, trained) model, a manifest without regions
# ---------------------------------------------------------------------------------------------

RUN = "20260101T000000Z-strat1"


def _audit_animals(root, train_set, audit_set):
    from audit_tasks.config import load_config
    from audit_tasks.pipeline import run_audit
    from fixtures_strategies import train, write_world

    config = write_world(root, train(train_set), audit_set, checks={"strategies": {}})
    return run_audit(load_config(config), RUN)


def _strategies(outcome) -> pd.DataFrame:
    from audit_tasks.tables import read_table

    return read_table(outcome.run_dir / "strategies.parquet")


def test_a_model_that_uses_a_corner_cue_is_flagged_without_regions(tmp_path):
    from audit_tasks.tables import read_table
    from fixtures_strategies import SEED, make_animals

    audit_set = make_animals(300, SEED + 1)
    outcome = _audit_animals(tmp_path, make_animals(600, SEED), audit_set)
    assert outcome.summary["failed_gates"] == ["strategies/wolf/fixed_spot_share"]
    assert outcome.summary["checks"]["strategies"] == "ran"
    clusters = _strategies(outcome)
    cue = clusters[clusters["flagged"]]
    assert set(cue["class"]) == {"wolf"}
    assert all("bottom-left corner" in d and "fixed spot" in d for d in cue["description"])
    # the flagged clusters are the cued wolves: about their share of the class, and their examples carry the cue
    cued = {f"{a.label}_{i:04d}.png" for i, a in enumerate(audit_set) if a.cue}
    wolves = sum(a.label == "wolf" for a in audit_set)
    assert cue["share"].sum() == pytest.approx(len(cued) / wolves, abs=0.1)
    images = read_table(outcome.run_dir / "images.parquet", columns=["image_id", "image_uri", "regions"])
    uri = dict(zip(images["image_id"], images["image_uri"], strict=True))
    examples = [uri[i] for ids in cue["examples"] for i in ids]
    assert examples and all(e in cued for e in examples)
    assert images["regions"].isna().all()  # no boxes anywhere
    html = outcome.report_path.read_text(encoding="utf-8")
    assert 'id="strategies"' in html and "bottom-left corner" in html


def test_the_same_data_with_a_model_trained_without_the_cue_flags_nothing(tmp_path):
    from fixtures_strategies import SEED, make_animals

    uninformative = make_animals(600, SEED, cue_on_huskies=True)  # the cue on half of each class
    outcome = _audit_animals(tmp_path, uninformative, make_animals(300, SEED + 1))
    assert outcome.verdict.passed, outcome.summary["failed_gates"]
    gates = [g for g in outcome.verdict.failed]
    assert not gates
    clusters = _strategies(outcome)
    assert not clusters["flagged"].any() and set(clusters["class"]) == {"wolf", "husky"}


def test_centred_animals_flag_nothing(tmp_path):
    from fixtures_strategies import SEED, make_centred

    outcome = _audit_animals(tmp_path, make_centred(600, SEED), make_centred(300, SEED + 1))
    assert outcome.verdict.passed, outcome.summary["failed_gates"]
    assert not _strategies(outcome)["flagged"].any()
