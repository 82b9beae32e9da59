"""The HTML report of a finished run, rendered from the run folder's tables alone.

Modules, one job each: `data` reads a run (tables, CAMs on demand, the previous run); `sections` chooses
what each section shows (view models, no markup); `charts` lays out the inline SVG charts; `images` draws
the Grad-CAM thumbnails; `format` prints numbers; `render` is the Jinja template set (`templates/`) that
the report and the Airflow reports page share; `page` puts them together and writes `report.html`.
"""

from audit_tasks.report.data import QUARANTINE_ROWS, RunDigest, RunTables, find_previous, load_run
from audit_tasks.report.page import REPORT_FILE, build_html, render_report
from audit_tasks.report.render import CSP, render

__all__ = [
    "CSP",
    "QUARANTINE_ROWS",
    "REPORT_FILE",
    "RunDigest",
    "RunTables",
    "build_html",
    "find_previous",
    "load_run",
    "render",
    "render_report",
]
