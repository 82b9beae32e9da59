"""Benchmark of the co-occurrence check against a plain pandas explode / self-merge / groupby baseline.

Generates (once, cached) a Parquet manifest of 1,000,000 images with 400 tags (about 3 per image, a few
planted shortcut pairs), two attributes and a label; then, each in its own subprocess so that each peak
RSS is its own:

(a) read the Parquet file + ``check_cooccurrence`` (what ``python -m audit_tasks check-cooccurrence`` does),
    and, when ``audit_tasks/cli.py`` has that command, the command itself end to end;
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
    rng.shuffle(weights[len(specials):])
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
    table = pa.table({
        "image_uri": pa.array([f"img/{i:07d}.jpg" for i in range(rows)]),
        "label": pa.array(labels, type=pa.string()),
        "tags": tags,
        "gender": pa.array(gender, type=pa.string()),
        "skin_tone": pa.array(skin, type=pa.string()),
    })
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
t1 = time.perf_counter()
table = pq.read_table(sys.argv[1], columns=["tags", "label", "gender", "skin_tone"])
t2 = time.perf_counter()
result = check_cooccurrence(table, check=CooccurrenceCheck(), attributes=["gender", "skin_tone"])
t3 = time.perf_counter()
if len(sys.argv) > 2:
    n = int(sys.argv[2])
    sample = check_cooccurrence(table.slice(0, n), check=CooccurrenceCheck(), attributes=["gender", "skin_tone"]).pairs
    sample[["tag_a", "tag_b", "n_ab"]].to_parquet(sys.argv[3])
flagged = result.pairs[result.pairs["flagged"]]
print(json.dumps({
    "import_s": t1 - t0, "read_s": t2 - t1, "check_s": t3 - t2, "read_check_s": t3 - t1,
    "pairs": len(result.pairs), "flagged": [f"{a} -> {b}" for a, b in zip(flagged.tag_a, flagged.tag_b)],
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

_BASELINE = r"""
import json, resource, sys, time
import pandas as pd, pyarrow.parquet as pq
n = int(sys.argv[2])
frame = pq.read_table(sys.argv[1], columns=["tags", "gender", "skin_tone"]).slice(0, n).to_pandas()
t0 = time.perf_counter()
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
t1 = time.perf_counter()
if len(sys.argv) > 3:
    counts.to_parquet(sys.argv[3])
print(json.dumps({"baseline_s": t1 - t0, "rows": len(frame), "pairs": len(counts),
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


def _cli_available() -> bool:
    cli = REPO / "audit_tasks" / "cli.py"
    return cli.is_file() and "check-cooccurrence" in cli.read_text(encoding="utf-8")


def _time_cli(manifest: Path, out_dir: Path) -> tuple[float, int, float]:
    """Wall time, exit code and peak RSS (MB) of `python -m audit_tasks check-cooccurrence`."""
    import resource

    cfg = out_dir / "bench_config.yaml"
    cfg.write_text("checks:\n  cooccurrence: {attributes: [gender, skin_tone]}\n", encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "audit_tasks", "check-cooccurrence", "--manifest", str(manifest), "--config", str(cfg),
         "--out", str(out_dir / "cli_out")],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode not in (0, 1):
        print(f"  CLI failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, proc.returncode, max(after, before) / 1024


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tags", type=int, default=400)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "audit_tasks_bench")
    parser.add_argument("--baseline-rows", type=int, default=None,
                        help="rows for the baseline (default: all, or a sample if all would exceed ~3 minutes)")
    args = parser.parse_args(argv)

    manifest = args.data_dir / f"cooccurrence_{args.rows}_{args.tags}.parquet"
    if not manifest.is_file():
        print(f"generating {manifest} ...", flush=True)
        generate(manifest, args.rows, args.tags)
    print(f"manifest: {manifest} ({manifest.stat().st_size / 1e6:.1f} MB, {args.rows:,} rows, {args.tags} tags)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}")

    # Decide the baseline's rows: probe on 100k rows, extrapolate, sample when the full run is too slow.
    probe_rows = min(100_000, args.rows)
    baseline_rows = args.baseline_rows
    if baseline_rows is None:
        probe, _ = _run(_BASELINE, str(manifest), str(probe_rows))
        estimate = probe["baseline_s"] * args.rows / probe_rows
        baseline_rows = args.rows if estimate <= BASELINE_BUDGET_S else probe_rows
    work = Path(tempfile.mkdtemp(prefix="bench_cooc_"))

    check, check_wall = _run(_CHECK, str(manifest), str(baseline_rows), str(work / "check_sample.parquet"))
    baseline, _ = _run(_BASELINE, str(manifest), str(baseline_rows), str(work / "baseline.parquet"))

    import pandas as pd

    ours = pd.read_parquet(work / "check_sample.parquet").set_index(["tag_a", "tag_b"])["n_ab"].sort_index()
    theirs = pd.read_parquet(work / "baseline.parquet").set_index(["tag_a", "tag_b"])["n_ab"].sort_index()
    same = ours.index.equals(theirs.index) and bool((ours.values == theirs.values).all())
    print(f"n_ab counts identical to the baseline on its {baseline_rows:,} rows: {same} ({len(ours):,} pairs)")
    if not same:
        return 1

    baseline_full_s = baseline["baseline_s"] * args.rows / baseline_rows
    note = "" if baseline_rows == args.rows else (
        f"  (measured on the first {baseline_rows:,} rows: {baseline['baseline_s']:.2f} s, extrapolated linearly)"
    )
    print(f"(a) read Parquet + check_cooccurrence: {check['read_check_s']:.2f} s "
          f"(read {check['read_s']:.2f} s, check {check['check_s']:.2f} s; imports {check['import_s']:.2f} s; "
          f"whole subprocess {check_wall:.2f} s), peak RSS {check['maxrss_mb']:.0f} MB")
    print(f"    {check['pairs']:,} co-occurring pairs; flagged: {', '.join(check['flagged']) or 'none'}")
    print(f"(b) pandas explode/self-merge/groupby baseline (n_ab only, Parquet read excluded): "
          f"{baseline_full_s:.1f} s for {args.rows:,} rows{note}, peak RSS {baseline['maxrss_mb']:.0f} MB "
          f"on {baseline_rows:,} rows")
    print(f"speed-up (b) / (a): {baseline_full_s / check['read_check_s']:.1f}x")
    if _cli_available():
        wall, code, rss = _time_cli(manifest, work)
        print(f"(c) python -m audit_tasks check-cooccurrence: {wall:.2f} s wall (interpreter start and writing "
              f"included), exit {code}, peak RSS {rss:.0f} MB")
    else:
        print("(c) audit_tasks/cli.py has no check-cooccurrence command yet: not timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
