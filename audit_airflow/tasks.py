"""Task callables: each one loads the config from the run's params and calls one stage function.

Only strings, paths and tiny dicts cross XCom; every table stays in the run folder. The audit run id
is derived from the Airflow run id, so a retried or cleared task rewrites the same run folder.
`audit_tasks` (and with it pandas/torch) is imported inside the callables, never at parse time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, get_current_context

from audit_airflow import compat
from audit_airflow.assets import AUDIT_CLEAN
from audit_airflow.params import config_overrides, config_param
from audit_airflow.storage import bind_storage, publish_run

if TYPE_CHECKING:
    from audit_tasks.config import AuditConfig
    from audit_tasks.storage import StoragePath

log = logging.getLogger(__name__)

#: The asset event extra's key for the location of the run's `sample_weights.parquet`.
SAMPLE_WEIGHTS_KEY = "sample_weights_uri"

__all__ = [
    "audit_summary",
    "clean_event_extra",
    "cooccurrence",
    "failure_message",
    "gate",
    "gate_stage",
    "inconclusive_message",
    "ingest",
    "merge_shards",
    "plan_shards",
    "report",
    "score_shard",
    "subgroups",
    "retrain_params",
    "train_demo_model_with_weights",
    "train_model_placeholder",
]


# ---------------------------------------------------------------------------------------------
# dataset_audit
# ---------------------------------------------------------------------------------------------


def ingest() -> str:
    """Land new manifests into the catalog and quarantine; returns the run folder."""
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    result = pipeline.stage_ingest(config, run_id)
    log.info("ingest finished for audit run %s: %s", run_id, result)
    return _location(pipeline.run_dir(config, run_id))


def plan_shards() -> list[dict[str, int]]:
    """One entry per shard of `shard_size` rows; an empty list skips the mapped stage."""
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    shard_size = int(get_current_context()["params"]["shard_size"])
    count = pipeline.plan_shards(config, run_id, shard_size)
    limit = compat.max_map_length()
    if count > limit:
        raise compat.AirflowFailException(
            f"{count} shards of {shard_size} images exceed [core] max_map_length={limit}; "
            f"raise the shard_size param to at least {_ceil_div(count * shard_size, limit)}"
        )
    log.info("audit run %s: %d shard(s) of up to %d images", run_id, count, shard_size)
    return [{"index": i, "count": count} for i in range(count)]


def score_shard(shard: Mapping[str, int]) -> str | None:
    """Grad-CAM + predictions for one shard; its Parquet part is written atomically, so retries are safe."""
    from audit_tasks import pipeline

    context = get_current_context()
    index, count = int(shard["index"]), int(shard["count"])
    # Read by map_index_template. Airflow's docs add keys to the context for it, but its `Context` TypedDict
    # does not model such keys.
    context["shard_label"] = f"shard {index + 1} of {count}"  # type: ignore[typeddict-unknown-key]
    config, run_id = _config_and_run_id()
    path = pipeline.stage_saliency(config, run_id, shard=index, num_shards=count)
    return _str_or_none(path)


def merge_shards(shards: list[Mapping[str, int]] | None) -> str | None:
    """Reduce the shard parts into images.parquet + saliency_by_class.parquet (idempotent)."""
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    count = int(shards[0]["count"]) if shards else 0
    return _str_or_none(pipeline.stage_merge_shards(config, run_id, count))


def cooccurrence() -> str | None:
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    return _str_or_none(pipeline.stage_cooccurrence(config, run_id))


def subgroups() -> str | None:
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    path = pipeline.stage_subgroups(config, run_id)
    pipeline.stage_leakage(config, run_id)  # the other check on the merged predictions (multilabel only)
    return _str_or_none(path)


def gate_stage() -> str:
    """Compute gates.parquet + summary.json; never fails the task (the final `gate` task does).

    The summary records the DAG run, so the UI's link from a DAG run finds its report.
    """
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    context = get_current_context()
    dag_run = {"dag_id": str(context["dag"].dag_id), "dag_run_id": str(context["run_id"])}
    pipeline.stage_saliency_pairs(config, run_id)  # needs both the merged images and co-occurrence
    pipeline.stage_strategies(config, run_id)  # needs the merged images (their CAMs)
    pipeline.stage_rarity(config, run_id)  # the same: features from the merge, flagged pairs for the weights
    verdict = pipeline.stage_gate(config, run_id, airflow=dag_run)
    log.info("audit run %s: %s", run_id, verdict.describe())
    return verdict.status


def report() -> str:
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    path = pipeline.stage_report(config, run_id)
    log.info("report for audit run %s: %s", run_id, path)
    target = compat.audit_setting("publish_uri", "")
    if target:  # copy the finished run to object storage (or another folder) for the UI page and consumers
        uri = publish_run(pipeline.run_dir(config, run_id), target, compat.audit_setting("publish_conn_id", "") or None)
        log.info("published audit run %s: %s", run_id, uri)
        return uri
    return _location(path)


def gate(report_location: str | None = None) -> str:
    """Fail the DAG run naming every failed gate and the report, skip it when the audit was inconclusive,
    or emit the clean-audit asset event.

    Only a passed verdict emits the asset, so retraining never starts on a night where nothing was judged.
    `report_location` is what the report task returned: the local report, or its published URI.
    """
    from audit_tasks import pipeline

    config, run_id = _config_and_run_id()
    summary = pipeline.read_summary(config, run_id)
    report_path = report_location or _report_path(summary, pipeline.run_dir(config, run_id))
    if summary.get("verdict") == "inconclusive":
        raise compat.AirflowSkipException(inconclusive_message(summary, report_path))
    if summary.get("passed") is not True:
        raise compat.AirflowFailException(failure_message(summary, report_path))
    extra = clean_event_extra(summary, report_path, report_location, pipeline.run_dir(config, run_id))
    get_current_context()["outlet_events"][AUDIT_CLEAN].extra = extra
    log.info("audit run %s passed every gate; report: %s", run_id, report_path)
    return report_path


def clean_event_extra(
    summary: Mapping[str, Any], report_path: str, report_location: str | None, run_folder: StoragePath
) -> dict[str, Any]:
    """The clean-audit asset event's extra: the summary, the report, and the run's sample weights when written.

    `sample_weights_uri` (given as the report path is: a local path or a URI) is present only when
    `<run>/sample_weights.parquet` exists, i.e. when `checks.rarity` ran; retraining reads it from here.
    """
    from audit_tasks.sample_weights import WEIGHTS_FILE

    extra = dict(summary)
    extra.setdefault("report", report_path)
    if report_location and report_location != extra["report"]:
        extra["published_report"] = report_location
    weights = run_folder / WEIGHTS_FILE
    if weights.exists():
        extra[SAMPLE_WEIGHTS_KEY] = _location(weights)
    return extra


def inconclusive_message(summary: Mapping[str, Any], report_path: str) -> str:
    """The skipped run's message: why there is no verdict, and that nothing downstream runs."""
    reason = summary.get("inconclusive_reason") or "nothing was judged"
    return (
        f"Audit {summary.get('run_id', '?')} INCONCLUSIVE: {reason}. No clean-audit asset is emitted, "
        f"so retraining does not start.\nReport: {report_path}"
    )


