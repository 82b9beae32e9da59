"""Object storage the Airflow way: the config's locations, published runs and the reports page.

A root is a plain path (`/data/audit_reports`, `file:///...`) or a URI that fsspec understands
(`s3://bucket/audits`, `gs://...`, `memory://...`) opened through Airflow's `ObjectStoragePath`, so the
credentials come from the usual Airflow connection (`conn_id`), with no code change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit_tasks.config import AuditConfig
    from audit_tasks.storage import StoragePath

log = logging.getLogger(__name__)

__all__ = ["bind_storage", "is_remote_uri", "publish_run", "storage_root"]

#: Published in this order: tables first, then the report, and summary.json last, because the
#: "Dataset audits" page lists a run as soon as its summary.json exists.
_LAST = ("report.html", "summary.json")


def is_remote_uri(uri: str) -> bool:
    """True for object-store URIs; plain paths and file:// URIs are local."""
    return "://" in uri and not uri.startswith("file://")


def storage_root(uri: str, conn_id: str | None = None) -> Any:
    """A `pathlib.Path` for local roots, else an `ObjectStoragePath` bound to `conn_id`.

    A scheme no installed Airflow provider serves (say `memory://`, or `s3://` without the Amazon provider)
    falls back to a plain fsspec `UPath`, whose credentials come from fsspec's own configuration.
    """
    if not is_remote_uri(uri):
        return Path(uri.removeprefix("file://"))
    from airflow.sdk import ObjectStoragePath

    located = ObjectStoragePath(uri, conn_id=conn_id or None)
    if not _airflow_serves(located.protocol, located.conn_id):
        from upath import UPath

        log.info(
            "no Airflow filesystem for %s:// (install its provider to use connections); using fsspec directly",
            located.protocol,
        )
        return UPath(uri)
    return located


def _airflow_serves(protocol: str, conn_id: str | None) -> bool:
    """Whether an installed Airflow provider registers a filesystem for `protocol`."""
    from airflow.sdk.io import attach

    try:
        _ = attach(protocol, conn_id).fs  # building the filesystem is what fails for an unknown scheme
    except ValueError:  # "No filesystem registered for scheme ..."
        return False
    return True


def bind_storage(config: AuditConfig, conn_id: str | None = None) -> AuditConfig:
    """The config with its object-store locations (landing, images, catalog, model, output) as `ObjectStoragePath`s.

    Credentials then come from the Airflow connection: `conn_id` (the `[audit] storage_conn_id` setting) or
    one written into the URI itself (`s3://my_conn@bucket/catalog`). Local paths are left as they are.
    """

    def bind(location: Any) -> Any:
        return location if isinstance(location, Path) else storage_root(str(location), conn_id)

    dataset = config.dataset
    if dataset is not None:
        # model_copy does not re-validate: the sections keep the ObjectStoragePaths as given.
        dataset = dataset.model_copy(
            update={
                "landing": bind(dataset.landing),
                "catalog": bind(dataset.catalog),
                "image_root": bind(dataset.image_root),
            }
        )
    model = config.model
    if model is not None:
        model = model.model_copy(update={"checkpoint": bind(model.checkpoint)})
    output = config.output.model_copy(update={"dir": bind(config.output.dir)})
    return config.model_copy(update={"dataset": dataset, "model": model, "output": output})


def publish_run(run_folder: StoragePath, target_uri: str, conn_id: str | None = None) -> str:
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
    from audit_tasks.storage import public_uri

    return public_uri(target / "report.html")
