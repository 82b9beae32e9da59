"""The "Dataset audits" UI page: a FastAPI app the Airflow api-server mounts from our plugin.

Runs are read from `[audit] reports_dir`: a local folder or an object-store URI (audit_airflow.storage).
Every route depends on Airflow's own authentication (the `_token` cookie the UI sets, or a bearer
JWT), so anonymous requests get 401/403. Run ids in URLs are checked against a strict pattern, and
local symlinks are followed only while they stay inside the reports root, so neither `../` nor a
link can reach a file outside it.

Reports are served on Airflow's own origin, where the UI's session cookie lives, so each one goes out
with a `sandbox` Content-Security-Policy: the browser gives it an opaque origin and no scripts, and a
hand-placed report.html cannot read the cookie or call the REST API.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from audit_airflow import compat
from audit_airflow.storage import storage_root
from audit_tasks.gates import FAILED, INCONCLUSIVE, PASSED
from audit_tasks.report import CSP as REPORT_DOCUMENT_CSP
from audit_tasks.report import render as render_template
from audit_tasks.run_ids import is_run_id

__all__ = [
    "AUDIT_DAG_ID",
    "AuditRun",
    "RunPage",
    "configured_root",
    "create_reports_app",
    "find_dag_run",
    "list_runs",
    "render_index",
    "report_file",
    "require_airflow_user",
]

log = logging.getLogger(__name__)

#: The only DAG that writes audit reports (dags/dataset_audit.py; a test keeps the two equal).
AUDIT_DAG_ID = "dataset_audit"
#: Runs per index page, and the bounds of /api/runs' `limit`.
INDEX_PAGE_SIZE = 50
API_DEFAULT_LIMIT = 100
API_MAX_LIMIT = 1000

SUMMARY = "summary.json"
REPORT = "report.html"

#: A run whose summary.json cannot be trusted: shown (never hidden, never green) with the reason.
UNREADABLE = "unreadable"
VERDICTS = (PASSED, FAILED, INCONCLUSIVE)

# Why a run is unreadable; tests assert these word for word.
NOT_READABLE = "summary.json could not be read"
NOT_JSON = "summary.json is not valid JSON"
NOT_AN_OBJECT = "summary.json is not a JSON object"
GATES_NOT_A_LIST = "failed_gates is not a list"
UNKNOWN_VERDICT = "verdict is not one of passed, failed, inconclusive"
PASSED_NOT_BOOLEAN = "passed is neither true nor false"
CONTRADICTION = "summary says passed but lists failed gates"
NO_VERDICT = "summary.json has neither verdict nor passed"

#: The report's own meta policy plus `sandbox`: an opaque origin, no scripts, forms or popups. Generated
#: reports need only inline CSS, data: images and inline SVG, which this allows.
REPORT_CSP = f"sandbox; {REPORT_DOCUMENT_CSP}"
#: The index, the JSON API and the message pages: inline style only; framed only by Airflow's own UI.
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
_ALWAYS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

#: Airflow run ids hold ':' and '+' (`manual__2026-01-01T00:00:00+00:00`), so they get their own check;
#: they are never used as paths (compat.audit_run_id maps them to a folder name).
_AIRFLOW_RUN_ID = re.compile(r"^[^/\\\x00-\x1f]{1,250}$")


def require_airflow_user() -> Callable[..., None]:
    """Airflow 3.3's security dependency: an authenticated user allowed to see the UI.

    `requires_access_view` lives in the api-server's internal module
    `airflow.api_fastapi.core_api.security` (pinned at 3.3.2; tests exercise it for real).
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return requires_access_view(AccessView.WEBSITE)


# ---------------------------------------------------------------------------------------------
# one summary.json -> one row
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRun:
    """One row of the page: a run folder that has a summary.json.

    `verdict` is passed, failed, inconclusive or unreadable; `passed` (kept for /api/runs clients) is
    True only for a passed verdict. `reason` says why a run is inconclusive or unreadable.
    """

    run_id: str
    verdict: str
    passed: bool
    failed_gates: tuple[str, ...]
    finished: str
    has_report: bool
    reason: str = ""


class _Unreadable(Exception):
    """summary.json cannot be trusted; the message is the reason shown on the page."""


