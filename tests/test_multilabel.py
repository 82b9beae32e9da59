"""Multilabel models: the config keys, scoring with one sigmoid per class, and the leakage check end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from audit_tasks import modelio
from audit_tasks.config import MSG_LEAKAGE_MULTICLASS, LeakageCheck, ModelConfig, SaliencyConfig, load_config
from audit_tasks.errors import ConfigError
from audit_tasks.pipeline import run_audit
from audit_tasks.report import load_run, sections
from audit_tasks.scoring import explain_classes, score_images
from audit_tasks.tables import read_table
from fixtures_multilabel import (
    CLASSES,
    MEAN,
    SEED,
    SIZE,
    STD,
    TinyNet,
    make_scenes,
    train_multilabel,
    write_audit_world,
)
from fixtures_report import build_run

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _config_file(tmp_path: Path, model: dict, checks: dict) -> Path:
    for name in ("landing", "images", "catalog"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "model.pt").write_bytes(b"")
    body = {
        "dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog"},
        "model": {"arch": "resnet18", "checkpoint": "model.pt", "classes": list(CLASSES), "target_layer": "layer4"}
        | model,
        "checks": checks,
    }
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def test_multilabel_keys_default_to_a_multiclass_model(tmp_path):
    config = load_config(_config_file(tmp_path, {}, {}))
    assert config.model.task == "multiclass" and config.model.thresholds == 0.5
    assert config.checks.leakage is None


def test_leakage_section_uses_its_defaults(tmp_path):
    config = load_config(_config_file(tmp_path, {"task": "multilabel"}, {"leakage": None}))
    assert config.checks.leakage == LeakageCheck()
    assert (LeakageCheck().max_rate_gap, LeakageCheck().min_support) == (0.10, 30)


def test_thresholds_per_class_fill_the_rest_with_the_default(tmp_path):
    config = load_config(_config_file(tmp_path, {"task": "multilabel", "thresholds": {"mouse": 0.3}}, {}))
    assert config.model.threshold_list() == [0.5, 0.3, 0.5, 0.5]


@pytest.mark.parametrize("thresholds", [0, 1, 1.5, True, "0.5", {"mouse": 1.0}])
def test_thresholds_must_be_probabilities(tmp_path, thresholds):
    with pytest.raises(ConfigError, match="'model.thresholds' must be a number strictly between 0 and 1"):
        load_config(_config_file(tmp_path, {"task": "multilabel", "thresholds": thresholds}, {}))


def test_thresholds_must_name_known_classes(tmp_path):
    with pytest.raises(ConfigError, match="'model.thresholds' names classes that are not in model.classes: keyboard"):
        load_config(_config_file(tmp_path, {"task": "multilabel", "thresholds": {"keyboard": 0.4}}, {}))


def test_leakage_on_a_multiclass_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_config_file(tmp_path, {}, {"leakage": {}}))
    assert f"'checks.leakage' {MSG_LEAKAGE_MULTICLASS}" in str(info.value)


def test_multilabel_settings_change_the_model_fingerprint(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    base = ModelConfig(arch="resnet18", checkpoint=tmp_path / "model.pt", classes=CLASSES, target_layer="layer4")
    multilabel = base.model_copy(update={"task": "multilabel"})
    stricter = multilabel.model_copy(update={"thresholds": 0.7})
    prints = {modelio.model_fingerprint(c) for c in (base, multilabel, stricter)}
    assert len(prints) == 3


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


def _rows(tmp_path: Path, n: int = 6) -> pd.DataFrame:
    scenes = make_scenes(n, SEED)
    rows = []
    for i, scene in enumerate(scenes):
        path = tmp_path / f"desk_{i}.png"
        Image.fromarray(scene.pixels).save(path)
        label = scene.drawn[0] if i % 2 else None  # the truth is the tags: a label is optional
        rows.append(
            {
                "image_id": f"d{i}",
                "image_uri": path.name,
                "image_path": str(path),
                "label": label,
                "tags": list(scene.drawn),
            }
        )
    return pd.DataFrame(rows)


def _model_config(**extra) -> ModelConfig:
    return ModelConfig.model_construct(
        arch="tiny",
        checkpoint=Path("unused.pt"),
        classes=CLASSES,
        target_layer="features",
        input_size=SIZE,
        mean=MEAN,
        std=STD,
        allow_scripted=False,
        task=extra.get("task", "multilabel"),
        thresholds=extra.get("thresholds", 0.5),
    )


def _score(model, rows, model_config):
    return score_images(
        model,
        rows,
        model_config=model_config,
        saliency_config=SaliencyConfig(device="cpu", num_workers=0),
        attributes=(),
        run_id="r1",
    )


def test_multilabel_scoring_predicts_the_classes_over_their_threshold(tmp_path, tiny):
    rows = _rows(tmp_path)
    config = _model_config(thresholds={"laptop": 0.3, "mouse": 0.6})
    images = _score(tiny, rows, config).images
    assert len(images) == len(rows)
    scores = np.stack(images["scores"].to_numpy())
    pixels = np.stack([np.array(Image.open(p).convert("RGB")) for p in rows["image_path"]])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        expected = torch.sigmoid(tiny((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)))
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-4)
    limits = np.array(config.threshold_list())
    for row, s in zip(images.itertuples(), scores, strict=True):
        assert list(row.predicted_labels) == [c for c, p, t in zip(CLASSES, s, limits, strict=True) if p > t]
        assert row.prediction == CLASSES[int(np.argmax(s))]
        assert row.confidence == pytest.approx(float(s.max()), abs=1e-6)
        truth = [c for c in CLASSES if c in set(row.tags)]
        assert row.correct == (list(row.predicted_labels) == truth)


def test_a_multilabel_row_without_label_explains_its_top_class(tmp_path, tiny):
    images = _score(tiny, _rows(tmp_path), _model_config()).images.set_index("image_id")
    unlabelled = images[images["label"].isna()]
    assert len(unlabelled) == 3  # kept, not rejected
    assert (unlabelled["target_class"] == unlabelled["prediction"]).all()
    labelled = images[images["label"].notna()]
    assert (labelled["target_class"] == labelled["label"]).all()


def test_multiclass_images_table_has_no_multilabel_columns(tmp_path, tiny):
    rows = _rows(tmp_path).assign(label=lambda f: f["tags"].map(lambda t: t[0]))
    images = _score(tiny, rows, _model_config(task="multiclass")).images
    assert "predicted_labels" not in images.columns and "scores" not in images.columns


def test_explain_classes_gives_the_cam_of_the_asked_class(tmp_path, tiny):
    """The leakage report's extra maps agree with the scoring stage's maps for the same target class."""
    rows = _rows(tmp_path, n=3)
    cams = explain_classes(
        tiny, rows, [1, 1, 2], model_config=_model_config(), saliency_config=SaliencyConfig(device="cpu")
    )
    assert cams["position"].tolist() == [0, 1, 2]
    images = _score(tiny, rows.assign(label=["mouse", "mouse", "cup"]), _model_config()).images
    for cam, expected in zip(cams["cam"], images["cam"], strict=True):
        np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# End to end: the generated desk world through run_audit
# ---------------------------------------------------------------------------------------------


def _audit(tmp_path: Path, biased: bool, checks: dict | None = None):
    model = train_multilabel(make_scenes(600, SEED, biased_labels=biased))
    world = write_audit_world(tmp_path, model, make_scenes(400, SEED + 1), checks=checks)
    return run_audit(load_config(world.config), "20260101T000000Z-desk01")


def test_biased_desk_model_fails_laptop_to_mouse_end_to_end(tmp_path):
    outcome = _audit(tmp_path, biased=True)
    assert not outcome.verdict.passed
    assert outcome.summary["failed_gates"] == ["leakage/laptop -> mouse/fp_rate_gap"]
    assert outcome.summary["checks"]["leakage"] == "ran"
    pairs = read_table(outcome.run_dir / "leakage.parquet")
    assert list(pairs.columns[:9]) == [
        "tag_a",
        "tag_b",
        "n_a_without_b",
        "fp_rate_with_a",
        "fp_rate_without_a",
        "gap",
        "ci_low",
        "ci_high",
        "flagged",
    ]  # the contract's columns, in its order
    story = pairs[(pairs["tag_a"] == "laptop") & (pairs["tag_b"] == "mouse")].iloc[0]
    assert story["flagged"] and story["ci_low"] > 0.10
    worst = read_table(outcome.run_dir / "leakage_images.parquet")
    assert len(worst) == LeakageCheck().worst_images and set(worst["tag_b"]) == {"mouse"}
    assert all(
        len(c) == h * w and np.asarray(c).max() > 0
        for c, h, w in zip(worst["cam"], worst["cam_height"], worst["cam_width"], strict=True)
    )
    assert all("laptop" in t and "mouse" not in t for t in worst["true_labels"])
    images = read_table(outcome.run_dir / "images.parquet")
    assert {"predicted_labels", "scores"} <= set(images.columns)
    html = Path(outcome.report_path).read_text(encoding="utf-8")
    assert 'id="leakage"' in html and "Prediction leakage" in html
    assert "laptop \u2192 mouse" in html and 'alt="Grad-CAM for mouse on desk_' in html


def test_fair_desk_model_passes_every_pair_end_to_end(tmp_path):
    checks = {"leakage": {}, "subgroups": {"attributes": ["room"], "metric": "f1", "n_bootstrap": 200}}
    outcome = _audit(tmp_path, biased=False, checks=checks)
    gates = read_table(outcome.run_dir / "gates.parquet")
    leakage = gates[gates["check"] == "leakage"]
    assert len(leakage) == 12 and leakage["passed"].all() and leakage["judged"].all()
    subgroups = read_table(outcome.run_dir / "subgroups.parquet")
    assert set(subgroups["metric"]) == {f"f1[{c}]" for c in CLASSES}
    assert set(subgroups[subgroups["attribute"] == "room"]["group"]) == {"home", "office"}
    assert outcome.verdict.passed, outcome.summary["failed_gates"]
    assert len(read_table(outcome.run_dir / "leakage_images.parquet")) == 0


# ---------------------------------------------------------------------------------------------
# Report section
# ---------------------------------------------------------------------------------------------


def test_report_has_no_leakage_section_for_a_multiclass_run(tmp_path):
    assert not sections.leakage(load_run(build_run(tmp_path)), thumb_size=64).shown


def test_report_says_leakage_was_skipped_for_a_multilabel_run_without_the_check(tmp_path):
    run = dataclasses.replace(load_run(build_run(tmp_path)), multilabel=True)
    view = sections.leakage(run, thumb_size=64)
    assert view.shown and "check not configured / skipped (no leakage.parquet" in view.skipped


# ---------------------------------------------------------------------------------------------
# Subgroup metrics of a multilabel model
# ---------------------------------------------------------------------------------------------


def _multilabel_predictions(n: int = 600, seed: int = 4) -> pd.DataFrame:
    """Random true sets; predictions that miss the mouse far more often in the `dark` group."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n, len(CLASSES))) < 0.4
    skin = np.where(rng.random(n) < 0.5, "dark", "light")
    predicted = truth ^ (rng.random((n, len(CLASSES))) < 0.05)
    mouse = CLASSES.index("mouse")
    predicted[:, mouse] &= ~((skin == "dark") & (rng.random(n) < 0.6))  # dark: most mice missed
    return pd.DataFrame(
        {
            "tags": [[c for c, t in zip(CLASSES, row, strict=True) if t] for row in truth],
            "predicted_labels": [[c for c, p in zip(CLASSES, row, strict=True) if p] for row in predicted],
            "skin": skin,
        }
    )


