"""The rarity check (audit_tasks.rarity), the sample weights (audit_tasks.sample_weights), the features the CAM
pass collects for them, and the planted-story proof on a trained model."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from audit_tasks import pipeline
from audit_tasks.config import RarityCheck, load_config
from audit_tasks.errors import ManifestError
from audit_tasks.pipeline import run_audit
from audit_tasks.rarity import (
    MSG_MISSING_COLUMN,
    STATUS_TOO_SMALL,
    check_rarity,
    class_densities,
    density_quantiles,
    histogram_density,
    reduce_features,
)
from audit_tasks.saliency import GradCAM
from audit_tasks.sample_weights import combine_weights, pair_weights, rarity_weights
from audit_tasks.stats import holm_adjust, newcombe_exceedance_pvalue
from audit_tasks.tables import read_table, write_table
from fixtures_multilabel import TinyNet
from fixtures_rarity import make_skies, train_classifier, write_sky_world


def _cluster_and_outliers(n: int = 400, n_far: int = 20, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tight Gaussian cluster of `n` images and a small far cluster of `n_far`, one class; the far mask."""
    rng = np.random.default_rng(seed)
    near = rng.normal(0, 1, size=(n, dim))
    far = rng.normal(0, 1, size=(n_far, dim)) + 6.0
    return np.vstack([near, far]).astype(np.float32), np.r_[np.zeros(n, bool), np.ones(n_far, bool)]


# -- density -----------------------------------------------------------------------------------------


# kNN measures local density: a compact subgroup larger than k is locally dense, so k exceeds the far cluster here.
@pytest.mark.parametrize("check", [RarityCheck(), RarityCheck(method="knn", k=30)], ids=["histogram", "knn"])
def test_a_small_far_cluster_ranks_rarest(check):
    features, far = _cluster_and_outliers()
    density = class_densities(features, ["cat"] * len(features), check)
    rarest = np.argsort(density)[: far.sum()]
    assert far[rarest].mean() >= 0.9
    assert density.max() == pytest.approx(1.0)  # scaled: the densest image of the class has 1


def test_densities_are_estimated_per_class():
    features, far = _cluster_and_outliers()
    # the same far points in another class of their own are that class's typical images
    labels = np.where(far, "dog", "cat")
    density = class_densities(features, labels.tolist(), RarityCheck())
    assert np.median(density[far]) > np.quantile(density[~far], 0.1)


def test_reduce_features_keeps_the_strongest_directions():
    rng = np.random.default_rng(1)
    signal = rng.normal(0, 10, size=(500, 1))
    features = np.hstack([signal, rng.normal(0, 0.1, size=(500, 40))]).astype(np.float32)
    z, share = reduce_features(features, 2)
    assert z.shape == (500, 2)
    assert abs(np.corrcoef(z[:, 0], signal[:, 0])[0, 1]) > 0.99
    assert share.sum() == pytest.approx(1.0) and share[0] > 0.9


def test_the_max_combination_is_the_labs_rarest_dimension():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(300, 3))
    per_dim = [histogram_density(z[:, [j]], bins=10) for j in range(3)]
    np.testing.assert_allclose(histogram_density(z, bins=10, combine="max"), np.min(per_dim, axis=0))


def test_histogram_density_of_a_constant_dimension_is_one():
    z = np.zeros((10, 3))
    assert histogram_density(z, bins=10).tolist() == [1.0] * 10


def test_quantiles_split_each_class_by_density():
    density = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3])
    labels = ["a", "a", "a", "b", "b", "b"]
    assert density_quantiles(density, labels, 3).tolist() == [1, 3, 2, 1, 3, 2]


# -- the check ----------------------------------------------------------------------------------------


def _planted(rare_accuracy: float, common_accuracy: float = 0.95, n: int = 500, seed: int = 0) -> tuple:
    """One class: density increasing with the index, accuracy `rare_accuracy` on the rarest fifth."""
    rng = np.random.default_rng(seed)
    density = np.linspace(0.01, 1.0, n)
    rare = np.arange(n) < n // 5
    correct = np.where(rare, rng.random(n) < rare_accuracy, rng.random(n) < common_accuracy)
    frame = pd.DataFrame({"label": "cat", "correct": correct})
    return frame, density


def test_a_planted_tail_gap_is_flagged():
    frame, density = _planted(rare_accuracy=0.5)
    result = check_rarity(frame, density, check=RarityCheck())
    rows = result.quantiles
    assert rows["flagged"].all() and (rows["status"] == "tail gap").all()
    assert rows.loc[rows["quantile"] == 1, "accuracy"].item() < 0.7
    (gate,) = result.gates
    assert gate.name == "rarity/cat/tail_gap" and not gate.passed and gate.judged


def test_equal_accuracy_never_flags():
    for seed in range(20):
        frame, density = _planted(rare_accuracy=0.9, common_accuracy=0.9, seed=seed)
        result = check_rarity(frame, density, check=RarityCheck())
        assert not result.quantiles["flagged"].any()
        assert all(g.passed for g in result.gates)


