"""The report of a finished run: its views drawn by `report.html.j2`, written beside the tables.

One self-contained page (inline CSS and SVG, thumbnails as data URIs, no script, no network): the
verdict first, then the evidence per check. Rendering is deterministic: the same tables give a
byte-identical page (no render-time clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from audit_tasks.errors import AuditError
from audit_tasks.report import sections
from audit_tasks.report.data import RunDigest, RunTables, find_previous, load_run
from audit_tasks.report.render import CSP, render
from audit_tasks.storage import StoragePath, storage_path
from audit_tasks.tables import write_text

REPORT_FILE = "report.html"


def build_html(
    run: RunTables,
    *,
    previous: RunDigest | None,
    max_gallery: int,
    thumb_size: int,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> str:
    """The whole page for a loaded run (pure apart from reading CAMs and, through `opener`, thumbnail sources)."""
    view = sections.report(run, previous=previous, max_gallery=max_gallery, thumb_size=thumb_size, opener=opener)
    return render("report.html.j2", report=view, csp=CSP)


def render_report(
    run_dir: StoragePath | str,
    *,
    previous_run_dir: StoragePath | None = None,
    max_gallery: int = 24,
    thumb_size: int = 96,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> StoragePath:
    """Render `<run_dir>/report.html` from the run's tables (atomically); returns its path.

    `previous_run_dir` overrides the previous run (else: runs.parquet, then sibling folders by created_at).
    `max_gallery` bounds the thumbnails per confusion cell and per class; `thumb_size` is their longest side.
    `opener` opens the original images for thumbnails (`storage.FileOpener(image_root)` for an object store
    whose credentials fsspec does not find by itself).
    Raises AuditError when the run folder does not exist or a table cannot be read.
    """
    run_dir = storage_path(run_dir)
    if not run_dir.is_dir():
        raise AuditError(f"run folder not found: {run_dir}")
    if max_gallery < 0:
        raise AuditError(f"max_gallery must be >= 0; got {max_gallery}")
    if not 16 <= thumb_size <= 512:
        raise AuditError(f"thumb_size must be between 16 and 512 pixels; got {thumb_size}")
    run = load_run(run_dir)
    previous = find_previous(run, previous_run_dir)
    html_text = build_html(run, previous=previous, max_gallery=max_gallery, thumb_size=thumb_size, opener=opener)
    return write_text(html_text, run_dir / REPORT_FILE)
