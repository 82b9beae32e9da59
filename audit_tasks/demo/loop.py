"""Close the loop: a red audit writes sample weights, a model retrained with them is audited again.

`run_loop(out)` (`python -m audit_tasks demo --loop`):

1. builds the demo (cached), and lands the biased model's own training images as the catalog of a
   third batch, `loop/` (the same seeded samples the biased model was trained on, pixel for pixel);
2. audits the biased model on that catalog (`loop-before`, with `checks.rarity` so the audit writes
   `sample_weights.parquet`: one weight per image it audited), and on the demo's held-out biased batch
   (`loop-before-heldout`, the planted story's audit);
3. retrains the biased recipe (same architecture, data, epochs and seed) on the `loop/` catalog, resampled
   by those weights, with no hand-built debiasing (`retrain.retrain_with_weights`), into
   `models/loop-retrained.pt`;
4. audits the retrained model on both again (`loop-after`, `loop-after-heldout`), and the hand-built
   debiased model on the held-out batch (`loop-reference-heldout`) as the reference;
5. prints every gate that failed in any of them: before, after (and the reference).

Why the training images are audited: the weights are one per *audited* image, so the audit that writes
them must audit the data the model retrains on, as `dataset_audit` audits the catalog that
`retrain_on_clean_audit` trains on. The held-out batch (snow with both classes, half the animals dark) is
where the biased model's shortcut shows; the training set is where the weights live. Every run lands in the
demo's report folder, so `runs.parquet` and each report's history hold the before and the after. The red
run's weights are passed to the training explicitly (a red audit emits no asset event); `weights=`
overrides them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audit_tasks.config import load_config
from audit_tasks.demo.build import SCALES, SEED, DemoBuild, build_batch, train_specs, write_config
from audit_tasks.demo.world import WorldSpec
from audit_tasks.errors import AuditError
from audit_tasks.sample_weights import WEIGHTS_FILE

#: Run ids (folder names under the demo's reports): the training catalog's audits ...
BEFORE_RUN, AFTER_RUN = "loop-before", "loop-after"
#: ... and the held-out batch's, with the hand-built debiased model as the reference.
BEFORE_HELDOUT_RUN, AFTER_HELDOUT_RUN, REFERENCE_HELDOUT_RUN = (
    "loop-before-heldout",
    "loop-after-heldout",
    "loop-reference-heldout",
)
#: Where the retrained model goes, relative to the demo folder.
RETRAINED_CHECKPOINT = "models/loop-retrained.pt"
#: The rarity check as the loop's training-catalog configs enable it (its documented defaults).
RARITY_SECTION = "  rarity: {}                # latent-density rarity: writes sample_weights.parquet\n"


@dataclass(frozen=True)
class LoopConfigs:
    """The loop's audit configs (run id -> config) and the retrained model the `after` ones audit."""

    configs: dict[str, Path]
    checkpoint: Path


@dataclass(frozen=True)
class GateRow:
    """One gate across audits: its threshold, and its value and verdict in each (None: not in that audit)."""

    name: str
    threshold: float | None
    values: tuple[float | None, ...]
    passed: tuple[bool | None, ...]


@dataclass(frozen=True)
class LoopAudit:
    """One audit of the loop: its verdict, failed gates and folder."""

    run_id: str
    passed: bool
    failed_gates: tuple[str, ...]
    run_dir: Path


@dataclass(frozen=True)
class LoopResult:
    """What the closed loop did: every audit, the weights used, the retrained model, the two gate tables."""

    audits: dict[str, LoopAudit]
    weights: Path
    checkpoint: Path
    train_seconds: float
    on_training_data: tuple[GateRow, ...]  # loop-before, loop-after
    on_heldout: tuple[GateRow, ...]  # loop-before-heldout, loop-after-heldout, loop-reference-heldout

    @property
    def before_passed(self) -> bool:
        return self.audits[BEFORE_RUN].passed


