"""Airflow plugin: a "Dataset audits" page listing audit runs, verdicts and links to each report.html.

The page is a FastAPI app mounted by the api-server under /audit-reports (it requires a logged-in
Airflow user), shown in the UI's Browse menu through an external view. A second external view puts an
"Audit report" tab on every DAG run page: Airflow 3.3's UI fills `{DAG_ID}` and `{RUN_ID}` into the
`href` of a view whose `destination` is not "nav" (each id `encodeURIComponent`-ed) and shows the page
in a frame; the tab needs a `url_route`. 3.3 cannot scope a view to one DAG, so the route answers other
DAGs with a short "no audit report" page.

Installed with the package, Airflow finds it through the `airflow.plugins` entry point (pyproject.toml);
`plugins/audit_reports_plugin.py` re-exports it for a plugins folder pointed at a checkout.
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


#: Where Airflow finds the plugin in an installed package (pyproject.toml's `airflow.plugins` entry point).
ENTRY_POINT_GROUP = "airflow.plugins"
ENTRY_POINT = f"{__name__}:{AuditReportsPlugin.__name__}"


def registered_by_entry_point() -> bool:
    """True when an installed distribution declares this plugin as an `airflow.plugins` entry point.

    Airflow loads the plugins folder and then every `airflow.plugins` entry point, and skips a second
    plugin of the same name with an import error ("already registered"), so the plugins-folder shim
    stands aside when this is true.
    """
    from importlib import metadata

    return any(ep.value.replace(" ", "") == ENTRY_POINT for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
