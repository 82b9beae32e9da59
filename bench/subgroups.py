"""Benchmark of the subgroup check (`check_subgroups`) against fairlearn's MetricFrame.

Generates 10,000,000 prediction rows in memory (binary labels, a planted accuracy gap, three attributes
with 5, 3 and 4 levels plus a few missing values that become `unknown`), then times
``check_subgroups`` with intersections on (3 single attributes + 3 pairs + 1 triple = 7 groupings,
~100 groups; metric accuracy, and again with macro_recall, which adds the bootstrap). Columns are
pandas' default string dtype, as `read_table` returns them from Parquet; data generation is not timed.

fairlearn's MetricFrame (accuracy_score + count per grouping, the same 7 groupings) is too slow for
10M rows, so it runs on a 1,000,000-row sample and its time is extrapolated linearly (the output says
so); `check_subgroups` is timed on the same sample for a like-for-like ratio. Group sizes and
accuracies of the two are compared on the sample before any time is printed.

Usage: ``python bench/subgroups.py [--rows 10000000] [--fairlearn-rows 1000000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audit_tasks.config import SubgroupCheck  # noqa: E402 - after the sys.path entry for the checkout
from audit_tasks.subgroups import check_subgroups  # noqa: E402 - likewise

ATTRIBUTES = {
    "ethnicity": ["a", "b", "c", "d", "e"],
    "skin_tone": ["light", "medium", "dark"],
    "age": ["0-17", "18-39", "40-64", "65+"],
}
CLASSES = ("doctor", "nurse")
MISSING_RATE = 0.01


def generate(rows: int, seed: int = 0) -> pd.DataFrame:
    """Synthetic predictions: accuracy 0.93, 0.85 on dark skin; about 1% of each attribute missing."""
    rng = np.random.default_rng(seed)
    data: dict[str, pd.Series] = {}
    codes = {}
    for name, levels in ATTRIBUTES.items():
        code = rng.integers(0, len(levels), size=rows)
        codes[name] = code
        values = np.array(levels, dtype=object)[code]
        values[rng.random(rows) < MISSING_RATE] = None
        data[name] = pd.Series(values, dtype="str")
    label = rng.integers(0, 2, size=rows)
    accuracy = np.where(codes["skin_tone"] == 2, 0.85, 0.93)
    prediction = np.where(rng.random(rows) < accuracy, label, 1 - label)
    classes = np.array(CLASSES, dtype=object)
    data["label"] = pd.Series(classes[label], dtype="str")
    data["prediction"] = pd.Series(classes[prediction], dtype="str")
    return pd.DataFrame(data)


def time_check(frame: pd.DataFrame, metric: str, repeats: int) -> tuple[float, object, float]:
    """Median wall seconds, the last result, and median CPU seconds (the machine may be shared)."""
    check = SubgroupCheck(attributes=tuple(ATTRIBUTES), intersections=True, metric=metric)
    times, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = check_subgroups(frame, check=check, classes=CLASSES)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), result, statistics.median(cpu)


def groupings() -> list[list[str]]:
    names = list(ATTRIBUTES)
    return [[a] for a in names] + [[a, b] for i, a in enumerate(names) for b in names[i + 1 :]] + [names]


def time_fairlearn(frame: pd.DataFrame) -> tuple[float, dict[str, pd.DataFrame], float]:
    """MetricFrame per grouping; missing values filled with 'unknown' first (fairlearn rejects NaN)."""
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    start, start_cpu = time.perf_counter(), time.process_time()
    features = frame[list(ATTRIBUTES)].fillna("unknown")
    out = {}
    for combo in groupings():
        mf = MetricFrame(
            metrics={"accuracy": accuracy_score, "n": count},
            y_true=frame["label"],
            y_pred=frame["prediction"],
            sensitive_features=features[combo],
        )
        out["&".join(combo)] = mf.by_group
    return time.perf_counter() - start, out, time.process_time() - start_cpu


def compare(result, fairlearn_tables: dict[str, pd.DataFrame]) -> None:
    """Fail loudly if the two disagree on group sizes or accuracies."""
    groups = result.groups
    for attribute, table in fairlearn_tables.items():
        table = table.dropna()
        index = table.index.to_flat_index() if isinstance(table.index, pd.MultiIndex) else table.index
        names = ["&".join(k) if isinstance(k, tuple) else str(k) for k in index]
        ours = groups[groups["attribute"] == attribute].set_index("group").loc[names]
        if not (
            np.array_equal(ours["n"].to_numpy(), table["n"].to_numpy().astype(int))
            and np.allclose(ours["value"].to_numpy(), table["accuracy"].to_numpy(), atol=1e-12)
        ):
            raise SystemExit(f"MISMATCH with fairlearn on {attribute}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--fairlearn-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-fairlearn", action="store_true")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cores available={cores} "
        f"python {platform.python_version()} numpy {np.__version__} pandas {pd.__version__}"
    )
    start = time.perf_counter()
    frame = generate(args.rows)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - start:.1f} s (not timed below)")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min) before timing: {load:.1f}")
    seconds, result, cpu = time_check(frame, "accuracy", args.repeats)
    groups = result.groups
    flagged = groups[groups["flagged"]]
    print(
        f"check_subgroups accuracy, 7 groupings, {len(groups)} groups: {seconds:.2f} s wall, {cpu:.2f} s CPU "
        f"(median of {args.repeats}), {args.rows / seconds:,.0f} rows/s; "
        f"flagged: {', '.join(flagged['attribute'] + '=' + flagged['group'])}"
    )
    seconds_macro, _, cpu_macro = time_check(frame, "macro_recall", args.repeats)
    print(
        f"check_subgroups macro_recall (bootstrap 2000 per group): {seconds_macro:.2f} s wall, {cpu_macro:.2f} s CPU, "
        f"{args.rows / seconds_macro:,.0f} rows/s"
    )

    if args.skip_fairlearn:
        return 0
    sample_rows = min(args.fairlearn_rows, args.rows)
    sample = frame.iloc[:sample_rows].reset_index(drop=True)
    ours_sample, ours_result, ours_cpu = time_check(sample, "accuracy", args.repeats)
    fl_seconds, fl_tables, fl_cpu = time_fairlearn(sample)
    compare(ours_result, fl_tables)
    print(
        f"on a {sample_rows:,}-row sample: check_subgroups {ours_sample:.2f} s wall / {ours_cpu:.2f} s CPU, "
        f"fairlearn MetricFrame {fl_seconds:.2f} s wall / {fl_cpu:.2f} s CPU (same 7 groupings, accuracy + count; "
        f"values and sizes agree): ratio {fl_seconds / ours_sample:.0f}x wall, {fl_cpu / ours_cpu:.0f}x CPU"
    )
    if sample_rows < args.rows:
        extrapolated = fl_seconds * args.rows / sample_rows
        print(
            f"fairlearn extrapolated linearly to {args.rows:,} rows: ~{extrapolated:.0f} s "
            f"(EXTRAPOLATED, not measured) vs check_subgroups {seconds:.2f} s measured: "
            f"ratio ~{extrapolated / seconds:.0f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
