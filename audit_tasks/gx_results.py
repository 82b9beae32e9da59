"""The ingest's Great Expectations results, kept in the run folder as GX users know them.

Each suite the ingest ran (the built-in rules, the image-id uniqueness check, the user's suite) leaves one
`validation/ingest_<suite>.json`: the `ExpectationSuiteValidationResult.to_json_dict()` GX itself would
store, loadable with `ExpectationSuiteValidationResult(**json)`. Validation runs with COMPLETE results to
name every failing row, which for millions of rows means millions of entries; the saved copy keeps GX's
bounded SUMMARY fields (counts, percentages, the first `PARTIAL_LIMIT` unexpected values and indices) and
drops the full lists, since the row-level reasons already live in quarantine.parquet.

With `checks.ingest.data_docs: true`, GX's static Data Docs site is built from the same bounded results
in a throwaway context rooted in a temporary folder (nothing lands in the working directory) and copied
to `data_docs/` in the run folder, index.html last so a link to it never points at half a site.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit_tasks.errors import AuditError
from audit_tasks.storage import StoragePath, atomic_path, filesystem, is_remote, storage_path
from audit_tasks.tables import write_text

__all__ = [
    "DATA_DOCS_DIR",
    "DATA_DOCS_INDEX",
    "PARTIAL_LIMIT",
    "VALIDATION_DIR",
    "SuiteValidation",
    "bounded",
    "file_stem",
    "write_validations",
]

#: Folder of the saved results inside the run folder, and Data Docs' folder and entry page.
VALIDATION_DIR = "validation"
DATA_DOCS_DIR = "data_docs"
DATA_DOCS_INDEX = f"{DATA_DOCS_DIR}/index.html"
#: Unexpected values/indices kept per expectation (GX's own default for partial lists).
PARTIAL_LIMIT = 20
#: Longest text kept for one value in a partial list (a manifest cell can be arbitrarily long).
VALUE_CHARS = 200
#: Result keys whose size grows with the rows; dropped from the saved copy.
_UNBOUNDED = ("unexpected_list", "unexpected_index_list", "unexpected_index_query", "unexpected_rows")
_PARTIAL = ("partial_unexpected_list", "partial_unexpected_index_list", "partial_unexpected_counts")
_PREFIX = "ingest_"
DOCS_NOT_BUILT = "Great Expectations built no Data Docs site under {root} (expected uncommitted/data_docs/local_site)"


@dataclass(frozen=True)
class SuiteValidation:
    """One suite the ingest ran: its file stem, the suite (GX `ExpectationSuite`) and its bounded result
    (GX `ExpectationSuiteValidationResult`, already passed through `bounded`)."""

    stem: str
    suite: Any
    result: Any


def file_stem(suite_name: str) -> str:
    """A user suite's file stem: `ingest_suite_<suite name>`, anything but letters, digits, '.', '_' and '-'
    replaced (a safe file name, and a relative link that needs no quoting)."""
    return _PREFIX + "suite_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", suite_name).strip("._") or "suite")[:100]


def bounded(result: Any) -> Any:
    """Drop the per-row lists of a COMPLETE result in place and clip the partial ones; returns `result`."""
    for outcome in result.results:
        details = outcome.result
        if not isinstance(details, dict):
            continue
        for key in _UNBOUNDED:
            details.pop(key, None)
        for key in _PARTIAL:
            if isinstance(details.get(key), list):
                details[key] = [_clip(v) for v in details[key][:PARTIAL_LIMIT]]
    result.meta["audit_tasks"] = {
        "result_format": "SUMMARY",
        "note": f"full unexpected lists dropped; at most {PARTIAL_LIMIT} values per expectation are kept. "
        "Every failing row and its reason is in quarantine.parquet.",
    }
    return result


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > VALUE_CHARS:
        return value[:VALUE_CHARS] + "…"
    if isinstance(value, dict):
        return {k: _clip(v) for k, v in value.items()}
    return value


def write_validations(
    validations: tuple[SuiteValidation, ...], run_folder: StoragePath, *, data_docs: bool
) -> list[StoragePath]:
    """Write each result to `validation/<stem>.json` (atomically) and, when asked and there is something to
    show, Data Docs to `data_docs/`; remove what an earlier attempt of this run left that this one did not
    write. Returns the files written (JSON files, then Data Docs' index.html)."""
    import json

    folder = storage_path(run_folder)
    written: list[StoragePath] = []
    for item in validations:
        text = json.dumps(item.result.to_json_dict(), indent=2, sort_keys=True, default=str) + "\n"
        written.append(write_text(text, folder / VALIDATION_DIR / f"{item.stem}.json"))
    _remove_stale(folder / VALIDATION_DIR, {p.name for p in written})
    _remove_tree(folder / DATA_DOCS_DIR)
    if data_docs and validations:
        written.append(_write_data_docs(validations, folder / DATA_DOCS_DIR))
    return written


def _remove_stale(folder: StoragePath, keep: set[str]) -> None:
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(_PREFIX) and path.name.endswith(".json") and path.name not in keep:
            path.unlink(missing_ok=True)


def _remove_tree(folder: StoragePath) -> None:
    if is_remote(folder):
        fs, inner = filesystem(folder)
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
    elif folder.is_dir():
        shutil.rmtree(folder)


def _write_data_docs(validations: tuple[SuiteValidation, ...], target: StoragePath) -> StoragePath:
    """Build GX's local site in a temporary context and copy it under `target`; returns its index.html."""
    with tempfile.TemporaryDirectory(prefix="audit-gx-docs-") as tmp:
        site = _build_site(validations, Path(tmp))
        files = sorted(p for p in site.rglob("*") if p.is_file())
        index = site / "index.html"
        for path in [p for p in files if p != index] + [index]:
            relative = path.relative_to(site).as_posix()
            _copy(path, target / relative)
    return target / "index.html"


def _copy(source: Path, target: StoragePath) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _build_site(validations: tuple[SuiteValidation, ...], root: Path) -> Path:
    """A filesystem GX context under `root` holding the suites and results; returns the built site's folder."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from audit_tasks.validation import quiet_gx

    config = DataContextConfig(
        store_backend_defaults=FilesystemStoreBackendDefaults(root_directory=str(root)),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    with quiet_gx():
        context = gx.get_context(mode="ephemeral", project_config=config)
        for item in validations:
            context.suites.add(gx.ExpectationSuite(**_suite_fields(item.suite)))
            key = ValidationResultIdentifier(
                expectation_suite_identifier=ExpectationSuiteIdentifier(name=item.suite.name),
                run_id=item.result.meta.get("run_id"),
                batch_identifier=item.stem,
            )
            context.validation_results_store.set(key, item.result)
        context.build_data_docs()
    site = root / "uncommitted" / "data_docs" / "local_site"  # FilesystemStoreBackendDefaults' local site
    if not (site / "index.html").is_file():
        raise AuditError(DOCS_NOT_BUILT.format(root=root))
    return site


def _suite_fields(suite: Any) -> dict[str, Any]:
    """A suite's JSON without its ids, so it can be added to another context."""
    fields = suite.to_json_dict()
    fields.pop("id", None)
    for expectation in fields.get("expectations", []):
        expectation.pop("id", None)
    return {k: v for k, v in fields.items() if k in {"name", "expectations", "meta", "notes", "suite_parameters"}}
