"""dataset_audit and retrain_on_clean_audit end to end in real Airflow (`dag.test()`, SQLite metadata DB).

Each run audits its own tiny generated world (a dozen PNGs, a CSV manifest, a random resnet18), because
ingest consumes the landing area. The first `dag.test()` in a process pays Airflow's start-up (~15 s).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fixtures_pipeline import (
    assert_audit_tables_equal,
    audit_tables,
    forget_object_store,
    make_world,
    move_to_object_store,
)

pytestmark = pytest.mark.slow

PUBLISHED = "memory://published-audits"


class _FreshDags:
    """A freshly parsed DAG per lookup: `dag.test(run_conf=...)` leaves the conf in the DAG's params."""

    def __getitem__(self, dag_id: str):
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
        assert bag.import_errors == {}
        return bag.dags[dag_id]


@pytest.fixture(scope="module")
def dags(airflow_db):
    return _FreshDags()


def _task_states(run) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id).all()
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in rows}


def _shard_names(run) -> list[str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id="score_shard")
        return [ti.rendered_map_index for ti in sorted(rows, key=lambda ti: ti.map_index)]


def _asset_events(run) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter_by(source_dag_id=run.dag_id, source_run_id=run.run_id).all()
        return [dict(row.extra) for row in rows]


def _queued_consumers() -> set[str]:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        return {row.target_dag_id for row in session.query(AssetDagRunQueue).all()}


def _return_value(run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key="return_value")
            .one()
        )
        return XComModel.deserialize_value(row)


