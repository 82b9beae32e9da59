"""Sample weights for retraining: more weight on rare images and on the missing side of flagged pairs.

Two parts, multiplied:

* `rarity_weight` = 1 / (density + alpha), density from audit_tasks.rarity (the class's densest image has 1),
  then normalised to mean 1 **within each class**: rarity moves weight inside a class and leaves the class
  balance as it was (that is the co-occurrence check's class-balance gate's business).
* `pair_weight`: for each flagged co-occurrence pair a -> b whose b is a tag, the images with a and without b
  ("laptop without mouse") get the weight that brings their share of the a images up to the pair's
  `target_share` (checks.cooccurrence.target_share) in the weighted data: w = t / (1 - t) * n_ab / n_a_not_b,
  when their share is below t; every other image keeps 1. Several pairs multiply.

`weight` = rarity_weight x pair_weight, capped at `max_weight` and renormalised to mean 1 over the audited
images; capping and renormalising repeat until no weight exceeds the cap (a cap >= 1 is always reachable
at mean 1), so the cap holds exactly and the mean is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audit_tasks.manifest import parse_tags

#: The file the rarity stage writes into the run folder and retraining reads (the clean-audit event names it).
WEIGHTS_FILE = "sample_weights.parquet"
WEIGHT_COLUMNS = ("image_id", "label", "density", "rarity_weight", "pair_weight", "weight")
_CAP_ROUNDS = 50


@dataclass(frozen=True)
class PairWeight:
    """One flagged pair's balancing weight for its "a without b" images (1.0: already at the target share)."""

    tag_a: str
    tag_b: str
    n_a_without_b: int
    n_ab: int
    weight: float


def rarity_weights(density: np.ndarray, labels: Sequence[Any], alpha: float) -> np.ndarray:
    """1 / (density + alpha), normalised to mean 1 within each class; 1 where the density is unknown."""
    series = pd.Series(list(labels), dtype=object)
    raw = 1.0 / (np.asarray(density, dtype=float) + alpha)
    out = np.ones(len(series))
    known = ~np.isnan(raw) & series.notna().to_numpy()
    for _, index in series[known].groupby(series[known], sort=True).indices.items():
        rows = np.flatnonzero(known)[index]
        out[rows] = raw[rows] / raw[rows].mean()
    return out


def pair_weights(
    tags: Sequence[Any], pairs: Sequence[tuple[str, str]], target_share: float
) -> tuple[np.ndarray, list[PairWeight]]:
    """Per image the product of its pairs' balancing weights (see the module docstring), and each pair's weight."""
    sets = [set(parse_tags(t)) for t in tags]
    out = np.ones(len(sets))
    used: list[PairWeight] = []
    for a, b in pairs:
        has_a = np.array([a in s for s in sets], dtype=bool)
        has_b = np.array([b in s for s in sets], dtype=bool)
        without = has_a & ~has_b
        n_without, n_ab = int(without.sum()), int((has_a & has_b).sum())
        weight = 1.0
        if n_without and n_ab and n_without / (n_without + n_ab) < target_share:
            weight = target_share / (1 - target_share) * n_ab / n_without
            out[without] *= weight
        used.append(PairWeight(a, b, n_without, n_ab, weight))
    return out, used


def combine_weights(parts: Sequence[np.ndarray], max_weight: float) -> np.ndarray:
    """The product of the parts, capped at `max_weight` and normalised to mean 1 (cap and mean both hold)."""
    weight = np.prod(np.vstack([np.asarray(p, dtype=float) for p in parts]), axis=0) if parts else np.ones(0)
    if len(weight) == 0:
        return weight
    weight = weight / weight.mean()
    for _ in range(_CAP_ROUNDS):
        if weight.max() <= max_weight * (1 + 1e-9):
            break
        capped = weight >= max_weight
        free = ~capped
        # Fix the capped ones at the cap; scale the others so the mean is 1 again.
        remaining = len(weight) - max_weight * capped.sum()
        if not free.any() or remaining <= 0:
            weight = np.ones_like(weight)  # a cap below what mean 1 allows: nothing left to weigh
            break
        weight = np.where(capped, max_weight, weight * remaining / weight[free].sum())
    return weight
