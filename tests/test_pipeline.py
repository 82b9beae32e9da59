"""The whole audit in one process: every table of the contract, accounting, verdicts, re-runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from audit_tasks.config import load_config
from audit_tasks.pipeline import run_audit
from audit_tasks.tables import read_table, table_metadata
from fixtures_pipeline import make_world, strict_ingest_checks

CONTRACT_FILES = (
    "images.parquet",
    "quarantine.parquet",
    "cooccurrence.parquet",
    "saliency_by_class.parquet",
    "subgroups.parquet",
    "gates.parquet",
    "report.html",
    "summary.json",
)


@pytest.fixture(scope="module")
def lenient_run(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("lenient"), n_images=12, bad_rows=1)
    outcome = run_audit(load_config(world.config), "night-1")
    return world, outcome


def test_audit_writes_every_contract_file(lenient_run):
    _, outcome = lenient_run
    for name in CONTRACT_FILES:
        assert (outcome.run_dir / name).is_file(), name


def test_every_input_row_is_audited_or_quarantined_exactly_once(lenient_run):
    world, outcome = lenient_run
    images = read_table(outcome.run_dir / "images.parquet")
    quarantine = read_table(outcome.run_dir / "quarantine.parquet")
    assert len(images) + len(quarantine) == world.rows
    assert quarantine["reason"].str.len().gt(0).all()
    assert set(images["image_uri"]).isdisjoint(set(quarantine["image_uri"]))


def test_lenient_thresholds_pass_and_summary_says_so(lenient_run):
    _, outcome = lenient_run
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert outcome.verdict.passed and summary["passed"] is True and summary["failed_gates"] == []
    assert summary["counts"]["audited"] == 12 and summary["counts"]["quarantined"] == 1


def test_images_table_keeps_predictions_shares_and_native_cams(lenient_run):
    _, outcome = lenient_run
    images = read_table(outcome.run_dir / "images.parquet")
    assert set(images["prediction"]) <= {"doctor", "nurse"}
    assert images["confidence"].between(0, 1).all()
    shares = images[["core_share", "spurious_share", "outside_share"]].sum(axis=1)
    assert ((shares - 1).abs() < 1e-4).all()
    assert (images["cam"].map(len) == images["cam_height"] * images["cam_width"]).all()


def test_tables_carry_the_schema_version(lenient_run):
    _, outcome = lenient_run
    assert table_metadata(outcome.run_dir / "gates.parquet")["schema_version"] == "1"


def test_rerunning_a_run_id_gives_identical_tables(lenient_run):
    world, outcome = lenient_run
    before = {
        n: read_table(outcome.run_dir / n)
        for n in ("images.parquet", "quarantine.parquet", "gates.parquet", "subgroups.parquet", "cooccurrence.parquet")
    }
    run_audit(load_config(world.config), "night-1")
    for name, frame in before.items():
        pd.testing.assert_frame_equal(read_table(outcome.run_dir / name), frame, check_like=False)


def test_a_second_night_finds_no_new_manifest(lenient_run):
    world, _ = lenient_run
    outcome = run_audit(load_config(world.config), "night-2")
    assert outcome.summary["counts"]["ingested"] == 0
    assert outcome.summary["counts"]["manifests"] == 0


def test_a_night_that_audited_nothing_is_inconclusive_never_passed(lenient_run):
    world, _ = lenient_run
    outcome = run_audit(load_config(world.config), "night-empty")
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert outcome.verdict.status == "inconclusive" and not outcome.verdict.passed
    assert summary["passed"] is False and summary["verdict"] == "inconclusive"
    assert summary["counts"]["audited"] == 0
    assert "0 image(s) audited" in summary["inconclusive_reason"]
    assert summary["checks"]["saliency"] != "ran"
    assert "INCONCLUSIVE" in (outcome.run_dir / "report.html").read_text()


def test_a_new_checkpoint_with_no_new_data_audits_the_whole_catalog(tmp_path):
    import torch
    import torchvision

    world = make_world(tmp_path, n_images=6)
    config = load_config(world.config)
    first = run_audit(config, "model-a")
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), tmp_path / "model.pt")
    second = run_audit(config, "model-b")
    assert first.summary["model_fingerprint"] != second.summary["model_fingerprint"]
    assert second.summary["counts"]["ingested"] == 0
    assert second.summary["audit_scope"] == "catalog" and "model changed" in second.summary["audit_scope_reason"]
    assert second.summary["counts"]["audited"] == 6 and second.verdict.passed
    third = run_audit(config, "model-b-again")  # same model, still nothing new: nothing to audit
    assert third.summary["audit_scope"] == "run" and third.verdict.status == "inconclusive"


def test_a_run_where_every_check_is_too_few_to_judge_is_inconclusive(tmp_path):
    world = make_world(
        tmp_path, n_images=4, checks={"saliency": {"min_images": 100}, "subgroups": {"attributes": ["gender"]}}
    )
    outcome = run_audit(load_config(world.config), "thin")
    assert outcome.verdict.status == "inconclusive"
    assert outcome.summary["checks"] == {
        "ingest": "skipped",
        "cooccurrence": "skipped",
        "saliency": "too few to judge",
        "subgroups": "too few to judge",
        "strategies": "skipped",
        "rarity": "skipped",
    }
    assert "too little data" in outcome.summary["inconclusive_reason"]


def test_min_audited_sets_the_floor_of_images_for_a_verdict(tmp_path):
    world = make_world(tmp_path, n_images=4, checks={"saliency": {"min_images": 1}, "min_audited": 5})
    outcome = run_audit(load_config(world.config), "below-floor")
    assert outcome.verdict.status == "inconclusive"
    assert "at least 5 needed" in outcome.verdict.reason


def test_a_failed_gate_fails_the_run_even_when_little_was_audited(tmp_path):
    world = make_world(tmp_path, n_images=2, bad_rows=2, checks=strict_ingest_checks() | {"min_audited": 50})
    outcome = run_audit(load_config(world.config), "red-and-thin")
    assert outcome.verdict.status == "failed"


def test_a_crossed_threshold_fails_the_verdict_and_names_the_gate(tmp_path):
    world = make_world(tmp_path, n_images=6, bad_rows=1, checks=strict_ingest_checks())
    outcome = run_audit(load_config(world.config), "red")
    assert not outcome.verdict.passed
    assert any(name.startswith("ingest/") for name in outcome.verdict.failed_names)
    assert (outcome.run_dir / "report.html").is_file()


def test_skipped_checks_write_no_tables_and_summary_says_skipped(tmp_path):
    world = make_world(tmp_path, n_images=4, checks={"saliency": {"min_images": 1}})
    outcome = run_audit(load_config(world.config), "only-saliency")
    assert not (outcome.run_dir / "subgroups.parquet").exists()
    assert outcome.summary["checks"]["subgroups"] == "skipped"
    assert outcome.summary["checks"]["saliency"] == "ran"


def test_pair_stage_measures_a_configured_pair_on_the_merged_images(lenient_run):
    from audit_tasks.pipeline import collect_gates, stage_saliency_pairs
    from fixtures_pipeline import CLASSES

    world, outcome = lenient_run
    config = load_config(world.config)
    saliency = config.checks.saliency.model_copy(update={"pairs": (f"{CLASSES[0]} -> patch",)})
    config = config.model_copy(update={"checks": config.checks.model_copy(update={"saliency": saliency})})
    stage_saliency_pairs(config, outcome.run_id)
    pairs = read_table(outcome.run_dir / "saliency_pairs.parquet")
    assert pairs[["class", "region", "images"]].values.tolist() == [[CLASSES[0], "patch", 6]]
    assert 0 <= pairs["mean_share"].iloc[0] <= 1
    subjects = [g.subject for g in collect_gates(config, outcome.run_id) if g.check == "saliency"]
    assert f"{CLASSES[0]} on patch" in subjects
