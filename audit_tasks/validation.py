"""Row validation with Great Expectations: every rule is an expectation, every failed row gets a reason.

Rules that need more than one cell (regions against the image size, empty-looking attribute values) are
first turned into per-row helper columns (`_regions_error`: None or a message), which expectations then
check; so the whole rule set is one GX suite, and its COMPLETE result names each failing row by `_row`.

Image ids must be unique; the first row that passes every other rule keeps its id and later rows are
reported, so a row rejected for another reason never makes a good duplicate look bad.

Each suite's result is kept (bounded, see audit_tasks.gx_results) so the ingest can save it in the run
folder as GX users know it; a team's own suite runs through `run_suite` too (audit_tasks.gx_suite).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd

from audit_tasks.gx_results import SuiteValidation, bounded
from audit_tasks.manifest import parse_region_boxes

#: Values that mean "missing" in an attribute cell, case-insensitively, besides null and blank text.
MISSING_TEXT = frozenset({"nan", "none", "null"})
_ROW = "_row"


@dataclass(frozen=True)
class _Rule:
    """One expectation and how to word its failure for one row."""

    expectation: Any
    message: Callable[[Any], str]  # value of the failing cell -> reason
    table_level: bool = False  # True: a failure applies to every row (e.g. a missing column)


#: The built-in suites' names and their saved results' file stems (see audit_tasks.gx_results).
BUILTIN_SUITE = "audit_tasks.builtin_rules"
IDS_SUITE = "audit_tasks.unique_image_ids"
_STEMS = {BUILTIN_SUITE: "ingest_builtin_rules", IDS_SUITE: "ingest_builtin_unique_ids"}


@dataclass(frozen=True)
class RowValidation:
    """Per row (same index as the input) a reason or None, and the bounded GX result of each suite run."""

    reasons: pd.Series
    results: tuple[SuiteValidation, ...] = ()


def validate_rows(
    frame: pd.DataFrame, *, classes: Sequence[str] | None, attributes: Sequence[str], label_required: bool = True
) -> pd.Series:
    """Validate normalised manifest rows; return, per row (same index), a reason string or None.

    Checks: `image_uri` and `label` present and non-empty (the label may be absent or empty when not
    `label_required`: a multilabel model's truth is the tags); a given `label` in `classes` (skipped when None);
    `regions` well-formed and, when `width`/`height` columns are present, inside the image; each attribute
    column present with a non-empty value; `image_id` (when the column exists) unique. The reasons of every
    failed rule for a row are joined with "; ".
    """
    return check_rows(frame, classes=classes, attributes=attributes, label_required=label_required).reasons


def check_rows(
    frame: pd.DataFrame,
    *,
    classes: Sequence[str] | None,
    attributes: Sequence[str],
    prior: Sequence[str | None] | None = None,
    label_required: bool = True,
) -> RowValidation:
    """`validate_rows`, keeping each suite's GX result. `prior`: per row, a reason other checks found
    (the user's suite); it follows the built-in rules' reasons and, like them, keeps the row from claiming
    an image id, so a rejected row never makes a good duplicate look bad."""
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    if len(frame) == 0:
        return RowValidation(pd.Series([], index=frame.index, dtype=object))
    data = _helper_frame(frame, attributes)
    results: list[SuiteValidation] = []
    with quiet_gx():
        import great_expectations as gx  # noqa: F401 - imported here, quietly: a 3-5 s import only validation needs

        context = gx_context()
        rules = _row_rules(frame, classes, attributes, label_required=label_required)
        results += _run(context, BUILTIN_SUITE, data, rules, reasons)
        for r, extra in zip(reasons, prior or [None] * len(frame), strict=True):
            if extra:
                r.append(extra)
        if "image_id" in frame.columns:
            survivors = data[[not r for r in reasons]]
            if len(survivors):
                results += _run(context, IDS_SUITE, survivors, _id_rules(), reasons, first_wins=True, frame=frame)
    joined = pd.Series(["; ".join(r) if r else None for r in reasons], index=frame.index, dtype=object)
    return RowValidation(joined, tuple(results))


def is_empty_cell(value: Any) -> bool:
    """Whether a manifest cell holds nothing: None, NaN, blank text, or text such as 'nan'/'None'/'null'
    that exports write for nothing."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str):
        text = value.strip()
        return not text or text.lower() in MISSING_TEXT
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Helper columns and rules
# ---------------------------------------------------------------------------------------------


def _helper_frame(frame: pd.DataFrame, attributes: Sequence[str]) -> pd.DataFrame:
    """The columns GX checks: a positional `_row`, stripped values, and per-row rule outcomes."""
    data = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    data[_ROW] = range(len(frame))
    data["_image_uri"] = _text_column(frame, "image_uri")
    data["_label"] = _text_column(frame, "label")
    for i, attribute in enumerate(attributes):
        data[f"_attr_{i}"] = _text_column(frame, attribute)
    if "image_id" in frame.columns:
        data["_image_id"] = _text_column(frame, "image_id")
    if "regions" in frame.columns:
        widths = frame["width"].tolist() if "width" in frame.columns else [None] * len(frame)
        heights = frame["height"].tolist() if "height" in frame.columns else [None] * len(frame)
        data["_regions_error"] = pd.Series(
            [_regions_error(raw, w, h) for raw, w, h in zip(frame["regions"].tolist(), widths, heights, strict=True)],
            index=data.index,
            dtype=object,
        )
    return data


def _text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series([None] * len(frame), dtype=object)
    values = [None if is_empty_cell(v) else str(v).strip() for v in frame[column].tolist()]
    return pd.Series(values, dtype=object)


def _regions_error(raw: Any, width: Any, height: Any) -> str | None:
    w = None if is_empty_cell(width) else int(width)
    h = None if is_empty_cell(height) else int(height)
    try:
        parse_region_boxes(raw, width=w, height=h)
    except ValueError as exc:
        return str(exc)
    return None


def _fixed(message: str) -> Callable[[Any], str]:
    """A rule's message that does not depend on the failing value."""
    return lambda _value: message


def _row_rules(
    frame: pd.DataFrame, classes: Sequence[str] | None, attributes: Sequence[str], *, label_required: bool = True
) -> list[_Rule]:
    import great_expectations.expectations as gxe

    rules: list[_Rule] = []
    for column in ("image_uri", "label") if label_required else ("image_uri",):
        if column not in frame.columns:
            rules.append(
                _Rule(
                    gxe.ExpectColumnToExist(column=column),
                    _fixed(f"required column '{column}' is missing"),
                    table_level=True,
                )
            )
        else:
            rules.append(_Rule(gxe.ExpectColumnValuesToNotBeNull(column=f"_{column}"), _fixed(f"{column} is empty")))
    if classes is not None and "label" in frame.columns:
        shown = ", ".join(classes)
        rules.append(
            _Rule(
                gxe.ExpectColumnValuesToBeInSet(column="_label", value_set=list(classes)),
                lambda v: f"label {v!r} is not one of the model classes [{shown}]",
            )
        )
    if "regions" in frame.columns:
        rules.append(_Rule(gxe.ExpectColumnValuesToBeNull(column="_regions_error"), lambda v: str(v)))
    for i, attribute in enumerate(attributes):
        if attribute not in frame.columns:
            rules.append(
                _Rule(
                    gxe.ExpectColumnToExist(column=attribute),
                    _fixed(f"attribute column '{attribute}' is missing"),
                    table_level=True,
                )
            )
        else:
            rules.append(
                _Rule(
                    gxe.ExpectColumnValuesToNotBeNull(column=f"_attr_{i}"),
                    _fixed(f"attribute '{attribute}' is empty"),
                )
            )
    return rules


def _id_rules() -> list[_Rule]:
    import great_expectations.expectations as gxe

    return [_Rule(gxe.ExpectColumnValuesToBeUnique(column="_image_id"), lambda v: f"image_id {v!r} is not unique")]


# ---------------------------------------------------------------------------------------------
# Running GX
# ---------------------------------------------------------------------------------------------


def gx_context() -> Any:
    """A fresh in-memory GX context: no files, no analytics, no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run(
    context: Any,
    name: str,
    data: pd.DataFrame,
    rules: list[_Rule],
    reasons: list[list[str]],
    *,
    first_wins: bool = False,
    frame: pd.DataFrame | None = None,
) -> list[SuiteValidation]:
    """Run `rules` as one suite over `data`, append each failing row's reason to `reasons`, and return the
    suite with its bounded result (none when there is no rule)."""
    import great_expectations as gx

    if not rules:
        return []
    for i, rule in enumerate(rules):
        rule.expectation.meta = {"rule": i}
    suite = gx.ExpectationSuite(name=name, expectations=[rule.expectation for rule in rules])
    result = run_suite(context, suite, data.reset_index(drop=True), index_column=_ROW)
    for outcome in sorted(result.results, key=lambda r: r.expectation_config.meta["rule"]):
        rule = rules[outcome.expectation_config.meta["rule"]]
        error = exception_message(outcome)
        if error is not None:
            message = f"validation could not run ({error})"
            for r in reasons:
                r.append(message)
            continue
        if outcome.success:
            continue
        if rule.table_level:
            message = rule.message(None)
            for r in reasons:
                r.append(message)
            continue
        failing = [(int(item[_ROW]), _cell(item)) for item in outcome.result.get("unexpected_index_list") or []]
        if first_wins:
            _first_wins(failing, reasons, frame)
        else:
            for row, value in failing:
                reasons[row].append(rule.message(value))
    return [SuiteValidation(_STEMS[name], suite, bounded(result))]


def run_suite(context: Any, suite: Any, data: pd.DataFrame, *, index_column: str | None = None) -> Any:
    """Add `suite` to `context` and run it once over `data` with COMPLETE results (every failing row is
    named: by `index_column` when given, else by `data`'s index); returns the ExpectationSuiteValidationResult.
    Names are the suite's own: one context holds each suite once."""
    import great_expectations as gx

    name = suite.name
    batch = (
        context.data_sources.add_pandas(f"{name}.data")
        .add_dataframe_asset("manifest_rows")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result_format: dict[str, Any] = {"result_format": "COMPLETE"}
    if index_column is not None:
        result_format["unexpected_index_column_names"] = [index_column]
    return definition.run(batch_parameters={"dataframe": data}, result_format=result_format)


def exception_message(outcome: Any) -> str | None:
    """The message of an exception GX raised evaluating one expectation, else None. GX reports it at the top
    of `exception_info` or, for a metric that failed, under each metric's id."""
    info = outcome.exception_info or {}
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for entry in candidates:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def _first_wins(failing: list[tuple[int, Any]], reasons: list[list[str]], frame: pd.DataFrame | None) -> None:
    first: dict[Any, int] = {}
    for row, value in sorted(failing):
        if value not in first:
            first[value] = row
            continue
        reasons[row].append(f"image_id {value!r} is not unique: already used by {_where(frame, first[value])}")


def _where(frame: pd.DataFrame | None, row: int) -> str:
    if frame is not None and {"manifest", "row_number"} <= set(frame.columns):
        return f"manifest {frame['manifest'].iloc[row]} row {frame['row_number'].iloc[row]}"
    return f"row {row + 1}"


def _cell(item: dict[str, Any]) -> Any:
    values = [v for k, v in item.items() if k != _ROW]
    return values[0] if values else None


@contextmanager
def quiet_gx() -> Iterator[None]:
    """Raise GX's loggers to WARNING for the call and restore them after (no global change survives)."""
    loggers = [logging.getLogger(n) for n in ("great_expectations", "great_expectations.core", "posthog")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)
