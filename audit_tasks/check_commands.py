"""The standalone checks (`check-cooccurrence`, `check-subgroups`): one check on one table, no images.

They write the same tables and `gates.parquet` that `audit` writes for that check, straight into the
output folder, so a data team can run a check on a manifest before anything is ingested. The config's
policy applies as in `audit`: its `warn` tiers and waivers (a waiver naming no gate of this check's, when
the check judged something, is a config error); there is no run history here, so no baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from audit_tasks import schemas
from audit_tasks.catalog import CATALOG_COLUMNS
from audit_tasks.config import AuditConfig, CooccurrenceCheck, SubgroupCheck, default_checks
from audit_tasks.errors import ManifestError
from audit_tasks.gates import GateResult, Verdict, gates_frame, verdict
from audit_tasks.storage import StoragePath
from audit_tasks.tables import write_table

#: Columns that are never subgroup attributes when attributes are inferred from a table: the catalog's
#: own columns and a model's outputs.
NON_ATTRIBUTE_COLUMNS = frozenset(CATALOG_COLUMNS) | frozenset(
    {
        "prediction",
        "confidence",
        "score",
        "scores",
        "predicted_labels",
        "correct",
        "target_class",
    }
)


@dataclass(frozen=True)
class CheckOutcome:
    """What a standalone check wrote and its verdict."""

    out_dir: StoragePath
    verdict: Verdict
    gates: tuple[GateResult, ...]


def infer_attributes(columns: Sequence[str]) -> tuple[str, ...]:
    """Without a configured attribute list, every non-reserved column is a subgroup attribute."""
    return tuple(c for c in columns if c not in NON_ATTRIBUTE_COLUMNS and not c.startswith("_"))


def run_cooccurrence_check(
    manifest: StoragePath, config: AuditConfig | None, out_dir: StoragePath, *, today: date | None = None
) -> CheckOutcome:
    """Co-occurrence balance on a manifest's tags and attributes, touching no image (`today` decides
    whether a waiver has expired; default: the date today)."""
    from audit_tasks.cooccurrence import check_cooccurrence
    from audit_tasks.manifest import read_manifest_table
    from audit_tasks.pipeline import write_cooccurrence_tables

    checks = config.checks if config is not None else default_checks()
    check = checks.cooccurrence or CooccurrenceCheck()
    table = read_manifest_table(manifest)
    if config is not None and config.checks.cooccurrence_attributes():
        attributes = config.checks.cooccurrence_attributes()
    else:
        attributes = infer_attributes(table.column_names)
    missing = [a for a in attributes if a not in table.column_names]
    if missing:
        raise ManifestError(f"{manifest}: configured attribute column(s) missing: {', '.join(missing)}")
    label_column = "label" if "label" in table.column_names else None
    result = check_cooccurrence(table, check=check, attributes=attributes, label_column=label_column)
    from audit_tasks.cooccurrence import pair_gate_names

    out_dir.mkdir(parents=True, exist_ok=True)
    write_cooccurrence_tables(result, out_dir)
    return _finish(out_dir, result.gates, config, known=pair_gate_names(result.pairs), today=today)


def run_subgroup_check(
    predictions: Path, config: AuditConfig | None, out_dir: StoragePath, *, today: date | None = None
) -> CheckOutcome:
    """Subgroup metrics on a table with `label`, `prediction` and attribute columns (a multilabel model's
    config: `tags` and `predicted_labels`, lists or `|`-separated; `today`: as above)."""
    from audit_tasks.pipeline import write_subgroup_tables
    from audit_tasks.subgroups import check_subgroups, check_subgroups_multilabel

    frame = read_prediction_table(Path(predictions))
    model = config.model if config is not None else None
    multilabel = model is not None and model.task == "multilabel"
    for column in ("tags", "predicted_labels") if multilabel else ("label", "prediction"):
        if column not in frame.columns:
            raise ManifestError(f"{predictions}: required column '{column}' is missing")
    checks = config.checks if config is not None else default_checks()
    check = checks.subgroups or SubgroupCheck()
    if not check.attributes:
        check = check.model_copy(update={"attributes": infer_attributes(list(frame.columns))})
    missing = [a for a in check.attributes if a not in frame.columns]
    if missing:
        raise ManifestError(f"{predictions}: configured attribute column(s) missing: {', '.join(missing)}")
    if model is not None and multilabel:
        result = check_subgroups_multilabel(
            frame, check=check, classes=model.classes, positive_class=check.positive_class
        )
    else:
        classes = model.classes if model is not None else None
        result = check_subgroups(frame, check=check, classes=classes, positive_class=check.positive_class)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_subgroup_tables(result, out_dir)
    return _finish(out_dir, result.gates, config, today=today)


def read_prediction_table(path: Path) -> pd.DataFrame:
    """A predictions table (CSV, JSON Lines or Parquet) with labels and predictions as strings."""
    if not path.is_file():
        raise ManifestError(f"predictions file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            raise ManifestError(f"{path}: unsupported table format '{suffix}' (use .csv, .jsonl or .parquet)")
    except ManifestError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read predictions table {path}: {exc}") from exc
    for column in ("label", "prediction"):
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v: None if v is None or v != v else str(v))
    return frame


def _finish(
    out_dir: StoragePath,
    gates: list[GateResult],
    config: AuditConfig | None,
    *,
    known: Sequence[str] = (),
    today: date | None,
) -> CheckOutcome:
    """Rule the gates by the config's policy (none without a config), then write gates.parquet."""
    from audit_tasks.policy import apply_policy, check_waivers

    if config is not None:
        policy = config.policy
        check_waivers(
            policy.waivers,
            [*(g.name for g in gates), *known],
            {g.check for g in gates if g.judged or not g.passed},
            where=str(config.source) if config.source else "config",
        )
        gates = list(apply_policy(gates, policy, baseline=None, today=today or date.today()).gates)
    write_table(gates_frame(gates), out_dir / "gates.parquet", name="gates", schema=schemas.GATES)
    return CheckOutcome(out_dir, verdict(gates), tuple(gates))
