"""Airflow plugin: a "Dataset audits" page listing audit runs, verdicts and links to each report.html.

The page is a FastAPI app mounted by the api-server under /audit-reports (it requires a logged-in
Airflow user), shown in the UI's Browse menu through an external view.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from audit_airflow.reports_app import create_reports_app

URL_PREFIX = "/audit-reports"


class AuditReportsPlugin(AirflowPlugin):
    name = "audit_reports"
    fastapi_apps = [
        {"app": create_reports_app(), "url_prefix": URL_PREFIX, "name": "Dataset audits"},
    ]
    external_views = [
        {
            "name": "Dataset audits",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "dataset-audits",
        },
    ]
