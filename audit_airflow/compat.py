"""Everything that depends on the Airflow version or deployment lives here, so the rest stays plain.

Pinned against apache-airflow 3.3.2 (task SDK 1.3.2). Deployment knobs are read from the Airflow
config section ``[audit]`` (so ``AIRFLOW__AUDIT__<KEY>`` environment variables work too); every key, its
meaning and its default are declared once, in `audit_airflow.provider` (``airflow config list --section
audit`` shows them).

Reading the config at parse time is cheap (no DB); checking whether a pool exists would need the
metadata DB, which DAG parsing in Airflow 3 must not touch, so the pool is a deployment setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from airflow.sdk import conf
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

__all__ = [
    "AirflowFailException",
    "AirflowSkipException",
    "MAX_MAP_LENGTH",
    "audit_run_id",
    "audit_schedule",
    "audit_setting",
    "default_config_path",
    "default_shard_size",
    "executor_is_celery",
    "gpu_task_kwargs",
    "latest_event_extra",
    "reports_dir",
]

_SECTION = "audit"
#: `[core] max_map_length` default; plan_shards refuses to plan more copies than the scheduler allows.
MAX_MAP_LENGTH = 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


def audit_setting(key: str, fallback: str) -> str:
    """One `[audit]` setting from airflow.cfg / AIRFLOW__AUDIT__KEY, else `fallback`."""
    value = conf.get(_SECTION, key, fallback=None)
    return value if value not in (None, "") else fallback


def default_config_path() -> str:
    return audit_setting("config", os.environ.get("AUDIT_CONFIG", "config/audit.yaml"))


def reports_dir() -> str:
    return audit_setting("reports_dir", os.environ.get("AUDIT_REPORTS_DIR", "audit_reports"))


def default_shard_size() -> int:
    raw = audit_setting("shard_size", "512")
    try:
        size = int(raw)
    except ValueError:
        return 512
    return size if size >= 1 else 512


def audit_schedule() -> str | None:
    """dataset_audit's schedule from `[audit] schedule`: a cron expression or preset; `none` means triggered only."""
    value = audit_setting("schedule", "@daily").strip()
    return None if value.lower() in ("none", "null") else value


def max_map_length() -> int:
    try:
        return int(conf.get("core", "max_map_length", fallback=str(MAX_MAP_LENGTH)))
    except ValueError:
        return MAX_MAP_LENGTH


def executor_is_celery() -> bool:
    """True when any configured executor is Celery (Airflow 3 allows a comma-separated list)."""
    executors = conf.get("core", "executor", fallback="") or ""
    return any("celery" in part.lower() for part in executors.split(","))


def gpu_task_kwargs() -> dict[str, Any]:
    """Operator kwargs for the GPU-bound mapped task: a pool always, `queue="gpu"` only under Celery.

    Other executors ignore or reject unknown queues, so the queue is only set where a worker
    listens on it (the compose file's GPU worker runs `celery worker -q gpu`).
    """
    kwargs: dict[str, Any] = {"pool": audit_setting("gpu_pool", "default_pool")}
    if executor_is_celery():
        kwargs["queue"] = audit_setting("gpu_queue", "gpu")
    return kwargs


def audit_run_id(airflow_run_id: str) -> str:
    """A filename-safe audit run id from the Airflow run id: deterministic, so retries reuse the folder."""
    cleaned = _DOTS.sub(".", _UNSAFE.sub("_", airflow_run_id)).strip("._-")[:128].rstrip("._-")
    return cleaned or "run"


def latest_event_extra(context: Mapping[str, Any], asset: Any) -> dict[str, Any] | None:
    """The extra of the asset event that triggered this run, else the asset's latest event, else None.

    `triggering_asset_events` is filled for asset-scheduled runs; a manual run of the consumer
    falls back to `inlet_events` (the task must list the asset in `inlets`).
    """
    triggering = context.get("triggering_asset_events") or {}
    events = _events_for(triggering, asset)
    if not events:
        inlet_events = context.get("inlet_events")
        if inlet_events is not None:
            try:
                events = list(inlet_events[asset])
            except (KeyError, LookupError):
                events = []
    if not events:
        return None
    return dict(events[-1].extra or {})


def _events_for(events_by_asset: Any, asset: Any) -> list[Any]:
    try:
        return list(events_by_asset[asset])
    except (KeyError, LookupError, TypeError):
        pass
    for key in (getattr(asset, "uri", None), getattr(asset, "name", None)):
        if key is None:
            continue
        try:
            return list(events_by_asset[key])
        except (KeyError, LookupError, TypeError):
            continue
    return []
