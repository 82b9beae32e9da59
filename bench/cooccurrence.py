"""Benchmark of the co-occurrence check against a plain pandas explode / self-merge / groupby baseline.

Generates (once, cached) a Parquet manifest of 1,000,000 images with 400 tags (about 3 per image, a few
planted shortcut pairs), two attributes and a label; then, each in its own subprocess so that each peak
RSS is its own:

(a) read the Parquet file as the audit's co-occurrence stage reads the catalog (tags, label and attributes
    dictionary-encoded) + ``check_cooccurrence``; (a') the same with every string read as a plain string;
    (c) when ``audit_tasks/cli.py`` has it, ``python -m audit_tasks check-cooccurrence`` end to end;
(b) the baseline computing the same ``n_ab`` counts with pandas explode + self-merge + groupby. When the
    baseline would take more than ~3 minutes, it runs on a sample of rows and is extrapolated linearly
    (the output says so).

Both sides' ``n_ab`` counts are compared on the baseline's rows before any time is reported.

Usage: ``python bench/cooccurrence.py [--rows 1000000] [--tags 400] [--data-dir DIR] [--baseline-rows N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLANTED = [("laptop", "mouse", 0.99), ("wolf", "snow", 0.97), ("boat", "water", 0.95)]
PLANTED_ATTR = ("nurse", "gender", "female", 0.96)
ATTRIBUTES = ("gender", "skin_tone")
BASELINE_BUDGET_S = 180.0


# --------------------------------------------------------------------------------------------- data


def generate(path: Path, rows: int, n_tags: int, seed: int = 0) -> None:
    """Write the synthetic manifest: Zipf-like tag popularity, planted pairs, attributes and a label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = [f"tag{k:03d}" for k in range(n_tags)]
    specials = [t for pair in PLANTED for t in pair[:2]] + [PLANTED_ATTR[0]]
    names[: len(specials)] = specials
    weights = 1.0 / np.arange(1, n_tags + 1) ** 0.8
    rng.shuffle(weights[len(specials) :])
    weights[: len(specials)] = weights.mean()
    weights /= weights.sum()

    per_row = rng.poisson(2.7, size=rows)
    row_of = np.repeat(np.arange(rows, dtype=np.int64), per_row)
    tag_of = rng.choice(n_tags, size=len(row_of), p=weights)
    extra_rows, extra_tags = [], []
    for a, b, p in PLANTED:
        ia, ib = names.index(a), names.index(b)
        has_a = np.unique(row_of[tag_of == ia])
        add = has_a[rng.random(len(has_a)) < p]
        extra_rows.append(add)
        extra_tags.append(np.full(len(add), ib))
    row_of = np.concatenate([row_of, *extra_rows])
    tag_of = np.concatenate([tag_of, *extra_tags])
    order = np.argsort(row_of, kind="stable")
    row_of, tag_of = row_of[order], tag_of[order]
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(row_of, minlength=rows), out=offsets[1:])
    values = pa.DictionaryArray.from_arrays(pa.array(tag_of.astype(np.int32)), pa.array(names)).cast(pa.string())
    tags = pa.ListArray.from_arrays(pa.array(offsets), values)

    nurse = np.zeros(rows, dtype=bool)
    nurse[row_of[tag_of == names.index(PLANTED_ATTR[0])]] = True
    female = np.where(nurse, rng.random(rows) < PLANTED_ATTR[3], rng.random(rows) < 0.45)
    gender = np.where(female, "female", "male").astype(object)
    gender[rng.random(rows) < 0.05] = None
    skin = rng.choice(np.array(["light", "medium", "dark"], dtype=object), size=rows, p=[0.6, 0.3, 0.1])
    labels = rng.choice(np.array([f"class{k}" for k in range(10)], dtype=object), size=rows)
    table = pa.table(
        {
            "image_uri": pa.array([f"img/{i:07d}.jpg" for i in range(rows)]),
            "label": pa.array(labels, type=pa.string()),
            "tags": tags,
            "gender": pa.array(gender, type=pa.string()),
            "skin_tone": pa.array(skin, type=pa.string()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- workers

_CHECK = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import pyarrow.parquet as pq
from audit_tasks.config import CooccurrenceCheck
from audit_tasks.cooccurrence import check_cooccurrence
t1, c1 = time.perf_counter(), time.process_time()
dictionary = ["tags.list.element", "label", "gender", "skin_tone"] if sys.argv[2] == "dict" else None
table = pq.read_table(sys.argv[1], columns=["tags", "label", "gender", "skin_tone"], read_dictionary=dictionary)
t2 = time.perf_counter()
result = check_cooccurrence(table, check=CooccurrenceCheck(), attributes=["gender", "skin_tone"])
t3, c3 = time.perf_counter(), time.process_time()
if len(sys.argv) > 3:
    n = int(sys.argv[3])
    sample = check_cooccurrence(table.slice(0, n), check=CooccurrenceCheck(), attributes=["gender", "skin_tone"]).pairs
    sample[["tag_a", "tag_b", "n_ab"]].to_parquet(sys.argv[4])
flagged = result.pairs[result.pairs["flagged"]]
print(json.dumps({
    "import_s": t1 - t0, "read_s": t2 - t1, "check_s": t3 - t2, "read_check_s": t3 - t1, "cpu_s": c3 - c1,
    "pairs": len(result.pairs), "flagged": [f"{a} -> {b}" for a, b in zip(flagged.tag_a, flagged.tag_b)],
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

_BASELINE = r"""
import json, resource, sys, time
import pandas as pd, pyarrow.parquet as pq
n = int(sys.argv[2])
frame = pq.read_table(sys.argv[1], columns=["tags", "gender", "skin_tone"]).slice(0, n).to_pandas()
t0, c0 = time.perf_counter(), time.process_time()
frame["row"] = range(len(frame))
tags = frame[["row", "tags"]].explode("tags").dropna().drop_duplicates()
tags = tags.rename(columns={"tags": "item"})
attrs = []
for name in ["gender", "skin_tone"]:
    values = frame[name].fillna("unknown").replace("", "unknown")
    attrs.append(pd.DataFrame({"row": frame["row"], "item": name + "=" + values.astype(str)}))
items = pd.concat([tags, *attrs], ignore_index=True)
pairs = tags.rename(columns={"item": "tag_a"}).merge(items.rename(columns={"item": "tag_b"}), on="row")
pairs = pairs[pairs["tag_a"] != pairs["tag_b"]]
counts = pairs.groupby(["tag_a", "tag_b"], sort=False).size().rename("n_ab").reset_index()
t1, c1 = time.perf_counter(), time.process_time()
if len(sys.argv) > 3:
    counts.to_parquet(sys.argv[3])
print(json.dumps({"baseline_s": t1 - t0, "cpu_s": c1 - c0, "rows": len(frame), "pairs": len(counts),
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(code: str, *args: str) -> tuple[dict, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"benchmark worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def walls(runs: list[dict], key: str, scale: float = 1.0) -> str:
    return ", ".join(f"{r[key] * scale:.2f}" for r in runs)


def _cli_available() -> bool:
    cli = REPO / "audit_tasks" / "cli.py"
    return cli.is_file() and "check-cooccurrence" in cli.read_text(encoding="utf-8")


_CLI = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "audit_tasks", *sys.argv[1:]], capture_output=True, text=True)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "code": proc.returncode, "stderr": proc.stderr[-800:],
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _time_cli(manifest: Path, out_dir: Path) -> dict:
    """Wall time, exit code and peak RSS of `python -m audit_tasks check-cooccurrence` (its own process)."""
    cfg = out_dir / "bench_config.yaml"
    cfg.write_text("checks:\n  cooccurrence: {attributes: [gender, skin_tone]}\n", encoding="utf-8")
    result, _ = _run(
        _CLI, "check-cooccurrence", "--manifest", str(manifest), "--config", str(cfg), "--out", str(out_dir / "cli_out")
    )
    return result


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tags", type=int, default=400)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "audit_tasks_bench")
    parser.add_argument(
        "--baseline-rows",
        type=int,
        default=None,
        help="rows for the baseline (default: all, or a sample if all would exceed ~3 minutes)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs of each side; the best counts")
    args = parser.parse_args(argv)

    manifest = args.data_dir / f"cooccurrence_{args.rows}_{args.tags}.parquet"
    if not manifest.is_file():
        print(f"generating {manifest} ...", flush=True)
        generate(manifest, args.rows, args.tags)
    print(f"manifest: {manifest} ({manifest.stat().st_size / 1e6:.1f} MB, {args.rows:,} rows, {args.tags} tags)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}, "
        f"load average {load:.1f} at start"
    )

    # The baseline's rows: probe on 100k rows, extrapolate, sample when the full run would be too slow.
    probe_rows = min(100_000, args.rows)
    baseline_rows = args.baseline_rows
    if baseline_rows is None:
        probe, _ = _run(_BASELINE, str(manifest), str(probe_rows))
        estimate = probe["baseline_s"] * args.rows / probe_rows
        baseline_rows = args.rows if estimate <= BASELINE_BUDGET_S else probe_rows
    work = Path(tempfile.mkdtemp(prefix="bench_cooc_"))

    checks = []
    dict_checks = []
    baselines = []
    for i in range(max(1, args.repeats)):  # interleaved, so that both sides see the same machine load
        sample_args = (str(baseline_rows), str(work / "check_sample.parquet")) if i == 0 else ()
        checks.append(_run(_CHECK, str(manifest), "plain")[0])
        dict_checks.append(_run(_CHECK, str(manifest), "dict", *sample_args)[0])
        baseline_out = (str(work / "baseline.parquet"),) if i == 0 else ()
        baselines.append(_run(_BASELINE, str(manifest), str(baseline_rows), *baseline_out)[0])

    import pandas as pd

    ours = pd.read_parquet(work / "check_sample.parquet").set_index(["tag_a", "tag_b"])["n_ab"].sort_index()
    theirs = pd.read_parquet(work / "baseline.parquet").set_index(["tag_a", "tag_b"])["n_ab"].sort_index()
    same = ours.index.equals(theirs.index) and bool((ours.values == theirs.values).all())
    print(f"n_ab counts identical to the baseline on its {baseline_rows:,} rows: {same} ({len(ours):,} pairs)")
    if not same:
        return 1

    check = min(checks, key=lambda r: r["read_check_s"])
    fast = min(dict_checks, key=lambda r: r["read_check_s"])
    scale = args.rows / baseline_rows
    base_wall = min(r["baseline_s"] for r in baselines) * scale
    base_cpu = min(r["cpu_s"] for r in baselines) * scale
    note = (
        ""
        if baseline_rows == args.rows
        else (f" (measured on the first {baseline_rows:,} rows, extrapolated linearly to {args.rows:,})")
    )
    print(f"best of {len(checks)} fresh processes each:")
    print(
        f"(a) read Parquet as the audit's co-occurrence stage reads the catalog (tags, label and attributes "
        f"dictionary-encoded) + check_cooccurrence: {fast['read_check_s']:.2f} s wall (read {fast['read_s']:.2f} s, "
        f"check {fast['check_s']:.2f} s), {fast['cpu_s']:.2f} s CPU; imports {fast['import_s']:.2f} s; "
        f"peak RSS {max(r['maxrss_mb'] for r in dict_checks):.0f} MB"
    )
    print(f"    all runs (wall s): {walls(dict_checks, 'read_check_s')}")
    print(f"    {fast['pairs']:,} co-occurring pairs; flagged: {', '.join(fast['flagged']) or 'none'}")
    print(
        f"(a') the same, reading every string as a plain string: {check['read_check_s']:.2f} s wall "
        f"(read {check['read_s']:.2f} s, check {check['check_s']:.2f} s), {check['cpu_s']:.2f} s CPU; "
        f"peak RSS {max(r['maxrss_mb'] for r in checks):.0f} MB"
    )
    print(f"    all runs (wall s): {walls(checks, 'read_check_s')}")
    print(
        f"(b) pandas explode/self-merge/groupby baseline, n_ab only, Parquet read excluded: {base_wall:.2f} s wall, "
        f"{base_cpu:.2f} s CPU{note}; peak RSS {max(r['maxrss_mb'] for r in baselines):.0f} MB "
        f"on {baseline_rows:,} rows"
    )
    print(f"    all runs (wall s): {walls(baselines, 'baseline_s', scale)}")
    print(
        f"speed-up (b) / (a): {base_wall / fast['read_check_s']:.1f}x wall, {base_cpu / fast['cpu_s']:.1f}x CPU; "
        f"(b) / (a'): {base_wall / check['read_check_s']:.1f}x wall, {base_cpu / check['cpu_s']:.1f}x CPU"
    )
    if _cli_available():
        cli = _time_cli(manifest, work)
        if cli["code"] not in (0, 1):
            print(f"    CLI failed (exit {cli['code']}): {cli['stderr']}")
        print(
            f"(c) python -m audit_tasks check-cooccurrence: {cli['wall_s']:.2f} s wall (interpreter start, imports, "
            f"config and writing the tables included), exit {cli['code']}, peak RSS {cli['maxrss_mb']:.0f} MB"
        )
    else:
        print("(c) audit_tasks/cli.py has no check-cooccurrence command yet: not timed")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
