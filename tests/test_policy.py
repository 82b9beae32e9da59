"""The policy: each gate's status (pass, warn, fail, waived, regressed) from the checks, the baseline and waivers."""

from __future__ import annotations

import json
import shutil
from datetime import date

import pytest

from audit_tasks.config import PolicyConfig, load_config
from audit_tasks.errors import ConfigError
from audit_tasks.gates import GateResult, verdict
from audit_tasks.history import last_clean_run, record_run
from audit_tasks.pipeline import run_audit
from audit_tasks.policy import apply_policy, check_waivers
from audit_tasks.tables import read_table
from fixtures_pipeline import lenient_checks, make_world

TODAY = date(2027, 1, 15)
WOLF = "saliency/wolf/flagged_fraction"


def _gate(value: float = 0.1, passed: bool = True, check: str = "saliency", subject: str = "wolf") -> GateResult:
    metric = {"saliency": "flagged_fraction", "subgroups": "accuracy", "class_balance": "imbalance_ratio"}[check]
    return GateResult(check, subject, metric, value, 0.25, passed)


def _waiver(gate: str = WOLF, expires: str = "2027-01-31") -> dict[str, str]:
    return {"gate": gate, "owner": "data-team@example.org", "reason": "snow relabel, JIRA-123", "expires": expires}


def _one(gate: GateResult, policy: PolicyConfig, baseline: dict[str, float] | None = None, today: date = TODAY):
    return apply_policy([gate], policy, baseline=baseline, today=today).gates[0]


def test_a_passing_gate_passes_and_a_failing_gate_fails_without_a_policy():
    assert _one(_gate(), PolicyConfig()).status == "pass"
    failed = _one(_gate(0.5, passed=False), PolicyConfig())
    assert failed.status == "fail" and not failed.passed


def test_a_waived_failure_is_waived_until_its_expiry_day():
    gate = _one(_gate(0.5, passed=False), PolicyConfig(waivers=[_waiver()]), today=date(2027, 1, 31))
    assert gate.status == "waived" and gate.passed
    assert "data-team@example.org" in gate.waiver and "2027-01-31" in gate.waiver


def test_the_day_after_expiry_the_gate_fails_naming_the_date():
    outcome = apply_policy(
        [_gate(0.5, passed=False)], PolicyConfig(waivers=[_waiver()]), baseline=None, today=date(2027, 2, 1)
    )
    gate = outcome.gates[0]
    assert gate.status == "fail" and not gate.passed
    assert "waiver expired on 2027-01-31" in gate.detail
    assert outcome.expired_waivers == (WOLF,)


def test_a_waiver_whose_gate_passes_is_stale():
    outcome = apply_policy([_gate(0.1)], PolicyConfig(waivers=[_waiver()]), baseline=None, today=TODAY)
    assert outcome.gates[0].status == "pass" and outcome.stale_waivers == (WOLF,)


def test_a_waiver_naming_no_gate_of_a_check_that_ran_is_a_config_error():
    policy = PolicyConfig(waivers=[_waiver("saliency/wolff/flagged_fraction")])
    with pytest.raises(ConfigError, match="saliency/wolff/flagged_fraction"):
        check_waivers(policy.waivers, [WOLF], {"saliency"})


def test_a_waiver_for_a_check_that_judged_nothing_is_reported_not_fatal():
    policy = PolicyConfig(waivers=[_waiver("subgroups/gender=female/accuracy")])
    assert check_waivers(policy.waivers, [WOLF], {"saliency"}) == ("subgroups/gender=female/accuracy",)


def test_a_waiver_naming_an_unknown_check_is_refused_at_load():
    with pytest.raises(ConfigError, match="policy.waivers"):
        from audit_tasks.config import parse_config

        parse_config({"policy": {"waivers": [_waiver("salience/wolf/flagged_fraction")]}}, base_dir=None)


