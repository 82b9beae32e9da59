"""Airflow plugin: a "Dataset audits" page listing audit runs, verdicts and links to each report.html.

The page is a FastAPI app mounted by the api-server under /audit-reports (it requires a logged-in
Airflow user), shown in the UI's Browse menu through an external view. A second external view puts an
"Audit report" tab on every DAG run page: Airflow 3.3's UI fills `{DAG_ID}` and `{RUN_ID}` into the
`href` of a view whose `destination` is not "nav" (each id `encodeURIComponent`-ed) and shows the page
in a frame; the tab needs a `url_route`. 3.3 cannot scope a view to one DAG, so the route answers other
DAGs with a short "no audit report" page.
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
        {
            "name": "Audit report",
            "href": f"{URL_PREFIX}/dag-runs/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "audit-report",
        },
    ]
