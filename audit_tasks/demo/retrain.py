"""Retrain a demo model on an audited catalog with the audit's `sample_weights.parquet`: the loop's last step.

An EXAMPLE for the demo's torchvision models (two classes, small square images), used by `demo --loop` and
by `retrain_on_clean_audit`'s example task; a real training job replaces it. The weights file is the
contract's: one row per audited image, `image_id` and `weight` (mean 1; the parts beside it are not read).
The catalog rows are joined to it on `image_id` (inner join: a catalog row the audit did not weigh is not
trained on), their images are read from the config's image root, and `train.train_classifier` trains with
weighted resampling (`train.epoch_order`). Nothing else is debiased by hand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audit_tasks.config import AuditConfig
from audit_tasks.demo.train import TrainResult, TrainSpec, fingerprint, train_cached
from audit_tasks.errors import AuditError
from audit_tasks.storage import StoragePath, public_uri, read_parquet, storage_path

#: The file `checks.rarity` writes into a run folder.
#: The columns the retraining reads from it.
WEIGHT_COLUMNS = ("image_id", "weight")


@dataclass(frozen=True)
class WeightedSet:
    """The catalog rows that carry an audit weight, in catalog order."""

    image_ids: tuple[str, ...]
    image_uris: tuple[str, ...]
    labels: np.ndarray  # class indices in the model's class order
    weights: np.ndarray  # float64, as the audit wrote them
    n_catalog: int  # catalog rows before the join


def read_sample_weights(uri: StoragePath | str) -> pd.DataFrame:
    """`image_id` and `weight` of an audit's weights file; AuditError naming the file when it is unusable."""
    path = storage_path(uri)
    try:
        frame = read_parquet(path, columns=list(WEIGHT_COLUMNS)).to_pandas()
    except (OSError, ValueError, KeyError) as exc:
        raise AuditError(
            f"{public_uri(path)}: cannot read sample weights ({exc}); expected a Parquet file with columns "
            f"{', '.join(WEIGHT_COLUMNS)} as checks.rarity writes it"
        ) from exc
    frame["image_id"] = frame["image_id"].astype(str)
    weights = frame["weight"].to_numpy(dtype=np.float64)
    if frame.empty or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise AuditError(f"{public_uri(path)}: weights must be finite, non-negative and not all zero")
    if frame["image_id"].duplicated().any():
        raise AuditError(
            f"{public_uri(path)}: image_id {frame['image_id'][frame['image_id'].duplicated()].iloc[0]!r} appears twice"
        )
    return frame


def join_weights(catalog: pd.DataFrame, weights: pd.DataFrame, classes: tuple[str, ...]) -> WeightedSet:
    """The catalog rows with a weight (inner join on image_id), labels as class indices.

    Raises AuditError when no row matches (the weights belong to another catalog) or a label is no class.
    """
    merged = catalog[["image_id", "image_uri", "label"]].merge(weights, on="image_id", how="inner", sort=False)
    if merged.empty:
        raise AuditError(
            f"none of the {len(weights)} weighted image ids is in the catalog's {len(catalog)} rows: "
            "the weights come from an audit of another catalog"
        )
    unknown = sorted(set(merged["label"]) - set(classes))
    if unknown:
        raise AuditError(f"labels {unknown} are not among the model's classes {list(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    return WeightedSet(
        image_ids=tuple(merged["image_id"]),
        image_uris=tuple(merged["image_uri"]),
        labels=np.array([index[label] for label in merged["label"]], dtype=np.int64),
        weights=merged["weight"].to_numpy(dtype=np.float64),
        n_catalog=len(catalog),
    )


def load_images(root: StoragePath, uris: tuple[str, ...], size: int) -> np.ndarray:
    """uint8 (N, size, size, 3) RGB images (resized when they are not that size), confined to `root`."""
    from PIL import Image

    from audit_tasks.paths import resolve_under

    out = np.empty((len(uris), size, size, 3), dtype=np.uint8)
    for i, uri in enumerate(uris):
        with resolve_under(root, uri).open("rb") as handle, Image.open(handle) as image:
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(rgb)
    return out


def retrain_with_weights(
    config: AuditConfig, weights_uri: StoragePath | str, checkpoint: Path, spec: TrainSpec
) -> TrainResult:
    """Train `spec` from scratch on the config's catalog, resampled by the audit's weights; save to `checkpoint`.

    Cached like the demo's own models: the fingerprint covers the weights file's bytes, the joined ids and
    the recipe, so a rerun with the same weights returns at once.
    """
    from audit_tasks.catalog import read_catalog

    dataset, model = config.require_dataset(), config.require_model()
    weights = read_sample_weights(weights_uri)
    catalog = read_catalog(dataset.catalog, columns=["image_id", "image_uri", "label"])
    joined = join_weights(catalog, weights, tuple(model.classes))
    with storage_path(weights_uri).open("rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    key = fingerprint({"weights_sha256": digest, "image_ids": list(joined.image_ids), "train": spec})

    def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return load_images(dataset.image_root, joined.image_uris, model.input_size), joined.labels, joined.weights

    return train_cached(checkpoint, key, spec, make_data)


def spec_for(config: AuditConfig, *, epochs: int, seed: int) -> TrainSpec:
    """The demo's training recipe for the config's model (arch, mean, std), with `epochs` and `seed`."""
    model = config.require_model()
    return TrainSpec(
        arch=model.arch,
        epochs=epochs,
        seed=seed,
        mean=model.mean,
        std=model.std,
    )
