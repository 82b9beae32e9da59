"""A tiny audit world for end-to-end tests: a few generated images, a manifest, a random model, a config."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision
import yaml
from PIL import Image

CLASSES = ("doctor", "nurse")


@dataclass(frozen=True)
class World:
    root: Path
    config: Path
    manifest: Path
    rows: int


def _image(path: Path, seed: int, size: int = 64) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    pixels[16:48, 16:48, seed % 3] = 220  # the object (core region)
    pixels[2:10, 50:62] = 255  # a small bright patch (spurious region)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_world(
    root: Path,
    *,
    n_images: int = 12,
    bad_rows: int = 0,
    checks: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> World:
    """Images + a CSV manifest in landing/ + a random resnet18 + audit.yaml; `bad_rows` rows name missing files."""
    for name in ("landing", "images", "catalog"):
        (root / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        uri = f"img_{i:03d}.png"
        _image(root / "images" / uri, seed=i)
        rows.append(
            {
                "image_uri": uri,
                "label": CLASSES[i % 2],
                "tags": "person|coat" + ("|stethoscope" if i % 2 == 0 else ""),
                "regions": json.dumps(
                    [
                        {"kind": "core", "name": "object", "box": [16, 16, 48, 48]},
                        {"kind": "spurious", "name": "patch", "box": [50, 2, 62, 10]},
                    ]
                ),
                "gender": "female" if i % 3 else "male",
            }
        )
    for j in range(bad_rows):
        rows.append(
            {"image_uri": f"missing_{j}.png", "label": CLASSES[0], "tags": "person", "regions": "", "gender": "female"}
        )
    manifest = root / "landing" / "batch_001.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).state_dict(), root / "model.pt")
    body: dict[str, Any] = {
        "dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog"},
        "model": {
            "arch": "resnet18",
            "checkpoint": "model.pt",
            "classes": list(CLASSES),
            "target_layer": "layer4",
            "input_size": 64,
        },
        "saliency": {"batch_size": 4, "device": "cpu", "num_workers": 0},
        "checks": checks if checks is not None else lenient_checks(),
        "output": {"dir": "reports"},
    }
    if extra:
        body.update(extra)
    config = root / "audit.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return World(root, config, manifest, len(rows))


def lenient_checks() -> dict[str, Any]:
    """Every check on, thresholds no random model can cross on a dozen images."""
    return {
        "ingest": {"max_quarantine_fraction": 0.5},
        "cooccurrence": {"attributes": ["gender"]},
        "saliency": {"max_flagged_fraction": 1.0, "min_images": 1},
        "subgroups": {"attributes": ["gender"], "max_gap": 1.0},
    }


def strict_ingest_checks() -> dict[str, Any]:
    """Lenient model checks, but no quarantined row tolerated: one bad row turns the audit red."""
    return lenient_checks() | {"ingest": {"max_quarantine_fraction": 0.0}}


def move_to_object_store(world: World, prefix: str) -> Path:
    """Put the world's landing area, images, model, catalog and reports on `memory://<prefix>/` (fsspec's
    in-process store, standing in for s3:// or gs://): manifests, images and the checkpoint are uploaded, and
    a second config points there; returns that config."""
    from upath import UPath

    root = f"memory://{prefix}"
    for folder in ("landing", "images"):
        for local in (world.root / folder).iterdir():
            (UPath(f"{root}/{folder}") / local.name).write_bytes(local.read_bytes())
    body = yaml.safe_load(world.config.read_text(encoding="utf-8"))
    body["dataset"].update(landing=f"{root}/landing", catalog=f"{root}/catalog", image_root=f"{root}/images")
    (UPath(f"{root}/models") / "model.pt").write_bytes((world.root / "model.pt").read_bytes())
    body["model"]["checkpoint"] = f"{root}/models/model.pt"
    body["output"] = {"dir": f"{root}/reports"}
    config = world.root / "audit-object-store.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return config


def forget_object_store(prefix: str) -> None:
    """Delete everything a test put under `memory://<prefix>/`."""
    from upath import UPath

    store = UPath(f"memory://{prefix}")
    if store.exists():
        store.fs.rm(store.path, recursive=True)


def without_prefix(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """`frame` with `prefix` (the folder or bucket a world lives in) replaced by "<root>" in every text cell,
    so tables of one world audited in two places compare equal."""
    for column in frame.columns:
        if pd.api.types.is_string_dtype(frame[column]) or frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: v.replace(prefix, "<root>") if isinstance(v, str) else v)
    return frame


#: The tables two audits of one world must agree on, wherever and however they ran.
AUDIT_TABLES = (
    "images",
    "quarantine",
    "saliency_by_class",
    "cooccurrence",
    "class_balance",
    "subgroups",
    "confusion",
    "gates",
)


def audit_tables(root: Path | str, run_id: str, folder: Any = None) -> dict[str, pd.DataFrame]:
    """A finished run's tables (under `root/reports/<run_id>` unless `folder`, a path or UPath, says),
    with `root` (a folder or an object-store prefix) masked."""
    from audit_tasks.tables import read_table

    where = folder if folder is not None else Path(root) / "reports" / run_id
    return {name: without_prefix(read_table(where / f"{name}.parquet"), str(root)) for name in AUDIT_TABLES}


def assert_audit_tables_equal(left: dict[str, pd.DataFrame], right: dict[str, pd.DataFrame]) -> None:
    """Equal row for row; floats to 1e-5 (a shard scores its images in other batches than one pass does)."""
    for name in AUDIT_TABLES:
        a, b = left[name], right[name]
        assert list(a.columns) == list(b.columns), name
        assert len(a) == len(b), name
        if "cam" in a.columns:
            np.testing.assert_allclose(
                np.stack(a["cam"].to_numpy()), np.stack(b["cam"].to_numpy()), rtol=1e-5, atol=1e-7, err_msg=name
            )
            a, b = a.drop(columns="cam"), b.drop(columns="cam")
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, obj=name)