@pytest.mark.parametrize("metric", ["recall", "precision", "f1"])
def test_per_class_multilabel_metrics_match_fairlearn(metric):
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import f1_score, precision_score, recall_score

    from audit_tasks.config import SubgroupCheck
    from audit_tasks.subgroups import check_subgroups_multilabel

    frame = _multilabel_predictions()
    result = check_subgroups_multilabel(
        frame, check=SubgroupCheck(attributes=("skin",), metric=metric, n_bootstrap=200), classes=CLASSES
    )
    score = {"recall": recall_score, "precision": precision_score, "f1": f1_score}[metric]
    truth = np.array([[c in t for c in CLASSES] for t in frame["tags"]])
    predicted = np.array([[c in p for c in CLASSES] for p in frame["predicted_labels"]])
    for j, c in enumerate(CLASSES):
        peer = MetricFrame(metrics=score, y_true=truth[:, j], y_pred=predicted[:, j], sensitive_features=frame["skin"])
        ours = result.groups[result.groups["metric"] == f"{metric}[{c}]"].set_index("group")["value"]
        for group, value in peer.by_group.items():
            assert ours[group] == pytest.approx(value, abs=1e-12), (c, group)


def test_exact_match_and_hamming_accuracy_match_sklearn_with_wilson_intervals():
    from sklearn.metrics import accuracy_score, hamming_loss

    from audit_tasks.config import SubgroupCheck
    from audit_tasks.stats import wilson_interval
    from audit_tasks.subgroups import check_subgroups_multilabel

    frame = _multilabel_predictions()
    truth = np.array([[c in t for c in CLASSES] for t in frame["tags"]])
    predicted = np.array([[c in p for c in CLASSES] for p in frame["predicted_labels"]])
    for metric in ("exact_match", "hamming_accuracy"):
        check = SubgroupCheck(attributes=("skin",), metric=metric)
        groups = check_subgroups_multilabel(frame, check=check, classes=CLASSES).groups.set_index("group")
        for group in ("dark", "light"):
            mask = (frame["skin"] == group).to_numpy()
            if metric == "exact_match":
                expected, trials = accuracy_score(truth[mask], predicted[mask]), mask.sum()
            else:
                expected, trials = 1 - hamming_loss(truth[mask], predicted[mask]), mask.sum() * len(CLASSES)
            row = groups.loc[group]
            assert row["value"] == pytest.approx(expected, abs=1e-12) and row["n"] == trials
            low, high = wilson_interval(round(expected * trials), trials, check.confidence)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((float(low), float(high)), abs=1e-12)


