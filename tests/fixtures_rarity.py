"""A generated world for the rarity proof: day and night skies, with a rare kind of day the model fails on.

Each 32x32 image is a disc on a noisy sky: "day" is a yellow sun on a light-blue sky, "night" a white moon on a
dark sky. The planted subgroup is *dusk*: a day image (a yellow sun) on a dark sky, a few percent of the day
images of the audit. The *biased* model never saw dusk in training, so it reads the dark sky and calls dusk
"night"; the *fair* one was trained with as many dusk images as clear days and gets them right. The audit's
manifest carries no column saying which images are dusk (the attribute is withheld): only the model's own
features can find them. The planted effect is wide, so the tests assert the story, never exact figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fixtures_multilabel import SIZE, TinyNet, model_section, to_tensor
from fixtures_worlds import fit, write_generated_world

CLASSES = ("day", "night")
SEED = 17


@dataclass(frozen=True)
class Sky:
    pixels: np.ndarray  # (SIZE, SIZE, 3) uint8
    label: str
    dusk: bool


def _draw(rng: np.random.Generator, label: str, dusk: bool) -> np.ndarray:
    dark = label == "night" or dusk
    sky = np.array((20, 25, 60) if dark else (140, 190, 240), dtype=np.int16)
    img = sky + rng.integers(-20, 21, size=(SIZE, SIZE, 3)).astype(np.int16)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.integers(8, SIZE - 8, size=2)
    radius = rng.uniform(4, 7)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    img[disc] = (250, 210, 40) if label == "day" else (235, 235, 235)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_skies(n_day: int, n_night: int, *, dusk_share: float, seed: int) -> list[Sky]:
    """`n_day` day images of which round(dusk_share * n_day) are dusk, then `n_night` night images, seeded."""
    rng = np.random.default_rng(seed)
    n_dusk = round(dusk_share * n_day)
    skies = [Sky(_draw(rng, "day", i < n_dusk), "day", i < n_dusk) for i in range(n_day)]
    skies += [Sky(_draw(rng, "night", False), "night", False) for _ in range(n_night)]
    return skies


def train_classifier(skies: list[Sky], *, seed: int = SEED, epochs: int = 4) -> TinyNet:
    """A TinyNet trained with softmax cross-entropy, seeded and deterministic (one thread)."""
    inputs = to_tensor(np.stack([s.pixels for s in skies]))
    targets = torch.tensor([CLASSES.index(s.label) for s in skies])
    return fit(partial(TinyNet, len(CLASSES)), inputs, targets, nn.functional.cross_entropy, seed=seed, epochs=epochs)


@dataclass(frozen=True)
class SkyWorld:
    root: Path
    config: Path
    dusk_ids: frozenset[str]


def write_sky_world(root: Path, model: nn.Module, skies: list[Sky], *, checks: dict[str, Any]) -> SkyWorld:
    """The audit skies as PNGs + a CSV manifest with no dusk column, the model's weights, audit.yaml."""
    ids = [f"sky{i:04d}" for i in range(len(skies))]
    config = write_generated_world(
        root,
        images=[(f"{image_id}.png", sky.pixels) for image_id, sky in zip(ids, skies, strict=True)],
        rows=[
            {"image_id": image_id, "image_uri": f"{image_id}.png", "label": sky.label}
            for image_id, sky in zip(ids, skies, strict=True)
        ],
        manifest="skies.csv",
        model=model,
        model_section=model_section(classes=list(CLASSES)),
        checks=checks,
    )
    dusk = frozenset(image_id for image_id, sky in zip(ids, skies, strict=True) if sky.dusk)
    return SkyWorld(root, config, dusk)
