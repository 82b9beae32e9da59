"""A generated multilabel world for the leakage proof: small seeded images of a desk, and tiny CNNs trained on it.

Each 32x32 image shows some of four objects, each in its own quadrant over a noisy background: a laptop
(a grey rectangle), a mouse (a small dark ellipse), a cup (a red square), a book (a blue bar). The *biased*
training set labels "mouse" on every image with a laptop, whether a mouse is drawn or not (the seed's
story: the annotators always saw a mouse beside a laptop); the *fair* one has laptops with and without
mice, labelled truthfully. The audit set is always truthful. The planted effect is wide (the biased model
calls a mouse on most laptop-without-mouse images, the fair one on almost none), so the tests assert the
story, never exact figures, and hold on any x86-64 CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fixtures_worlds import fit, write_generated_world

CLASSES = ("laptop", "mouse", "cup", "book")
SIZE = 32
SEED = 15
#: P(object drawn): laptop; mouse beside a laptop; mouse without one; cup; book.
P_LAPTOP, P_MOUSE_WITH_LAPTOP, P_MOUSE_ALONE, P_CUP, P_BOOK = 0.5, 0.5, 0.3, 0.4, 0.4


class TinyNet(nn.Module):
    """Three convolutions, global average pooling, one linear head: trains in a second or two on a CPU."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(24, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_tiny(num_classes: int) -> nn.Module:
    """The desk model's builder: `model.source: python`, `arch: fixtures_multilabel:build_tiny`."""
    return TinyNet(num_classes)


@dataclass(frozen=True)
class Scene:
    """One image: what is drawn, and what its labels say (the biased set's labels add mouse to laptops)."""

    pixels: np.ndarray  # (SIZE, SIZE, 3) uint8
    drawn: tuple[str, ...]
    labels: tuple[str, ...]


def _draw(rng: np.random.Generator, drawn: set[str]) -> np.ndarray:
    img = rng.integers(150, 200, size=(SIZE, SIZE, 3)).astype(np.int16)  # a light, noisy desk
    quadrants = [(0, 0), (0, 16), (16, 0), (16, 16)]
    order = rng.permutation(4)
    for k, name in enumerate(c for c in CLASSES if c in drawn):
        y0, x0 = quadrants[order[k]]
        dy, dx = rng.integers(1, 4, size=2)
        y, x = y0 + dy, x0 + dx
        if name == "laptop":
            img[y : y + 10, x : x + 12] = 110  # grey rectangle
            img[y + 1 : y + 6, x + 1 : x + 11] = 80  # its screen
        elif name == "mouse":
            yy, xx = np.mgrid[0:SIZE, 0:SIZE]
            inside = ((yy - (y + 4)) / 3.0) ** 2 + ((xx - (x + 5)) / 2.2) ** 2 <= 1.0
            img[inside] = 30  # small dark ellipse
        elif name == "cup":
            img[y + 2 : y + 8, x + 3 : x + 9] = (200, 30, 30)
        elif name == "book":
            img[y + 3 : y + 7, x : x + 11] = (30, 40, 190)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_scenes(n: int, seed: int, *, biased_labels: bool = False) -> list[Scene]:
    """`n` seeded scenes; every one shows at least one object (the manifest's `label` must be a class)."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        drawn: set[str] = set()
        if rng.random() < P_LAPTOP:
            drawn.add("laptop")
        if rng.random() < (P_MOUSE_WITH_LAPTOP if "laptop" in drawn else P_MOUSE_ALONE):
            drawn.add("mouse")
        if rng.random() < P_CUP:
            drawn.add("cup")
        if rng.random() < P_BOOK:
            drawn.add("book")
        if not drawn:
            drawn.add("cup" if rng.random() < 0.5 else "book")
        labels = set(drawn) | ({"mouse"} if biased_labels and "laptop" in drawn else set())
        scenes.append(
            Scene(
                _draw(rng, drawn),
                tuple(c for c in CLASSES if c in drawn),
                tuple(c for c in CLASSES if c in labels),
            )
        )
    return scenes


MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised (N, 3, H, W), as the audit's loader feeds the model."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def indicator(sets: list[tuple[str, ...]]) -> np.ndarray:
    return np.array([[c in s for c in CLASSES] for s in sets], dtype=np.float32)


def train_multilabel(scenes: list[Scene], *, seed: int = SEED, epochs: int = 8) -> TinyNet:
    """A TinyNet trained with one sigmoid per class (BCE) on the scenes' labels, seeded and deterministic."""
    inputs = to_tensor(np.stack([s.pixels for s in scenes]))
    targets = torch.from_numpy(indicator([s.labels for s in scenes]))
    loss = nn.functional.binary_cross_entropy_with_logits
    return fit(TinyNet, inputs, targets, loss, seed=seed, epochs=epochs)


def predict_sets(model: nn.Module, scenes: list[Scene], threshold: float = 0.5) -> list[list[str]]:
    with torch.no_grad():
        probs = torch.sigmoid(model(to_tensor(np.stack([s.pixels for s in scenes])))).numpy()
    return [[c for c, p in zip(CLASSES, row, strict=True) if p > threshold] for row in probs]


@dataclass(frozen=True)
class AuditWorld:
    root: Path
    config: Path


def write_audit_world(
    root: Path, model: nn.Module, scenes: list[Scene], *, checks: dict[str, Any] | None = None
) -> AuditWorld:
    """The audit scenes as PNGs + a CSV manifest (tags = what is drawn), the model's weights, audit.yaml."""
    uris = [f"desk_{i:04d}.png" for i in range(len(scenes))]
    rows = [
        # room: a subgroup attribute with no planted effect
        {"image_uri": uri, "label": s.drawn[0], "tags": "|".join(s.drawn), "room": "office" if i % 3 else "home"}
        for i, (uri, s) in enumerate(zip(uris, scenes, strict=True))
    ]
    config = write_generated_world(
        root,
        images=[(uri, s.pixels) for uri, s in zip(uris, scenes, strict=True)],
        rows=rows,
        manifest="desks.csv",
        model=model,
        model_section=model_section(task="multilabel"),
        checks=checks if checks is not None else {"leakage": {}},
    )
    return AuditWorld(root, config)


def model_section(**extra: Any) -> dict[str, Any]:
    """The config's model section for TinyNet, loaded through `source: python`."""
    return {
        "source": "python",
        "arch": "fixtures_multilabel:build_tiny",
        "classes": list(CLASSES),
        "target_layer": "features",
        "input_size": SIZE,
        "mean": list(MEAN),
        "std": list(STD),
        **extra,
    }