def test_a_planted_per_class_gap_fails_its_class_gate_only():
    from audit_tasks.config import SubgroupCheck
    from audit_tasks.subgroups import check_subgroups_multilabel

    result = check_subgroups_multilabel(
        _multilabel_predictions(), check=SubgroupCheck(attributes=("skin",), metric="recall"), classes=CLASSES
    )
    failed = sorted(g.name for g in result.gates if not g.passed)
    assert failed == ["subgroups/skin=dark/recall[mouse]"]


def test_f1_gaps_use_bootstrap_intervals():
    from audit_tasks.config import SubgroupCheck
    from audit_tasks.subgroups import check_subgroups_multilabel

    check = SubgroupCheck(attributes=("skin",), metric="f1", n_bootstrap=300)
    result = check_subgroups_multilabel(_multilabel_predictions(), check=check, classes=CLASSES)
    mouse = result.groups[result.groups["metric"] == "f1[mouse]"].set_index("group")
    assert (mouse["ci_low"] < mouse["value"]).all() and (mouse["value"] < mouse["ci_high"]).all()
    assert [g.name for g in result.gates if not g.passed] == ["subgroups/skin=dark/f1[mouse]"]


@pytest.mark.parametrize(
    ("task", "metric", "message"),
    [
        (
            "multilabel",
            "macro_recall",
            "'checks.subgroups.metric' 'macro_recall' is not a metric of a multilabel model",
        ),
        ("multiclass", "exact_match", "'checks.subgroups.metric' 'exact_match' needs model.task: multilabel"),
    ],
)
def test_subgroup_metric_must_fit_the_task(tmp_path, task, metric, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_config_file(tmp_path, {"task": task}, {"subgroups": {"attributes": ["skin"], "metric": metric}}))


