"""Tests of the run history index (runs.parquet): upsert, idempotence, ordering, previous-run lookup."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from audit_tasks import history
from audit_tasks.errors import AuditError
from audit_tasks.tables import table_metadata
from fixtures_report import build_run


def _summary(run_id: str, created_at: str, *, passed: bool = True, failed: tuple[str, ...] = ()) -> dict:
    return {
        "run_id": run_id,
        "passed": passed,
        "failed_gates": list(failed),
        "counts": {"ingested": 110, "quarantined": 10, "audited": 100, "shards": 4},
        "checks": {"saliency": "ran", "cooccurrence": "skipped"},
        "created_at": created_at,
    }


def test_record_run_writes_one_row_with_counts_and_headline(tmp_path):
    path = history.record_run(
        tmp_path,
        _summary("r1", "2026-11-24T02:00:00+00:00", passed=False, failed=("a/b/c",)),
        {"max_flagged_fraction": 0.4, "n_flagged_pairs": 3},
    )
    runs = history.read_runs(tmp_path)
    assert path == tmp_path / "runs.parquet"
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["run_id"] == "r1" and not row["passed"] and row["n_failed_gates"] == 1
    assert list(row["failed_gates"]) == ["a/b/c"]
    assert (row["n_ingested"], row["n_quarantined"], row["n_audited"]) == (110, 10, 100)
    assert json.loads(row["counts_json"])["shards"] == 4
    assert row["max_flagged_fraction"] == pytest.approx(0.4) and row["n_flagged_pairs"] == 3
    assert pd.isna(row["worst_subgroup_gap"])
    assert row["created_at"] == pd.Timestamp("2026-11-24T02:00:00Z")


def test_record_run_is_idempotent(tmp_path):
    summary = _summary("r1", "2026-11-24T02:00:00+00:00")
    history.record_run(tmp_path, summary, {"n_flagged_pairs": 1})
    first = (tmp_path / "runs.parquet").read_bytes()
    history.record_run(tmp_path, summary, {"n_flagged_pairs": 1})
    assert (tmp_path / "runs.parquet").read_bytes() == first
    assert len(history.read_runs(tmp_path)) == 1


def test_re_recording_a_run_replaces_its_row(tmp_path):
    history.record_run(tmp_path, _summary("r1", "2026-11-24T02:00:00+00:00"), {"n_flagged_pairs": 1})
    history.record_run(tmp_path, _summary("r2", "2026-11-25T02:00:00+00:00"), {})
    history.record_run(
        tmp_path, _summary("r1", "2026-11-24T02:00:00+00:00", passed=False, failed=("x",)), {"n_flagged_pairs": 5}
    )
    runs = history.read_runs(tmp_path)
    assert list(runs["run_id"]) == ["r1", "r2"]
    assert runs.set_index("run_id").loc["r1", "n_flagged_pairs"] == 5
    assert not runs.set_index("run_id").loc["r1", "passed"]


def test_runs_are_ordered_by_creation_time(tmp_path):
    history.record_run(tmp_path, _summary("zeta", "2026-11-23T02:00:00+00:00"), {})
    history.record_run(tmp_path, _summary("alpha", "2026-11-25T02:00:00+00:00"), {})
    history.record_run(tmp_path, _summary("mid", "2026-11-24T03:00:00+01:00"), {})
    assert list(history.read_runs(tmp_path)["run_id"]) == ["zeta", "mid", "alpha"]


def test_runs_file_carries_schema_version_and_units(tmp_path):
    history.record_run(tmp_path, _summary("r1", "2026-11-24T02:00:00+00:00"), {})
    path = tmp_path / "runs.parquet"
    assert table_metadata(path) == {"schema_version": "1", "table": "runs"}
    schema = pq.read_schema(path)
    assert schema.field("max_flagged_fraction").metadata[b"unit"] == b"fraction"
    assert schema.field("run_id").nullable is False


def test_read_runs_without_history_is_empty_with_columns(tmp_path):
    runs = history.read_runs(tmp_path)
    assert len(runs) == 0 and "run_id" in runs.columns and "worst_subgroup_gap" in runs.columns


def test_record_run_rejects_unknown_headline_metric(tmp_path):
    with pytest.raises(AuditError, match="unknown headline metric"):
        history.record_run(tmp_path, _summary("r1", "2026-11-24T02:00:00+00:00"), {"accuracy": 0.9})


def test_record_run_requires_run_id(tmp_path):
    with pytest.raises(AuditError, match="run_id"):
        history.record_run(tmp_path, {"passed": True}, {})


def test_previous_run_is_the_one_recorded_just_before(tmp_path):
    for run_id, when in (
        ("a", "2026-11-23T02:00:00+00:00"),
        ("b", "2026-11-24T02:00:00+00:00"),
        ("c", "2026-11-25T02:00:00+00:00"),
    ):
        history.record_run(tmp_path, _summary(run_id, when), {})
    assert history.previous_run(tmp_path, "c") == "b"
    assert history.previous_run(tmp_path, "b") == "a"
    assert history.previous_run(tmp_path, "a") is None


def test_previous_run_of_an_unrecorded_run_uses_its_time(tmp_path):
    history.record_run(tmp_path, _summary("a", "2026-11-23T02:00:00+00:00"), {})
    history.record_run(tmp_path, _summary("c", "2026-11-25T02:00:00+00:00"), {})
    assert history.previous_run(tmp_path, "b", created_at="2026-11-24T02:00:00Z") == "a"
    assert history.previous_run(tmp_path, "b") == "c"


def test_previous_run_without_history_is_none(tmp_path):
    assert history.previous_run(tmp_path, "anything") is None


def test_headline_metrics_from_a_run_folder(tmp_path):
    run_dir = build_run(tmp_path)
    headline = history.read_headline(run_dir)
    assert headline["n_flagged_pairs"] == 2
    assert 0 < headline["max_flagged_fraction"] <= 1
    subgroups = pd.read_parquet(run_dir / "subgroups.parquet")
    judged = subgroups[subgroups["status"] != "too small to judge"]
    assert headline["worst_subgroup_gap"] == pytest.approx(judged["gap"].max())
    assert headline["n_flagged_groups"] == int(subgroups["flagged"].sum())


def test_headline_metrics_of_skipped_checks_are_none(tmp_path):
    run_dir = build_run(tmp_path, skip=("cooccurrence", "subgroups", "saliency_by_class"))
    assert set(history.read_headline(run_dir).values()) == {None}


def test_record_run_accepts_headline_aliases(tmp_path):
    history.record_run(
        tmp_path, _summary("r1", "2026-11-24T02:00:00+00:00"), {"max_subgroup_gap": 0.12, "flagged_pairs": 3.0}
    )
    row = history.read_runs(tmp_path).iloc[0]
    assert row["worst_subgroup_gap"] == pytest.approx(0.12) and row["n_flagged_pairs"] == 3
