"""retrain_on_clean_audit: runs when dataset_audit emits its asset, i.e. only after every gate passed.

The training task is a PLACEHOLDER: replace audit_airflow.tasks.train_model_placeholder (or the task
below) with your training job; it receives the audit summary and the report path.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from audit_airflow import tasks
from audit_airflow.assets import AUDIT_CLEAN


@dag(
    dag_id="retrain_on_clean_audit",
    schedule=[AUDIT_CLEAN],
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["audit", "training"],
    doc_md=__doc__,
)
def retrain_on_clean_audit() -> None:
    summary = task(tasks.audit_summary, task_id="audit_summary", inlets=[AUDIT_CLEAN])()
    # PLACEHOLDER: swap this task for your real training job.
    task(tasks.train_model_placeholder, task_id="train_model_placeholder")(summary)


retrain_on_clean_audit()