def prepare_loop(build: DemoBuild, *, scale: str = "full") -> LoopConfigs:
    """Land the biased training images as the `loop/` batch and write the loop's configs (cached)."""
    sizes = SCALES[scale]
    build_batch(build.root / "loop", train_specs(sizes)["biased"], WorldSpec())
    rarity = RARITY_SECTION
    biased, retrained, debiased = "models/biased.pt", RETRAINED_CHECKPOINT, "models/debiased.pt"
    plans = {
        BEFORE_RUN: ("loop", biased, "trained on biased data, audited on its own training images", rarity),
        AFTER_RUN: ("loop", retrained, "the biased recipe retrained with the loop-before audit's weights", rarity),
        BEFORE_HELDOUT_RUN: ("biased", biased, "trained on biased data, on the held-out biased batch", ""),
        AFTER_HELDOUT_RUN: ("biased", retrained, "retrained with the audit's weights, on the held-out batch", ""),
        REFERENCE_HELDOUT_RUN: ("biased", debiased, "debiased by hand, on the held-out biased batch", ""),
    }
    configs = {
        run: write_config(build.root, run, sizes, data=data, checkpoint=ckpt, about=about, extra_checks=extra)
        for run, (data, ckpt, about, extra) in plans.items()
    }
    return LoopConfigs(configs, build.root / RETRAINED_CHECKPOINT)


def red_run_weights(run_dir: Path) -> Path:
    """The weights file the red audit wrote; AuditError saying why when it is missing."""
    path = run_dir / WEIGHTS_FILE
    if not path.is_file():
        raise AuditError(
            f"the red audit left no {path} (checks.rarity writes it: is the section in the config?); "
            "the loop needs the audit's sample weights to retrain"
        )
    return path


def gate_table(gates: Sequence[pd.DataFrame]) -> list[GateRow]:
    """Every gate that failed in any of the audits (gates.parquet frames), in order of first appearance."""
    keys = ["check", "subject", "metric"]
    order: dict[tuple[str, str, str], None] = {}
    indexed = []
    for frame in gates:
        for key in frame[keys].itertuples(index=False, name=None):
            order.setdefault(key, None)
        indexed.append(frame.drop_duplicates(keys).set_index(keys))
    rows = []
    for key in order:
        found = [frame.loc[key] if key in frame.index else None for frame in indexed]
        passed = tuple(None if row is None else _bool(row["passed"]) for row in found)
        if False not in passed:
            continue
        thresholds = [_number(row["threshold"]) for row in found if row is not None]
        rows.append(
            GateRow(
                name="/".join(key),
                threshold=next((t for t in thresholds if t is not None), None),
                values=tuple(None if row is None else _number(row["value"]) for row in found),
                passed=passed,
            )
        )
    return rows


def format_table(rows: Sequence[GateRow], columns: Sequence[str]) -> str:
    """A fixed-width table: gate, threshold, then value and verdict per audit."""
    width = max([len(r.name) for r in rows] + [4])
    lines = [f"{'gate':<{width}}  threshold  " + "  ".join(f"{c:<13}" for c in columns)]
    for r in rows:
        cells = "  ".join(f"{_cell(v, p):<13}" for v, p in zip(r.values, r.passed, strict=True))
        lines.append(f"{r.name:<{width}}  {_fmt(r.threshold):>9}  {cells}")
    return "\n".join(lines)


