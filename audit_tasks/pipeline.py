"""Stage functions: the one implementation of the audit that every shell (CLI, Airflow) calls.

Each stage takes the parsed config and a run id, reads what earlier stages left in the run folder and
writes its own files atomically, so any stage can be retried or re-run and gives the same tables.
Intermediate files live in `<run>/_stages/`; the contract's tables sit at the top of the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd

from audit_tasks import schemas
from audit_tasks.config import IMAGE_PROPERTY_NAMES, AuditConfig, PolicyConfig
from audit_tasks.errors import AuditError, ConfigError
from audit_tasks.gates import INCONCLUSIVE, GateResult, Verdict, check_status, gates_frame, gates_from_frame, verdict
from audit_tasks.history import Baseline
from audit_tasks.policy import PolicyOutcome, apply_policy, audit_fingerprint, check_waivers
from audit_tasks.run_ids import check_run_id  # also the shells' pipeline.check_run_id
from audit_tasks.storage import FileOpener, StoragePath, parquet_rows, parquet_schema, public_uri, storage_path
from audit_tasks.tables import read_table, write_json, write_table

log = logging.getLogger("audit_tasks")

#: Order in which check gates appear in gates.parquet and the report.
GATE_FILES = (
    "ingest",
    "cooccurrence",
    "saliency",
    "saliency_pairs",
    "strategies",
    "subgroups",
    "leakage",
    "rarity",
)


@dataclass(frozen=True)
class AuditOutcome:
    """What `run_audit` produced: the verdict and where to find everything."""

    run_id: str
    run_dir: StoragePath
    verdict: Verdict
    report_path: StoragePath
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------


def new_run_id(now: datetime | None = None) -> str:
    """A fresh, sortable, filename-safe run id (UTC time plus a short random suffix)."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def run_dir(config: AuditConfig, run_id: str) -> StoragePath:
    """`<output.dir>/<run_id>`: a local folder or an object-store prefix."""
    return storage_path(config.output.dir) / check_run_id(run_id)


def _stages(config: AuditConfig, run_id: str) -> StoragePath:
    return run_dir(config, run_id) / "_stages"


def _gates_path(config: AuditConfig, run_id: str, check: str) -> StoragePath:
    return _stages(config, run_id) / f"gates_{check}.parquet"


def _write_gates(config: AuditConfig, run_id: str, check: str, gates: list[GateResult]) -> None:
    write_table(gates_frame(gates), _gates_path(config, run_id, check), name=f"gates_{check}", schema=schemas.GATES)


def _clear_gates(config: AuditConfig, run_id: str, check: str) -> None:
    _gates_path(config, run_id, check).unlink(missing_ok=True)


def _skip_check(config: AuditConfig, run_id: str, check: str, tables: tuple[str, ...]) -> None:
    """A check not configured leaves nothing behind, not even a stale table from an earlier attempt."""
    for name in tables:
        (run_dir(config, run_id) / name).unlink(missing_ok=True)
    _clear_gates(config, run_id, check)


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def stage_ingest(config: AuditConfig, run_id: str):  # -> ingest.IngestResult
    """Ingest new manifests, write the run's quarantine and the rows to audit."""
    from audit_tasks.catalog import read_catalog
    from audit_tasks.gx_results import write_validations
    from audit_tasks.ingest import ingest, ingest_gate

    dataset = config.require_dataset()
    result = ingest(config, run_id)
    stages = _stages(config, run_id)
    scope = choose_audit_scope(config, run_id)
    write_json(dataclasses.asdict(scope), stages / "scope.json")
    if scope.scope == "catalog":
        audit_rows = read_catalog(dataset.catalog)
    else:
        audit_rows = result.accepted
    if scope.reason:
        log.info("audit scope: %s (%s)", scope.scope, scope.reason)
    audit_rows = audit_rows.sort_values(["image_id"], kind="stable").reset_index(drop=True)
    write_table(schemas.to_strings(result.quarantined), stages / "quarantine_ingest.parquet", name="quarantine_ingest")
    write_table(audit_rows, stages / "audit_rows.parquet", name="audit_rows")
    counts = {
        "manifests": int(len(result.manifests)),
        "rows_in": int(result.rows_in),
        "ingested": int(len(result.accepted)),
        "quarantined_at_ingest": int(len(result.quarantined)),
        "to_audit": int(len(audit_rows)),
    }
    write_json(counts, stages / "ingest.json")
    write_table(result.manifests, stages / "manifests.parquet", name="manifests")
    docs = config.checks.ingest is not None and config.checks.ingest.data_docs
    write_validations(result.validations, run_dir(config, run_id), data_docs=docs)  # validation/*.json (GX)
    # Until scoring runs, the run's quarantine is the ingest quarantine.
    _write_quarantine(config, run_id, scoring_rejected=None)
    if config.checks.ingest is not None:
        _write_gates(config, run_id, "ingest", ingest_gate(result, config.checks.ingest))
    else:
        _clear_gates(config, run_id, "ingest")
    log.info(
        "ingest: %(manifests)d manifest(s), %(ingested)d row(s) accepted, "
        "%(quarantined_at_ingest)d quarantined, %(to_audit)d to audit",
        counts,
    )
    return result


