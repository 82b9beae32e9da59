"""Gates: one table of pass/fail results that every check appends to, and the verdict drawn from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa

GATES_SCHEMA = pa.schema(
    [
        pa.field("check", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)


@dataclass(frozen=True)
class GateResult:
    """One gate: did `metric` of `subject` (a class, a group, a tag pair) stay within `threshold`?"""

    check: str
    subject: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""

    @property
    def name(self) -> str:
        """A short stable name for logs and summary.json: check/subject/metric."""
        return f"{self.check}/{self.subject}/{self.metric}"


def gates_frame(gates: Iterable[GateResult]) -> pd.DataFrame:
    """The gates as a DataFrame with the contract's columns (empty frame keeps the columns)."""
    rows = [asdict(g) for g in gates]
    frame = pd.DataFrame(rows, columns=[f.name for f in GATES_SCHEMA])
    frame["passed"] = frame["passed"].astype(bool)
    for column in ("value", "threshold"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def gates_from_frame(frame: pd.DataFrame) -> list[GateResult]:
    """Read gates back from a gates table."""
    out = []
    for row in frame.itertuples(index=False):
        value = None if row.value is None or (isinstance(row.value, float) and math.isnan(row.value)) else float(row.value)
        threshold = (
            None if row.threshold is None or (isinstance(row.threshold, float) and math.isnan(row.threshold))
            else float(row.threshold)
        )
        out.append(GateResult(row.check, row.subject, row.metric, value, threshold, bool(row.passed), row.detail or ""))
    return out


@dataclass(frozen=True)
class Verdict:
    """The run's outcome: passed only when every gate passed."""

    passed: bool
    failed: tuple[GateResult, ...]

    @property
    def failed_names(self) -> list[str]:
        return [g.name for g in self.failed]

    def describe(self) -> str:
        if self.passed:
            return "PASSED: every gate passed"
        lines = [f"FAILED: {len(self.failed)} gate(s) failed"]
        lines += [f"  - {g.name}: {g.detail or f'value {g.value} vs threshold {g.threshold}'}" for g in self.failed]
        return "\n".join(lines)


def verdict(gates: Sequence[GateResult]) -> Verdict:
    failed = tuple(g for g in gates if not g.passed)
    return Verdict(passed=not failed, failed=failed)
