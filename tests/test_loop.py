"""Closing the loop: the clean-audit event names the weights, training resamples by them, the demo loop runs.

`checks.rarity` writes `sample_weights.parquet`; these tests write such a file themselves (the contract's
columns: `image_id`, `weight` with mean 1, `rarity_weight`, `pair_weight`), so they hold with or without it.
No test asserts a trained figure: weights differ between CPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audit_tasks.config import load_config
from audit_tasks.demo.build import SCALES, build_batch, write_config
from audit_tasks.demo.loop import format_table, gate_table, red_run_weights
from audit_tasks.demo.retrain import (
    join_weights,
    read_sample_weights,
    retrain_with_weights,
    spec_for,
)
from audit_tasks.demo.train import TrainSpec, build_model, epoch_order
from audit_tasks.demo.world import CLASSES, SplitSpec, WorldSpec
from audit_tasks.errors import AuditError
from audit_tasks.sample_weights import WEIGHTS_FILE


def write_weights(path: Path, image_ids, weights) -> Path:
    """A sample_weights.parquet as checks.rarity writes it (mean 1 over the images)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.mean()
    pd.DataFrame(
        {"image_id": [str(i) for i in image_ids], "weight": w, "rarity_weight": w, "pair_weight": np.ones_like(w)}
    ).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory):
    """A 24-image demo batch ingested into a catalog; returns (config path, image ids in catalog order)."""
    from audit_tasks.pipeline import stage_ingest

    root = tmp_path_factory.mktemp("tiny")
    build_batch(root / "tiny", SplitSpec("tiny", 24, p_dark=0.5), WorldSpec())
    (root / "models").mkdir()
    torch.save(build_model("resnet18").state_dict(), root / "models" / "untrained.pt")
    path = write_config(root, "tiny", SCALES["small"], checkpoint="models/untrained.pt", about="a test")
    config = load_config(path)
    stage_ingest(config, "ingest-1")
    from audit_tasks.catalog import read_catalog

    ids = tuple(read_catalog(config.require_dataset().catalog)["image_id"])
    assert len(ids) == 24
    return path, ids


# --------------------------------------------------------------------------------------------- sampler


def test_epoch_order_without_weights_is_a_permutation():
    order = epoch_order(np.random.default_rng(0), 50)
    assert sorted(order) == list(range(50))


def test_epoch_order_draws_heavier_rows_more_often_and_zero_weight_rows_never():
    weights = np.ones(100)
    weights[:10] = 10.0
    weights[-10:] = 0.0
    counts = np.bincount(
        np.concatenate([epoch_order(np.random.default_rng(s), 100, weights) for s in range(20)]), minlength=100
    )
    assert counts[:10].mean() > 5 * counts[10:90].mean()
    assert counts[-10:].sum() == 0


@pytest.mark.parametrize("weights", [np.zeros(5), np.array([1, 1, np.nan, 1, 1.0]), np.ones(4)])
def test_epoch_order_refuses_unusable_weights(weights):
    with pytest.raises(ValueError, match="one finite weight per image"):
        epoch_order(np.random.default_rng(0), 5, weights)


# --------------------------------------------------------------------------------------------- weights file


def test_read_sample_weights_keeps_id_and_weight(tmp_path):
    frame = read_sample_weights(write_weights(tmp_path / WEIGHTS_FILE, [1, 2, 3], [1, 2, 3]))
    assert list(frame.columns) == ["image_id", "weight"]
    assert frame["image_id"].tolist() == ["1", "2", "3"]
    assert frame["weight"].mean() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"image_id": ["a"], "w": [1.0]}), "cannot read sample weights"),
        (pd.DataFrame({"image_id": ["a", "b"], "weight": [1.0, -1.0]}), "non-negative"),
        (pd.DataFrame({"image_id": ["a", "a"], "weight": [1.0, 1.0]}), "appears twice"),
    ],
)
def test_read_sample_weights_names_the_file_when_unusable(tmp_path, frame, message):
    path = tmp_path / WEIGHTS_FILE
    frame.to_parquet(path)
    with pytest.raises(AuditError, match=message) as err:
        read_sample_weights(path)
    assert str(path) in str(err.value)


