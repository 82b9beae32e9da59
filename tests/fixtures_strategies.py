"""A generated world for the strategies proof: wolves and huskies, half the wolves with a corner cue.

Each 32x32 image shows one animal near the centre (a disc at a jittered position over a noisy
background): a wolf is a darker disc than a husky, a difference a small CNN learns but not at once. The
cue is a small red square in the bottom-left corner. A *cued* training set puts it on half of the wolves
and never on a husky, so it predicts "wolf" perfectly where it appears and the model leans on it; an
*uncued* training set puts it on half of each class, so it predicts nothing and the model learns the
animal. The audit set always carries the cue on half of the wolves. The manifest has no regions. The
planted effect is wide, so the tests assert the story (cue cluster found and flagged, or nothing flagged),
never exact figures, and hold on any x86-64 CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fixtures_worlds import fit, write_generated_world

CLASSES = ("wolf", "husky")
SIZE = 32
SEED = 17
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: The cue: a red square in the bottom-left corner (rows, columns of the 32x32 image).
CUE_ROWS, CUE_COLS = slice(25, 31), slice(1, 7)
#: The animals differ only in grey level: learnable, but slower to learn than the cue.
WOLF_GREY, HUSKY_GREY = 100, 112


class CueNet(nn.Module):
    """Two strided convolutions to an 8x8 map, one more, global average pooling, a linear head."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_cuenet(num_classes: int) -> nn.Module:
    """The generated model's builder: `model.source: python`, `arch: fixtures_strategies:build_cuenet`."""
    return CueNet(num_classes)


@dataclass(frozen=True)
class Animal:
    pixels: np.ndarray  # (SIZE, SIZE, 3) uint8
    label: str
    cue: bool


def _draw(rng: np.random.Generator, label: str, cue: bool, *, centred: bool = False) -> np.ndarray:
    img = rng.integers(140, 200, size=(SIZE, SIZE, 3)).astype(np.int16)
    cy, cx = (16.0, 16.0) if centred else 16.0 + rng.uniform(-4, 4, 2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= 6.0**2
    img[disc] = WOLF_GREY if label == "wolf" else HUSKY_GREY
    img += rng.integers(-12, 13, size=img.shape).astype(np.int16)
    if cue:
        img[CUE_ROWS, CUE_COLS] = (230, 20, 20)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_animals(n: int, seed: int, *, cue_on_huskies: bool = False, cue_share: float = 0.5) -> list[Animal]:
    """`n` animals, alternating classes; the cue on `cue_share` of the wolves (and of the huskies if asked)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = CLASSES[i % 2]
        cue = bool(rng.random() < cue_share) and (label == "wolf" or cue_on_huskies)
        out.append(Animal(_draw(rng, label, cue), label, cue))
    return out


def make_centred(n: int, seed: int) -> list[Animal]:
    """Animals exactly in the centre, no cue: a photo dataset's usual framing."""
    rng = np.random.default_rng(seed)
    return [Animal(_draw(rng, CLASSES[i % 2], False, centred=True), CLASSES[i % 2], False) for i in range(n)]


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train(animals: list[Animal], *, seed: int = SEED, epochs: int = 6) -> CueNet:
    """A CueNet trained with cross-entropy on the animals' labels, seeded and deterministic."""
    inputs = _tensor(np.stack([a.pixels for a in animals]))
    targets = torch.tensor([CLASSES.index(a.label) for a in animals])
    return fit(CueNet, inputs, targets, nn.functional.cross_entropy, seed=seed, epochs=epochs)


def write_world(root: Path, model: nn.Module, animals: list[Animal], *, checks: dict[str, Any]) -> Path:
    """The animals as PNGs + a CSV manifest without regions, the model's weights and audit.yaml (its path)."""
    uris = [f"{animal.label}_{i:04d}.png" for i, animal in enumerate(animals)]
    return write_generated_world(
        root,
        images=[(uri, a.pixels) for uri, a in zip(uris, animals, strict=True)],
        rows=[{"image_uri": uri, "label": a.label} for uri, a in zip(uris, animals, strict=True)],
        manifest="animals.csv",
        model=model,
        model_section={
            "source": "python",
            "arch": "fixtures_strategies:build_cuenet",
            "classes": list(CLASSES),
            "target_layer": "features",
            "input_size": SIZE,
            "mean": list(MEAN),
            "std": list(STD),
        },
        checks=checks,
    )