def test_a_failing_gate_of_a_warned_check_warns():
    gate = _one(_gate(3.0, passed=False, check="class_balance", subject="labels"), PolicyConfig(warn=["class_balance"]))
    assert gate.status == "warn" and gate.passed


def test_a_failing_gate_warned_by_its_full_name_warns_and_its_neighbours_fail():
    policy = PolicyConfig(warn=[WOLF])
    assert _one(_gate(0.5, passed=False), policy).status == "warn"
    assert _one(_gate(0.5, passed=False, subject="husky"), policy).status == "fail"


def test_a_regression_under_the_absolute_threshold_fails_as_regressed():
    policy = PolicyConfig(max_increase={"saliency.flagged_fraction": 0.05})
    gate = _one(_gate(0.20), policy, baseline={WOLF: 0.10})
    assert gate.status == "regressed" and not gate.passed and gate.baseline_value == 0.10
    assert "regressed" in gate.detail
    assert _one(_gate(0.14), policy, baseline={WOLF: 0.10}).status == "pass"


def test_subgroups_gap_covers_every_subgroup_gate_whatever_its_metric():
    policy = PolicyConfig(max_increase={"subgroups.gap": 0.03})
    gate = _gate(0.05, check="subgroups", subject="gender=female")
    assert _one(gate, policy, baseline={gate.name: 0.01}).status == "regressed"


def test_a_waived_gate_that_regresses_beyond_max_increase_regresses():
    policy = PolicyConfig(max_increase={"saliency.flagged_fraction": 0.05}, waivers=[_waiver()])
    gate = _one(_gate(0.6, passed=False), policy, baseline={WOLF: 0.3})
    assert gate.status == "regressed" and not gate.passed
    assert _one(_gate(0.32, passed=False), policy, baseline={WOLF: 0.3}).status == "waived"


def test_a_regressed_or_failed_gate_fails_the_verdict_and_warned_or_waived_ones_do_not():
    policy = PolicyConfig(warn=["class_balance"], waivers=[_waiver()])
    gates = apply_policy(
        [_gate(0.5, passed=False), _gate(3.0, passed=False, check="class_balance", subject="labels")],
        policy,
        baseline=None,
        today=TODAY,
    ).gates
    assert verdict(gates, audited=10).status == "passed"


def _summary(run_id: str, created_at: str, passed: bool, fingerprint: str) -> dict:
    return {"run_id": run_id, "created_at": created_at, "passed": passed, "audit_fingerprint": fingerprint}


def test_the_baseline_is_the_newest_passed_run_with_the_same_audit_fingerprint(tmp_path):
    record_run(tmp_path, _summary("r1", "2027-01-01T00:00:00+00:00", True, "A"))
    record_run(tmp_path, _summary("r2", "2027-01-02T00:00:00+00:00", True, "B"))
    record_run(tmp_path, _summary("r3", "2027-01-03T00:00:00+00:00", False, "A"))
    baseline = last_clean_run(tmp_path, "r4", "A")
    assert baseline.run_id == "r1" and baseline.created_at.startswith("2027-01-01")


def test_a_changed_audit_fingerprint_starts_a_new_baseline(tmp_path):
    record_run(tmp_path, _summary("r1", "2027-01-01T00:00:00+00:00", True, "A"))
    baseline = last_clean_run(tmp_path, "r2", "B")
    assert baseline.run_id is None and "starts a new baseline" in baseline.reason and "r1" in baseline.reason


# ---------------------------------------------------------------------------------------------
# Through run_audit: the two nights
# ---------------------------------------------------------------------------------------------

INGEST = "ingest/all manifests/quarantine_fraction"


def _world(tmp_path, policy: dict, *, bad_rows: int, max_quarantine: float):
    checks = lenient_checks() | {"ingest": {"max_quarantine_fraction": max_quarantine}}
    return make_world(tmp_path, n_images=6, bad_rows=bad_rows, checks=checks, extra={"policy": policy})


