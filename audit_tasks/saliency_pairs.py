"""Co-occurrence-aware saliency: how much of class a's Grad-CAM sits on the b boxes of its images?

For each pair a -> b (a flagged co-occurrence pair whose tag_a is a class and tag_b a tag, or a pair
configured in `checks.saliency.pairs`), the images labelled a that carry a region named b (kind
`context` or `spurious`; `region_shares` in the images table) are measured: the share of the CAM on
the b boxes, its enrichment (share / the boxes' area fraction), and the fraction of images flagged with
the spurious-region rule of `regions.flag_images` (b in the role of the spurious region). One `saliency`
gate per pair, subject `<a> on <b>`, fails when the flagged fraction exceeds `max_flagged_fraction`;
pairs with fewer than `min_images` measured images pass, saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from audit_tasks.config import SaliencyCheck
from audit_tasks.gates import GateResult
from audit_tasks.regions import flag_images, flagged_fraction_gate

PAIR_COLUMNS = ("class", "region", "images", "mean_share", "mean_enrichment", "flagged_fraction", "flagged")


@dataclass(frozen=True)
class PairSummary:
    """One row per measured pair (PAIR_COLUMNS) and one gate per row."""

    pairs: pd.DataFrame
    gates: list[GateResult]


def pair_subject(tag_a: str, tag_b: str) -> str:
    """The gate subject of a pair: `<a> on <b>`."""
    return f"{tag_a} on {tag_b}"


def candidate_pairs(
    cooccurrence: pd.DataFrame | None,
    configured: Iterable[tuple[str, str]],
    classes: Sequence[str],
    attributes: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """Configured pairs, then the co-occurrence check's flagged pairs whose tag_a is a class and whose
    tag_b is a tag (not `attribute=value`), without repeats."""
    out = [(a, b) for a, b in configured if a in classes]
    if cooccurrence is not None and not cooccurrence.empty:
        prefixes = tuple(f"{attr}=" for attr in attributes)
        flagged = cooccurrence[cooccurrence["flagged"].astype(bool)]
        for a, b in zip(flagged["tag_a"].astype(str), flagged["tag_b"].astype(str), strict=True):
            if a in classes and not (prefixes and b.startswith(prefixes)):
                out.append((a, b))
    return list(dict.fromkeys(out))


def summarize_pairs(
    images: pd.DataFrame, pairs: Sequence[tuple[str, str]], check: SaliencyCheck, *, configured: Iterable = ()
) -> PairSummary:
    """Measure each pair on `images` (columns label, region_shares, core_share, core_enrichment).

    A flagged co-occurrence pair without any measured image is left out; a configured pair (in
    `configured`) is always reported, so a typo in a region name shows as zero images.
    """
    keep_empty = set(configured)
    per_image = _named_shares(images)
    rows, gates = [], []
    for a, b in pairs:
        part = per_image[(per_image["label"] == a) & (per_image["name"] == b)]
        n = len(part)
        if not n and (a, b) not in keep_empty:
            continue
        flags = flag_images(part, check) if n else pd.Series(dtype=bool)
        gate = flagged_fraction_gate(pair_subject(a, b), flags, check, f"{a} images lean on the {b}")
        fraction, flagged = float("nan") if gate.value is None else gate.value, not gate.passed
        rows.append(
            {
                "class": a,
                "region": b,
                "images": n,
                "mean_share": float(part["spurious_share"].mean()) if n else float("nan"),
                "mean_enrichment": float(part["spurious_enrichment"].dropna().mean()) if n else float("nan"),
                "flagged_fraction": fraction,
                "flagged": flagged,
            }
        )
        gates.append(gate)
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS)).astype({"flagged": bool, "images": "int64"})
    return PairSummary(pairs=frame, gates=gates)


def _named_shares(images: pd.DataFrame) -> pd.DataFrame:
    """One row per (image, named region) in the columns `regions.flag_images` reads, the region as the cue."""
    records = []
    if "region_shares" in images.columns:
        for label, shares, core, core_enrich in zip(
            images["label"], images["region_shares"], images["core_share"], images["core_enrichment"], strict=True
        ):
            for name, value in json.loads(shares or "{}").items():
                enrichment = value.get("enrichment")
                records.append(
                    {
                        "label": None if pd.isna(label) else str(label),
                        "name": name,
                        "spurious_share": float(value["share"]),
                        "spurious_enrichment": float("nan") if enrichment is None else float(enrichment),
                        "core_share": core,
                        "core_enrichment": core_enrich,
                        "has_regions": True,
                    }
                )
    columns = ["label", "name", "spurious_share", "spurious_enrichment", "core_share", "core_enrichment", "has_regions"]
    return pd.DataFrame(records, columns=columns)
