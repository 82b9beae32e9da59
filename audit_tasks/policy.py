"""The policy: how the checks' gate results become each gate's status over nights.

A check judges a gate against its absolute threshold (pass or fail). The policy (config `policy:`) then
gives every gate one status:

- `regressed`: the gate's value rose above the baseline run's value by more than its `max_increase`
  (`check.metric`; for every metric here higher is worse: a flagged fraction, a subgroup gap, P(b|a), a
  quarantine fraction), even under the absolute threshold. A waived gate that regresses still regresses;
  a gate on the `warn` list never fails the run, so it warns instead.
- `warn`: a failing gate whose check, or whose full `check/subject/metric` name, is on the `warn` list.
- `waived`: a failing gate named by a waiver that has not expired (the expiry day itself still waives).
- `fail`: a failing gate otherwise; from the day after a waiver's expiry the detail says it expired.
- `pass`: the gate passed.

`passed` stays "not fail and not regressed", so the verdict (audit_tasks.gates.verdict) is unchanged; a
judged gate that warns or is waived still counts as evidence. The subgroup gates' metric is named after
the compared metric (`accuracy`, `recall(nurse)`) but their value is the gap to the best group, so
`subgroups.gap` in `max_increase` covers every subgroup gate (a metric's own name works too).

Pure functions: the gate stage (audit_tasks.pipeline.stage_gate) finds the baseline and reads its gates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from audit_tasks.config import PolicyConfig, Waiver
from audit_tasks.errors import ConfigError
from audit_tasks.gates import GateResult

__all__ = [
    "PolicyOutcome",
    "apply_policy",
    "audit_fingerprint",
    "check_waivers",
    "max_increase_for",
    "waiver_check",
]

#: `max_increase` keys that name a gate's value rather than its metric: check -> that key's metric word.
VALUE_ALIASES = {"subgroups": "gap"}

#: Tolerance when comparing a value with baseline + max_increase (float noise is no regression).
_EPS = 1e-12


@dataclass(frozen=True)
class PolicyOutcome:
    """The gates with their status, and what the report says about the waivers."""

    gates: tuple[GateResult, ...]
    stale_waivers: tuple[str, ...]  # waivers whose gate now passes
    expired_waivers: tuple[str, ...]  # waivers past their date whose gate fails again

    def names(self, status: str) -> list[str]:
        return [g.name for g in self.gates if g.status == status]


def max_increase_for(gate: GateResult, policy: PolicyConfig) -> float | None:
    """The allowed increase for a gate (`check.metric`, or `subgroups.gap`), or None when none is set."""
    key = _max_increase_key(gate, policy)
    return policy.max_increase[key] if key is not None else None


def _max_increase_key(gate: GateResult, policy: PolicyConfig) -> str | None:
    """The `policy.max_increase` key that applies to a gate, so a decision can name its config line."""
    exact = f"{gate.check}.{gate.metric}"
    if exact in policy.max_increase:
        return exact
    alias = VALUE_ALIASES.get(gate.check)
    return f"{gate.check}.{alias}" if alias and f"{gate.check}.{alias}" in policy.max_increase else None


def _warns(gate: GateResult, policy: PolicyConfig) -> bool:
    return gate.check in policy.warn or gate.name in policy.warn


def _warn_entry(gate: GateResult, policy: PolicyConfig) -> str:
    """The `policy.warn` entry that makes a gate warn: its full name when listed, else its check."""
    return gate.name if gate.name in policy.warn else gate.check


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def apply_policy(
    gates: Sequence[GateResult],
    policy: PolicyConfig,
    *,
    baseline: Mapping[str, float] | None,
    today: date,
    baseline_run: str | None = None,
) -> PolicyOutcome:
    """Each gate with its status, baseline value and waiver; `baseline` maps gate names to the baseline run's
    values (None: no baseline). Waivers are matched by name; see `check_waivers` for names that match nothing."""
    waivers = {w.gate: w for w in policy.waivers}
    stale: list[str] = []
    expired: list[str] = []
    out: list[GateResult] = []
    for gate in gates:
        base = baseline.get(gate.name) if baseline is not None else None
        waiver = waivers.get(gate.name)
        allowed = max_increase_for(gate, policy)
        regressed = (
            allowed is not None and base is not None and gate.value is not None and gate.value > base + allowed + _EPS
        )
        detail = gate.detail
        if regressed:
            since = f" in run {baseline_run}" if baseline_run else ""
            detail = _join(
                f"regressed: {_num(gate.value)} against {_num(base)}{since}, "
                f"more than the allowed increase of {_num(allowed)} "
                f"(policy.max_increase: {_max_increase_key(gate, policy)})",
                detail,
            )
        failing = regressed or not gate.passed
        if failing and _warns(gate, policy):
            status = "warn"
            detail = _join(f"warns, never fails (policy.warn: {_warn_entry(gate, policy)})", detail)
        elif regressed:
            status = "regressed"
        elif not gate.passed and waiver is not None and today <= waiver.expires:
            status = "waived"
            detail = _join(f"waived until {waiver.expires.isoformat()} (policy.waivers: {waiver.owner})", detail)
        elif not gate.passed:
            status = "fail"
            if waiver is not None:
                expired.append(waiver.gate)
                detail = _join(f"waiver expired on {waiver.expires.isoformat()} ({waiver.describe()})", detail)
        else:
            status = "pass"
        if waiver is not None and gate.passed and not regressed:
            stale.append(waiver.gate)
        out.append(
            replace(
                gate,
                passed=status not in ("fail", "regressed"),
                detail=detail,
                status=status,
                baseline_value=base,
                waiver=waiver.describe() if waiver is not None else None,
            )
        )
    return PolicyOutcome(tuple(out), tuple(stale), tuple(expired))


def _join(first: str, rest: str) -> str:
    return f"{first}; {rest}" if rest else first


def waiver_check(waiver: Waiver) -> str:
    """The check a waiver's gate belongs to (its name's first part)."""
    return waiver.gate.split("/", 1)[0]


def check_waivers(
    waivers: Iterable[Waiver], gate_names: Iterable[str], judged_checks: Iterable[str], *, where: str = "config"
) -> tuple[str, ...]:
    """Waivers that name no gate of the run: a ConfigError when their check judged something this run (the
    name is then simply wrong); returned (to report, not fatal) when the check was skipped or judged nothing,
    since its gates are not known this run.

    `gate_names` should include gates that exist without a row in gates.parquet (co-occurrence pairs that
    were not flagged). Raises ConfigError naming every unknown waiver.
    """
    known = set(gate_names)
    judged = set(judged_checks)
    unknown: list[str] = []
    unmatched: list[str] = []
    for waiver in waivers:
        if waiver.gate in known:
            continue
        (unknown if waiver_check(waiver) in judged else unmatched).append(waiver.gate)
    if unknown:
        raise ConfigError(
            f"{where}: 'policy.waivers' names no gate of this run: {', '.join(unknown)} "
            "(a gate is named check/subject/metric, as summary.json's failed_gates prints it)"
        )
    return tuple(unmatched)


def audit_fingerprint(dataset: Mapping[str, Any], model_fingerprint: str | None, checks: Mapping[str, Any]) -> str:
    """What makes two runs the same audit: the dataset's locations, the model's fingerprint and the checks
    config. A change in any starts a new baseline."""
    payload = json.dumps(
        {"dataset": dict(dataset), "model": model_fingerprint, "checks": dict(checks)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