@dataclass(frozen=True)
class AuditScope:
    """Which rows this run audits, and why: the configured scope, widened when the model changed."""

    scope: str  # "run" (this run's new rows) | "catalog" (every row ever ingested)
    reason: str
    model_fingerprint: str | None
    previous_model_fingerprint: str | None


def choose_audit_scope(config: AuditConfig, run_id: str) -> AuditScope:
    """`audit_scope: run` audits the new rows, but a new model with no new data is still a reason to audit:
    when the model differs from the last recorded run's, the run audits the whole catalog instead."""
    from audit_tasks.history import last_model_fingerprint
    from audit_tasks.modelio import model_fingerprint

    configured = config.require_dataset().audit_scope
    fingerprint = model_fingerprint(config.model) if config.model is not None else None
    previous = last_model_fingerprint(storage_path(config.output.dir), run_id)
    if configured == "catalog":
        return AuditScope("catalog", "", fingerprint, previous)
    if fingerprint is not None and previous is not None and fingerprint != previous:
        return AuditScope(
            "catalog",
            f"the model changed since the last run ({previous} -> {fingerprint}): "
            "auditing the whole catalog with the new model",
            fingerprint,
            previous,
        )
    return AuditScope("run", "", fingerprint, previous)


def read_audit_scope(config: AuditConfig, run_id: str) -> AuditScope | None:
    """The scope the ingest stage chose (None for a run ingested before scopes were recorded)."""
    path = _stages(config, run_id) / "scope.json"
    if not path.is_file():
        return None
    return AuditScope(**json.loads(path.read_text(encoding="utf-8")))


def audit_rows(config: AuditConfig, run_id: str) -> pd.DataFrame:
    path = _stages(config, run_id) / "audit_rows.parquet"
    if not path.is_file():
        raise AuditError(f"{path} is missing: run the ingest stage for run {run_id} first")
    return read_table(path)


def plan_shards(config: AuditConfig, run_id: str, shard_size: int) -> int:
    """How many saliency shards of at most `shard_size` rows the audit rows split into."""
    if shard_size < 1:
        raise ConfigError(f"shard size must be at least 1; got {shard_size}")
    n = len(audit_rows(config, run_id))
    return max(1, math.ceil(n / shard_size)) if n else 1


def _shard_slice(n_rows: int, shard: int, num_shards: int) -> slice:
    bounds = np.linspace(0, n_rows, num_shards + 1).round().astype(int)
    return slice(int(bounds[shard]), int(bounds[shard + 1]))


def _shard_paths(config: AuditConfig, run_id: str, shard: int, num_shards: int) -> tuple[StoragePath, StoragePath]:
    stem = f"shard-{shard:05d}-of-{num_shards:05d}"
    stages = _stages(config, run_id)
    return stages / f"images_{stem}.parquet", stages / f"rejected_{stem}.parquet"


def stage_saliency(
    config: AuditConfig, run_id: str, shard: int | None = None, num_shards: int | None = None
) -> StoragePath | None:
    """Run the model and Grad-CAM over (one shard of) the audit rows.

    Without a shard this is the whole single-process stage: it scores every row and merges at once.
    """
    from audit_tasks.modelio import load_model
    from audit_tasks.scoring import score_images

    model_config = config.require_model()
    if shard is None:
        stage_saliency(config, run_id, 0, 1)
        return stage_merge_shards(config, run_id, 1)
    if num_shards is None or not (0 <= shard < num_shards):
        raise ConfigError(f"shard {shard} is not within 0..{(num_shards or 0) - 1}")
    rows = audit_rows(config, run_id)
    rows = rows.iloc[_shard_slice(len(rows), shard, num_shards)].reset_index(drop=True)
    images_path, rejected_path = _shard_paths(config, run_id, shard, num_shards)
    model = load_model(model_config)
    progress = _progress_logger(f"saliency shard {shard + 1}/{num_shards}", len(rows))
    result = score_images(
        model,
        rows,
        model_config=model_config,
        saliency_config=config.saliency,
        attributes=config.attribute_columns(),
        run_id=run_id,
        progress=progress,
        check=config.checks.saliency,
        opener=_image_opener(config),
        measure_properties=config.checks.image_properties.enabled,
        collect_features=config.checks.rarity is not None,
    )
    rejected = _rejected_rows(rows, result.rejected)
    write_table(result.images, images_path, name="images_shard")
    write_table(schemas.to_strings(rejected), rejected_path, name="rejected_shard")
    log.info(
        "saliency shard %d/%d: %d image(s) scored, %d rejected",
        shard + 1,
        num_shards,
        len(result.images),
        len(rejected),
    )
    return images_path


