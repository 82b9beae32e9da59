"""Close the loop: a red audit writes sample weights, a model retrained with them is audited again.

`run_loop(out)` (`python -m audit_tasks demo --loop`):

1. builds the demo (cached), and lands the biased model's own training images as the catalog of a
   third batch, `loop/` (the same seeded samples the biased model was trained on, pixel for pixel);
2. audits the biased model on that catalog (`loop-before`, config `loop-before.yaml`, with
   `checks.rarity` so the audit writes `sample_weights.parquet`): red;
3. retrains the biased recipe (same architecture, data, epochs and seed) on that catalog, resampled by
   those weights, with no hand-built debiasing (`retrain.retrain_with_weights`), into
   `models/loop-retrained.pt`;
4. audits the retrained model on the same catalog (`loop-after`, config `loop-after.yaml`);
5. prints every gate that failed in either audit, before and after.

The weights are one per *audited* image, so the loop audits the data it retrains on: the training set is
the catalog, as in `dataset_audit` -> `retrain_on_clean_audit`. Both runs land in the demo's report folder,
so `runs.parquet` and each report's history hold the before and the after. The red run's weights are passed
to the training explicitly (a red audit emits no asset event); `weights=` overrides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audit_tasks.config import load_config
from audit_tasks.demo.build import SCALES, SEED, DemoBuild, build_batch, train_specs, write_config
from audit_tasks.demo.retrain import WEIGHTS_FILE
from audit_tasks.demo.world import WorldSpec
from audit_tasks.errors import AuditError

#: Run ids (folder names under the demo's reports) of the two audits.
BEFORE_RUN, AFTER_RUN = "loop-before", "loop-after"
#: Where the retrained model goes, relative to the demo folder.
RETRAINED_CHECKPOINT = "models/loop-retrained.pt"
#: The rarity check as the loop's configs enable it (its documented defaults).
RARITY_SECTION = "  rarity: {}                # latent-density rarity: writes sample_weights.parquet\n"


@dataclass(frozen=True)
class LoopConfigs:
    """The two audit configs of the loop (same catalog, same output folder, two checkpoints)."""

    before: Path
    after: Path
    checkpoint: Path  # the retrained model `after` audits


@dataclass(frozen=True)
class GateChange:
    """One gate in both audits: its value and verdict before and after retraining."""

    name: str
    threshold: float | None
    before: float | None
    after: float | None
    passed_before: bool | None
    passed_after: bool | None


@dataclass(frozen=True)
class LoopResult:
    """What the closed loop did: both audits' verdicts, the weights used, the model, the gate changes."""

    before_passed: bool
    after_passed: bool
    before_failed: tuple[str, ...]
    after_failed: tuple[str, ...]
    weights: Path
    checkpoint: Path
    train_seconds: float
    changes: tuple[GateChange, ...]


def rarity_available() -> bool:
    """True when this build's config knows `checks.rarity` (the check that writes the weights)."""
    from audit_tasks.config import ChecksConfig

    return "rarity" in ChecksConfig.model_fields


def prepare_loop(build: DemoBuild, *, scale: str = "full") -> LoopConfigs:
    """Land the biased training images as the `loop/` batch and write the two loop configs (cached)."""
    sizes = SCALES[scale]
    build_batch(build.root / "loop", train_specs(sizes)["biased"], WorldSpec())
    extra = RARITY_SECTION if rarity_available() else ""
    before = write_config(
        build.root,
        BEFORE_RUN,
        sizes,
        data="loop",
        checkpoint="models/biased.pt",
        about="trained on biased data, audited on its own training images",
        extra_checks=extra,
    )
    after = write_config(
        build.root,
        AFTER_RUN,
        sizes,
        data="loop",
        checkpoint=RETRAINED_CHECKPOINT,
        about="the biased recipe retrained with the loop-before audit's sample weights",
        extra_checks=extra,
    )
    return LoopConfigs(before, after, build.root / RETRAINED_CHECKPOINT)


def red_run_weights(run_dir: Path) -> Path:
    """The weights file the red audit wrote; AuditError saying why when it is missing."""
    path = run_dir / WEIGHTS_FILE
    if path.is_file():
        return path
    why = (
        "checks.rarity is configured but wrote nothing"
        if rarity_available()
        else "this build has no checks.rarity (the check that writes it)"
    )
    raise AuditError(f"the red audit left no {path}: {why}; the loop needs the audit's sample weights to retrain")


