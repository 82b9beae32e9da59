"""audit_airflow: the Airflow binding layer over `audit_tasks` (params, asset, task callables, plugin app).

Modules: `params` (trigger-form params -> dotted config overrides), `assets` (the clean-audit asset),
`tasks` (one callable per stage function), `compat` (everything Airflow-version or deployment specific),
`storage` (local or object-store report roots), `reports_app` (the "Dataset audits" FastAPI page; the
plugin in plugins/ mounts it). The first four import only `airflow.sdk` at module level, so DAG files
that use them parse fast; the audit itself (`audit_tasks`, pandas, torch) is imported inside task bodies.
"""

from audit_airflow.assets import AUDIT_CLEAN
from audit_airflow.params import THRESHOLDS, audit_params, config_overrides

__all__ = ["AUDIT_CLEAN", "THRESHOLDS", "audit_params", "config_overrides"]