def _rejected_rows(rows: pd.DataFrame, rejected: pd.DataFrame) -> pd.DataFrame:
    """Rows the scoring stage could not use, as quarantine rows (the row as ingested plus a reason)."""
    if rejected is None or rejected.empty:
        return pd.DataFrame(columns=[*rows.columns, "reason", "stage"])
    picked = rows.iloc[rejected["position"].to_numpy()].reset_index(drop=True).copy()
    picked["reason"] = rejected["reason"].to_numpy()
    picked["stage"] = "scoring"
    return picked


def stage_merge_shards(config: AuditConfig, run_id: str, num_shards: int) -> StoragePath | None:
    """Merge the shard parts into images.parquet and the run's quarantine; summarise saliency."""
    from audit_tasks.regions import summarize_saliency
    from audit_tasks.scoring import FEATURES_COLUMN

    parts, rejected_parts = [], []
    for shard in range(num_shards):
        images_path, rejected_path = _shard_paths(config, run_id, shard, num_shards)
        if not images_path.is_file() or not rejected_path.is_file():
            raise AuditError(f"saliency shard {shard} of {num_shards} has not finished ({images_path} missing)")
        parts.append(read_table(images_path))
        rejected_parts.append(read_table(rejected_path))
    images = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    images = images.sort_values("image_id", kind="stable").reset_index(drop=True)
    rejected = pd.concat(rejected_parts, ignore_index=True) if rejected_parts else pd.DataFrame()
    rd = run_dir(config, run_id)
    _write_features(config, run_id, images)
    images = images.drop(columns=[FEATURES_COLUMN], errors="ignore")
    target = write_table(images, rd / "images.parquet", name="images", schema=schemas.images_schema(images))
    _write_quarantine(config, run_id, scoring_rejected=rejected)
    if config.checks.image_properties.enabled and len(images):
        from audit_tasks.catalog import write_measured_properties

        write_measured_properties(config.require_dataset().catalog, run_id, images)
    if config.checks.saliency is not None:
        summary = summarize_saliency(images, config.checks.saliency)
        write_table(
            summary.by_class,
            rd / "saliency_by_class.parquet",
            name="saliency_by_class",
            schema=schemas.SALIENCY_BY_CLASS,
        )
        _write_gates(config, run_id, "saliency", summary.gates)
    else:
        _skip_check(config, run_id, "saliency", ("saliency_by_class.parquet",))
    return target


def _features_path(config: AuditConfig, run_id: str) -> StoragePath:
    return _stages(config, run_id) / "features.parquet"


def _write_features(config: AuditConfig, run_id: str, images: pd.DataFrame) -> None:
    """The penultimate features the scoring pass collected for the rarity check, beside images.parquet (which
    does not grow by them), in the same image order; removed when this run collected none."""
    from audit_tasks.scoring import FEATURES_COLUMN

    path = _features_path(config, run_id)
    if FEATURES_COLUMN not in images.columns:
        path.unlink(missing_ok=True)
        return
    frame = images[["image_id", FEATURES_COLUMN]]
    write_table(frame, path, name="features", schema=schemas.FEATURES)


def _write_quarantine(config: AuditConfig, run_id: str, scoring_rejected: pd.DataFrame | None) -> StoragePath:
    ingest_part = read_table(_stages(config, run_id) / "quarantine_ingest.parquet")
    frames = [ingest_part]
    if scoring_rejected is not None and not scoring_rejected.empty:
        frames.append(scoring_rejected)
    quarantine = pd.concat(frames, ignore_index=True) if len(frames) > 1 else ingest_part
    return write_table(
        schemas.quarantine_frame(quarantine), run_dir(config, run_id) / "quarantine.parquet", name="quarantine"
    )


def stage_cooccurrence(config: AuditConfig, run_id: str) -> StoragePath | None:
    """Co-occurrence balance over the whole catalog's tags and attributes, and of the labels with the image
    properties' bins (no image is decoded here: the pixel properties were measured while scoring)."""
    from audit_tasks.catalog import read_catalog_table
    from audit_tasks.cooccurrence import check_cooccurrence, check_label_properties, merge_results

    check = config.checks.cooccurrence
    rd = run_dir(config, run_id)
    if check is None:
        _skip_check(config, run_id, "cooccurrence", ("cooccurrence.parquet", "class_balance.parquet"))
        return None
    attributes = config.checks.cooccurrence_attributes()
    # Only what the check reads; a configured attribute no row has stays absent and the check names it.
    wanted = ["tags", "label", *attributes]
    catalog = read_catalog_table(config.require_dataset().catalog, columns=wanted, dictionary=wanted)
    result = check_cooccurrence(catalog, check=check, attributes=attributes)
    bins = catalog_property_bins(config)
    if bins is not None:
        labels = bins["label"].astype(object)
        result = merge_results(
            result, check_label_properties(labels, bins.drop(columns=["image_id", "label"]), check=check)
        )
    target = write_cooccurrence_tables(result, rd)
    _write_gates(config, run_id, "cooccurrence", result.gates)
    return target


