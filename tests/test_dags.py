"""The DAG files: they parse cleanly and fast, wire the stages as documented, and validate their params."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from copy import copy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
PARSE_BUDGET_S = 0.2
HEAVY_MODULES = ("torch", "torchvision", "pandas", "numpy", "pyarrow", "great_expectations", "audit_tasks", "fastapi")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"dataset_audit", "retrain_on_clean_audit"} <= set(dagbag.dags)


def test_dagbag_parses_each_file_within_budget(dagbag):
    durations = {Path(stat.file).name: stat.duration.total_seconds() for stat in dagbag.dagbag_stats}
    assert set(durations) == {p.name for p in DAG_FILES}
    assert all(seconds < PARSE_BUDGET_S for seconds in durations.values()), durations


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_fast_and_light_in_a_fresh_interpreter(dag_file):
    """Like the DAG processor: airflow.sdk is already loaded, then the file is executed."""
    probe = textwrap.dedent(
        f"""
        import importlib.util, json, sys, time
        import airflow.sdk
        from airflow.sdk import Asset, Param, conf, dag, task  # what the processor already has loaded
        conf.get("core", "executor")
        spec = importlib.util.spec_from_file_location("dag_under_test", {str(dag_file)!r})
        module = importlib.util.module_from_spec(spec)
        start = time.perf_counter()
        spec.loader.exec_module(module)
        elapsed = time.perf_counter() - start
        heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
        print(json.dumps({{"seconds": elapsed, "heavy": heavy}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["seconds"] < PARSE_BUDGET_S, result


def test_dataset_audit_wires_stages_as_a_table_of_contents(dagbag):
    dag = dagbag.dags["dataset_audit"]
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "ingest": {"plan_shards"},
        "plan_shards": {"score_shard", "merge"},
        "score_shard": {"merge"},
        "merge": {"subgroups", "cooccurrence"},
        "subgroups": {"gate_stage"},
        "cooccurrence": {"gate_stage"},
        "gate_stage": {"report"},
        "report": {"gate"},
        "gate": set(),
    }
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_saliency_stage_is_mapped_over_shards_with_a_named_index(dagbag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    score = dagbag.dags["dataset_audit"].get_task("score_shard")
    assert isinstance(score, MappedOperator)
    assert score.map_index_template == "{{ shard_label }}"
    assert score.pool == "default_pool"  # tests run LocalExecutor without [audit] gpu_pool
    assert dagbag.dags["dataset_audit"].get_task("merge").trigger_rule == "none_failed"


def test_only_the_final_gate_task_emits_the_clean_audit_asset(dagbag):
    from audit_airflow.assets import AUDIT_CLEAN

    dag = dagbag.dags["dataset_audit"]
    emitters = {t.task_id for t in dag.tasks if t.outlets}
    assert emitters == {"gate"}
    assert dag.get_task("gate").outlets == [AUDIT_CLEAN]
    assert dag.get_task("gate").retries == 0


def test_retrain_dag_is_scheduled_on_the_clean_audit_asset(dagbag):
    from audit_airflow.assets import AUDIT_CLEAN

    dag = dagbag.dags["retrain_on_clean_audit"]
    assert tuple(dag.timetable.asset_condition.objects) == (AUDIT_CLEAN,)
    assert "train_model_placeholder" in dag.task_ids


def test_retrain_dag_has_the_example_training_beside_the_placeholder_and_off_by_default(dagbag):
    dag = dagbag.dags["retrain_on_clean_audit"]
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert downstream["audit_summary"] == {"train_model_placeholder", "train_demo_model_with_weights"}
    assert dag.params["example_training"] is False  # a clean audit of real data never trains a demo model
    assert dag.params["sample_weights"] is None


def test_dataset_audit_runs_daily_unless_the_deployment_sets_another_schedule(dagbag, monkeypatch):
    from audit_airflow import compat

    assert dagbag.dags["dataset_audit"].schedule == "@daily"
    monkeypatch.setenv("AIRFLOW__AUDIT__SCHEDULE", "0 2 * * *")
    assert compat.audit_schedule() == "0 2 * * *"
    monkeypatch.setenv("AIRFLOW__AUDIT__SCHEDULE", "none")  # triggered runs only (the distributed harness)
    assert compat.audit_schedule() is None


def test_gpu_task_kwargs_set_the_queue_only_under_celery(monkeypatch):
    from audit_airflow import compat

    monkeypatch.setenv("AIRFLOW__AUDIT__GPU_POOL", "gpu")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    assert compat.gpu_task_kwargs() == {"pool": "gpu"}
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    assert compat.gpu_task_kwargs() == {"pool": "gpu", "queue": "gpu"}


# ---------------------------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------------------------


def test_every_config_threshold_has_a_param():
    from audit_airflow.params import THRESHOLDS
    from audit_tasks import config

    not_thresholds = {"attributes", "intersections", "pairs", "data_docs"}  # pairs: names; data_docs: a switch
    expected = {
        f"checks.{section}.{name}"
        for section, cls in (
            ("cooccurrence", config.CooccurrenceCheck),
            ("saliency", config.SaliencyCheck),
            ("subgroups", config.SubgroupCheck),
            ("ingest", config.IngestCheck),
            ("leakage", config.LeakageCheck),
            ("strategies", config.StrategiesCheck),
            ("rarity", config.RarityCheck),
        )
        for name in cls.model_fields
        if name not in not_thresholds
    } | {"checks.min_audited", "checks.image_properties.bins", "checks.image_properties.subgroups"}
    assert {t.key for t in THRESHOLDS} == expected


def test_the_policy_params_sit_in_their_own_section_and_become_overrides():
    from audit_airflow.params import audit_params, config_overrides

    params = audit_params()
    assert {name for name, p in params.items() if p.schema.get("section") == "Policy"} == {
        "policy_baseline",
        "policy_max_increase",
        "policy_warn",
    }
    assert "policy_waivers" not in params
    chosen = {
        "policy_baseline": "none",
        "policy_warn": ["class_balance"],
        "policy_max_increase": {"subgroups.gap": 0.02},
    }
    assert config_overrides({**chosen, "policy_max_increase": None}) == {
        "policy.baseline": "none",
        "policy.warn": ["class_balance"],
    }
    assert config_overrides(chosen)["policy.max_increase"] == {"subgroups.gap": 0.02}


def test_the_params_field_schemas_are_the_config_models_own():
    from audit_airflow.params import field_schemas
    from audit_airflow.threshold_schemas import FIELD_SCHEMAS

    assert FIELD_SCHEMAS == field_schemas(), (
        "audit_airflow/threshold_schemas.py is stale: run "
        "python -c 'from audit_airflow.params import write_field_schemas; write_field_schemas()'"
    )


BOUND_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength")


def test_every_threshold_params_bounds_equal_its_config_fields_bounds():
    from audit_airflow.params import THRESHOLDS, audit_params
    from audit_tasks.config import field_schema

    params = audit_params()
    bounded = 0
    for t in THRESHOLDS:
        field = field_schema(t.key)  # straight from the pydantic model
        [declared] = [b for b in field.get("anyOf", [field]) if b.get("type") != "null"]
        schema = params[t.param].schema
        assert {k: schema[k] for k in BOUND_KEYWORDS if k in schema} == {
            k: declared[k] for k in BOUND_KEYWORDS if k in declared
        }, t.key
        assert schema["type"] == ["null", declared["type"]], t.key
        assert schema.get("enum", [None])[1:] == declared.get("enum", []), t.key
        assert params[t.param].description.startswith(field["description"]), t.key
        bounded += any(k in schema for k in BOUND_KEYWORDS) or "enum" in schema
    assert bounded == len(THRESHOLDS)  # every threshold has a bound or a set of choices to compare


#: Values a trigger form could send (JSON: no infinities), on and around every bound and choice.
CANDIDATES = (
    -1,
    0,
    0.05,
    0.5,
    1,
    1.5,
    3,
    99,
    100,
    2.5,
    100000,
    100001,
    True,
    "",
    "0.5",
    "recall",
    "none",
    "bonferroni",
    "nurse",
)


def test_a_threshold_param_refuses_exactly_what_the_config_refuses():
    from airflow.sdk.definitions.param import ParamValidationError

    from audit_airflow.params import THRESHOLDS, audit_params
    from audit_tasks.config import ChecksConfig
    from audit_tasks.errors import ConfigError

    params = audit_params()
    refused = 0
    for threshold in THRESHOLDS:
        _, section, *name = threshold.key.split(".")
        for value in CANDIDATES:
            try:
                ChecksConfig.model_validate({section: {name[0]: value}} if name else {section: value})
                config_accepts = True
            except (ConfigError, ValueError):  # pydantic's ValidationError is a ValueError
                config_accepts = False
            try:
                params[threshold.param].resolve(value)
                form_accepts = True
            except ParamValidationError:
                form_accepts = False
            refused += not form_accepts
            assert form_accepts == config_accepts, (threshold.key, value)
    assert 0 < refused < len(THRESHOLDS) * len(CANDIDATES)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("saliency_max_spurious_share", 1.5),
        ("saliency_max_spurious_share", -0.1),
        ("saliency_max_spurious_share", "half"),
        ("subgroups_min_group_size", 2.5),
        ("subgroups_confidence", 1.0),
        ("cooccurrence_min_lift", 0.5),
        ("subgroups_metric", "f2"),
        ("shard_size", 0),
        ("run_id", "../escape"),
        ("config", ""),
    ],
)
def test_param_schema_rejects_invalid_values(name, value):
    from airflow.sdk.definitions.param import ParamValidationError

    from audit_airflow.params import audit_params

    with pytest.raises(ParamValidationError):
        audit_params()[name].resolve(value)


def test_param_schema_accepts_null_and_valid_values():
    from audit_airflow.params import audit_params

    params = audit_params()
    assert params["saliency_max_spurious_share"].resolve(None) is None
    assert params["saliency_max_spurious_share"].resolve(0.4) == 0.4
    assert params["subgroups_metric"].resolve("recall") == "recall"
    assert params["run_id"].resolve("night-1") == "night-1"


def test_dag_params_validate_a_manual_trigger_conf(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy(dagbag.dags["dataset_audit"].params)
    params.update({"saliency_max_flagged_fraction": 0.1})
    assert params.validate()["saliency_max_flagged_fraction"] == 0.1
    with pytest.raises(ParamValidationError):
        params.update({"saliency_max_flagged_fraction": 2})


def test_config_overrides_keep_only_set_thresholds(tmp_path):
    from audit_airflow.params import config_overrides
    from audit_tasks.config import load_config

    overrides = config_overrides(
        {
            "config": "x.yaml",
            "shard_size": 8,
            "saliency_max_spurious_share": 0.4,
            "subgroups_max_gap": None,
            "subgroups_metric": "recall",
        }
    )
    assert overrides == {"checks.saliency.max_spurious_share": 0.4, "checks.subgroups.metric": "recall"}
    path = tmp_path / "audit.yaml"
    path.write_text("checks:\n  saliency: {max_spurious_share: 0.5}\n  subgroups: {attributes: [gender]}\n")
    config = load_config(path, overrides)
    assert config.checks.saliency.max_spurious_share == 0.4
    assert config.checks.subgroups.metric == "recall"


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("airflow_run_id", "expected"),
    [
        ("scheduled__2026-01-01T00:00:00+00:00", "scheduled__2026-01-01T00_00_00_00_00"),
        ("manual__../../etc", "manual__._._etc"),
        ("///", "run"),
    ],
)
def test_audit_run_id_is_a_safe_deterministic_folder_name(airflow_run_id, expected):
    from audit_airflow.compat import audit_run_id

    assert audit_run_id(airflow_run_id) == expected


def test_failure_message_names_each_failed_gate_and_the_report():
    from audit_airflow.tasks import failure_message

    message = failure_message(
        {"run_id": "r1", "failed_gates": ["saliency/nurse/flagged_fraction", "subgroups/gender/accuracy_gap"]},
        "/reports/r1/report.html",
    )
    assert "2 gate(s) failed" in message
    assert "saliency/nurse/flagged_fraction" in message and "subgroups/gender/accuracy_gap" in message
    assert "Report: /reports/r1/report.html" in message


def test_failure_message_adds_each_gate_detail():
    from audit_airflow.tasks import failure_message

    message = failure_message(
        {
            "run_id": "r1",
            "failed_gates": ["ingest/all manifests/quarantine_fraction"],
            "failed_details": ["1 of 13 rows quarantined"],
        },
        "/reports/r1/report.html",
    )
    assert "  - ingest/all manifests/quarantine_fraction: 1 of 13 rows quarantined" in message


def test_failure_message_names_regressed_gates_and_expired_waivers():
    from audit_airflow.tasks import failure_message

    message = failure_message(
        {
            "run_id": "r2",
            "failed_gates": ["saliency/wolf/flagged_fraction", "ingest/all manifests/quarantine_fraction"],
            "regressed_gates": ["ingest/all manifests/quarantine_fraction"],
            "expired_waivers": ["saliency/wolf/flagged_fraction"],
            "baseline": {"run_id": "r1", "created_at": "2027-01-01T00:00:00+00:00"},
        },
        "/reports/r2/report.html",
    )
    assert "Regressed against the baseline (baseline run r1): ingest/all manifests/quarantine_fraction" in message
    assert "Expired waivers (their gates fail again): saliency/wolf/flagged_fraction" in message


class _Event:
    def __init__(self, extra: dict) -> None:
        self.extra = extra


def test_latest_event_extra_prefers_the_triggering_event_over_inlet_history():
    from audit_airflow.assets import AUDIT_CLEAN
    from audit_airflow.compat import latest_event_extra

    context = {
        "triggering_asset_events": {AUDIT_CLEAN: [_Event({"run_id": "old"}), _Event({"run_id": "trigger"})]},
        "inlet_events": {AUDIT_CLEAN: [_Event({"run_id": "latest-ever"})]},
    }
    assert latest_event_extra(context, AUDIT_CLEAN) == {"run_id": "trigger"}
    assert latest_event_extra(
        {"triggering_asset_events": {}, "inlet_events": context["inlet_events"]}, AUDIT_CLEAN
    ) == {"run_id": "latest-ever"}
    assert latest_event_extra({"triggering_asset_events": {}, "inlet_events": {AUDIT_CLEAN: []}}, AUDIT_CLEAN) is None


def test_the_run_id_param_uses_the_core_run_id_rule():
    from audit_airflow.params import RUN_ID_PATTERN
    from audit_tasks.run_ids import RUN_ID_PATTERN as CORE_PATTERN

    assert RUN_ID_PATTERN == CORE_PATTERN


@pytest.mark.parametrize(
    "airflow_run_id",
    [
        "manual__2026-01-01T00:00:00+00:00",
        "scheduled__2026-01-01T02:00:00.123456+00:00",
        "..",
        "../../etc/passwd",
        "a" * 400,
        "trigger/with/slashes",
        "\u00e9t\u00e9 run",
        "-._",
    ],
)
def test_every_airflow_run_id_maps_to_a_valid_audit_run_id(airflow_run_id):
    from audit_airflow.compat import audit_run_id
    from audit_tasks.run_ids import is_run_id

    assert is_run_id(audit_run_id(airflow_run_id))