def gate_changes(before: pd.DataFrame, after: pd.DataFrame) -> list[GateChange]:
    """Every gate that failed in either audit (gates.parquet frames), in the before audit's order."""
    keys = ["check", "subject", "metric"]
    merged = before.merge(after, on=keys, how="outer", suffixes=("_before", "_after"), sort=False)
    changes = []
    for row in merged.itertuples(index=False):
        passed_before, passed_after = _bool(row.passed_before), _bool(row.passed_after)
        if passed_before is not False and passed_after is not False:
            continue
        threshold = _number(row.threshold_before)
        changes.append(
            GateChange(
                name=f"{row.check}/{row.subject}/{row.metric}",
                threshold=threshold if threshold is not None else _number(row.threshold_after),
                before=_number(row.value_before),
                after=_number(row.value_after),
                passed_before=passed_before,
                passed_after=passed_after,
            )
        )
    return changes


def format_changes(changes: list[GateChange] | tuple[GateChange, ...]) -> str:
    """A fixed-width table: gate, threshold, value and verdict before and after."""
    width = max([len(c.name) for c in changes] + [4])
    lines = [f"{'gate':<{width}}  threshold  before         after"]
    for c in changes:
        lines.append(
            f"{c.name:<{width}}  {_fmt(c.threshold):>9}  {_cell(c.before, c.passed_before):<13}  "
            f"{_cell(c.after, c.passed_after)}"
        )
    return "\n".join(lines)


def run_loop(out: Path, *, use_airflow: bool = True, scale: str = "full", weights: Path | None = None) -> LoopResult:
    """Steps 1-5 of the module docstring; prints progress and the before/after table. Returns the result.

    `weights` trains with that file instead of the red run's (e.g. to try a weights file of your own).
    Raises AuditError when the red audit wrote no weights and none were given.
    """
    from audit_tasks.demo.build import build_demo
    from audit_tasks.demo.retrain import retrain_with_weights, spec_for
    from audit_tasks.demo.run import airflow_environment, audit_in_airflow, read_run

    out = Path(out).resolve()
    print(f"demo --loop: building the demo world and models under {out} (cached after the first run)", flush=True)
    build = build_demo(out, scale=scale)
    configs = prepare_loop(build, scale=scale)
    env = airflow_environment(out) if use_airflow else None

    def audit(name: str, config_path: Path) -> None:
        if env is not None:
            audit_in_airflow(config_path, name, env, out / "airflow" / f"{name}.log")
        else:
            from audit_tasks.pipeline import run_audit

            print(f"demo --loop: auditing {name} ({config_path.name})", flush=True)
            run_audit(load_config(config_path), name)

    audit(BEFORE_RUN, configs.before)
    before = read_run(BEFORE_RUN, configs.before, BEFORE_RUN, expected_pass=False)
    weights = Path(weights).resolve() if weights is not None else red_run_weights(before.run_dir)
    print(f"demo --loop: retraining the biased recipe with {weights}", flush=True)
    config = load_config(configs.before)
    trained = retrain_with_weights(
        config, weights, configs.checkpoint, spec_for(config, epochs=SCALES[scale].epochs_biased, seed=SEED)
    )
    audit(AFTER_RUN, configs.after)
    after = read_run(AFTER_RUN, configs.after, AFTER_RUN, expected_pass=True)

    changes = gate_changes(
        pd.read_parquet(before.run_dir / "gates.parquet"), pd.read_parquet(after.run_dir / "gates.parquet")
    )
    result = LoopResult(
        before_passed=before.passed,
        after_passed=after.passed,
        before_failed=before.failed_gates,
        after_failed=after.failed_gates,
        weights=weights,
        checkpoint=trained.checkpoint,
        train_seconds=trained.seconds,
        changes=tuple(changes),
    )
    print(f"\n== closing the loop: {BEFORE_RUN} (biased model) -> {AFTER_RUN} (retrained with the audit's weights)")
    print(f"   before: audit {'PASSED' if before.passed else 'FAILED'}; report: {before.report}")
    print(f"   after:  audit {'PASSED' if after.passed else 'FAILED'}; report: {after.report}")
    print(format_changes(changes) if changes else "   no gate failed in either audit")
    return result


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
