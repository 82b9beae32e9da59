"""The "Dataset audits" plugin for a plugins folder pointed at this checkout.

The plugin lives in `audit_airflow.plugin`; an installed package (`pip install audit-tasks`) registers it
through its `airflow.plugins` entry point, and then this file exports nothing: Airflow would otherwise
find the plugin twice and report the second copy as an import error. Without the package installed
(only the checkout on PYTHONPATH), this file is how Airflow finds it.
"""

from __future__ import annotations

from audit_airflow import plugin as _plugin

if not _plugin.registered_by_entry_point():
    AuditReportsPlugin = _plugin.AuditReportsPlugin