def test_a_waived_failure_gives_a_green_run_and_after_expiry_a_red_one_naming_the_date(tmp_path):
    world = _world(tmp_path, {"waivers": [_waiver(INGEST)]}, bad_rows=1, max_quarantine=0.0)
    saved = tmp_path / "landing-copy"
    shutil.copytree(tmp_path / "landing", saved)
    config = load_config(world.config)
    night = run_audit(config, "night-1", today=date(2027, 1, 31))
    gates = read_table(night.run_dir / "gates.parquet").set_index("check")
    assert night.verdict.passed and gates.loc["ingest", "status"] == "waived"
    assert night.summary["waived_gates"] == [INGEST]
    assert "data-team@example.org" in (night.run_dir / "report.html").read_text()

    shutil.rmtree(tmp_path / "catalog")  # the same bad batch again, a day after the waiver expired
    (tmp_path / "catalog").mkdir()
    shutil.copytree(saved, tmp_path / "landing", dirs_exist_ok=True)
    later = run_audit(config, "night-2", today=date(2027, 2, 1))
    assert not later.verdict.passed and later.summary["failed_gates"] == [INGEST]
    assert "waiver expired on 2027-01-31" in later.summary["failed_details"][0]
    assert later.summary["expired_waivers"] == [INGEST]


def test_a_regression_under_the_absolute_threshold_turns_night_two_red(tmp_path):
    policy = {"baseline": "last_clean", "max_increase": {"ingest.quarantine_fraction": 0.05}}
    world = _world(tmp_path, policy, bad_rows=0, max_quarantine=1.0)
    config = load_config(world.config)
    first = run_audit(config, "night-1", today=TODAY)
    assert first.verdict.passed and first.summary["baseline"] is None
    batch = tmp_path / "landing" / "batch_002.csv"
    batch.write_text("image_uri,label,tags,regions,gender\nmissing.png,doctor,person,,female\n", encoding="utf-8")
    second = run_audit(config, "night-2", today=TODAY)
    gates = read_table(second.run_dir / "gates.parquet").set_index("check")
    assert gates.loc["ingest", "value"] <= gates.loc["ingest", "threshold"]  # under the absolute threshold
    assert gates.loc["ingest", "status"] == "regressed" and gates.loc["ingest", "baseline_value"] == 0.0
    assert not second.verdict.passed and second.summary["regressed_gates"] == [INGEST]
    assert second.summary["baseline"]["run_id"] == "night-1"
    summary = json.loads((second.run_dir / "summary.json").read_text())
    assert summary["passed"] is False


def test_a_changed_model_starts_a_new_baseline_and_the_summary_says_so(tmp_path):
    import torch
    import torchvision

    world = _world(tmp_path, {"baseline": "last_clean"}, bad_rows=0, max_quarantine=1.0)
    config = load_config(world.config)
    run_audit(config, "model-a", today=TODAY)
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), tmp_path / "model.pt")
    second = run_audit(config, "model-b", today=TODAY)
    assert second.summary["baseline"] is None
    assert "starts a new baseline" in second.summary["baseline_reason"]


def _page_text(path) -> str:
    """The report's visible text: tags dropped, entities decoded."""
    import html
    import re

    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8"))).split())


def test_the_reports_change_block_compares_only_with_an_earlier_run_of_the_same_audit(tmp_path):
    import yaml

    world = _world(tmp_path, {"baseline": "last_clean"}, bad_rows=0, max_quarantine=1.0)
    run_audit(load_config(world.config), "night-1", today=TODAY)
    run_audit(load_config(world.config), "night-2", today=TODAY)
    same = _page_text(tmp_path / "reports" / "night-2" / "report.html")
    assert "Previous run night-2" not in same and "Previous run night-1" in same

    body = yaml.safe_load(world.config.read_text())
    body["checks"]["saliency"]["min_images"] = 2  # another check configuration: another audit
    world.config.write_text(yaml.safe_dump(body))
    run_audit(load_config(world.config), "night-3", today=TODAY)
    page = _page_text(tmp_path / "reports" / "night-3" / "report.html")
    assert "Previous run night-2" not in page
    assert "No earlier run of this audit to compare with" in page and "changed since run night-2" in page


