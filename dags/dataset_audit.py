"""dataset_audit: nightly bias audit of the image dataset; red when a gate fails, asset event when clean.

A table of contents: every task is one stage function (audit_airflow.tasks). The saliency stage is
mapped over shards so it can spread over GPU workers; only airflow.sdk is imported at parse time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from audit_airflow import compat, tasks
from audit_airflow.assets import AUDIT_CLEAN
from audit_airflow.params import audit_params


@dag(
    dag_id="dataset_audit",
    schedule=compat.audit_schedule(),  # [audit] schedule: "@daily" unless the deployment says otherwise
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=audit_params(),
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["audit"],
    doc_md=__doc__,
)
def dataset_audit() -> None:
    ingested = task(tasks.ingest, task_id="ingest")()
    shards = task(tasks.plan_shards, task_id="plan_shards")()
    scored = task(
        tasks.score_shard,
        task_id="score_shard",
        map_index_template="{{ shard_label }}",
        retries=2,
        retry_delay=timedelta(seconds=15),  # a shard lost with its worker moves to another one promptly
        **compat.gpu_task_kwargs(),
    ).expand(shard=shards)
    merged = task(tasks.merge_shards, task_id="merge", trigger_rule="none_failed")(shards)
    by_group = task(tasks.subgroups, task_id="subgroups")()
    pairs = task(tasks.cooccurrence, task_id="cooccurrence")()
    verdict = task(tasks.gate_stage, task_id="gate_stage")()
    rendered = task(tasks.report, task_id="report")()
    final = task(tasks.gate, task_id="gate", outlets=[AUDIT_CLEAN], retries=0)(rendered)

    ingested >> shards
    scored >> merged >> [by_group, pairs]  # the label -> image-property pairs use what scoring measured
    [by_group, pairs] >> verdict >> rendered >> final


dataset_audit()
