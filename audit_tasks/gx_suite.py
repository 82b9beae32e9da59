"""A team's own Great Expectations suite (`checks.ingest.suite`), run on the manifest rows beside the built-in rules.

The file is a GX 1.x ExpectationSuite as `suite.to_json_dict()` writes it: `{"name": ..., "expectations":
[{"type": ..., "kwargs": {...}}, ...], "meta": ...}`. Its shape is checked when the config is read (no GX
import: config loading stays fast); each expectation is built by GX at the start of the ingest, before
any row moves, so an unknown type or bad kwargs stops the run as a config error naming the file.

The suite runs once over every row the run's manifests hold (the manifest's own columns, as read; a
manifest refused as a whole has no rows here), so table-level expectations see the whole batch. A failing
row-level expectation quarantines exactly the rows GX names (by position) with `ROW_REASON`. A failing
expectation that names no rows (a row count, a column's mean, a column the manifests lack) says the batch
is not what the team expects: every row of the batch is quarantined with `BATCH_REASON` (or
`ERROR_REASON` when GX could not evaluate it), rather than failing the ingest. Quarantining keeps the
rule that every row ends in the catalog or the quarantine with a reason, records the run in the ledger
(the same manifests are not retried every night), and the ingest gate then fails on the fraction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from audit_tasks.errors import ConfigError
from audit_tasks.gx_results import SuiteValidation, bounded, file_stem
from audit_tasks.storage import StoragePath, public_uri

__all__ = [
    "BATCH_REASON",
    "ERROR_REASON",
    "ROW_REASON",
    "SuiteCheck",
    "build_suite",
    "check_suite",
    "read_suite_json",
]

#: Reasons a user expectation gives a quarantined row. `expectation` reads `type(column=...)`.
ROW_REASON = "expectation {expectation} failed (suite {suite!r})"
BATCH_REASON = "expectation {expectation} failed on this run's whole batch of {rows} rows (suite {suite!r}{observed})"
ERROR_REASON = "expectation {expectation} could not run: {message} (suite {suite!r})"
#: Config errors: the suite file named, then what is wrong.
SUITE_PROBLEM = "'checks.ingest.suite' {path}: {problem}"
_RESERVED = "audit_tasks."
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")
_SHOWN = 80  # characters of an observed value or GX message kept in a reason


@dataclass(frozen=True)
class SuiteCheck:
    """The user suite's verdict: per row (same order as the frame) a reason or None, and the saved result."""

    reasons: list[str | None]
    validation: SuiteValidation


def read_suite_json(path: StoragePath) -> dict[str, Any]:
    """The suite file as a mapping with a name and a list of {type, kwargs} expectations.

    Raises:
        ConfigError: unreadable, not JSON, or not the shape GX writes (naming the file and the problem).
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _problem(path, f"cannot read the suite file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise _problem(path, f"not valid JSON ({exc})") from None
    if not isinstance(raw, Mapping):
        raise _problem(path, "must be a JSON object (an ExpectationSuite as GX writes it)")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _problem(path, "needs a non-empty 'name'")
    if name.startswith(_RESERVED):
        raise _problem(path, f"suite names starting with {_RESERVED!r} are reserved for the built-in rules")
    expectations = raw.get("expectations")
    if not isinstance(expectations, list):
        raise _problem(path, "needs an 'expectations' list")
    for i, item in enumerate(expectations):
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
            raise _problem(path, f"expectation #{i + 1} needs a 'type' (GX 1.x writes 'type', not 'expectation_type')")
        if not isinstance(item.get("kwargs", {}), Mapping):
            raise _problem(path, f"expectation #{i + 1} ({item['type']}): 'kwargs' must be an object")
    return dict(raw)


def build_suite(path: StoragePath) -> Any:
    """The suite as a GX `ExpectationSuite`, every expectation built (and so checked) by GX itself.

    Raises:
        ConfigError: anything `read_suite_json` refuses, an unknown expectation type or kwargs GX refuses.
    """
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    raw = read_suite_json(path)
    expectations = []
    for i, item in enumerate(raw["expectations"]):
        fields = {k: v for k, v in item.items() if k not in {"id", "rendered_content"}}
        try:
            expectations.append(ExpectationConfiguration(**fields).to_domain_obj())
        except Exception as exc:  # noqa: BLE001 - GX raises pydantic, TypeError and its own errors alike
            detail = " ".join(str(exc).split())[:300]
            raise _problem(path, f"expectation #{i + 1} ({item['type']}) is not valid: {detail}") from None
    # Built expectations go in whole: GX's constructor would log and drop a bad dict instead of raising.
    return gx.ExpectationSuite(
        name=raw["name"], expectations=expectations, meta=raw.get("meta") or None, notes=raw.get("notes")
    )


def check_suite(suite: Any, frame: pd.DataFrame) -> SuiteCheck:
    """Run `suite` once over `frame` (its index is ignored: rows are named by position)."""
    from audit_tasks.validation import exception_message, gx_context, quiet_gx, run_suite

    data = frame.reset_index(drop=True)
    reasons: list[str | None] = [None] * len(data)
    with quiet_gx():
        result = run_suite(gx_context(), suite, data)
    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
    for outcome in sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order))):
        if outcome.success:
            continue
        config = outcome.expectation_config
        shown = _expectation(config.type, config.kwargs)
        rows = _failing_rows(outcome)
        if rows is not None:
            reason = ROW_REASON.format(expectation=shown, suite=suite.name)
        elif (error := exception_message(outcome)) is not None:
            reason = ERROR_REASON.format(expectation=shown, message=_short(error), suite=suite.name)
        else:
            observed = (outcome.result or {}).get("observed_value")
            note = f"; observed {_short(observed)}" if observed is not None else ""
            reason = BATCH_REASON.format(expectation=shown, rows=len(data), suite=suite.name, observed=note)
        for row in range(len(data)) if rows is None else rows:
            if reasons[row] is None:  # the first failed expectation of the suite names the row
                reasons[row] = reason
    return SuiteCheck(reasons, SuiteValidation(file_stem(suite.name), suite, bounded(result)))


def _failing_rows(outcome: Any) -> list[int] | None:
    """Positions GX named for a failed row-level expectation; None when it named none (table level)."""
    details = outcome.result if isinstance(outcome.result, Mapping) else {}
    if "unexpected_index_list" not in details:
        return None
    return sorted({int(i) for i in details["unexpected_index_list"] or []})


def _expectation(kind: str, kwargs: Mapping[str, Any]) -> str:
    """`expect_x(column=gender)`: the type and the columns it is about."""
    shown = ", ".join(f"{k}={_columns(kwargs[k])}" for k in _COLUMN_KWARGS if kwargs.get(k) is not None)
    return f"{kind}({shown})"


def _columns(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


def _short(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _problem(path: StoragePath, problem: str) -> ConfigError:
    return ConfigError(SUITE_PROBLEM.format(path=public_uri(path), problem=problem))