def test_join_weights_keeps_weighted_catalog_rows_with_class_indices():
    catalog = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "image_uri": ["a.png", "b.png", "c.png"], "label": ["wolf", "husky", "wolf"]}
    )
    weights = pd.DataFrame({"image_id": ["c", "a", "z"], "weight": [2.0, 0.5, 1.0]})
    joined = join_weights(catalog, weights, CLASSES)
    assert joined.image_ids == ("a", "c")
    assert joined.labels.tolist() == [CLASSES.index("wolf")] * 2
    assert joined.weights.tolist() == [0.5, 2.0]
    assert joined.n_catalog == 3


def test_join_weights_refuses_weights_of_another_catalog():
    catalog = pd.DataFrame({"image_id": ["a"], "image_uri": ["a.png"], "label": ["wolf"]})
    with pytest.raises(AuditError, match="another catalog"):
        join_weights(catalog, pd.DataFrame({"image_id": ["z"], "weight": [1.0]}), CLASSES)


# --------------------------------------------------------------------------------------------- training


def test_retrain_with_weights_trains_a_new_checkpoint_and_caches_it(tiny_catalog, tmp_path):
    config_path, ids = tiny_catalog
    config = load_config(config_path)
    weights = write_weights(tmp_path / WEIGHTS_FILE, ids, np.linspace(0.2, 3.0, len(ids)))
    spec = TrainSpec(epochs=1, batch_size=8, seed=3)
    result = retrain_with_weights(config, weights, tmp_path / "model.pt", spec)
    assert not result.cached and result.checkpoint.is_file()
    state = torch.load(result.checkpoint, weights_only=True)
    torch.manual_seed(spec.seed)
    untrained = build_model(spec.arch).state_dict()
    assert not torch.equal(state["fc.weight"], untrained["fc.weight"])  # it really trained
    assert json.loads(result.checkpoint.with_suffix(".pt.json").read_text())["n_images"] == len(ids)
    assert retrain_with_weights(config, weights, tmp_path / "model.pt", spec).cached
    write_weights(weights, ids, np.linspace(3.0, 0.2, len(ids)))  # other weights: another fingerprint
    assert not retrain_with_weights(config, weights, tmp_path / "model.pt", spec).cached


def test_spec_for_takes_the_models_arch_and_normalisation(tiny_catalog):
    config = load_config(tiny_catalog[0])
    spec = spec_for(config, epochs=3, seed=5)
    assert (spec.arch, spec.epochs, spec.seed) == ("resnet18", 3, 5)
    assert spec.mean == config.require_model().mean


# --------------------------------------------------------------------------------------------- airflow


def test_clean_event_extra_names_the_weights_only_when_the_run_wrote_them(tmp_path):
    from audit_airflow.tasks import SAMPLE_WEIGHTS_KEY, clean_event_extra

    summary = {"run_id": "r1", "passed": True}
    without = clean_event_extra(summary, "/r/report.html", None, tmp_path)
    assert SAMPLE_WEIGHTS_KEY not in without and without["report"] == "/r/report.html"
    write_weights(tmp_path / WEIGHTS_FILE, ["a"], [1.0])
    extra = clean_event_extra(summary, "/r/report.html", None, tmp_path)
    assert extra[SAMPLE_WEIGHTS_KEY] == str(tmp_path / WEIGHTS_FILE)
    assert extra["run_id"] == "r1"


def _task_context(monkeypatch, **params):
    from audit_airflow import tasks

    defaults = {
        "config": "",
        "example_training": False,
        "sample_weights": None,
        "checkpoint": None,
        "epochs": 1,
        "seed": 0,
    }
    monkeypatch.setattr(tasks, "get_current_context", lambda: {"params": {**defaults, **params}})


def test_example_training_task_skips_unless_asked(monkeypatch):
    from audit_airflow import compat, tasks

    _task_context(monkeypatch)
    with pytest.raises(compat.AirflowSkipException, match="example_training"):
        tasks.train_demo_model_with_weights({"sample_weights_uri": "w.parquet"})
    _task_context(monkeypatch, example_training=True)
    with pytest.raises(compat.AirflowSkipException, match="checks.rarity"):
        tasks.train_demo_model_with_weights({"run_id": "r1"})


def test_example_training_task_trains_with_the_events_weights(monkeypatch, tiny_catalog, tmp_path):
    from audit_airflow import tasks

    config_path, ids = tiny_catalog
    weights = write_weights(tmp_path / WEIGHTS_FILE, ids, np.ones(len(ids)))
    _task_context(monkeypatch, config=str(config_path), example_training=True, checkpoint=str(tmp_path / "m.pt"))
    path = tasks.train_demo_model_with_weights({"run_id": "r1", tasks.SAMPLE_WEIGHTS_KEY: str(weights)})
    assert Path(path) == tmp_path / "m.pt" and Path(path).is_file()


