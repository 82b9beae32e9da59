"""The "Dataset audits" UI page: a FastAPI app the Airflow api-server mounts from our plugin.

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
from fastapi.responses import FileResponse, HTMLResponse

from audit_airflow import compat

__all__ = ["AuditRun", "create_reports_app", "list_runs", "require_airflow_user", "report_file"]

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


def list_runs(root: Path) -> list[AuditRun]:
    """Runs under `root` (folders with summary.json), newest first; unreadable summaries are skipped."""
    if not root.is_dir():
        return []
    runs = []
    for summary_path in root.glob("*/summary.json"):
        run_folder = summary_path.parent
        if not _RUN_ID.match(run_folder.name):
            continue
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        mtime = summary_path.stat().st_mtime
        runs.append(
            AuditRun(
                run_id=run_folder.name,
                passed=bool(summary.get("passed", False)),
                failed_gates=tuple(_gate_label(g) for g in summary.get("failed_gates") or []),
                finished=datetime.fromtimestamp(mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                has_report=(run_folder / "report.html").is_file(),
            )
        )
    runs.sort(key=lambda r: (r.finished, r.run_id), reverse=True)
    return runs


def report_file(root: Path, run_id: str) -> Path:
    """The report of `run_id`, refusing ids that are not plain names or resolve outside `root`."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise HTTPException(status_code=400, detail="invalid run id")
    root = root.resolve()
    candidate = (root / run_id / "report.html").resolve()
    if not candidate.is_relative_to(root):
        raise HTTPException(status_code=400, detail="invalid run id")
    if not candidate.is_file():
        raise HTTPException(status_code=404, detail="no report for this run")
    return candidate


def create_reports_app(reports_root: Callable[[], Path] | None = None) -> FastAPI:
    """App factory; `reports_root` is read per request (default: `[audit] reports_dir`)."""
    root_of = reports_root or (lambda: Path(compat.reports_dir()))
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
    def report(run_id: str) -> FileResponse:
        return FileResponse(report_file(root_of(), run_id), media_type="text/html")

    return app


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
