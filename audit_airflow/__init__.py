"""audit_airflow: the Airflow binding layer over `audit_tasks` (params, asset, task callables, plugin app).

Modules: `params` (trigger-form params -> dotted config overrides), `assets` (the clean-audit asset),
`tasks` (one callable per stage function), `compat` (everything Airflow-version or deployment specific),
`storage` (local or object-store report roots), `reports_app` (the "Dataset audits" FastAPI page),
`plugin` (the AirflowPlugin that mounts it) and `provider` (the provider info with the `[audit]` config
section). The DAG-facing modules import only `airflow.sdk` at module level, so DAG files parse fast; the
audit itself (`audit_tasks`, pandas, torch) is imported inside task bodies.

This package's own import is empty on purpose: Airflow imports `audit_airflow.provider` while it reads
its configuration, and that must not pull in `airflow.sdk`. The re-exports below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AUDIT_CLEAN", "THRESHOLDS", "audit_params", "config_overrides"]

_HOMES = {
    "AUDIT_CLEAN": "audit_airflow.assets",
    "THRESHOLDS": "audit_airflow.params",
    "audit_params": "audit_airflow.params",
    "config_overrides": "audit_airflow.params",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'audit_airflow' has no attribute {name!r}")