def test_example_training_task_fails_without_retry_on_foreign_weights(monkeypatch, tiny_catalog, tmp_path):
    from audit_airflow import compat, tasks

    weights = write_weights(tmp_path / WEIGHTS_FILE, ["not-in-the-catalog"], [1.0])
    _task_context(
        monkeypatch,
        config=str(tiny_catalog[0]),
        example_training=True,
        sample_weights=str(weights),
        checkpoint=str(tmp_path / "m.pt"),
    )
    with pytest.raises(compat.AirflowFailException, match="another catalog"):
        tasks.train_demo_model_with_weights({"run_id": "r1"})


# --------------------------------------------------------------------------------------------- the loop


def test_red_run_weights_says_why_when_the_audit_wrote_none(tmp_path):
    with pytest.raises(AuditError, match="rarity"):
        red_run_weights(tmp_path)
    write_weights(tmp_path / WEIGHTS_FILE, ["a"], [1.0])
    assert red_run_weights(tmp_path) == tmp_path / WEIGHTS_FILE


def test_gate_table_lists_gates_failed_in_any_audit():
    def gates(rows):
        return pd.DataFrame(rows, columns=["check", "subject", "metric", "value", "threshold", "passed"])

    before = gates(
        [
            ("saliency", "wolf", "flagged_fraction", 0.5, 0.25, False),
            ("saliency", "husky", "flagged_fraction", 0.0, 0.25, True),
            ("subgroups", "fur_tone=dark", "accuracy", 0.2, 0.05, False),
            ("ingest", "all manifests", "quarantine_fraction", 0.0, 0.1, True),
        ]
    )
    after = gates(
        [
            ("saliency", "wolf", "flagged_fraction", 0.1, 0.25, True),
            ("saliency", "husky", "flagged_fraction", 0.3, 0.25, False),
            ("ingest", "all manifests", "quarantine_fraction", 0.0, 0.1, True),
        ]
    )
    rows = {r.name: r for r in gate_table([before, after])}
    assert list(rows) == [
        "saliency/wolf/flagged_fraction",
        "saliency/husky/flagged_fraction",
        "subgroups/fur_tone=dark/accuracy",
    ]
    assert rows["saliency/wolf/flagged_fraction"].values == (0.5, 0.1)
    assert rows["saliency/wolf/flagged_fraction"].passed == (False, True)
    assert rows["subgroups/fur_tone=dark/accuracy"].passed == (False, None)  # not in the second audit
    assert "0.500 FAIL" in format_table(list(rows.values()), ("before", "after"))


@pytest.mark.slow
def test_demo_loop_audits_retrains_and_audits_again_at_small_scale(tmp_path, capsys):
    """The whole loop in process, with a weights file of our own (minutes: it trains the demo's models)."""
    from audit_tasks.demo.build import build_demo
    from audit_tasks.demo.loop import AFTER_RUN, BEFORE_RUN, prepare_loop, run_loop
    from audit_tasks.history import RUNS_FILE

    build = build_demo(tmp_path, scale="small")
    prepare_loop(build, scale="small")
    landed = pd.read_csv(next((tmp_path / "loop" / "landing").glob("*.csv")))
    rare = landed["tags"].fillna("").str.contains("snow") != (landed["label"] == "wolf")
    weights = write_weights(tmp_path / WEIGHTS_FILE, landed["image_id"], np.where(rare, 5.0, 1.0))

    result = run_loop(tmp_path, use_airflow=False, scale="small", weights=weights)

    assert not result.before_passed  # the loop starts from a red audit
    assert result.checkpoint == tmp_path / "models" / "loop-retrained.pt" and result.checkpoint.is_file()
    history = pd.read_parquet(tmp_path / "reports" / RUNS_FILE)
    assert set(result.audits) <= set(history["run_id"])  # before and after are both in the history
    assert result.on_training_data and result.on_heldout
    assert all(len(row.values) == 3 for row in result.on_heldout)
    printed = capsys.readouterr().out
    assert BEFORE_RUN in printed and AFTER_RUN in printed and "hand-built" in printed
