"""Where finished audits are published and read back: local disk (default) or any object store.

A root is a plain path (`/data/audit_reports`, `file:///...`) or a URI that fsspec understands
(`s3://bucket/audits`, `gs://...`, `memory://...`) opened through Airflow's `ObjectStoragePath`, so the
credentials come from the usual Airflow connection (`conn_id`), with no code change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["is_remote", "publish_run", "storage_root"]

#: Published in this order: tables first, then the report, and summary.json last, because the
#: "Dataset audits" page lists a run as soon as its summary.json exists.
_LAST = ("report.html", "summary.json")


def is_remote(uri: str) -> bool:
    """True for object-store URIs; plain paths and file:// URIs are local."""
    return "://" in uri and not uri.startswith("file://")


def storage_root(uri: str, conn_id: str | None = None) -> Any:
    """A `pathlib.Path` for local roots, else an `ObjectStoragePath` bound to `conn_id`."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri, conn_id=conn_id or None)


def publish_run(run_folder: Path, target_uri: str, conn_id: str | None = None) -> str:
    """Copy a finished run's top-level files (not `_stages/`) to `<target>/<run_id>/`; returns the report URI.

    Re-publishing overwrites the same objects, so a retried task leaves one copy.
    """
    target = storage_root(target_uri, conn_id) / run_folder.name
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(
        (p for p in run_folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: (p.name in _LAST, _LAST.index(p.name) if p.name in _LAST else 0, p.name),
    )
    for source in files:
        (target / source.name).write_bytes(source.read_bytes())
    log.info("published %d file(s) of %s to %s", len(files), run_folder, target)
    return str(target / "report.html")