def _summary(world, run_id: str) -> dict:
    return json.loads((world.root / "reports" / run_id / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def red_run(dags, tmp_path_factory):
    """One bad manifest row, and the trigger form tightens the ingest threshold to zero."""
    world = make_world(tmp_path_factory.mktemp("red"), n_images=8, bad_rows=1)
    task_logs = io.StringIO()  # in-process task logs are printed to stdout; keep a copy to search
    try:
        with contextlib.redirect_stdout(task_logs):
            run = dags["dataset_audit"].test(
                run_conf={"config": str(world.config), "run_id": "red-1", "ingest_max_quarantine_fraction": 0.0}
            )
    finally:
        print(task_logs.getvalue())
    return world, run, task_logs.getvalue()


@pytest.fixture(scope="module")
def green_run(dags, tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("green"), n_images=8)
    os.environ["AIRFLOW__AUDIT__PUBLISH_URI"] = PUBLISHED  # also copy the finished run to "object storage"
    try:
        run = dags["dataset_audit"].test(run_conf={"config": str(world.config), "run_id": "green-1"})
    finally:
        del os.environ["AIRFLOW__AUDIT__PUBLISH_URI"]
    return world, run


def test_failed_gate_turns_the_run_red_with_a_report(red_run):
    world, run, _ = red_run
    states = _task_states(run)
    assert str(run.state) == "failed"
    assert states[("gate", -1)] == "failed"
    assert states[("report", -1)] == "success"
    summary = _summary(world, "red-1")
    assert summary["passed"] is False
    assert any(name.startswith("ingest/") for name in summary["failed_gates"])
    assert (world.root / "reports" / "red-1" / "report.html").is_file()


def test_red_gate_task_log_names_the_failed_gates_and_report(red_run):
    world, _, log_text = red_run
    summary = _summary(world, "red-1")
    assert "AirflowFailException: Audit red-1 FAILED: 1 gate(s) failed" in log_text
    for gate in summary["failed_gates"]:
        assert f"  - {gate}" in log_text
    assert f"Report: {world.root / 'reports' / 'red-1' / 'report.html'}" in log_text


def test_red_run_emits_no_asset_event(red_run):
    _, run, _ = red_run
    assert _asset_events(run) == []


def test_green_run_emits_the_asset_event_with_the_summary(green_run):
    world, run = green_run
    assert str(run.state) == "success"
    events = _asset_events(run)
    summary = _summary(world, "green-1")
    assert len(events) == 1
    assert events[0]["passed"] is True and events[0]["run_id"] == "green-1"
    assert events[0]["report"] == summary["report"] == str(world.root / "reports" / "green-1" / "report.html")
    assert "retrain_on_clean_audit" in _queued_consumers()


@pytest.fixture(scope="module")
def inconclusive_run(dags, green_run):
    """The green world audited again the next night: no new manifest, the same model, nothing to audit."""
    world, _ = green_run
    run = dags["dataset_audit"].test(run_conf={"config": str(world.config), "run_id": "green-again"})
    return world, run


def test_a_run_that_audited_nothing_skips_the_gate_and_emits_no_asset(inconclusive_run):
    world, run = inconclusive_run
    states = _task_states(run)
    summary = _summary(world, "green-again")
    assert summary["verdict"] == "inconclusive" and summary["passed"] is False
    assert states[("gate", -1)] == "skipped"
    assert states[("report", -1)] == "success"
    assert _asset_events(run) == []


def test_the_summary_names_the_dag_run_it_came_from(inconclusive_run):
    world, run = inconclusive_run
    assert _summary(world, "green-again")["airflow"] == {"dag_id": "dataset_audit", "dag_run_id": run.run_id}


def test_green_run_is_published_to_object_storage(green_run):
    from audit_airflow.storage import storage_root

    _, run = green_run
    published = storage_root(PUBLISHED) / "green-1"
    assert _asset_events(run)[0]["published_report"] == f"{PUBLISHED}/green-1/report.html"
    assert json.loads((published / "summary.json").read_text())["passed"] is True
    assert (published / "report.html").is_file() and (published / "images.parquet").is_file()
    assert not (published / "_stages").exists()


def test_retrain_dag_reads_the_audit_summary_from_the_event(dags, green_run):
    world, _ = green_run
    run = dags["retrain_on_clean_audit"].test()
    assert str(run.state) == "success"
    plan = _return_value(run, "train_model_placeholder")
    assert plan["audit_run_id"] == "green-1"
    assert plan["report"] == str(world.root / "reports" / "green-1" / "report.html")
    assert plan["counts"]["audited"] == 8


# ---------------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_and_single(dags, tmp_path_factory):
    """The same world audited twice: by Airflow over 3 mapped shards, and by run_audit in one process."""
    from audit_tasks.config import load_config
    from audit_tasks.pipeline import run_audit

    mapped_world = make_world(tmp_path_factory.mktemp("mapped"), n_images=12, bad_rows=1)
    single_root = tmp_path_factory.mktemp("single") / "world"
    shutil.copytree(mapped_world.root, single_root)
    run = dags["dataset_audit"].test(
        run_conf={"config": str(mapped_world.config), "run_id": "same-run", "shard_size": 4}
    )
    outcome = run_audit(load_config(single_root / "audit.yaml"), "same-run")
    return mapped_world.root, run, single_root, outcome


def _tables(root: Path | str, run_id: str = "same-run", folder=None) -> dict[str, pd.DataFrame]:
    return audit_tables(root, run_id, folder)


def test_mapped_run_uses_one_task_per_shard(sharded_and_single):
    _, run, _, _ = sharded_and_single
    states = _task_states(run)
    assert str(run.state) == "success"
    assert sorted(i for (task, i) in states if task == "score_shard") == [0, 1, 2]
    assert all(states[("score_shard", i)] == "success" for i in range(3))
    assert _shard_names(run) == ["shard 1 of 3", "shard 2 of 3", "shard 3 of 3"]


def test_mapped_run_equals_the_single_process_audit(sharded_and_single):
    mapped_root, _, single_root, _ = sharded_and_single
    assert_audit_tables_equal(_tables(mapped_root), _tables(single_root))


def test_rerunning_one_shard_leaves_the_tables_unchanged(sharded_and_single):
    """Shard 2 of 3 re-run by Airflow (`airflow tasks test ... --map-index 1`), then the reduce re-runs."""
    from audit_tasks import pipeline
    from audit_tasks.config import load_config

    mapped_root, run, _, _ = sharded_and_single
    before = _tables(mapped_root)
    part = mapped_root / "reports" / "same-run" / "_stages" / "images_shard-00001-of-00003.parquet"
    written = part.stat().st_mtime_ns
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow",
            "tasks",
            "test",
            "dataset_audit",
            "score_shard",
            run.run_id,
            "--map-index",
            "1",
        ],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert part.stat().st_mtime_ns > written  # the shard really ran again, into the same part
    config = load_config(mapped_root / "audit.yaml")
    pipeline.stage_merge_shards(config, "same-run", 3)
    pipeline.stage_subgroups(config, "same-run")
    pipeline.stage_gate(config, "same-run")
    after = _tables(mapped_root)
    assert after["images"]["image_id"].is_unique
    assert_audit_tables_equal(before, after)


# ---------------------------------------------------------------------------------------------
# object storage (memory:// stands in for s3:// through Airflow's ObjectStoragePath)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def object_store_and_local(dags, tmp_path_factory):
    """One world audited by Airflow over 2 shards with landing, images, catalog and reports on object storage,
    and by run_audit on local disk."""
    from audit_tasks.config import load_config
    from audit_tasks.pipeline import run_audit

    prefix = "airflow-lake"
    world = make_world(tmp_path_factory.mktemp("lake"), n_images=8, bad_rows=1)
    local_root = tmp_path_factory.mktemp("lake-local") / "world"
    shutil.copytree(world.root, local_root)
    remote_config = move_to_object_store(world, prefix)
    run = dags["dataset_audit"].test(run_conf={"config": str(remote_config), "run_id": "lake-1", "shard_size": 4})
    run_audit(load_config(local_root / "audit.yaml"), "lake-1")
    yield world, run, local_root, prefix
    forget_object_store(prefix)


def test_mapped_run_on_object_storage_equals_the_local_audit(object_store_and_local):
    from upath import UPath

    world, run, local_root, prefix = object_store_and_local
    assert str(run.state) == "success"
    remote = _tables(f"memory://{prefix}", folder=UPath(f"memory://{prefix}/reports/lake-1"))
    assert_audit_tables_equal(remote, _tables(local_root, "lake-1"))


def test_mapped_run_on_object_storage_reports_its_object_store_location(object_store_and_local):
    from upath import UPath

    _, run, _, prefix = object_store_and_local
    report = f"memory://{prefix}/reports/lake-1/report.html"
    assert _asset_events(run)[0]["report"] == report
    assert UPath(report).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert UPath(f"memory://{prefix}/catalog/_ledger.parquet").is_file()