def test_a_class_with_small_quantiles_is_not_judged():
    frame, density = _planted(rare_accuracy=0.0, n=50)  # 10 images per quantile
    result = check_rarity(frame, density, check=RarityCheck(min_images=20))
    assert (result.quantiles["status"] == STATUS_TOO_SMALL).all()
    assert not result.quantiles["flagged"].any()
    (gate,) = result.gates
    assert gate.passed and not gate.judged


def test_the_tail_gap_pvalues_are_holm_adjusted_over_the_classes():
    parts = []
    for i, rare_accuracy in enumerate((0.6, 0.75, 0.9)):
        frame, density = _planted(rare_accuracy=rare_accuracy, seed=i)
        parts.append((frame.assign(label=f"c{i}"), density))
    frame = pd.concat([p[0] for p in parts], ignore_index=True)
    density = np.concatenate([p[1] for p in parts])
    result = check_rarity(frame, density, check=RarityCheck())
    rows = result.quantiles
    rare = rows[rows["quantile"] == 1].set_index("label")
    common = rows[rows["quantile"] == 5].set_index("label")
    raw = newcombe_exceedance_pvalue(common["correct"], common["n"], rare["correct"], rare["n"], 0.1)
    np.testing.assert_allclose(rare["pvalue"].to_numpy(), holm_adjust(raw))


def test_the_rarest_images_shared_values_are_summarised():
    frame, density = _planted(rare_accuracy=0.9)
    frame["tags"] = [["snow"] if i < 100 else ["grass"] for i in range(len(frame))]
    frame["room"] = ["attic" if i < 80 else "hall" for i in range(len(frame))]
    result = check_rarity(frame, density, check=RarityCheck(), describe=["tags", "room"])
    shared = json.loads(result.quantiles.loc[result.quantiles["quantile"] == 1, "shared"].item())
    found = {(s["column"], s["value"]) for s in shared}
    assert ("tags", "snow") in found and ("room", "attic") in found
    assert ("tags", "grass") not in found


def test_a_missing_correct_column_is_named():
    with pytest.raises(ManifestError) as err:
        check_rarity(pd.DataFrame({"label": ["a"]}), np.ones(1), check=RarityCheck())
    assert str(err.value) == MSG_MISSING_COLUMN.format(column="correct", why="whether the model was right")


# -- weights ------------------------------------------------------------------------------------------


def test_the_rarest_images_get_the_highest_weights_with_mean_one_and_the_cap():
    features, far = _cluster_and_outliers()
    labels = ["cat"] * len(features)
    density = class_densities(features, labels, RarityCheck())
    rarity = rarity_weights(density, labels, alpha=0.001)
    assert rarity.mean() == pytest.approx(1.0)
    assert rarity[far].min() > np.quantile(rarity[~far], 0.9)
    weight = combine_weights([rarity], max_weight=2.0)
    assert weight.mean() == pytest.approx(1.0)
    assert weight.max() <= 2.0 + 1e-9
    assert weight[far].mean() > weight[~far].mean()


def test_rarity_weights_have_mean_one_within_each_class():
    density = np.array([0.1, 1.0, 1.0, 0.5, 1.0, np.nan])
    labels = ["a", "a", "a", "b", "b", "b"]
    weights = rarity_weights(density, labels, alpha=0.01)
    assert weights[:3].mean() == pytest.approx(1.0)
    assert weights[3:5].mean() == pytest.approx(1.0)
    assert weights[5] == 1.0  # no density: no rarity weight


def test_pair_weights_raise_a_without_b_to_the_target_share():
    tags = [["laptop", "mouse"]] * 90 + [["laptop"]] * 10 + [["cup"]] * 50
    weight, (pair,) = pair_weights(tags, [("laptop", "mouse")], target_share=0.2)
    without = np.array([t == ["laptop"] for t in tags])
    with_a = np.array(["laptop" in t for t in tags])
    assert weight[without].sum() / weight[with_a].sum() == pytest.approx(0.2)
    assert (weight[~without] == 1).all() and pair.weight > 1
    already, _ = pair_weights(tags, [("laptop", "mouse")], target_share=0.05)
    assert (already == 1).all()


def test_combined_weights_keep_mean_one_under_a_tight_cap():
    rng = np.random.default_rng(3)
    weight = combine_weights([rng.pareto(1.0, 1000) + 0.01, rng.random(1000) + 0.5], max_weight=3.0)
    assert weight.mean() == pytest.approx(1.0) and weight.max() <= 3.0 + 1e-9


# -- features from the CAM pass ------------------------------------------------------------------------