def catalog_property_bins(config: AuditConfig) -> pd.DataFrame | None:
    """`image_id`, `label` and one bin column per configured image property, over the whole catalog (None
    when the properties are off). The header properties come from the catalog, the pixel properties from
    what the scoring stage measured (null for an image never scored); binning over the catalog gives
    `brightness=q5` the same meaning in every check of the run."""
    from audit_tasks.catalog import read_catalog_table, read_measured_properties
    from audit_tasks.image_properties import PIXEL_COLUMNS, PROPERTY_COLUMNS, bin_properties

    measured = config.checks.image_properties
    if not measured.enabled or not measured.properties:
        return None
    catalog = config.require_dataset().catalog
    header = [PROPERTY_COLUMNS[p] for p in measured.properties if PROPERTY_COLUMNS[p] not in PIXEL_COLUMNS]
    table = read_catalog_table(catalog, columns=list(dict.fromkeys(["image_id", "label", *header])))
    frame = table.to_pandas()
    if "label" not in frame:
        frame["label"] = None
    pixels = read_measured_properties(catalog)
    frame = frame.merge(pixels, on="image_id", how="left", validate="many_to_one") if len(frame) else frame
    bins = bin_properties(frame, measured.properties, measured.bins)
    return pd.concat([frame[["image_id", "label"]], bins], axis=1)


def write_cooccurrence_tables(result, out_dir: StoragePath) -> StoragePath:
    """Write a CooccurrenceResult's tables into `out_dir` (shared by `audit` and `check-cooccurrence`)."""
    write_table(
        result.class_balance, out_dir / "class_balance.parquet", name="class_balance", schema=schemas.CLASS_BALANCE
    )
    return write_table(result.pairs, out_dir / "cooccurrence.parquet", name="cooccurrence", schema=schemas.COOCCURRENCE)


def _scored_images(config: AuditConfig, run_id: str) -> StoragePath:
    """The run's images.parquet, which the checks after scoring read; an AuditError until it exists."""
    images_path = run_dir(config, run_id) / "images.parquet"
    if not images_path.is_file():
        raise AuditError(f"{images_path} is missing: run the saliency stage for run {run_id} first")
    return images_path


def stage_subgroups(config: AuditConfig, run_id: str) -> StoragePath | None:
    """Subgroup metrics with confidence intervals over the audited images' predictions (sets, for multilabel)."""
    from audit_tasks.subgroups import check_subgroups, check_subgroups_multilabel, merge_subgroup_results

    check = config.checks.subgroups
    rd = run_dir(config, run_id)
    if check is None:
        _skip_check(config, run_id, "subgroups", ("subgroups.parquet", "confusion.parquet"))
        return None
    images_path = _scored_images(config, run_id)
    # Only what the check reads: the CAM column alone is most of a large images table.
    model = config.require_model()
    multilabel = model.task == "multilabel"
    present = set(parquet_schema(images_path).names)
    wanted = ["tags", "predicted_labels"] if multilabel else ["label", "prediction"]
    wanted += list(check.attributes)
    images = read_table(images_path, columns=[c for c in wanted if c in present])  # missing: the check names it
    checker = check_subgroups_multilabel if multilabel else check_subgroups
    result = checker(images, check=check, classes=model.classes, positive_class=check.positive_class)
    by_property = _subgroups_by_property(config, images_path, check, checker, wanted[:2])
    if by_property is not None:
        gated = config.checks.image_properties.subgroups == "gate"
        result = merge_subgroup_results(result, by_property, gated=gated)
    target = write_subgroup_tables(result, rd)
    _write_gates(config, run_id, "subgroups", result.gates)
    return target


def _subgroups_by_property(
    config: AuditConfig, images_path: StoragePath, check, checker, truth_and_prediction: list[str]
):  # -> SubgroupResult | None
    """The subgroup metric across the image properties' catalog-wide bins: each property alone (never
    intersected), as a family of its own, so the comparisons add no multiplicity to the attributes' tests.
    `checker` is the subgroup check of the model's task, reading `truth_and_prediction` columns."""
    if config.checks.image_properties.subgroups == "off":
        return None
    bins = catalog_property_bins(config)
    if bins is None:
        return None
    clash = set(check.attributes)  # an attribute column of the same name wins
    properties = [p for p in config.checks.image_properties.properties if p not in clash]
    if not properties:
        return None
    images = read_table(images_path, columns=["image_id", *truth_and_prediction])
    images = images.merge(bins[["image_id", *properties]], on="image_id", how="left", validate="many_to_one")
    by_property = check.model_copy(update={"attributes": tuple(properties), "intersections": False})
    return checker(
        images, check=by_property, classes=config.require_model().classes, positive_class=check.positive_class
    )


def write_subgroup_tables(result, out_dir: StoragePath) -> StoragePath:
    """Write a SubgroupResult's tables into `out_dir` (shared by `audit` and `check-subgroups`)."""
    write_table(result.confusion, out_dir / "confusion.parquet", name="confusion", schema=schemas.CONFUSION)
    return write_table(result.groups, out_dir / "subgroups.parquet", name="subgroups", schema=schemas.SUBGROUPS)


