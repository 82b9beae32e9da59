"""Benchmark of the saliency-strategies check (`check_strategies`): one class of 100,000 Grad-CAM maps of 7x7.

Generates the maps in memory (a ResNet's layer4 on 224 px input is 7x7): half look at the object, a
Gaussian hot spot near the centre with jitter and varying width; half answer from a cue in the bottom-left
corner (with a little of the object's heat), plus uniform noise on every cell. Then times
``check_strategies`` on the class as the stage calls it (normalising, the seeded sample clustered
spectrally, the rest assigned to the nearest centroid, per-cluster statistics and the flag rule) at a few
sample sizes (`max_sample`, default 5,000). Each figure is the best of `--repeats` runs in this process;
CPU time is the process's user + system time over the same run. The decision (the cue's share flagged) is
printed beside each time, so a faster setting that changes it shows.

Clustering all 100,000 maps without sampling is not timed: the exact kNN graph alone is 10^10 distances.

Usage: ``python bench/strategies.py [--maps 100000] [--samples 2000,5000,10000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audit_tasks.config import StrategiesCheck  # noqa: E402 - after the sys.path entry for the checkout
from audit_tasks.strategies import check_strategies  # noqa: E402 - likewise

H = W = 7
CUE = (6.3, 0.6)  # bottom-left corner, in cell units (cell centres at i + 0.5)


def generate(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` maps of one class, the first half with the corner cue; images.parquet's columns."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    centre = 3.5 + rng.normal(0, 0.9, (n, 2))
    width = rng.uniform(0.7, 1.3, n)
    obj = np.exp(-((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2) / (2 * width[:, None, None] ** 2))
    cue = np.exp(-((yy - CUE[0]) ** 2 + (xx - CUE[1]) ** 2) / (2 * 0.6**2))
    cued = np.arange(n) < n // 2
    maps = np.where(cued[:, None, None], 0.3 * obj + cue, obj) + rng.uniform(0, 0.05, (n, H, W))
    return pd.DataFrame(
        {
            "image_id": [f"wolf{i:06d}" for i in range(n)],
            "label": "wolf",
            "correct": True,
            "cam": list(maps.reshape(n, -1).astype(np.float32)),
            "cam_height": H,
            "cam_width": W,
        }
    )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=100_000)
    parser.add_argument("--samples", default="2000,5000,10000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    images = generate(args.maps)
    generated = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{len(images):,} maps of {H}x{W}, half with a bottom-left corner cue (peak RSS {generated:,.0f} MB)",
        flush=True,
    )
    for sample in (int(s) for s in args.samples.split(",")):
        check = StrategiesCheck(max_sample=sample)
        walls, cpus = [], []
        result = None
        for _ in range(args.repeats):
            start, cpu = time.perf_counter(), _cpu()
            result = check_strategies(images, check)
            walls.append(time.perf_counter() - start)
            cpus.append(_cpu() - cpu)
        assert result is not None
        clusters = result.clusters
        flagged = clusters[clusters["flagged"]]
        best = int(np.argmin(walls))
        print(
            f"max_sample {sample:>6,}: {walls[best]:.2f} s wall, {cpus[best]:.2f} s CPU; "
            f"{len(clusters)} clusters, flagged share {flagged['share'].sum():.3f} (planted 0.500), "
            f"gate {'FAIL' if not result.gates[0].passed else 'pass'}; {clusters['method'].iloc[0]}",
            flush=True,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB after the checks ({generated:,.0f} MB after generating the maps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