# ---------------------------------------------------------------------------------------------
# The standalone check commands apply the same policy (no history there, so no baseline)
# ---------------------------------------------------------------------------------------------


def _predictions_with_a_gap(tmp_path, policy: dict) -> tuple:
    """100 men all right, 100 women half wrong: `subgroups/gender=f/accuracy` fails without a policy."""
    import pandas as pd
    import yaml

    n = 100
    frame = pd.DataFrame(
        {"label": ["a"] * (2 * n), "prediction": ["a"] * n + ["a", "b"] * (n // 2), "gender": ["m"] * n + ["f"] * n}
    )
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    body = {"checks": {"subgroups": {"attributes": ["gender"]}}, "policy": policy}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return tmp_path / "predictions.csv", load_config(tmp_path / "audit.yaml", checks_only=True)


def test_check_subgroups_waives_a_failure_its_config_waives(tmp_path):
    from audit_tasks.check_commands import run_subgroup_check

    waiver = _waiver("subgroups/gender=f/accuracy")
    predictions, config = _predictions_with_a_gap(tmp_path, {"waivers": [waiver]})
    outcome = run_subgroup_check(predictions, config, tmp_path / "out", today=TODAY)
    assert outcome.verdict.status == "passed"
    gates = read_table(tmp_path / "out" / "gates.parquet").set_index("subject")
    assert gates.loc["gender=f", "status"] == "waived" and "data-team" in gates.loc["gender=f", "waiver"]


def test_check_subgroups_warns_where_its_config_warns(tmp_path):
    from audit_tasks.check_commands import run_subgroup_check

    predictions, config = _predictions_with_a_gap(tmp_path, {"warn": ["subgroups"]})
    outcome = run_subgroup_check(predictions, config, tmp_path / "out", today=TODAY)
    assert outcome.verdict.status == "passed"
    assert [g.status for g in outcome.gates if g.subject == "gender=f"] == ["warn"]


def test_check_subgroups_fails_without_a_policy_and_after_the_waiver_expires(tmp_path):
    from audit_tasks.check_commands import run_subgroup_check

    waiver = _waiver("subgroups/gender=f/accuracy", expires="2026-01-01")
    predictions, config = _predictions_with_a_gap(tmp_path, {"waivers": [waiver]})
    outcome = run_subgroup_check(predictions, config, tmp_path / "out", today=TODAY)
    assert outcome.verdict.status == "failed"
    assert "2026-01-01" in next(g.detail for g in outcome.gates if g.subject == "gender=f")
    assert run_subgroup_check(predictions, None, tmp_path / "plain").verdict.status == "failed"


def test_check_subgroups_refuses_a_waiver_naming_no_gate_of_its_check(tmp_path):
    from audit_tasks.check_commands import run_subgroup_check

    predictions, config = _predictions_with_a_gap(tmp_path, {"waivers": [_waiver("subgroups/gender=x/accuracy")]})
    with pytest.raises(ConfigError, match="gender=x"):
        run_subgroup_check(predictions, config, tmp_path / "out", today=TODAY)


def test_every_policy_decision_names_the_config_line_that_made_it():
    policy = PolicyConfig.model_validate(
        {
            "max_increase": {"saliency.flagged_fraction": 0.05},
            "warn": ["class_balance"],
            "waivers": [_waiver(WOLF)],
        }
    )
    regressed = _one(_gate(0.2), policy, baseline={WOLF: 0.1})
    assert "(policy.max_increase: saliency.flagged_fraction)" in regressed.detail
    warned = _one(_gate(12.0, passed=False, check="class_balance", subject="labels"), policy)
    assert warned.status == "warn" and "(policy.warn: class_balance)" in warned.detail
    waived = _one(_gate(0.5, passed=False), policy)
    assert waived.status == "waived" and "policy.waivers: data-team@example.org" in waived.detail