def failure_message(summary: Mapping[str, Any], report_path: str) -> str:
    """The red run's message: which gates failed and where the report is."""
    failed = [_gate_name(g) for g in summary.get("failed_gates") or []]
    details = summary.get("failed_details") or []
    if len(details) == len(failed):
        failed = [f"{name}: {detail}" if detail else name for name, detail in zip(failed, details, strict=True)]
    lines = [f"Audit {summary.get('run_id', '?')} FAILED: {len(failed)} gate(s) failed:"]
    lines += [f"  - {name}" for name in failed] or ["  - (summary lists no gate names)"]
    regressed = [_gate_name(g) for g in summary.get("regressed_gates") or []]
    if regressed:
        baseline = summary.get("baseline") or {}
        since = (
            f" (baseline run {baseline['run_id']})" if isinstance(baseline, Mapping) and baseline.get("run_id") else ""
        )
        lines.append(f"Regressed against the baseline{since}: {', '.join(regressed)}")
    expired = [_gate_name(g) for g in summary.get("expired_waivers") or []]
    if expired:
        lines.append(f"Expired waivers (their gates fail again): {', '.join(expired)}")
    lines.append(f"Report: {report_path}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# retrain_on_clean_audit
# ---------------------------------------------------------------------------------------------


def retrain_params() -> dict[str, Param]:
    """The `params` of `retrain_on_clean_audit`; every default leaves the asset-triggered run as it was."""
    return {
        "config": config_param("The audit config: its catalog, image root and model are what the example trains."),
        "example_training": Param(
            False,
            type="boolean",
            title="Run the EXAMPLE training",
            description="Retrain the demo's torchvision model with the audit's sample weights (the demo sets it).",
        ),
        "sample_weights": Param(
            None,
            type=["null", "string"],
            title="Sample weights",
            description="A sample_weights.parquet to train with instead of the triggering event's (e.g. a red "
            "audit's, as demo --loop passes it).",
        ),
        "checkpoint": Param(
            None,
            type=["null", "string"],
            title="Checkpoint",
            description="Where the example writes the retrained model. Empty: <output.dir>/retrained/<run_id>.pt.",
        ),
        "epochs": Param(2, type="integer", minimum=1, title="Epochs (example training)"),
        "seed": Param(0, type="integer", minimum=0, title="Seed (example training)"),
    }


def audit_summary() -> dict[str, Any]:
    """The summary a passing audit attached to its asset event (the event that triggered this run).

    A manual run given explicit `sample_weights` (a red audit emits no event) gets a summary naming them.
    """
    context = get_current_context()
    extra = compat.latest_event_extra(context, AUDIT_CLEAN)
    explicit = context["params"].get("sample_weights")
    if extra is None and explicit:
        log.info("no clean-audit event; training with the explicitly given sample weights %s", explicit)
        return {"run_id": None, "report": None, SAMPLE_WEIGHTS_KEY: explicit}
    if extra is None:
        raise compat.AirflowFailException(
            f"no '{AUDIT_CLEAN.uri}' asset event found: run dataset_audit until it passes first"
        )
    log.info("clean audit %s, report %s", extra.get("run_id"), extra.get("report"))
    return extra


def train_model_placeholder(summary: Mapping[str, Any]) -> dict[str, Any]:
    """PLACEHOLDER: replace with your training job. It only logs what it would train on.

    `summary` is the passing audit's summary.json (run_id, counts, report path).
    """
    plan = {
        "audit_run_id": summary.get("run_id"),
        "report": summary.get("report"),
        "counts": summary.get("counts", {}),
    }
    log.warning("PLACEHOLDER training task: would retrain on the audited catalog with %s", plan)
    return plan


def train_demo_model_with_weights(summary: Mapping[str, Any]) -> str:
    """EXAMPLE (the demo's torchvision models only): retrain on the audited catalog, resampled by the audit's
    sample weights; returns the new checkpoint's path. `train_model_placeholder` is what you replace.

    Runs only with the param `example_training` (the demo sets it), so a clean audit of your own data never
    trains a demo model. The weights are the `sample_weights` param when given, else the triggering event's
    `sample_weights_uri`; the training is `audit_tasks.demo.retrain.retrain_with_weights` (weighted resampling).
    """
    from audit_tasks.demo.retrain import retrain_with_weights, spec_for
    from audit_tasks.errors import AuditError
    from audit_tasks.storage import is_remote

    params = get_current_context()["params"]
    if not params.get("example_training"):
        raise compat.AirflowSkipException("the example training is off (param example_training); nothing trained")
    weights = params.get("sample_weights") or summary.get(SAMPLE_WEIGHTS_KEY)
    if not weights:
        raise compat.AirflowSkipException(
            "the audit wrote no sample weights (configure checks.rarity) and none were given; nothing trained"
        )
    config = _load_config(params)
    output = config.output.dir
    if params.get("checkpoint"):
        checkpoint = Path(params["checkpoint"])
    elif is_remote(output):
        raise compat.AirflowFailException("the example training writes a local checkpoint: pass the checkpoint param")
    else:
        checkpoint = output / "retrained" / f"{summary.get('run_id') or 'manual'}.pt"
    spec = spec_for(config, epochs=int(params["epochs"]), seed=int(params["seed"]))
    try:
        result = retrain_with_weights(config, weights, checkpoint, spec)
    except AuditError as exc:  # unusable weights or a catalog they do not belong to: retrying will not help
        raise compat.AirflowFailException(f"example training: {exc}") from exc
    log.info(
        "EXAMPLE training with %s: %s (%s, %.0f s)",
        weights,
        result.checkpoint,
        "cached" if result.cached else f"train accuracy {result.train_accuracy:.3f}",
        result.seconds,
    )
    return str(result.checkpoint)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _config_and_run_id() -> tuple[AuditConfig, str]:
    from audit_tasks.errors import ConfigError
    from audit_tasks.pipeline import check_run_id

    context = get_current_context()
    params = context["params"]
    config = _load_config(params)
    try:
        run_id = check_run_id(params.get("run_id") or compat.audit_run_id(context["run_id"]))
    except ConfigError as exc:
        raise compat.AirflowFailException(f"unusable audit config: {exc}") from exc
    return config, run_id


def _load_config(params: Mapping[str, Any]) -> AuditConfig:
    """The config named by the `config` param, with the params' threshold overrides and the storage binding."""
    from audit_tasks.config import load_config
    from audit_tasks.errors import ConfigError

    overrides = config_overrides(params)
    if overrides:
        log.info("threshold overrides from params: %s", overrides)
    try:
        return bind_storage(
            load_config(params["config"], overrides), compat.audit_setting("storage_conn_id", "") or None
        )
    except ConfigError as exc:  # a bad config will not fix itself: fail now, no retries
        raise compat.AirflowFailException(f"unusable audit config: {exc}") from exc


def _report_path(summary: Mapping[str, Any], run_folder: Any) -> str:
    if summary.get("report"):
        return str(summary["report"])
    return _location(run_folder / "report.html")


def _gate_name(gate_entry: Any) -> str:
    if isinstance(gate_entry, Mapping):
        name = gate_entry.get("name") or "/".join(str(gate_entry.get(k, "?")) for k in ("check", "subject", "metric"))
        detail = gate_entry.get("detail")
        return f"{name}: {detail}" if detail else str(name)
    return str(gate_entry)


def _location(path: StoragePath) -> str:
    """A location for XCom and logs: a path, or a URI without the connection id."""
    from audit_tasks.storage import public_uri

    return public_uri(path)


def _str_or_none(path: StoragePath | None) -> str | None:
    """`_location`, or None for a stage that wrote nothing."""
    return None if path is None else _location(path)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
