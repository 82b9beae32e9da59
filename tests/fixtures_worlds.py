"""One home for writing a generated world to disk: images, a CSV manifest, the model's weights, audit.yaml.

The generated worlds (desks, skies, animals) differ in what they draw and which rows they write; how a world
lands on disk for `run_audit` is the same for all of them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn


def write_generated_world(
    root: Path,
    *,
    images: Sequence[tuple[str, np.ndarray]],
    rows: Sequence[Mapping[str, Any]],
    manifest: str,
    model: nn.Module,
    model_section: Mapping[str, Any],
    checks: Mapping[str, Any],
) -> Path:
    """Write `images` (uri, HxWx3 uint8) under images/, `rows` as landing/`manifest`, the model's state_dict
    as model.pt and an audit.yaml (CPU scoring, outputs in runs/) whose model section is `model_section`
    plus the checkpoint; return the config's path."""
    for name in ("landing", "images", "catalog"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for uri, pixels in images:
        Image.fromarray(pixels).save(root / "images" / uri)
    with open(root / "landing" / manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch.save(model.state_dict(), root / "model.pt")
    body = {
        "dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog"},
        "model": {"checkpoint": "model.pt", **model_section},
        "saliency": {"device": "cpu", "num_workers": 0, "batch_size": 128},
        "checks": dict(checks),
        "output": {"dir": "runs"},
    }
    config = root / "audit.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return config
