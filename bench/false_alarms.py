"""False alarms and power of the subgroup and co-occurrence gate rules, by simulation (issue 16).

Seeded worlds of counts, no images: each world draws every group's number of correct predictions
(Binomial(n, accuracy)) or every pair's n_ab (Binomial(n_a, P(b|a))), then applies the check's own rule
with the functions the check uses (stats.newcombe_exceedance_pvalue + stats.holm_adjust over the
m * (m - 1) ordered comparisons, as audit_tasks.subgroups does for one attribute;
stats.wilson_exceedance_pvalue + Holm over the pairs tested, as audit_tasks.cooccurrence does). Before
any figure is printed, a few worlds are run through ``check_subgroups`` itself and must flag the same
groups.

* Null worlds (no planted effect): every group at accuracy 0.85 (and a harder boundary null: half the
  groups 0.85, half 0.80, a true gap of exactly max_gap = 0.05); every pair at P(b|a) = 0.8, the rule's
  floor. The family-wise false-alarm rate is the share of worlds with any flag; target <= 5%.
* Planted worlds: one group at 0.61 among groups at 0.85 (the demo's dark fur), n = 300 per group; one
  pair at 0.99 among null pairs, n_a = 300. Target: found in >= 95% of worlds.
* Smallest detectable gap: among 10 groups of n images, the smallest true gap (step 0.01) that is
  flagged in >= 80% of worlds, for n = 100, 300, 1,000.

Usage: ``.venv/bin/python bench/false_alarms.py [--worlds 1000] [--seed 16]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pandas as pd

from audit_tasks.config import CooccurrenceCheck, SubgroupCheck
from audit_tasks.stats import holm_adjust, newcombe_exceedance_pvalue, wilson_exceedance_pvalue
from audit_tasks.subgroups import check_subgroups

CHECK = SubgroupCheck(attributes=("group",))  # defaults: max_gap 0.05, confidence 0.95, holm
PAIRS = CooccurrenceCheck()  # defaults: max_conditional 0.9, target_share 0.2, confidence 0.95


def subgroup_flags(hits: np.ndarray, n: int, method: str = "holm") -> np.ndarray:
    """(worlds, groups) flags of the subgroup rule for one attribute, from correct counts (equal n)."""
    worlds, m = hits.shape
    best = np.argmax(hits, axis=1)  # ties: the first, as the check
    best_hits = hits[np.arange(worlds), best][:, None]
    p = newcombe_exceedance_pvalue(np.broadcast_to(best_hits, hits.shape), n, hits, n, CHECK.max_gap)
    p[np.arange(worlds), best] = np.nan
    family = m * (m - 1)
    alpha = 1 - CHECK.confidence
    if method == "bonferroni":
        adjusted = np.minimum(1.0, p * family)
    else:
        adjusted = np.vstack([holm_adjust(row, family) for row in p])
    gap = (best_hits - hits) / n
    with np.errstate(invalid="ignore"):
        return (gap > CHECK.max_gap) & (adjusted <= alpha)


def pair_flags(n_ab: np.ndarray, n_a: int, adjust: bool = True) -> np.ndarray:
    """(worlds, pairs) flags of co-occurrence rules 2-3 (b taken rare, so the lift rule holds)."""
    floor = min(PAIRS.max_conditional, 1 - PAIRS.target_share)
    p = wilson_exceedance_pvalue(n_ab, n_a, floor)
    adjusted = np.vstack([holm_adjust(row) for row in p]) if adjust else p
    return (n_ab / n_a >= PAIRS.max_conditional) & (adjusted <= (1 - PAIRS.confidence) / 2)


def agree_with_check_subgroups(rng: np.random.Generator, worlds: int = 5, m: int = 10, n: int = 100) -> None:
    """The vectorised rule flags exactly what check_subgroups flags (worlds with and without a gap)."""
    accuracy = np.full(m, 0.85)
    accuracy[0] = 0.7
    hits = rng.binomial(n, accuracy, size=(worlds, m))
    fast = subgroup_flags(hits, n)
    for w in range(worlds):
        right = (np.arange(n)[None, :] < hits[w][:, None]).ravel()
        frame = pd.DataFrame(
            {
                "group": np.repeat([f"g{i:04d}" for i in range(m)], n),
                "label": "cat",
                "prediction": np.where(right, "cat", "dog"),
            }
        )
        slow = check_subgroups(frame, check=CHECK, classes=("cat", "dog")).groups["flagged"].to_numpy()
        if not np.array_equal(slow, fast[w]):
            raise SystemExit(f"world {w}: the vectorised rule disagrees with check_subgroups")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    agree_with_check_subgroups(rng)

    def rate(flags: np.ndarray) -> str:
        return f"{flags.any(axis=1).mean():.3f}"

    print("### Subgroups: family-wise false-alarm rate (any group flagged; target <= 0.05)\n")
    print("| groups | worlds | n per group | null 0.85 holm | null 0.85 bonferroni | boundary null holm |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m in (10, 100, 1000):
        worlds = args.worlds if m < 1000 else max(100, args.worlds // 5)
        for n in (100, 300):
            hits = rng.binomial(n, 0.85, size=(worlds, m))
            boundary = rng.binomial(n, np.where(np.arange(m) % 2 == 0, 0.85, 0.80), size=(worlds, m))
            print(
                f"| {m} | {worlds} | {n} | {rate(subgroup_flags(hits, n))} | "
                f"{rate(subgroup_flags(hits, n, 'bonferroni'))} | {rate(subgroup_flags(boundary, n))} |"
            )

    print("\n### Subgroups: planted gap found (one group at 0.61, the rest at 0.85, n = 300; target >= 0.95)\n")
    print("| groups | worlds | found | other groups flagged (worlds) |")
    print("| --- | --- | --- | --- |")
    for m in (10, 100, 1000):
        worlds = args.worlds if m < 1000 else max(100, args.worlds // 5)
        accuracy = np.full(m, 0.85)
        accuracy[0] = 0.61
        flags = subgroup_flags(rng.binomial(300, accuracy, size=(worlds, m)), 300)
        print(f"| {m} | {worlds} | {flags[:, 0].mean():.3f} | {flags[:, 1:].any(axis=1).mean():.3f} |")

    print("\n### Subgroups: smallest true gap flagged in >= 80% of worlds (10 groups, rest at 0.85)\n")
    print("| n per group | smallest gap | power there |")
    print("| --- | --- | --- |")
    for n in (100, 300, 1000):
        for gap in np.arange(0.06, 0.5, 0.01):
            accuracy = np.full(10, 0.85)
            accuracy[0] = 0.85 - gap
            power = subgroup_flags(rng.binomial(n, accuracy, size=(args.worlds, 10)), n)[:, 0].mean()
            if power >= 0.8:
                print(f"| {n} | {gap:.2f} | {power:.3f} |")
                break

    print("\n### Co-occurrence: false alarms at P(b|a) = 0.8 (the floor), n_a = 100, and planted 0.99 (n_a = 300)\n")
    print("| pairs tested | worlds | false-alarm rate, Holm | without adjustment (before) | planted 0.99 found |")
    print("| --- | --- | --- | --- | --- |")
    for k in (10, 100, 1000, 10_000):
        worlds = args.worlds if k < 10_000 else max(100, args.worlds // 10)
        null = rng.binomial(100, 0.8, size=(worlds, k))
        planted = rng.binomial(300, 0.8, size=(worlds, k))
        planted[:, 0] = rng.binomial(300, 0.99, size=worlds)
        found = pair_flags(planted, 300)[:, 0].mean()
        print(
            f"| {k} | {worlds} | {rate(pair_flags(null, 100))} | {rate(pair_flags(null, 100, adjust=False))} "
            f"| {found:.3f} |"
        )
    print(
        f"\n{time.perf_counter() - start:.1f} s; seed {args.seed}; {platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}"
    )


if __name__ == "__main__":
    main()
