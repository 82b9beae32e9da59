"""The manifest frame every importer returns: its columns, attribute columns, image URIs, and the result.

One home for the rules the three importers share, so a COCO, an image-folder and a Hugging Face import of
the same images give manifests with the same columns, the same URIs and the same attribute text.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit_tasks.errors import ConfigError
from audit_tasks.ingest import INGEST_RECORDED_COLUMNS
from audit_tasks.manifest import cell_text

#: The contract's manifest columns, in the order importers write them (attribute columns follow).
MANIFEST_COLUMNS = ("image_uri", "image_id", "label", "tags", "regions")

MSG_IMAGES_OUTSIDE_ROOT = "{what} {images} does not lie under the image root {root}: pass an --image-root above it"
MSG_RESERVED_ATTRIBUTE = (
    "attribute column {name!r} skipped: the name is a manifest column or one the ingest records itself"
)
MSG_NESTED_ATTRIBUTE = "attribute column {name!r} skipped: it holds lists or objects, and attributes are single values"


@dataclass(frozen=True)
class ImportResult:
    """A manifest built by an importer, the image root its URIs are relative to, and what the user should know.

    `frame` has the contract's columns (`image_uri`, `image_id` where the source has ids, `label`, `tags` as
    list[str] where the source has them, `regions` as JSON text or None) and one text column per attribute.
    `image_root` is what the config's `dataset.image_root` must name for the URIs to resolve. `notes` are
    warnings worth printing (skipped columns, dropped boxes), never errors.
    """

    frame: pd.DataFrame
    image_root: Path
    notes: tuple[str, ...] = field(default=())

    @property
    def rows(self) -> int:
        return len(self.frame)


def uri_prefix(images: Path, image_root: Path | None, *, what: str = "--images") -> tuple[Path, str]:
    """(image root, posix prefix of `images` under it): URIs are `prefix/name`, relative to the image root.

    The image root defaults to `images` itself (prefix ""); one above it lets several datasets share one
    `dataset.image_root` (`--images data/images/coco/train2017 --image-root data/images` -> `coco/train2017/...`).

    Raises:
        ConfigError: `images` does not lie under `image_root`.
    """
    root = images if image_root is None else image_root
    relative = os.path.relpath(os.path.abspath(images), os.path.abspath(root))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
        raise ConfigError(MSG_IMAGES_OUTSIDE_ROOT.format(what=what, images=images, root=root))
    prefix = "" if relative == os.curdir else Path(relative).as_posix()
    return root, prefix


def join_uri(prefix: str, name: str) -> str:
    """A manifest URI: `name` (a file name as the source gives it, `/`-separated) under `prefix`."""
    name = name.replace(os.sep, "/") if os.sep != "/" else name
    return posixpath.join(prefix, name) if prefix else name


def attribute_columns(values: pd.DataFrame) -> tuple[dict[str, list[str | None]], list[str]]:
    """Attribute columns as text, and notes on the columns skipped.

    Text is the manifest readers' own (`true`, `3`, `0.5`), so a CSV, JSON Lines and Parquet manifest of
    one import read back the same. A column named like a manifest column or one the ingest records (`width`,
    `height`, ...) is skipped (the ingest would refuse the whole manifest), and so is a column holding lists
    or objects (attributes are single values).
    """
    reserved = set(MANIFEST_COLUMNS) | set(INGEST_RECORDED_COLUMNS)
    columns: dict[str, list[str | None]] = {}
    notes: list[str] = []
    for name in values.columns:
        cells = values[name].tolist()
        if name in reserved:
            notes.append(MSG_RESERVED_ATTRIBUTE.format(name=name))
        elif any(_is_nested(v) for v in cells):
            notes.append(MSG_NESTED_ATTRIBUTE.format(name=name))
        else:
            columns[str(name)] = [cell_text(v) for v in cells]
    return columns, notes


def manifest_frame(
    *,
    image_uri: Sequence[str],
    label: Sequence[str | None],
    image_id: Sequence[str | None] | None = None,
    tags: Sequence[list[str]] | None = None,
    regions: Sequence[str | None] | None = None,
    attributes: dict[str, list[str | None]] | None = None,
) -> pd.DataFrame:
    """The manifest frame: contract columns first (those the source has), attribute columns after."""
    data: dict[str, Any] = {"image_uri": list(image_uri)}
    if image_id is not None:
        data["image_id"] = list(image_id)
    data["label"] = list(label)
    if tags is not None:
        data["tags"] = list(tags)
    if regions is not None:
        data["regions"] = list(regions)
    data.update(attributes or {})
    return pd.DataFrame({name: pd.Series(column, dtype=object) for name, column in data.items()})


def _is_nested(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, np.ndarray))
