"""The "Dataset audits" UI page: a FastAPI app the Airflow api-server mounts from our plugin.

Runs are read from `[audit] reports_dir`: a local folder or an object-store URI (audit_airflow.storage).
Every route depends on Airflow's own authentication (the `_token` cookie the UI sets, or a bearer
JWT), so anonymous requests get 401/403. Run ids in URLs are checked against a strict pattern and
the resolved file must stay inside the reports root, so `../` cannot escape it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

from audit_airflow import compat
from audit_airflow.storage import storage_root

__all__ = ["AuditRun", "configured_root", "create_reports_app", "list_runs", "report_file", "require_airflow_user"]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")  # audit_tasks.pipeline.check_run_id's rule


def require_airflow_user() -> Callable[..., None]:
    """Airflow 3.3's security dependency: an authenticated user allowed to see the UI.

    `requires_access_view` lives in the api-server's internal module
    `airflow.api_fastapi.core_api.security` (pinned at 3.3.2; tests exercise it for real).
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return requires_access_view(AccessView.WEBSITE)


@dataclass(frozen=True)
class AuditRun:
    """One row of the page: a run folder that has a summary.json."""

    run_id: str
    passed: bool
    failed_gates: tuple[str, ...]
    finished: str
    has_report: bool


def list_runs(root: Any) -> list[AuditRun]:
    """Runs under `root` (folders with summary.json), newest first; unreadable summaries are skipped.

    `root` is a local `Path` or an `ObjectStoragePath` (see audit_airflow.storage).
    """
    if not root.is_dir():
        return []
    runs = []
    for run_folder in root.iterdir():
        if not _RUN_ID.match(run_folder.name):
            continue
        summary_path = run_folder / "summary.json"
        try:
            if not summary_path.is_file():
                continue
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        runs.append(
            AuditRun(
                run_id=run_folder.name,
                passed=bool(summary.get("passed", False)),
                failed_gates=tuple(_gate_label(g) for g in summary.get("failed_gates") or []),
                finished=_finished(summary, summary_path),
                has_report=(run_folder / "report.html").is_file(),
            )
        )
    runs.sort(key=lambda r: (r.finished, r.run_id), reverse=True)
    return runs


def report_file(root: Any, run_id: str) -> Any:
    """The report of `run_id`, refusing ids that are not plain names or resolve outside `root`."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise HTTPException(status_code=400, detail="invalid run id")
    if isinstance(root, Path):
        root = root.resolve()
        candidate = (root / run_id / "report.html").resolve()  # follows symlinks: they must stay inside
        if not candidate.is_relative_to(root):
            raise HTTPException(status_code=400, detail="invalid run id")
    else:  # object storage: no symlinks; the id is a single plain path segment
        candidate = root / run_id / "report.html"
    if not candidate.is_file():
        raise HTTPException(status_code=404, detail="no report for this run")
    return candidate


def configured_root() -> Any:
    """`[audit] reports_dir` (a path, or an object-store URI read with `[audit] reports_conn_id`)."""
    return storage_root(compat.reports_dir(), compat.audit_setting("reports_conn_id", "") or None)


def create_reports_app(reports_root: Callable[[], Any] | None = None) -> FastAPI:
    """App factory; the root is looked up per request (default: `configured_root`)."""
    root_of = reports_root or configured_root
    app = FastAPI(
        title="Dataset audits",
        dependencies=[Depends(require_airflow_user())],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(_render_index(list_runs(root_of())))

    @app.get("/api/runs")
    def runs() -> list[dict[str, Any]]:
        return [asdict(r) for r in list_runs(root_of())]

    @app.get("/runs/{run_id}/report.html")
    def report(run_id: str) -> Response:
        found = report_file(root_of(), run_id)
        if isinstance(found, Path):
            return FileResponse(found, media_type="text/html")
        return Response(found.read_bytes(), media_type="text/html")

    return app


def _finished(summary: dict[str, Any], summary_path: Any) -> str:
    """The run's time: summary.json's `created_at` when present, else the file's modification time."""
    if summary.get("created_at"):
        return str(summary["created_at"])
    try:
        mtime = summary_path.stat().st_mtime
    except (OSError, AttributeError, ValueError):  # ValueError: a scheme without an Airflow filesystem
        return ""
    return datetime.fromtimestamp(mtime, tz=timezone.utc).isoformat(timespec="seconds")


def _gate_label(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("name") or "/".join(str(entry.get(k, "?")) for k in ("check", "subject", "metric")))
    return str(entry)


def _render_index(runs: list[AuditRun]) -> str:
    rows = []
    for run in runs:
        verdict = "PASSED" if run.passed else "FAILED"
        link = (
            f'<a href="runs/{html.escape(run.run_id)}/report.html" target="_blank">report.html</a>'
            if run.has_report else "no report yet"
        )
        gates = ", ".join(html.escape(g) for g in run.failed_gates) or "&mdash;"
        rows.append(
            f'<tr class="{verdict.lower()}"><td>{html.escape(run.run_id)}</td><td>{verdict}</td>'
            f"<td>{gates}</td><td>{html.escape(run.finished)}</td><td>{link}</td></tr>"
        )
    body = "\n".join(rows) or '<tr><td colspan="5">No audit runs yet.</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dataset audits</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #ddd; }}
tr.passed td:nth-child(2) {{ color: #137333; font-weight: 600; }}
tr.failed td:nth-child(2) {{ color: #b3261e; font-weight: 600; }}
</style></head>
<body><h1>Dataset audits</h1>
<table><thead><tr><th>Run</th><th>Verdict</th><th>Failed gates</th><th>Finished</th><th>Report</th></tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
