"""audit_airflow: the Airflow binding layer over `audit_tasks` (params, asset, task callables, plugin app).

It imports only `airflow.sdk` at module level, so DAG files that use it still parse fast; the
audit itself (`audit_tasks`, pandas, torch) is imported inside task bodies.
"""

from audit_airflow.assets import AUDIT_CLEAN
from audit_airflow.params import THRESHOLDS, audit_params, config_overrides

__all__ = ["AUDIT_CLEAN", "THRESHOLDS", "audit_params", "config_overrides"]
