"""The verdict rule: failed on any failed gate, inconclusive without evidence, passed otherwise."""

from __future__ import annotations

import pandas as pd

from audit_tasks.gates import GateResult, check_status, gates_frame, gates_from_frame, verdict


def _gate(passed: bool = True, judged: bool = True, check: str = "saliency") -> GateResult:
    return GateResult(check, "wolf", "flagged_fraction", 0.1, 0.25, passed, "", judged)


def test_judged_gates_that_all_pass_give_a_passed_verdict():
    assert verdict([_gate(), _gate(judged=False)], audited=10).status == "passed"


def test_any_failed_gate_fails_the_verdict_whatever_was_audited():
    result = verdict([_gate(passed=False), _gate()], audited=0)
    assert result.status == "failed" and [g.subject for g in result.failed] == ["wolf"]


def test_no_judged_gate_is_inconclusive():
    result = verdict([_gate(judged=False), _gate(judged=False, check="subgroups")], audited=100)
    assert result.status == "inconclusive" and not result.passed
    assert "too little data" in result.reason


def test_no_gate_at_all_is_inconclusive():
    assert verdict([], audited=100).reason == "no check was configured"


def test_fewer_audited_images_than_the_floor_is_inconclusive():
    result = verdict([_gate()], audited=3, min_audited=4)
    assert result.status == "inconclusive" and "3 image(s) audited; at least 4 needed" in result.reason
    assert verdict([_gate()], audited=4, min_audited=4).passed


def test_inconclusive_describes_itself_as_such():
    assert verdict([], audited=0).describe().startswith("INCONCLUSIVE: ")


def test_judged_round_trips_through_the_gates_table():
    gates = [_gate(judged=False), _gate(passed=False)]
    assert gates_from_frame(gates_frame(gates)) == gates


def test_a_gates_table_without_judged_reads_as_judged():
    old = gates_frame([_gate()]).drop(columns=["judged"])
    assert gates_from_frame(pd.DataFrame(old))[0].judged is True


def test_check_status_says_skipped_ran_or_too_few():
    assert check_status(False, []) == "skipped"
    assert check_status(True, [_gate(judged=False)]) == "too few to judge"
    assert check_status(True, []) == "too few to judge"
    assert check_status(True, [_gate(judged=False), _gate()]) == "ran"
