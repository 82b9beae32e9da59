"""Benchmark of the rarity check and the sample weights on 1,000,000 synthetic penultimate embeddings.

Generates 10 classes x 100,000 images of 512-d float32 features (each class a Gaussian around its own
centre with a low-rank structure, and a planted 5% subgroup displaced along a few of those directions; the model is
right on 20% of the subgroup, 95% of the rest), then times, as `pipeline.stage_rarity` runs them:
PCA to 16 dims + per-class densities (`class_densities`, histogram and knn), the check (`check_rarity`,
with the rarest quantile's "shared" summary over one attribute and the tags), and the weights
(`rarity_weights`, `pair_weights` for one flagged pair, `combine_weights`). Data generation is not timed.
It prints the planted story beside the times: the subgroup's share of the rarest 5% (1.0 = all of them)
and how many classes the tail gap flags.

Usage: ``python bench/rarity.py [--classes 10] [--per-class 100000] [--dim 512] ``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audit_tasks.config import RarityCheck  # noqa: E402 - after the sys.path entry for the checkout
from audit_tasks.rarity import check_rarity, class_densities  # noqa: E402 - likewise
from audit_tasks.sample_weights import combine_weights, pair_weights, rarity_weights  # noqa: E402 - likewise


def make_embeddings(classes: int, per_class: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = classes * per_class
    features = np.empty((n, dim), dtype=np.float32)
    labels = np.repeat([f"c{i}" for i in range(classes)], per_class)
    rare = np.zeros(n, dtype=bool)
    mixing = rng.normal(0, 1, size=(32, dim)).astype(np.float32) / np.sqrt(32)
    for c in range(classes):
        rows = slice(c * per_class, (c + 1) * per_class)
        centre = rng.normal(0, 3, size=dim).astype(np.float32)
        latent = rng.normal(0, 1, size=(per_class, 32)).astype(np.float32)
        block = centre + latent @ mixing * 4 + rng.normal(0, 0.3, size=(per_class, dim)).astype(np.float32)
        n_rare = per_class // 20
        # the subgroup: 4 standard deviations off along several of the class's own latent directions
        shift = np.zeros(32, dtype=np.float32)
        shift[rng.choice(32, 4, replace=False)] = 4.0
        block[:n_rare] += shift @ mixing * 4
        features[rows] = block
        rare[c * per_class : c * per_class + n_rare] = True
    correct = np.where(rare, rng.random(n) < 0.2, rng.random(n) < 0.95)
    tags = np.where(rng.random(n) < 0.3, "laptop", "laptop|mouse")
    frame = pd.DataFrame(
        {
            "label": labels,
            "correct": correct,
            "room": np.where(rare, "attic", "hall"),
            "tags": [t.split("|") for t in tags],
        }
    )
    return features, frame, rare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    features, frame, rare = make_embeddings(args.classes, args.per_class, args.dim)
    n = len(frame)
    print(f"{n:,} embeddings of {args.dim} float32 ({features.nbytes / 2**30:.1f} GiB), {args.classes} classes")
    timings = {}
    for method in ("histogram", "knn"):
        check = RarityCheck(method=method)
        start = time.perf_counter()
        density = class_densities(features, frame["label"].tolist(), check)
        timings[f"densities ({method}, PCA 512 -> 16)"] = time.perf_counter() - start
        start = time.perf_counter()
        result = check_rarity(frame, density, check=check, describe=["room", "tags"])
        timings[f"check_rarity ({method})"] = time.perf_counter() - start
        q1 = result.quantiles[result.quantiles["quantile"] == 1]
        rarest = density <= np.percentile(density, 5)
        print(
            f"{method}: subgroup share of the rarest 5%: {rare[rarest].mean():.2f}; "
            f"classes flagged: {int(q1['flagged'].sum())} of {len(q1)}"
        )
        if method == "histogram":
            start = time.perf_counter()
            rarity = rarity_weights(density, frame["label"].tolist(), check.alpha)
            pair, _ = pair_weights(frame["tags"].tolist(), [("laptop", "mouse")], 0.5)
            weight = combine_weights([rarity, pair], check.max_weight)
            timings["weights (rarity, one pair, cap, mean 1)"] = time.perf_counter() - start
            print(
                f"weights: mean {weight.mean():.3f}, max {weight.max():.2f}, "
                f"subgroup median {np.median(weight[rare]):.2f} vs others {np.median(weight[~rare]):.2f}"
            )
    for name, seconds in timings.items():
        print(f"{name:45s} {seconds:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