def _judge(summary: Any) -> tuple[str, tuple[str, ...], str]:
    """(verdict, failed gate labels, reason) of a parsed summary; raises `_Unreadable`.

    `verdict` wins when present; older summaries fall back to `passed`, which must be a real JSON
    boolean: a string "false" is not false, and nothing but `true` with no failed gates is a pass.
    """
    if not isinstance(summary, dict):
        raise _Unreadable(NOT_AN_OBJECT)
    failed = summary.get("failed_gates")
    if failed is None:
        failed = []
    if not isinstance(failed, list):
        raise _Unreadable(GATES_NOT_A_LIST)
    gates = tuple(_gate_label(g) for g in failed)
    if "verdict" in summary:
        verdict = summary["verdict"]
        if not isinstance(verdict, str) or verdict not in VERDICTS:
            raise _Unreadable(UNKNOWN_VERDICT)
    elif "passed" in summary:
        if not isinstance(summary["passed"], bool):
            raise _Unreadable(PASSED_NOT_BOOLEAN)
        verdict = PASSED if summary["passed"] else FAILED
    else:
        raise _Unreadable(NO_VERDICT)
    if verdict == PASSED and gates:
        raise _Unreadable(CONTRADICTION)
    reason = summary.get("inconclusive_reason") if verdict == INCONCLUSIVE else None
    return verdict, gates, "" if reason is None else str(reason)


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise _Unreadable(NOT_JSON) from error


def _gate_label(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("name") or "/".join(str(entry.get(k, "?")) for k in ("check", "subject", "metric")))
    return str(entry)