def stage_leakage(config: AuditConfig, run_id: str) -> StoragePath | None:
    """Multilabel prediction leakage (audit_tasks.leakage) over the audited images' true and predicted sets,
    and class b's Grad-CAM on the worst images of each flagged pair (a handful, for the report)."""
    from audit_tasks.leakage import check_leakage, worst_images

    check = config.checks.leakage
    rd = run_dir(config, run_id)
    if check is None:
        _skip_check(config, run_id, "leakage", ("leakage.parquet", "leakage_images.parquet"))
        return None
    images_path = _scored_images(config, run_id)
    model_config = config.require_model()
    present = set(parquet_schema(images_path).names)
    wanted = ["image_id", "image_path", "tags", "predicted_labels", "scores"]
    images = read_table(images_path, columns=[c for c in wanted if c in present])  # missing: the check names it
    result = check_leakage(images, classes=model_config.classes, check=check)
    worst = worst_images(images, result.pairs, classes=model_config.classes, count=check.worst_images)
    write_table(
        _leakage_cams(config, images, worst),
        rd / "leakage_images.parquet",
        name="leakage_images",
        schema=schemas.LEAKAGE_IMAGES,
    )
    target = write_table(result.pairs, rd / "leakage.parquet", name="leakage", schema=schemas.LEAKAGE)
    _write_gates(config, run_id, "leakage", result.gates)
    return target


def _leakage_cams(config: AuditConfig, images: pd.DataFrame, worst: pd.DataFrame) -> pd.DataFrame:
    """The worst images of the flagged pairs with class b's Grad-CAM (the model is loaded only when some pair leaks)."""
    from audit_tasks.modelio import load_model
    from audit_tasks.scoring import explain_classes, true_labels

    model_config = config.require_model()
    out = worst.drop(columns=["position"]).assign(cam=None, cam_height=None, cam_width=None)
    if worst.empty:
        return out
    index = {c: j for j, c in enumerate(model_config.classes)}
    picked = images.iloc[worst["position"].to_numpy()].reset_index(drop=True)
    out["true_labels"] = [true_labels(v, model_config.classes) for v in picked["tags"]]
    out["predicted_labels"] = [list(v) for v in picked["predicted_labels"]]
    rows = picked[["image_path"]]
    cams = explain_classes(
        load_model(model_config),
        rows,
        [index[b] for b in worst["tag_b"]],
        model_config=model_config,
        saliency_config=config.saliency,
        opener=_image_opener(config),
    ).set_index("position")
    for column in ("cam", "cam_height", "cam_width"):
        out[column] = [cams[column].get(i) for i in range(len(out))]
    return out


def stage_saliency_pairs(config: AuditConfig, run_id: str) -> StoragePath | None:
    """Co-occurrence-aware saliency (audit_tasks.saliency_pairs): needs images.parquet and, when the
    co-occurrence check runs, cooccurrence.parquet, so it runs after both (before the gate stage)."""
    from audit_tasks.saliency_pairs import candidate_pairs, summarize_pairs

    check = config.checks.saliency
    rd = run_dir(config, run_id)
    images_path = rd / "images.parquet"
    if check is None or not images_path.is_file():
        _skip_check(config, run_id, "saliency_pairs", ("saliency_pairs.parquet",))
        return None
    co_path = rd / "cooccurrence.parquet"
    co = read_table(co_path) if config.checks.cooccurrence is not None and co_path.is_file() else None
    configured = check.pair_list()
    # tag_b must be a tag: not `attribute=value`, nor the `property=bin` / `label=class` of image properties
    not_tags = [*config.checks.cooccurrence_attributes(), *IMAGE_PROPERTY_NAMES, "label"]
    pairs = candidate_pairs(co, configured, config.require_model().classes, attributes=not_tags)
    present = set(parquet_schema(images_path).names)
    wanted = ["label", "region_shares", "core_share", "core_enrichment"]
    images = read_table(images_path, columns=[c for c in wanted if c in present])
    summary = summarize_pairs(images, pairs, check, configured=configured)
    target = write_table(
        summary.pairs, rd / "saliency_pairs.parquet", name="saliency_pairs", schema=schemas.SALIENCY_PAIRS
    )
    _write_gates(config, run_id, "saliency_pairs", summary.gates)
    return target


def stage_strategies(config: AuditConfig, run_id: str) -> StoragePath | None:
    """Saliency strategies (audit_tasks.strategies): each class's stored Grad-CAMs clustered, a fixed spot off
    the centre or off the object flagged; needs only images.parquet (no regions, no second model pass)."""
    from audit_tasks.strategies import check_strategies

    check = config.checks.strategies
    if check is None:
        _skip_check(config, run_id, "strategies", ("strategies.parquet",))
        return None
    images_path = _scored_images(config, run_id)
    present = set(parquet_schema(images_path).names)
    wanted = ["image_id", "target_class", "label", "correct", "cam", "cam_height", "cam_width", "regions", "core_share"]
    images = read_table(images_path, columns=[c for c in wanted if c in present])
    try:
        result = check_strategies(images, check)
    except ValueError as exc:
        raise AuditError(f"{images_path}: {exc}") from None
    target = write_table(
        result.clusters, run_dir(config, run_id) / "strategies.parquet", name="strategies", schema=schemas.STRATEGIES
    )
    _write_gates(config, run_id, "strategies", result.gates)
    return target


