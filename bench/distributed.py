"""Load on the local CeleryExecutor cluster: N audits of separate small worlds triggered at once.

    python bench/distributed.py [--audits 8] [--images 12]      (make distributed runs it after the tests)

Each world has its own catalog and output folder; all are triggered through the REST API in the same second.
dataset_audit has `max_active_runs=1` (one audit at a time may update a catalog's ledger and runs.parquet),
so the cluster must run them one after another, each starting as soon as the one before it ends. Prints the
wall time, every run's wait and duration, the gap between one run's end and the next one's start, the most
runs ever running at once, and the cluster's peak resident memory (every process it started, tasks
included, sampled each second). Exits 1 when a run does not succeed or more than max_active_runs run at once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from cluster import ClusterUnavailable, LocalCeleryCluster, require_services  # noqa: E402
from fixtures_pipeline import make_world  # noqa: E402

#: A run that starts more than this long after the one before it ended was held back by something other
#: than max_active_runs (the scheduler loop takes a few seconds to notice and queue the next one).
MAX_HANDOVER_S = 30.0


def _at(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audits", type=int, default=8)
    parser.add_argument("--images", type=int, default=12, help="images per world")
    args = parser.parse_args()
    print(f"device: CPU only ({os.cpu_count()} cores); {args.audits} audits of {args.images}-image worlds")
    try:
        require_services()
    except ClusterUnavailable as exc:
        print(f"skipped: no local CeleryExecutor cluster: {exc}")
        return 0

    with tempfile.TemporaryDirectory(prefix="audit-load-") as scratch:
        root = Path(scratch)
        worlds = [make_world(root / f"world-{i}", n_images=args.images) for i in range(args.audits)]
        started = time.monotonic()
        with LocalCeleryCluster(root / "cluster") as cluster:
            print(f"cluster up in {time.monotonic() - started:.0f} s")
            limit = int(cluster.api("GET", "/api/v2/dags/dataset_audit")["max_active_runs"])
            peak_rss, stop = [0], threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak_rss[0] = max(peak_rss[0], cluster.rss_bytes())
                    stop.wait(1.0)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            first = time.monotonic()
            run_ids = [f"load-{i}" for i in range(args.audits)]
            for run_id, world in zip(run_ids, worlds, strict=True):
                cluster.trigger("dataset_audit", run_id, {"config": str(world.config), "run_id": run_id})
            runs = [cluster.wait_for_run("dataset_audit", run_id, timeout_s=600 * args.audits) for run_id in run_ids]
            wall = time.monotonic() - first
            stop.set()
            sampler.join()
            restarts = list(cluster.restarts)

    runs.sort(key=lambda r: _at(r["start_date"]))
    intervals = [(_at(r["start_date"]), _at(r["end_date"])) for r in runs]
    most_at_once = max(sum(1 for s, e in intervals if s < end and e > start) for start, end in intervals)
    handovers = [(b[0] - a[1]).total_seconds() for a, b in zip(intervals, intervals[1:], strict=False)]
    print(f"{'run':<8} {'state':<8} {'waited s':>9} {'ran s':>6}")
    for run in runs:
        waited = (_at(run["start_date"]) - _at(run["queued_at"])).total_seconds()
        ran = (_at(run["end_date"]) - _at(run["start_date"])).total_seconds()
        print(f"{run['dag_run_id']:<8} {run['state']:<8} {waited:>9.0f} {ran:>6.0f}")
    median_handover = sorted(handovers)[len(handovers) // 2] if handovers else 0.0
    print(
        f"wall {wall:.0f} s for {args.audits} audits ({wall / args.audits:.0f} s each); most running at once "
        f"{most_at_once} (max_active_runs {limit}); handover between runs: median {median_handover:.1f} s, "
        f"longest {max(handovers, default=0):.1f} s; peak cluster RSS {peak_rss[0] / 2**30:.2f} GiB; "
        f"component restarts: {len(restarts)}"
    )
    failures = []
    if any(run["state"] != "success" for run in runs):
        failures.append("a run did not succeed")
    if most_at_once > limit:
        failures.append(f"{most_at_once} runs ran at once, above max_active_runs={limit}")
    if max(handovers, default=0) > MAX_HANDOVER_S:
        failures.append(f"a run waited {max(handovers):.0f} s after the one before it ended")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
