"""The audit on Airflow's CeleryExecutor, as processes: Postgres, Redis, api-server, scheduler, dag-processor,
a default worker and a `gpu` worker (tests/cluster.py). Audits are triggered through the REST API on copies
of the small demo world, with the biased and the debiased model, and each run has a fault injected while a
shard is scoring: the gpu worker killed with -9, the scheduler killed with -9, Postgres down for seconds.
Every run must end as the same world audited by `run_audit` in one process ends, table for table.

Skips, saying why, where Postgres, Redis or the Celery provider cannot be installed (as the browser tests
skip without chromium). Run alone with `make distributed`; the figures it prints are in bench/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster import ClusterUnavailable, LocalCeleryCluster, require_services
from fixtures_pipeline import assert_audit_tables_equal, audit_tables
from fixtures_worlds import copy_small_demo

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

#: 600 demo images in shards of 200: three mapped score_shard tasks per audit.
SHARD_SIZE = 200
POSTGRES_OUTAGE_S = 6.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _at(stamp: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


@dataclass
class Audit:
    """One audit triggered on the cluster: where its world is, what Airflow recorded, what the fault was."""

    name: str
    root: Path
    run_id: str
    dag_run: dict[str, Any]
    task_instances: list[dict[str, Any]]
    fault_at: dt.datetime
    fault_ended: dt.datetime
    restarted: list[str]  # components the watchdog restarted during the run, with their exit codes

    def instances(self, task_id: str) -> list[dict[str, Any]]:
        return [ti for ti in self.task_instances if ti["task_id"] == task_id]

    @property
    def retried(self) -> list[dict[str, Any]]:
        return [ti for ti in self.task_instances if ti["try_number"] > 1]

    @property
    def resumed_s(self) -> float | None:
        """From the end of the fault to the first task the cluster started after it."""
        starts = [s for s in (_at(ti["start_date"]) for ti in self.task_instances) if s and s > self.fault_ended]
        return (min(starts) - self.fault_ended).total_seconds() if starts else None

    @property
    def retried_done_s(self) -> float | None:
        """From the fault to the end of the last task that had to run again because of it."""
        ends = [_at(ti["end_date"]) for ti in self.retried]
        return (max(e for e in ends if e) - self.fault_at).total_seconds() if any(ends) else None

    def describe(self) -> str:
        took = (_at(self.dag_run["end_date"]) - _at(self.dag_run["start_date"])).total_seconds()  # type: ignore[operator]
        retried = ", ".join(f"{ti['task_id']}[{ti['map_index']}] try {ti['try_number']}" for ti in self.retried)
        return (
            f"{self.name}: run {self.dag_run['state']} in {took:.0f} s; "
            f"fault {(self.fault_ended - self.fault_at).total_seconds():.1f} s; "
            f"restarted: {', '.join(self.restarted) or 'none'}; retried: {retried or 'none'}; "
            f"first task started {_seconds(self.resumed_s)} after the fault ended; "
            f"retried tasks done {_seconds(self.retried_done_s)} after the fault began"
        )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        require_services()
    except ClusterUnavailable as exc:
        pytest.skip(f"no local CeleryExecutor cluster: {exc}")
    with LocalCeleryCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def worlds(small_demo_source, tmp_path_factory):
    """A fresh copy of the demo per audit: ingest consumes the landing area and fills the catalog."""

    def make(name: str) -> Path:
        return copy_small_demo(small_demo_source, tmp_path_factory.mktemp(name) / "demo").root

    return make


@pytest.fixture(scope="module")
def single_process(worlds):
    """The same worlds audited by `run_audit` in this process, the reference every cluster run must equal."""
    from audit_tasks.config import load_config
    from audit_tasks.pipeline import run_audit

    roots = {}
    for model in ("biased", "debiased"):
        roots[model] = worlds(f"single-{model}")
        run_audit(load_config(roots[model] / f"{model}.yaml"), model)
    return roots


def _audit_with_fault(cluster: LocalCeleryCluster, root: Path, model: str, name: str, fault) -> Audit:
    """Trigger dataset_audit on `root`'s `model` config, inject `fault` once a shard is scoring, wait for the end."""
    run_id = f"{name}-{model}"
    cluster.trigger(
        "dataset_audit", run_id, {"config": str(root / f"{model}.yaml"), "run_id": model, "shard_size": SHARD_SIZE}
    )
    cluster.wait_for_task("dataset_audit", run_id, "score_shard", "running")
    time.sleep(3)  # into the shard's scoring, past its start-up
    restarts_before = len(cluster.restarts)
    fault_at = _now()
    fault()
    fault_ended = _now()
    dag_run = cluster.wait_for_run("dataset_audit", run_id, timeout_s=1200)
    restarted = [f"{r.component} (exit {r.exit_code})" for r in cluster.restarts[restarts_before:]]
    instances = cluster.task_instances("dataset_audit", run_id)
    audit = Audit(name, root, run_id, dag_run, instances, fault_at, fault_ended, restarted)
    print(f"[distributed] {audit.describe()}")
    return audit


@pytest.fixture(scope="module")
def gpu_worker_killed(cluster, worlds, single_process) -> Audit:
    """The biased model's audit, with the gpu worker and its running shard killed with -9 mid-shard."""
    root = worlds("killed-gpu-worker")
    return _audit_with_fault(cluster, root, "biased", "gpu-worker-killed", lambda: cluster.kill("worker-gpu"))


@pytest.fixture(scope="module")
def scheduler_restarted(cluster, worlds, single_process, gpu_worker_killed) -> Audit:
    """The debiased model's audit, with the scheduler killed with -9 mid-shard (the watchdog restarts it)."""
    root = worlds("restarted-scheduler")
    return _audit_with_fault(cluster, root, "debiased", "scheduler-restarted", lambda: cluster.kill("scheduler"))