def stage_rarity(config: AuditConfig, run_id: str) -> StoragePath | None:
    """Rarity from the model's penultimate features (audit_tasks.rarity) and sample_weights.parquet
    (audit_tasks.sample_weights); needs images.parquet, the features the scoring pass collected and, for the
    pair weights, cooccurrence.parquet, so it runs after those (before the gate stage)."""
    from audit_tasks.rarity import check_rarity
    from audit_tasks.sample_weights import WEIGHTS_FILE, combine_weights, pair_weights, rarity_weights

    check = config.checks.rarity
    rd = run_dir(config, run_id)
    if check is None:
        _skip_check(config, run_id, "rarity", ("rarity.parquet", WEIGHTS_FILE))
        return None
    images_path = _scored_images(config, run_id)
    present = set(parquet_schema(images_path).names)
    describe = [c for c in (*config.attribute_columns(), "tags", *_pixel_property_columns()) if c in present]
    wanted = list(dict.fromkeys(["image_id", "label", "correct", *describe]))
    images = read_table(images_path, columns=[c for c in wanted if c in present])
    density = _densities(config, run_id, images, check)
    result = check_rarity(images, density, check=check, describe=describe)
    labels = images["label"].tolist()
    rarity = rarity_weights(density, labels, check.alpha)
    pair = np.ones(len(images))
    if "tags" in images.columns:
        pair, _ = pair_weights(images["tags"].tolist(), _flagged_tag_pairs(config, run_id), _target_share(config))
    weights = pd.DataFrame(
        {
            "image_id": images["image_id"].astype(str),
            "label": images["label"],
            "density": density,
            "rarity_weight": rarity,
            "pair_weight": pair,
            "weight": combine_weights([rarity, pair], check.max_weight),
        }
    )
    write_table(weights, rd / WEIGHTS_FILE, name="sample_weights", schema=schemas.SAMPLE_WEIGHTS)
    target = write_table(result.quantiles, rd / "rarity.parquet", name="rarity", schema=schemas.RARITY)
    _write_gates(config, run_id, "rarity", result.gates)
    return target


def _densities(config: AuditConfig, run_id: str, images: pd.DataFrame, check) -> np.ndarray:
    """Each audited image's density within its class (NaN where the scoring pass collected no features)."""
    from audit_tasks.rarity import class_densities

    density = np.full(len(images), np.nan)
    path = _features_path(config, run_id)
    if not path.is_file() or not len(images):
        log.warning("rarity: no penultimate features for run %s (the model has no final Linear?)", run_id)
        return density
    features = read_table(path).set_index("image_id")["features"].reindex(images["image_id"])
    have = features.notna().to_numpy()
    if have.any():
        matrix = np.stack([np.asarray(v, dtype=np.float32) for v in features[have]])
        density[have] = class_densities(matrix, images["label"][have].tolist(), check)
    return density


def _pixel_property_columns() -> tuple[str, ...]:
    from audit_tasks.image_properties import PIXEL_COLUMNS

    return tuple(PIXEL_COLUMNS)


def _flagged_tag_pairs(config: AuditConfig, run_id: str) -> list[tuple[str, str]]:
    """The run's flagged co-occurrence pairs a -> b whose b is a tag (not `attribute=value`, `property=bin` or
    `label=class`): those the pair weights balance."""
    path = run_dir(config, run_id) / "cooccurrence.parquet"
    if config.checks.cooccurrence is None or not path.is_file():
        return []
    pairs = read_table(path, columns=["tag_a", "tag_b", "flagged"])
    pairs = pairs[pairs["flagged"].astype(bool)]
    # the rule stage_saliency_pairs applies: b is no `attribute=value`, `property=bin` or `label=class`
    not_tags = tuple(f"{name}=" for name in (*config.checks.cooccurrence_attributes(), *IMAGE_PROPERTY_NAMES, "label"))
    return [
        (str(a), str(b)) for a, b in zip(pairs["tag_a"], pairs["tag_b"], strict=True) if not str(b).startswith(not_tags)
    ]


def _target_share(config: AuditConfig) -> float:
    from audit_tasks.config import CooccurrenceCheck

    return (config.checks.cooccurrence or CooccurrenceCheck()).target_share


def collect_gates(config: AuditConfig, run_id: str) -> list[GateResult]:
    """Every configured check's gates, in the fixed check order."""
    gates: list[GateResult] = []
    for check in GATE_FILES:
        path = _gates_path(config, run_id, check)
        if path.is_file():
            gates.extend(gates_from_frame(read_table(path)))
    return gates