def run_loop(out: Path, *, use_airflow: bool = True, scale: str = "full", weights: Path | None = None) -> LoopResult:
    """Steps 1-5 of the module docstring; prints progress and the before/after tables. Returns the result.

    `weights` trains with that file instead of the red run's (e.g. to try a weights file of your own).
    Raises AuditError when the red audit wrote no weights and none were given.
    """
    from audit_tasks.demo.build import build_demo
    from audit_tasks.demo.retrain import retrain_with_weights, spec_for
    from audit_tasks.demo.run import airflow_environment, audit_in_airflow, retrain_in_airflow

    out = Path(out).resolve()
    print(f"demo --loop: building the demo world and models under {out} (cached after the first run)", flush=True)
    build = build_demo(out, scale=scale)
    plan = prepare_loop(build, scale=scale)
    env = airflow_environment(out) if use_airflow else None
    audits: dict[str, LoopAudit] = {}

    def audit(run_id: str) -> None:
        config_path = plan.configs[run_id]
        if env is not None:
            audit_in_airflow(config_path, run_id, env, out / "airflow" / f"{run_id}.log")
        else:
            from audit_tasks.pipeline import run_audit

            print(f"demo --loop: auditing {run_id} ({config_path.name})", flush=True)
            run_audit(load_config(config_path), run_id)
        audits[run_id] = _read_audit(config_path, run_id)

    for run_id in (BEFORE_RUN, BEFORE_HELDOUT_RUN, REFERENCE_HELDOUT_RUN):
        audit(run_id)
    weights = Path(weights).resolve() if weights is not None else red_run_weights(audits[BEFORE_RUN].run_dir)
    print(f"demo --loop: retraining the biased recipe on its training images, resampled by {weights}", flush=True)
    config = load_config(plan.configs[BEFORE_RUN])
    epochs = SCALES[scale].epochs_biased  # the biased model's own recipe: only the weights differ
    start = time.perf_counter()
    if env is not None:
        checkpoint = retrain_in_airflow(
            plan.configs[BEFORE_RUN], weights, plan.checkpoint, epochs, SEED, env, out / "airflow" / "retrain.log"
        )
    else:
        checkpoint = retrain_with_weights(
            config, weights, plan.checkpoint, spec_for(config, epochs=epochs, seed=SEED)
        ).checkpoint
    train_seconds = time.perf_counter() - start
    for run_id in (AFTER_RUN, AFTER_HELDOUT_RUN):
        audit(run_id)

    def table(run_ids: Sequence[str]) -> tuple[GateRow, ...]:
        return tuple(gate_table([pd.read_parquet(audits[r].run_dir / "gates.parquet") for r in run_ids]))

    result = LoopResult(
        audits=audits,
        weights=weights,
        checkpoint=checkpoint,
        train_seconds=train_seconds,
        on_training_data=table((BEFORE_RUN, AFTER_RUN)),
        on_heldout=table((BEFORE_HELDOUT_RUN, AFTER_HELDOUT_RUN, REFERENCE_HELDOUT_RUN)),
    )
    print_result(result)
    return result


def print_result(result: LoopResult) -> None:
    """The loop's verdicts and its two gate tables (every gate that failed anywhere)."""
    print("\n== closing the loop: the biased model, and the same recipe retrained with its audit's sample weights")
    for run in result.audits.values():
        print(f"   {run.run_id:<23} audit {'PASSED' if run.passed else 'FAILED'}  ({run.run_dir / 'report.html'})")
    print(f"   weights: {result.weights}\n   retrained model: {result.checkpoint} ({result.train_seconds:.0f} s)")
    print("\n-- on the training images (the audit that wrote the weights)")
    print(format_table(result.on_training_data, ("biased", "retrained")))
    print("\n-- on the held-out biased batch (snow with both classes, half the animals dark)")
    print(format_table(result.on_heldout, ("biased", "retrained", "hand-built")))


def _read_audit(config_path: Path, run_id: str) -> LoopAudit:
    from audit_tasks.demo.run import read_run

    run = read_run(run_id, config_path, run_id, expected_pass=False)
    return LoopAudit(run_id, run.passed, run.failed_gates, run.run_dir)


def _bool(value: object) -> bool | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else bool(value)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(value: float | None, passed: bool | None) -> str:
    verdict = "" if passed is None else (" pass" if passed else " FAIL")
    return f"{_fmt(value)}{verdict}"