@pytest.fixture(scope="module")
def postgres_outage(cluster, worlds, single_process, scheduler_restarted) -> Audit:
    """The debiased model's audit again, with Postgres refusing connections for a few seconds mid-shard."""

    def outage() -> None:
        with cluster.postgres_down():
            time.sleep(POSTGRES_OUTAGE_S)

    root = worlds("postgres-outage")
    return _audit_with_fault(cluster, root, "debiased", "postgres-outage", outage)


# ---------------------------------------------------------------------------------------------
# where the tasks ran
# ---------------------------------------------------------------------------------------------


def test_shards_run_on_the_gpu_worker_and_every_other_task_on_the_default_one(scheduler_restarted):
    shards = scheduler_restarted.instances("score_shard")
    assert sorted(ti["map_index"] for ti in shards) == [0, 1, 2]
    assert {(ti["hostname"], ti["queue"], ti["pool"]) for ti in shards} == {("worker-gpu", "gpu", "gpu")}
    others = [ti for ti in scheduler_restarted.task_instances if ti["task_id"] != "score_shard"]
    assert others and {(ti["hostname"], ti["queue"]) for ti in others} == {("worker-default", "default")}


# ---------------------------------------------------------------------------------------------
# the verdicts, the asset event, retraining
# ---------------------------------------------------------------------------------------------


def test_the_biased_audit_is_red_and_emits_no_clean_audit_event(cluster, gpu_worker_killed):
    assert gpu_worker_killed.dag_run["state"] == "failed"
    (gate,) = gpu_worker_killed.instances("gate")
    assert gate["state"] == "failed"  # the gate failed it, not a lost task: every stage before it succeeded
    assert all(ti["state"] == "success" for ti in gpu_worker_killed.task_instances if ti["task_id"] != "gate")
    assert cluster.asset_events("dataset_audit", gpu_worker_killed.run_id) == []


def test_the_debiased_audit_is_green_and_its_event_carries_the_summary(cluster, scheduler_restarted):
    assert scheduler_restarted.dag_run["state"] == "success"
    (event,) = cluster.asset_events("dataset_audit", scheduler_restarted.run_id)
    assert event["extra"]["run_id"] == "debiased" and event["extra"]["passed"] is True


def test_retraining_runs_once_per_clean_audit_and_never_after_the_red_one(
    cluster, gpu_worker_killed, scheduler_restarted, postgres_outage
):
    # the Postgres-outage run may also end failed, clearly; then it is no clean audit
    green = [a.run_id for a in (postgres_outage,) if a.dag_run["state"] == "success"]
    clean_runs = [scheduler_restarted.run_id, *green]
    deadline = time.monotonic() + 300
    while True:
        runs = cluster.dag_runs("retrain_on_clean_audit")
        if len(runs) >= len(clean_runs) and all(r["state"] in ("success", "failed") for r in runs):
            break
        assert time.monotonic() < deadline, runs
        time.sleep(2)
    sources = []
    for run in runs:
        assert run["run_type"] == "asset_triggered" and run["state"] == "success", run
        body = cluster.api(
            "GET", f"/api/v2/dags/retrain_on_clean_audit/dagRuns/{run['dag_run_id']}/upstreamAssetEvents"
        )
        sources += [event["source_run_id"] for event in body["asset_events"]]
    assert sorted(sources) == sorted(clean_runs)
    assert gpu_worker_killed.run_id not in sources


# ---------------------------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------------------------


def test_a_shard_whose_gpu_worker_was_killed_is_retried_on_the_restarted_worker(cluster, gpu_worker_killed):
    assert any(r.component == "worker-gpu" for r in cluster.restarts)
    shards = gpu_worker_killed.instances("score_shard")
    assert {ti["state"] for ti in shards} == {"success"}
    (retried,) = [ti for ti in shards if ti["try_number"] > 1]  # the one that was running; the others ran once
    assert retried["hostname"] == "worker-gpu" and _at(retried["start_date"]) > gpu_worker_killed.fault_ended
    tries = cluster.api(
        "GET",
        f"/api/v2/dags/dataset_audit/dagRuns/{gpu_worker_killed.run_id}/taskInstances/score_shard/"
        f"{retried['map_index']}/tries",
    )["task_instances"]
    first = min(tries, key=lambda t: t["try_number"])
    assert first["state"] == "failed" and _at(first["start_date"]) < gpu_worker_killed.fault_at


def test_the_killed_worker_run_equals_the_single_process_audit(gpu_worker_killed, single_process):
    """No shard lost, none counted twice: the same tables as one undisturbed process."""
    tables = audit_tables(gpu_worker_killed.root, "biased")
    assert tables["images"]["image_id"].is_unique
    assert_audit_tables_equal(tables, audit_tables(single_process["biased"], "biased"))


def test_the_restarted_scheduler_run_equals_the_single_process_audit(cluster, scheduler_restarted, single_process):
    assert any(r.component == "scheduler" for r in cluster.restarts)
    assert_audit_tables_equal(
        audit_tables(scheduler_restarted.root, "debiased"), audit_tables(single_process["debiased"], "debiased")
    )


def test_a_postgres_outage_is_survived_or_fails_clearly_and_never_writes_a_wrong_table(postgres_outage, single_process):
    run_folder = postgres_outage.root / "reports" / "debiased"
    if postgres_outage.dag_run["state"] == "success":
        assert_audit_tables_equal(
            audit_tables(postgres_outage.root, "debiased"), audit_tables(single_process["debiased"], "debiased")
        )
    else:  # failed clearly: a failed task, and no verdict written past it
        assert any(ti["state"] == "failed" for ti in postgres_outage.task_instances)
        assert not (run_folder / "gates.parquet").exists()