def stage_gate(
    config: AuditConfig, run_id: str, *, airflow: Mapping[str, str] | None = None, today: date | None = None
) -> Verdict:
    """Merge the checks' gates into gates.parquet under the policy and write summary.json; never raises for a
    failed gate.

    The policy (audit_tasks.policy) compares each gate with the newest passed run of the same audit and
    applies the `warn` list and the waivers (`today` decides whether a waiver has expired; default: the
    date today). The verdict is `inconclusive` (never passed) when fewer than `checks.min_audited` images
    were audited or no gate was judged. `airflow` (dag_id, dag_run_id) is recorded in the summary so the UI
    can find a DAG run's report.

    Raises ConfigError (exit 2) when a waiver names no gate of a check that judged something this run.
    """
    from audit_tasks.history import read_headline, record_run

    rd = run_dir(config, run_id)
    checked = collect_gates(config, run_id)
    ruled = _apply_policy(config, run_id, checked, today or date.today())
    gates = list(ruled.outcome.gates)
    write_table(gates_frame(gates), rd / "gates.parquet", name="gates", schema=schemas.GATES)
    counts = _counts(config, run_id)
    result = verdict(gates, audited=counts.get("audited", 0), min_audited=config.checks.min_audited)
    summary = _summary(config, run_id, result, gates, counts)
    summary.update(ruled.summary())
    if airflow:
        summary["airflow"] = dict(airflow)
    write_json(summary, rd / "summary.json")
    record_run(storage_path(config.output.dir), summary, read_headline(rd))
    return result


@dataclass(frozen=True)
class _Ruled:
    """The policy's outcome for one run, with the baseline it compared against."""

    outcome: PolicyOutcome
    baseline: Baseline | None  # None: policy.baseline is none
    fingerprint: str | None
    unmatched_waivers: tuple[str, ...]
    policy: PolicyConfig

    def summary(self) -> dict[str, Any]:
        """summary.json's policy keys."""
        baseline = self.baseline
        return {
            "audit_fingerprint": self.fingerprint,
            "warned_gates": self.outcome.names("warn"),
            "waived_gates": self.outcome.names("waived"),
            "regressed_gates": self.outcome.names("regressed"),
            "stale_waivers": list(self.outcome.stale_waivers),
            "expired_waivers": list(self.outcome.expired_waivers),
            "unmatched_waivers": list(self.unmatched_waivers),
            "baseline": (
                {"run_id": baseline.run_id, "created_at": baseline.created_at}
                if baseline is not None and baseline.run_id
                else None
            ),
            "baseline_reason": ("policy.baseline is none" if baseline is None else baseline.reason),
            "policy": self.policy.model_dump(mode="json"),
        }


def _apply_policy(config: AuditConfig, run_id: str, gates: list[GateResult], today: date) -> _Ruled:
    """The policy's I/O: the audit's fingerprint, its baseline run and that run's gates; then the pure rule."""
    from audit_tasks.history import last_clean_run

    policy = config.policy
    scope = read_audit_scope(config, run_id)
    dataset = config.dataset
    locations = {name: str(getattr(dataset, name)) for name in ("landing", "image_root", "catalog")} if dataset else {}
    fingerprint = audit_fingerprint(
        locations, scope.model_fingerprint if scope else None, config.checks.model_dump(mode="json")
    )
    unmatched = check_waivers(
        policy.waivers,
        [g.name for g in gates] + _unflagged_pair_gates(config, run_id),
        {g.check for g in gates if g.judged or not g.passed},
        where=str(config.source) if config.source else "config",
    )
    baseline: Baseline | None = None
    values: dict[str, float] | None = None
    if policy.baseline == "last_clean":
        baseline = last_clean_run(storage_path(config.output.dir), run_id, fingerprint)
        if baseline.run_id is not None:
            values = _baseline_values(config, baseline.run_id)
            if values is None:
                baseline = Baseline(None, None, f"baseline run {baseline.run_id} has no readable gates.parquet")
    outcome = apply_policy(
        gates, policy, baseline=values, today=today, baseline_run=baseline.run_id if baseline else None
    )
    return _Ruled(outcome, baseline, fingerprint, unmatched, policy)


def _baseline_values(config: AuditConfig, baseline_run: str) -> dict[str, float] | None:
    """gate name -> value in the baseline run's gates.parquet (None when it is missing)."""
    path = run_dir(config, baseline_run) / "gates.parquet"
    if not path.is_file():
        return None
    frame = read_table(path, columns=["check", "subject", "metric", "value"])
    return {
        f"{row.check}/{row.subject}/{row.metric}": float(row.value)
        for row in frame.itertuples(index=False)
        if not pd.isna(row.value)
    }


def _unflagged_pair_gates(config: AuditConfig, run_id: str) -> list[str]:
    """Co-occurrence pairs have a gate only when flagged; the others are gates that pass (a waiver naming one is
    stale, not unknown)."""
    path = run_dir(config, run_id) / "cooccurrence.parquet"
    if config.checks.cooccurrence is None or not path.is_file():
        return []
    from audit_tasks.cooccurrence import pair_gate_names

    return pair_gate_names(read_table(path, columns=["tag_a", "tag_b"]))


