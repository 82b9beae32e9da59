"""Gates: one table of pass/fail results that every check appends to, and the verdict drawn from it.

A verdict needs evidence. A gate that passed only because its check had too little data to judge
(`judged=False`) is no evidence of a clean audit, so a run where nothing was judged, or too few images
were audited, is `inconclusive`: never green, never a reason to retrain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, SupportsFloat

import pandas as pd

from audit_tasks.schemas import GATES as GATES_SCHEMA

__all__ = [
    "GATE_CHECKS",
    "GATES_SCHEMA",
    "PASSED",
    "FAILED",
    "INCONCLUSIVE",
    "GateResult",
    "Verdict",
    "VerdictStatus",
    "check_status",
    "gates_frame",
    "gates_from_frame",
    "verdict",
]

VerdictStatus = Literal["passed", "failed", "inconclusive"]
PASSED: VerdictStatus = "passed"
FAILED: VerdictStatus = "failed"
INCONCLUSIVE: VerdictStatus = "inconclusive"

#: Every gate's `check` name (class_balance gates come from the co-occurrence check).
GATE_CHECKS = ("ingest", "cooccurrence", "class_balance", "saliency", "subgroups", "leakage", "strategies", "rarity")

#: A gate's status under the policy (audit_tasks.policy); `passed` means neither fail nor regressed.
GateStatus = Literal["pass", "warn", "fail", "waived", "regressed"]
FAILING_STATUSES = frozenset({"fail", "regressed"})


@dataclass(frozen=True)
class GateResult:
    """One gate: did `metric` of `subject` (a class, a group, a tag pair) stay within `threshold`?

    `judged` is False for a gate that passed only because there was too little data to judge it.
    `status` is "pass" or "fail" as the check judged it (left empty, it follows `passed`); the policy
    (audit_tasks.policy) may turn it into warn, waived or regressed, and records `baseline_value` and `waiver`.
    """

    check: str
    subject: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""
    judged: bool = True
    status: str = ""
    baseline_value: float | None = None
    waiver: str | None = None

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "pass" if self.passed else "fail")

    @property
    def name(self) -> str:
        """A short stable name for logs and summary.json: check/subject/metric."""
        return f"{self.check}/{self.subject}/{self.metric}"


def gates_frame(gates: Iterable[GateResult]) -> pd.DataFrame:
    """The gates as a DataFrame with the contract's columns (empty frame keeps the columns)."""
    rows = [asdict(g) for g in gates]
    frame = pd.DataFrame(rows, columns=[f.name for f in GATES_SCHEMA])
    for column in ("passed", "judged"):
        frame[column] = frame[column].astype(bool)
    for column in ("value", "threshold", "baseline_value"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def gates_from_frame(frame: pd.DataFrame) -> list[GateResult]:
    """Read gates back from a gates table (a table written before `judged` existed counts as judged)."""
    judged = frame["judged"] if "judged" in frame.columns else pd.Series(True, index=frame.index)
    status = frame["status"] if "status" in frame.columns else pd.Series("", index=frame.index)
    baseline = frame["baseline_value"] if "baseline_value" in frame.columns else pd.Series(None, index=frame.index)
    waiver = frame["waiver"] if "waiver" in frame.columns else pd.Series(None, index=frame.index)
    return [
        GateResult(
            row.check,
            row.subject,
            row.metric,
            _optional_float(row.value),
            _optional_float(row.threshold),
            bool(row.passed),
            row.detail or "",
            bool(was_judged),
            str(was_status) if isinstance(was_status, str) else "",
            _optional_float(base),
            str(waived) if isinstance(waived, str) and waived else None,
        )
        for row, was_judged, was_status, base, waived in zip(
            frame.itertuples(index=False), judged, status, baseline, waiver, strict=True
        )
    ]


def _optional_float(value: SupportsFloat | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


@dataclass(frozen=True)
class Verdict:
    """The run's outcome: `passed` only when every gate passed and there was evidence to pass on."""

    status: VerdictStatus
    failed: tuple[GateResult, ...]
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed_names(self) -> list[str]:
        return [g.name for g in self.failed]

    def describe(self) -> str:
        if self.status == PASSED:
            return "PASSED: every gate passed"
        if self.status == INCONCLUSIVE:
            return f"INCONCLUSIVE: {self.reason}"
        lines = [f"FAILED: {len(self.failed)} gate(s) failed"]
        lines += [f"  - {g.name}: {g.detail or f'value {g.value} vs threshold {g.threshold}'}" for g in self.failed]
        return "\n".join(lines)


def verdict(gates: Sequence[GateResult], *, audited: int | None = None, min_audited: int = 1) -> Verdict:
    """Failed when any gate failed (status fail or regressed); else inconclusive without evidence; else passed.

    Evidence means at least one judged gate and, when `audited` (images the model checks scored) is
    given, at least `min_audited` of them. A failed gate is evidence on its own, so it always fails.
    A judged gate the policy waived or only warns about still counts as evidence: it was judged.
    """
    failed = tuple(g for g in gates if not g.passed)
    if failed:
        return Verdict(FAILED, failed)
    if audited is not None and audited < min_audited:
        return Verdict(
            INCONCLUSIVE, (), f"{audited:,} image(s) audited; at least {min_audited:,} needed (checks.min_audited)"
        )
    if not any(g.judged for g in gates):
        why = "no check was configured" if not gates else "every configured check had too little data to judge"
        return Verdict(INCONCLUSIVE, (), why)
    return Verdict(PASSED, ())


def check_status(configured: bool, gates: Sequence[GateResult]) -> str:
    """One check's line in summary.json: skipped (not configured), ran (judged something), or too few to judge."""
    if not configured:
        return "skipped"
    return "ran" if any(g.judged or not g.passed for g in gates) else "too few to judge"