def _penultimate(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = head.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("closed_form", [None, False], ids=["closed-form", "one-backward"])
def test_cam_features_are_the_penultimate_activations_of_resnet18(closed_form):
    torch.manual_seed(0)
    model = resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    result = GradCAM(model, "layer4", closed_form=closed_form, collect_features=True).attribute(x)
    assert result.closed_form is (closed_form is None)
    torch.testing.assert_close(result.features, _penultimate(model, model.fc, x), rtol=1e-5, atol=1e-5)


def test_cam_features_on_the_generic_path_of_a_model_that_modifies_the_layer_in_place():
    torch.manual_seed(0)

    class InPlace(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.features(x)
            return self.fc(torch.flatten(self.pool(a.mul_(2.0)), 1))

    model = InPlace(2).eval()
    x = torch.randn(3, 3, 32, 32)
    engine = GradCAM(model, "features", collect_features=True)
    result = engine.attribute(x)
    assert engine.path == "one backward"
    torch.testing.assert_close(result.features, _penultimate(model, model.fc, x), rtol=1e-5, atol=1e-5)


def test_features_are_none_unless_asked():
    model = TinyNet(2).eval()
    assert GradCAM(model, "features").attribute(torch.randn(2, 3, 32, 32)).features is None


@pytest.mark.parametrize("closed_form", [None, False], ids=["closed-form", "one-backward"])
def test_collecting_features_adds_no_forward(closed_form):
    model = TinyNet(2).eval()
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        engine = GradCAM(model, "features", closed_form=closed_form, collect_features=True)
        engine.attribute(torch.randn(2, 3, 32, 32))  # the first closed-form call verifies the head
        calls.clear()
        engine.attribute(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert len(calls) == 1


# -- the planted story on a trained model ------------------------------------------------------------


def _sky_audit(tmp_path, *, fair: bool):
    """Train on skies without dusk (biased) or with as much dusk as clear days (fair); audit skies with 8% dusk."""
    train = make_skies(300, 300, dusk_share=0.5 if fair else 0.0, seed=1)
    world = write_sky_world(
        tmp_path,
        train_classifier(train),
        make_skies(500, 500, dusk_share=0.08, seed=2),
        checks={"rarity": {}},
    )
    outcome = run_audit(load_config(world.config), "sky")
    return world, outcome


def test_a_rare_subgroup_the_model_fails_on_is_found_without_its_attribute(tmp_path):
    world, outcome = _sky_audit(tmp_path, fair=False)
    assert outcome.summary["checks"]["rarity"] == "ran"
    assert "rarity/day/tail_gap" in outcome.summary["failed_gates"]
    assert "rarity/night/tail_gap" not in outcome.summary["failed_gates"]
    weights = read_table(outcome.run_dir / "sample_weights.parquet")
    assert weights["weight"].mean() == pytest.approx(1.0)
    day = weights[weights["label"] == "day"].reset_index(drop=True)
    dusk = day["image_id"].isin(world.dusk_ids).to_numpy()
    # the dusk images are the rarest day images and weigh the most
    rarest = day.nsmallest(int(dusk.sum()), "density")["image_id"]
    assert rarest.isin(world.dusk_ids).mean() >= 0.8
    assert day["weight"][dusk].median() > day["weight"][~dusk].quantile(0.95)
    rarity = read_table(outcome.run_dir / "rarity.parquet")
    q1 = rarity[(rarity["label"] == "day") & (rarity["quantile"] == 1)]
    assert q1["flagged"].item() and q1["accuracy"].item() < 0.8
    assert len(read_table(outcome.run_dir / "_stages" / "features.parquet")) == len(weights)
    assert "features" not in read_table(outcome.run_dir / "images.parquet").columns
    section = re.search(r'<section id="rarity">(.*?)</section>', outcome.report_path.read_text(), flags=re.S).group(1)
    assert "<strong>Flagged:</strong> day" in section
    assert section.count("<figure") >= 2 * 8  # the rarest images of both classes


def test_a_model_that_learned_the_rare_subgroup_flags_nothing(tmp_path):
    _, outcome = _sky_audit(tmp_path, fair=True)
    assert outcome.summary["checks"]["rarity"] == "ran"
    assert not [g for g in outcome.summary["failed_gates"] if g.startswith("rarity/")]
    rarity = read_table(outcome.run_dir / "rarity.parquet")
    assert not rarity["flagged"].any()


def test_sharded_scoring_merges_the_features_like_one_pass(tmp_path):
    world = write_sky_world(
        tmp_path,
        train_classifier(make_skies(60, 60, dusk_share=0.0, seed=1), epochs=1),
        make_skies(40, 40, dusk_share=0.1, seed=2),
        checks={"rarity": {"min_images": 2}},
    )
    config = load_config(world.config)
    pipeline.stage_ingest(config, "one")
    pipeline.stage_saliency(config, "one")
    whole = read_table(pipeline.run_dir(config, "one") / "_stages" / "features.parquet")
    pipeline.stage_ingest(config, "three")  # nothing new lands: audit the rows run "one" audited
    stages = pipeline.run_dir(config, "three") / "_stages"
    write_table(pipeline.audit_rows(config, "one"), stages / "audit_rows.parquet", name="audit_rows")
    for shard in range(3):
        pipeline.stage_saliency(config, "three", shard, 3)
    pipeline.stage_merge_shards(config, "three", 3)
    merged = read_table(stages / "features.parquet")
    images = read_table(pipeline.run_dir(config, "three") / "images.parquet", columns=["image_id"])
    assert merged["image_id"].tolist() == images["image_id"].tolist() == whole["image_id"].tolist()
    np.testing.assert_allclose(np.stack(merged["features"]), np.stack(whole["features"]), rtol=1e-5, atol=1e-5)
    assert pipeline.stage_rarity(config, "three") is not None