def _counts(config: AuditConfig, run_id: str) -> dict[str, int]:
    rd = run_dir(config, run_id)
    stages = rd / "_stages"
    counts: dict[str, int] = {}
    ingest_counts = stages / "ingest.json"
    if ingest_counts.is_file():
        counts.update(json.loads(ingest_counts.read_text(encoding="utf-8")))
    for name, table in (("audited", "images.parquet"), ("quarantined", "quarantine.parquet")):
        path = rd / table
        if path.is_file():
            counts[name] = parquet_rows(path)
    images_path = rd / "images.parquet"
    if images_path.is_file() and "spurious_flag" in parquet_schema(images_path).names:
        flags = read_table(images_path, columns=["spurious_flag"])["spurious_flag"]
        counts["spurious_flagged"] = int(flags.fillna(False).astype(bool).sum())
    return counts


def _summary(
    config: AuditConfig, run_id: str, result: Verdict, gates: list[GateResult], counts: dict[str, int]
) -> dict[str, Any]:
    rd = run_dir(config, run_id)
    configured = {
        "ingest": config.checks.ingest is not None,
        "cooccurrence": config.checks.cooccurrence is not None,
        "saliency": config.checks.saliency is not None,
        "subgroups": config.checks.subgroups is not None,
        "strategies": config.checks.strategies is not None,
        "rarity": config.checks.rarity is not None,
    }
    if config.model is not None and config.model.task == "multilabel":  # leakage applies to multilabel models only
        configured["leakage"] = config.checks.leakage is not None
    # class_balance gates belong to the co-occurrence check's section.
    owner = {"class_balance": "cooccurrence"}
    checks = {
        name: check_status(on, [g for g in gates if owner.get(g.check, g.check) == name])
        for name, on in configured.items()
    }
    scope = read_audit_scope(config, run_id)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "passed": result.passed,
        "verdict": result.status,
        "failed_gates": result.failed_names,
        "failed_details": [g.detail for g in result.failed],
        "counts": counts,
        "checks": checks,
        "created_at": _run_created_at(rd),
        "config": str(config.source) if config.source else None,
        "report": public_uri(rd / "report.html"),
    }
    if result.status == INCONCLUSIVE:
        summary["inconclusive_reason"] = result.reason
    if scope is not None:
        summary["audit_scope"] = scope.scope
        summary["model_fingerprint"] = scope.model_fingerprint
        if scope.reason:
            summary["audit_scope_reason"] = scope.reason
    return summary


def _run_created_at(rd: StoragePath) -> str:
    """When the run folder was first made, so re-running a run id keeps its time."""
    marker = rd / "_stages" / "created_at"
    if not marker.is_file():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(datetime.now(UTC).isoformat(timespec="seconds"), encoding="utf-8")
    return marker.read_text(encoding="utf-8").strip()


def read_summary(config: AuditConfig, run_id: str) -> dict[str, Any]:
    """The summary.json of a finished gate stage."""
    path = run_dir(config, run_id) / "summary.json"
    if not path.is_file():
        raise AuditError(f"{path} is missing: run the gate stage for run {run_id} first")
    return json.loads(path.read_text(encoding="utf-8"))


def stage_report(config: AuditConfig, run_id: str) -> StoragePath:
    """Render report.html from the run folder's tables."""
    from audit_tasks.report import render_report

    return render_report(run_dir(config, run_id), opener=_image_opener(config))


def run_audit(config: AuditConfig, run_id: str | None = None, *, today: date | None = None) -> AuditOutcome:
    """The whole audit in one process: ingest, checks, gates, report (`today`: see `stage_gate`)."""
    run_id = check_run_id(run_id or new_run_id())
    config.require_dataset()
    config.require_model()
    rd = run_dir(config, run_id)
    rd.mkdir(parents=True, exist_ok=True)
    _run_created_at(rd)
    stage_ingest(config, run_id)
    stage_saliency(config, run_id)
    stage_cooccurrence(config, run_id)  # after scoring: the label -> property pairs use what it measured
    stage_subgroups(config, run_id)
    stage_leakage(config, run_id)
    stage_saliency_pairs(config, run_id)
    stage_strategies(config, run_id)
    stage_rarity(config, run_id)  # after co-occurrence: the pair weights read its flagged pairs
    result = stage_gate(config, run_id, today=today)
    report = stage_report(config, run_id)
    return AuditOutcome(run_id, rd, result, report, read_summary(config, run_id))


def _image_opener(config: AuditConfig) -> FileOpener:
    """Opens the audited images through the image root's filesystem (its credentials, on object storage)."""
    return FileOpener(storage_path(config.require_dataset().image_root))


def _progress_logger(label: str, total: int):
    from audit_tasks.progress import Progress

    return Progress(label, total)
