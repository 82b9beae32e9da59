"""Airflow provider metadata of audit-tasks: the `[audit]` config section and the `airflow providers` entry.

Airflow calls `get_provider_info` through the `apache_airflow_provider` entry point (pyproject.toml),
validates the dict against its `provider_info.schema.json`, lists the package in `airflow providers list`
and merges `config` into its configuration, so `airflow config list` shows `[audit]` with descriptions.
This table is the one home of the settings `compat.audit_setting` reads; tests/test_provider.py fails
when the code reads a key that is not declared here, or declares one nobody reads.

A declared `default` is not documentation only: Airflow's lookup puts provider defaults before the
caller's fallback. So an option whose fallback the code computes (from `$AUDIT_CONFIG`,
`$AUDIT_REPORTS_DIR`) or leaves empty declares `None`, and a literal default equals the code's fallback.

Airflow builds every provider's info whenever it assembles its configuration, in every component, so
this module stays import-light: neither airflow nor audit_tasks (pandas, torch) is imported here.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

__all__ = ["AUDIT_OPTIONS", "PACKAGE_NAME", "SECTION", "get_provider_info"]

#: The distribution name; Airflow refuses provider info whose `package-name` differs from it.
PACKAGE_NAME = "audit-tasks"
SECTION = "audit"
_ADDED = "0.1.0"


def _option(
    description: str, *, kind: str = "string", example: str | None = None, default: str | None = None
) -> dict[str, Any]:
    return {"description": description, "version_added": _ADDED, "type": kind, "example": example, "default": default}


#: `[audit]` options (`AIRFLOW__AUDIT__<KEY>` in the environment), as Airflow's config schema describes them.
AUDIT_OPTIONS: dict[str, dict[str, Any]] = {
    "config": _option(
        "Default of the dataset_audit DAG's `config` param: the audit YAML each run reads. "
        "Unset: the AUDIT_CONFIG environment variable, else config/audit.yaml relative to the worker's "
        "working directory.",
        example="/opt/airflow/audit/config/audit.yaml",
    ),
    "reports_dir": _option(
        'Root the "Dataset audits" page (Browse menu, /audit-reports/) lists runs from: a local folder or '
        "an object-store URI. Unset: the AUDIT_REPORTS_DIR environment variable, else ./audit_reports.",
        example="s3://my-bucket/audit/reports",
    ),
    "reports_conn_id": _option(
        "Airflow connection used to read an object-store reports_dir. Unset: the URI's own connection "
        "(s3://conn_id@bucket/...) or the filesystem's default credentials.",
        example="aws_default",
    ),
    "gpu_pool": _option(
        "Pool of the mapped saliency tasks (score_shard). Create a pool sized to your GPUs (e.g. gpu) and "
        "name it here so shards never oversubscribe a device.",
        example="gpu",
        default="default_pool",
    ),
    "gpu_queue": _option(
        "Celery queue of the mapped saliency tasks; used only when the executor is Celery (a GPU worker "
        "runs `airflow celery worker -q gpu`).",
        example="gpu",
        default="gpu",
    ),
    "schedule": _option(
        "Schedule of the dataset_audit DAG: a cron expression or preset, or `none` for triggered runs only "
        "(an upstream DAG or the REST API starts each audit).",
        example="0 2 * * *",
        default="@daily",
    ),
    "shard_size": _option(
        "Default of the shard_size param: images per mapped saliency task.",
        kind="integer",
        example="256",
        default="512",
    ),
    "storage_conn_id": _option(
        "Airflow connection for object-store locations in the audit config (dataset.landing, "
        "dataset.image_root, dataset.catalog, model.checkpoint, output.dir) whose URI names none.",
        example="aws_default",
    ),
    "publish_uri": _option(
        "Copy each finished run (its tables, report.html and summary.json) under this folder or object-store "
        "URI; the passing audit's asset event then carries `published_report`. Unset: nothing is published.",
        example="s3://my-bucket/audits",
    ),
    "publish_conn_id": _option(
        "Airflow connection used to write to publish_uri. Unset: the URI's own connection or the "
        "filesystem's default credentials.",
        example="aws_default",
    ),
}


def _version() -> str:
    try:
        return metadata.version(PACKAGE_NAME)
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata in the shape of Airflow's `provider_info.schema.json` (entry point target).

    The UI plugin is not listed under `plugins` here: it has its own `airflow.plugins` entry point, and
    with `[core] lazy_discover_providers = False` Airflow would load a provider-listed plugin a second time.
    """
    return {
        "package-name": PACKAGE_NAME,
        "name": "Image dataset audits",
        # Plain words: `airflow providers list` strips RST and reads brackets as markup.
        "description": "Bias audits of image datasets and classifiers: the audit section of the Airflow "
        "configuration and the Dataset audits reports page",
        "versions": [_version()],
        "config": {
            SECTION: {
                "description": 'Deployment settings of the dataset_audit DAG and the "Dataset audits" page. '
                "Thresholds and data locations live in the audit YAML (the `config` option).",
                "options": {key: dict(option) for key, option in AUDIT_OPTIONS.items()},
            },
        },
    }
