"""One home for what every generated world (desks, skies, animals) does the same way: train its small
model seeded and deterministic, and land on disk for `run_audit` (images, a CSV manifest, the model's
weights, audit.yaml). The worlds differ only in what they draw and which rows they write.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

ModelT = TypeVar("ModelT", bound=nn.Module)


@contextlib.contextmanager
def reproducible() -> Iterator[None]:
    """One thread and deterministic kernels inside the block (as audit_tasks.demo.train does), restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def fit(
    make_model: Callable[[], ModelT],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int,
    epochs: int,
) -> ModelT:
    """A model built after seeding, trained with Adam (lr 3e-3) in seeded shuffled batches of 32, in eval mode:
    the same weights on every run of one machine."""
    with reproducible():
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(inputs)))
            for start in range(0, len(inputs), 32):
                idx = order[start : start + 32]
                value = loss(model(inputs[idx]), targets[idx])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
        model.eval()
    return model


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


def copy_small_demo(source: Path, dest: Path) -> Any:
    """A private copy of the session's small demo (conftest's `small_demo_source`): `build_demo` on it
    finds every piece current and returns its DemoBuild at once."""
    import shutil

    from audit_tasks.demo.build import build_demo

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("reports"))
    return build_demo(dest, scale="small")
