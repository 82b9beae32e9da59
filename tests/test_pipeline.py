"""The whole audit in one process: every table of the contract, accounting, verdicts, re-runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from audit_tasks.config import load_config
from audit_tasks.pipeline import run_audit
from audit_tasks.tables import read_table, table_metadata
from fixtures_pipeline import make_world, strict_ingest_checks

CONTRACT_FILES = ("images.parquet", "quarantine.parquet", "cooccurrence.parquet", "saliency_by_class.parquet",
                  "subgroups.parquet", "gates.parquet", "report.html", "summary.json")


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
    before = {n: read_table(outcome.run_dir / n) for n in ("images.parquet", "quarantine.parquet", "gates.parquet",
                                                            "subgroups.parquet", "cooccurrence.parquet")}
    run_audit(load_config(world.config), "night-1")
    for name, frame in before.items():
        pd.testing.assert_frame_equal(read_table(outcome.run_dir / name), frame, check_like=False)


def test_a_second_night_finds_no_new_manifest(lenient_run):
    world, _ = lenient_run
    outcome = run_audit(load_config(world.config), "night-2")
    assert outcome.summary["counts"]["ingested"] == 0
    assert outcome.summary["counts"]["manifests"] == 0


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
