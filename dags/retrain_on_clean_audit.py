"""retrain_on_clean_audit: runs when dataset_audit emits its asset, i.e. only after every gate passed.

The training task is a PLACEHOLDER: replace audit_airflow.tasks.train_model_placeholder (or the task
below) with your training job; it receives the audit summary and the report path. The event's extra also
names the run's `sample_weights.parquet` (`sample_weights_uri`) when the audit's rarity check wrote one.

Beside it, `train_demo_model_with_weights` is an EXAMPLE for the demo's torchvision models: with the param
`example_training` it retrains on the audited catalog resampled by those weights (or by the `sample_weights`
param, as `python -m audit_tasks demo --loop` passes a red audit's); otherwise it skips.
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
    params=tasks.retrain_params(),
    tags=["audit", "training"],
    doc_md=__doc__,
)
def retrain_on_clean_audit() -> None:
    summary = task(tasks.audit_summary, task_id="audit_summary", inlets=[AUDIT_CLEAN])()
    # PLACEHOLDER: swap this task for your real training job.
    task(tasks.train_model_placeholder, task_id="train_model_placeholder")(summary)
    # EXAMPLE for the demo's models (skips unless the example_training param is set).
    task(tasks.train_demo_model_with_weights, task_id="train_demo_model_with_weights", retries=0)(summary)


retrain_on_clean_audit()