def _label_free_world(tmp_path: Path, task: str):
    """make_world's images and model, one manifest whose second row has no label and no label column at all
    in a second manifest: what `import coco --label none` writes."""
    from fixtures_pipeline import lenient_checks, make_world

    world = make_world(tmp_path, n_images=4, checks={"ingest": lenient_checks()["ingest"]})
    body = yaml.safe_load(world.config.read_text())
    body["model"]["task"] = task
    world.config.write_text(yaml.safe_dump(body))
    frame = pd.read_csv(world.manifest, dtype=str, keep_default_na=False)
    frame.loc[1, "label"] = ""
    frame.iloc[:2].to_csv(world.manifest, index=False)
    frame.iloc[2:].drop(columns=["label"]).to_csv(world.manifest.with_name("no_label_column.csv"), index=False)
    return load_config(world.config)


def test_a_multilabel_ingest_accepts_rows_without_a_label(tmp_path: Path) -> None:
    from audit_tasks.ingest import ingest

    result = ingest(_label_free_world(tmp_path, "multilabel"), "r1")
    assert len(result.accepted) == 4 and result.quarantined.empty


def test_a_multiclass_ingest_still_needs_a_label(tmp_path: Path) -> None:
    from audit_tasks.ingest import ingest

    result = ingest(_label_free_world(tmp_path, "multiclass"), "r1")
    assert len(result.accepted) == 1
    reasons = set(result.quarantined["reason"])
    assert "label is empty" in reasons and any("missing required column 'label'" in r for r in reasons)