def _finished(summary: Any, modified: float) -> str:
    """The run's time: summary.json's `created_at` when present, else the summary's modification time."""
    if isinstance(summary, dict) and isinstance(summary.get("created_at"), str) and summary["created_at"]:
        return summary["created_at"]
    if not modified:
        return ""
    return datetime.fromtimestamp(modified, tz=UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# finding run folders (local: confined symlinks; object storage: one listing)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A run folder found by listing: its id, the (resolved, if local) root and summary.json's mtime."""

    root: Any
    run_id: str
    modified: float

    @property
    def folder(self) -> Any:
        return self.root / self.run_id


def _stays_inside(path: Path, base: Path) -> bool:
    """Whether `path`, with every symlink followed, is an existing path inside `base` (itself resolved)."""
    try:
        return path.resolve(strict=True).is_relative_to(base)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        return False


def _local_file_mtime(path: Path, base: Path) -> float | None:
    """Modification time of a regular file inside `base`; None when missing or a link leaving `base`.

    One `lstat` for the usual plain file; only a symlink pays for a full resolve.
    """
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            if not _stays_inside(path, base):
                log.warning("%s links outside the reports root %s; not followed", path, base)
                return None
            info = path.stat()
    except OSError:
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None


def _local_entry(base: Path, name: str, is_link: bool) -> _Entry | None:
    folder = base / name
    if is_link and not _stays_inside(folder, base):
        log.warning("audit run folder %s links outside the reports root %s; not listed", folder, base)
        return None
    modified = _local_file_mtime(folder / SUMMARY, base)
    return None if modified is None else _Entry(base, name, modified)


def _local_entries(root: Path) -> list[_Entry]:
    base = root.resolve()
    try:
        listing = list(os.scandir(base))
    except OSError:
        return []
    found = (_local_entry(base, item.name, item.is_symlink()) for item in listing if is_run_id(item.name))
    return [entry for entry in found if entry is not None]


def _info_mtime(info: dict[str, Any]) -> float:
    """A modification time from an fsspec listing entry (each filesystem names it differently)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def _remote_entries(root: Any) -> list[_Entry]:
    """Every `<root>/<run>/summary.json` from one recursive listing (object stores page it cheaply)."""
    prefix = root.path.rstrip("/") + "/"
    try:
        listing = root.fs.find(root.path, detail=True)
    except (OSError, ValueError):
        return []
    entries = []
    for name, info in listing.items():
        parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
        if len(parts) == 2 and parts[1] == SUMMARY and is_run_id(parts[0]):
            entries.append(_Entry(root, parts[0], _info_mtime(info)))
    return entries


def _entries(root: Any) -> list[_Entry]:
    """Run folders with a summary.json, newest summary first (ties: run id, descending)."""
    entries = _local_entries(root) if isinstance(root, Path) else _remote_entries(root)
    return sorted(entries, key=lambda e: (e.modified, e.run_id), reverse=True)


def _has_report(entry: _Entry) -> bool:
    report = entry.folder / REPORT
    if isinstance(report, Path):
        return _local_file_mtime(report, entry.root) is not None
    try:
        return bool(report.is_file())
    except (OSError, ValueError):
        return False


def _load(entry: _Entry) -> Any:
    """The parsed summary.json (any JSON value); raises `_Unreadable`."""
    try:
        text = (entry.folder / SUMMARY).read_text(encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise _Unreadable(NOT_READABLE) from error
    return _parse(text)


def _audit_run(entry: _Entry) -> AuditRun:
    """The row of one run folder; an untrustworthy summary becomes an unreadable row, and is logged."""
    summary: Any = None
    try:
        summary = _load(entry)
        verdict, gates, reason = _judge(summary)
    except _Unreadable as why:
        log.warning("audit run %s is unreadable: %s", entry.run_id, why)
        verdict, gates, reason = UNREADABLE, (), str(why)
    return AuditRun(
        run_id=entry.run_id,
        verdict=verdict,
        passed=verdict == PASSED,
        failed_gates=gates,
        finished=_finished(summary, entry.modified),
        has_report=_has_report(entry),
        reason=reason,
    )


# ---------------------------------------------------------------------------------------------
# the public operations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPage:
    """One page of runs, `total` runs in all, the first of them at position `offset` (0-based)."""

    runs: tuple[AuditRun, ...]
    total: int
    offset: int


def list_runs(root: Any, *, offset: int = 0, limit: int | None = None) -> RunPage:
    """Runs under `root` (folders with summary.json), newest first, `limit` of them from `offset`.

    Runs are ordered by summary.json's modification time, i.e. when the gate stage wrote the verdict,
    because one directory listing gives it (one `lstat` per folder locally, one recursive listing on an
    object store) without opening any file. Only the requested page's summaries are then read, so a
    page of 5,000 runs costs 50 reads, not 5,000. (Ordering by the summary's `created_at`, as before,
    would mean reading every summary on every request.)

    `root` is a local `Path` or an `ObjectStoragePath`/`UPath` (see audit_airflow.storage).
    """
    entries = _entries(root)
    chosen = entries[offset:] if limit is None else entries[offset : offset + limit]
    return RunPage(tuple(_audit_run(e) for e in chosen), len(entries), offset)


def _check_run_id(run_id: str) -> None:
    if not is_run_id(run_id):
        raise HTTPException(status_code=400, detail="invalid run id")


def report_file(root: Any, run_id: str) -> Any:
    """The report of `run_id`, refusing ids that are not plain names or resolve outside `root`."""
    _check_run_id(run_id)
    if isinstance(root, Path):
        base = root.resolve()
        candidate = (base / run_id / REPORT).resolve()  # follows symlinks: they must stay inside
        if not candidate.is_relative_to(base):
            raise HTTPException(status_code=400, detail="invalid run id")
    else:  # object storage: no symlinks; the id is a single plain path segment
        candidate = root / run_id / REPORT
    if not candidate.is_file():
        raise HTTPException(status_code=404, detail="no report for this run")
    return candidate


def _airflow_ids(summary: Any) -> tuple[str, str] | None:
    """(dag_id, dag_run_id) that summary.json's `airflow` key records, if it records them."""
    airflow = summary.get("airflow") if isinstance(summary, dict) else None
    if not isinstance(airflow, dict):
        return None
    dag_id, dag_run_id = airflow.get("dag_id"), airflow.get("dag_run_id")
    return (dag_id, dag_run_id) if isinstance(dag_id, str) and isinstance(dag_run_id, str) else None


def _summary_ids(entry: _Entry) -> tuple[str, str] | None:
    try:
        return _airflow_ids(_load(entry))
    except _Unreadable:
        return None


def _direct_entry(root: Any, run_id: str) -> _Entry | None:
    """The entry of one run folder by name, with the same confinement as the listing."""
    if not isinstance(root, Path):
        summary = root / run_id / SUMMARY
        try:
            return _Entry(root, run_id, 0.0) if summary.is_file() else None
        except (OSError, ValueError):
            return None
    base = root.resolve()
    return _local_entry(base, run_id, (base / run_id).is_symlink())


def find_dag_run(root: Any, dag_id: str, dag_run_id: str) -> str | None:
    """The audit run folder of an Airflow DAG run, or None when it has none (yet).

    First the folder the DAG derives from the Airflow run id (compat.audit_run_id), unless its summary
    says it belongs to another DAG run; then, for a manual run that chose its own `run_id` param, the
    run whose summary.json records `airflow: {dag_id, dag_run_id}`. That fallback reads every summary,
    so it runs only when the direct mapping finds nothing.

    Raises HTTPException(400) for a DAG run id that could be a path (`..`, a slash, control characters).
    """
    if not _AIRFLOW_RUN_ID.match(dag_run_id) or ".." in dag_run_id:
        raise HTTPException(status_code=400, detail="not a usable run id")
    wanted = (dag_id, dag_run_id)
    direct_id = compat.audit_run_id(dag_run_id)
    direct = _direct_entry(root, direct_id) if is_run_id(direct_id) else None
    if direct is not None and _summary_ids(direct) in (None, wanted):
        return direct.run_id
    return next((e.run_id for e in _entries(root) if _summary_ids(e) == wanted), None)


def configured_root() -> Any:
    """`[audit] reports_dir` (a path, or an object-store URI read with `[audit] reports_conn_id`)."""
    return storage_root(compat.reports_dir(), compat.audit_setting("reports_conn_id", "") or None)


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------


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

    @app.middleware("http")
    async def protective_headers(request: Request, call_next: Callable[..., Any]) -> Response:
        """nosniff and no referrer on every response (errors too); the strict policy unless a route set one."""
        response = await call_next(request)
        for name, value in _ALWAYS.items():
            response.headers[name] = value
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
        root = root_of()
        listing = list_runs(root, offset=(page - 1) * INDEX_PAGE_SIZE, limit=INDEX_PAGE_SIZE)
        last = _page_count(listing.total, INDEX_PAGE_SIZE)
        if page > last:  # past the end: show the last page rather than an empty table
            listing = list_runs(root, offset=(last - 1) * INDEX_PAGE_SIZE, limit=INDEX_PAGE_SIZE)
        return HTMLResponse(render_index(listing, page_size=INDEX_PAGE_SIZE))

    @app.get("/api/runs")
    def runs(
        response: Response,
        limit: Annotated[int, Query(ge=1, le=API_MAX_LIMIT)] = API_DEFAULT_LIMIT,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        listing = list_runs(root_of(), offset=offset, limit=limit)
        response.headers["X-Total-Count"] = str(listing.total)
        return [asdict(r) for r in listing.runs]

    @app.get("/runs/{run_id}/report.html")
    def report(run_id: str) -> Response:
        return _report_response(report_file(root_of(), run_id))

    @app.get("/dag-runs/{dag_id}/{dag_run_id}")
    def dag_run_report(dag_id: str, dag_run_id: str) -> Response:
        """The report of one DAG run: the target of the plugin's `dag_run` external view."""
        if dag_id != AUDIT_DAG_ID:
            return _message_page(
                404, "No audit report", f"Only the {AUDIT_DAG_ID} DAG writes audit reports; DAG {dag_id} has none."
            )
        root = root_of()
        try:
            run_id = find_dag_run(root, dag_id, dag_run_id)
        except HTTPException:
            return _message_page(400, "No audit report", f"{dag_run_id!r} is not a usable run id.")
        if run_id is None:
            return _message_page(
                404,
                "No audit report yet",
                f"No audit run was found for DAG run {dag_run_id}: its gate task has not "
                "written summary.json yet, or the run wrote to another reports folder.",
            )
        try:
            return _report_response(report_file(root, run_id))
        except HTTPException as missing:
            return _message_page(
                missing.status_code,
                "No audit report yet",
                f"Audit run {run_id} has no report.html yet: its report task has not finished.",
            )

    return app


def _report_response(found: Any) -> Response:
    headers = {"Content-Security-Policy": REPORT_CSP}
    if isinstance(found, Path):
        return FileResponse(found, media_type="text/html", headers=headers)
    return Response(found.read_bytes(), media_type="text/html", headers=headers)


# ---------------------------------------------------------------------------------------------
# HTML: the report's template set draws these pages (audit_tasks/report/templates/reports_*.html.j2)
# ---------------------------------------------------------------------------------------------

_LABELS = {PASSED: "PASSED", FAILED: "FAILED", INCONCLUSIVE: "INCONCLUSIVE", UNREADABLE: "UNREADABLE"}
#: Green only for passed; inconclusive is amber and unreadable grey, so neither can pass for green.
_COLOURS = {PASSED: "#137333", FAILED: "#b3261e", INCONCLUSIVE: "#b06000", UNREADABLE: "#5f6368"}


def _page_count(total: int, page_size: int) -> int:
    return max(1, math.ceil(total / page_size))


@dataclass(frozen=True)
class _Pager:
    """Where one page of runs sits: runs `first`..`last` of `total`; the newer and older page numbers, if any."""

    first: int
    last: int
    total: int
    newer: int | None
    older: int | None


def _pager(listing: RunPage, page_size: int) -> _Pager | None:
    if not listing.total:
        return None
    page = listing.offset // page_size + 1
    return _Pager(
        first=listing.offset + 1,
        last=listing.offset + len(listing.runs),
        total=listing.total,
        newer=page - 1 if page > 1 else None,
        older=page + 1 if page < _page_count(listing.total, page_size) else None,
    )


def render_index(listing: RunPage, *, page_size: int) -> str:
    """The index page of one page of runs: a table, coloured by verdict, and links to the other pages."""
    return render_template(
        "reports_index.html.j2", runs=listing.runs, labels=_LABELS, colours=_COLOURS, pager=_pager(listing, page_size)
    )


def _message_page(status: int, title: str, text: str) -> HTMLResponse:
    """A small HTML page for the DAG-run view, which the UI shows in a frame where JSON would be noise."""
    return HTMLResponse(render_template("reports_message.html.j2", title=title, text=text), status_code=status)
