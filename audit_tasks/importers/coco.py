"""A COCO instances file (the format pycocotools reads) to a manifest: tags, a label and regions per image.

Read with plain `json` (pycocotools is not needed at runtime) and converted with vectorised numpy/pandas
grouping, so a file of a million annotations converts in seconds.

What COCO users expect, and what this importer does:

- **Every image is a row**, in the file's order, also one without annotations (a background image): it
  gets empty tags, no regions and no label. The manifest stays the whole dataset; a multiclass audit's
  ingest then quarantines a row without a label ("label is empty"), so nothing disappears unreported, and
  a multilabel audit keeps it as an image where no class is present.
- **Crowd annotations** (`iscrowd: 1`, one box around a group of objects) are objects that are present:
  their category is in `tags` and their box is a region (named and kinded like any other box: the CAM's
  energy on a crowd of people belongs to "people", not to "outside every box"). They never decide the
  `label`: a crowd box spans many instances and often most of the image, and COCO's own evaluation treats
  crowd regions as "ignore", not as an instance. An image with only crowd annotations therefore has no label.
- **label** (`largest`): the category with the largest total box area over the image's non-crowd boxes
  (ties: the category listed first in `categories`). `none` leaves it empty, for multi-label models.
- **Boxes** `[x, y, w, h]` become `[x0, y0, x1, y1]` pixel corners (x1 = x + w, to 1e-6 px), clipped to
  the image's `width` x `height` (as detection pipelines clip; COCO boxes overshoot the border by rounding).
  A box that is empty after clipping (zero width or height, or wholly outside) becomes no region (its
  category stays in the tags); the import's notes count them. Regions keep the file's annotation order.
  Kind: `core` for the label's category, `spurious` for a category listed in `spurious`, `context` for
  every other.
- **Attribute columns** are the extra scalar fields of the `images` entries (anything but the standard
  COCO fields).
- `image_id` is the COCO image id as text; `image_uri` is `file_name` under the images folder.

Errors: a file the converter cannot trust as a whole raises ManifestError naming the file and the field
(`instances.json: annotations[17].bbox: expected 4 numbers [x, y, width, height], got [1, 2]`): not JSON,
no `images` list, an entry that is not an object, a missing or ill-typed id, file_name, bbox, category
or image reference, duplicate ids, a negative box size. Everything that concerns one image's file is
carried to the manifest for the ingest to judge row by row (a file that is missing or not an image, a
box outside the real image): the importer never opens an image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.importers.frame import ImportResult, attribute_columns, join_uri, manifest_frame, uri_prefix

#: Fields every COCO `images` entry may have; any other scalar field becomes an attribute column.
STANDARD_IMAGE_FIELDS = ("id", "file_name", "width", "height", "license", "coco_url", "flickr_url", "date_captured")
LABEL_RULES = ("largest", "none")

MSG_UNREADABLE = "{name}: cannot read the COCO file: {why}"
MSG_NOT_JSON = "{name}: not valid JSON: {why}"
MSG_TOP_LEVEL = "{name}: expected a JSON object with an 'images' list (a COCO instances file), got {kind}"
MSG_MISSING_IMAGES = "{name}: images: missing (a COCO instances file has 'images', 'annotations' and 'categories')"
MSG_NOT_LIST = "{name}: {key}: expected a list, got {kind}"
MSG_FIELD = "{name}: {where}: {problem}"
MSG_BAD_LABEL_RULE = "--label: {rule!r} is not one of {rules}"
MSG_UNKNOWN_SPURIOUS = "--spurious: {names} not a category of {name} (categories: {known})"
NOTE_EMPTY_BOXES = "{count} box(es) empty after clipping to the image (zero width or height): no region, still tagged"
NOTE_NO_LABELS = "labels left empty (--label none, for multi-label models): a multiclass audit quarantines such rows"
NOTE_UNLABELLED = (
    "{count} image(s) have no non-crowd annotation, so no label: a multiclass audit's ingest quarantines them"
)


@dataclass(frozen=True)
class _Annotations:
    """The annotations as parallel arrays (positions into the images and categories lists)."""

    image: np.ndarray  # int64 position in `images`
    category: np.ndarray  # int64 position in `categories`
    box: np.ndarray  # float64 (n, 4) corners x0, y0, x1, y1, clipped
    crowd: np.ndarray  # bool


def read_coco(path: Path) -> dict[str, Any]:
    """Parse a COCO instances file; a file that is unreadable or not a JSON object raises ManifestError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(MSG_UNREADABLE.format(name=path.name, why=exc.strerror or exc)) from exc
    try:
        parsed = json.loads(data)
    except json.JSONDecodeError as exc:
        why = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ManifestError(MSG_NOT_JSON.format(name=path.name, why=why)) from None
    except UnicodeDecodeError as exc:
        why = f"bytes that are not UTF-8 ({exc.reason})"
        raise ManifestError(MSG_NOT_JSON.format(name=path.name, why=why)) from None
    except RecursionError:
        raise ManifestError(MSG_NOT_JSON.format(name=path.name, why="nested too deeply")) from None
    if not isinstance(parsed, dict):
        raise ManifestError(MSG_TOP_LEVEL.format(name=path.name, kind=_kind(parsed)))
    return parsed


def import_coco(
    annotations: Path,
    images: Path,
    *,
    image_root: Path | None = None,
    label: str = "largest",
    spurious: Sequence[str] = (),
) -> ImportResult:
    """Read `annotations` (a COCO instances file) and convert it; see `coco_manifest`."""
    instances = read_coco(annotations)
    return coco_manifest(
        instances, images=images, image_root=image_root, label=label, spurious=spurious, source=annotations.name
    )


def coco_manifest(
    instances: dict[str, Any],
    *,
    images: Path,
    image_root: Path | None = None,
    label: str = "largest",
    spurious: Sequence[str] = (),
    source: str = "instances.json",
) -> ImportResult:
    """Convert parsed COCO instances to a manifest (one row per `images` entry); the rules are the module's.

    Args:
        images: the folder holding the `file_name`s; URIs are relative to `image_root` (default: `images`).
        label: `largest` or `none`.
        spurious: category names whose boxes are `spurious` regions.
        source: the file's name, for messages.

    Raises:
        ManifestError: the instances cannot be trusted as a whole (the message names `source` and the field).
        ConfigError: an unknown `label` rule or a `spurious` name that is no category.
    """
    if label not in LABEL_RULES:
        raise ConfigError(MSG_BAD_LABEL_RULE.format(rule=label, rules=", ".join(LABEL_RULES)))
    entries = _list(instances, "images", source, required=True)
    ids, file_names, widths, heights = _images(entries, source)
    cat_ids, cat_names = _categories(_list(instances, "categories", source), source)
    unknown = sorted(set(spurious) - set(cat_names))
    if unknown:
        raise ConfigError(
            MSG_UNKNOWN_SPURIOUS.format(names=", ".join(map(repr, unknown)), name=source, known=", ".join(cat_names))
        )
    anns = _annotations(_list(instances, "annotations", source), ids, cat_ids, widths, heights, source)
    n_images = len(ids)
    label_of = _largest(anns, n_images) if label == "largest" else np.full(n_images, -1, np.int64)
    spurious_mask = np.isin(np.asarray(cat_names, dtype=object), list(spurious))
    root, prefix = uri_prefix(images, image_root)
    extras = _extras(entries)
    attributes, notes = attribute_columns(extras) if len(extras.columns) else ({}, [])
    frame = manifest_frame(
        image_uri=[join_uri(prefix, f) for f in file_names],
        image_id=[str(i) for i in ids],
        label=[cat_names[c] if c >= 0 else None for c in label_of.tolist()],
        tags=_tags(anns, cat_names, n_images),
        regions=_regions(anns, label_of, spurious_mask, cat_names, n_images),
        attributes=attributes,
    )
    empty = int((~_nonempty(anns.box)).sum())
    if empty:
        notes.append(NOTE_EMPTY_BOXES.format(count=empty))
    unlabelled = int((label_of < 0).sum())
    if label == "none":
        notes.append(NOTE_NO_LABELS)
    elif unlabelled:
        notes.append(NOTE_UNLABELLED.format(count=unlabelled))
    return ImportResult(frame=frame, image_root=root, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# Reading and checking the three lists
# ---------------------------------------------------------------------------------------------


def _list(instances: dict[str, Any], key: str, source: str, *, required: bool = False) -> list[Any]:
    if key not in instances:
        if required:
            raise ManifestError(MSG_MISSING_IMAGES.format(name=source))
        return []
    value = instances[key]
    if not isinstance(value, list):
        raise ManifestError(MSG_NOT_LIST.format(name=source, key=key, kind=_kind(value)))
    return value


def _fail(source: str, where: str, problem: str) -> ManifestError:
    return ManifestError(MSG_FIELD.format(name=source, where=where, problem=problem))


def _objects(entries: list[Any], key: str, source: str) -> None:
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _fail(source, f"{key}[{i}]", f"expected an object, got {_kind(entry)}")


def _images(entries: list[Any], source: str) -> tuple[list[Any], list[str], np.ndarray, np.ndarray]:
    _objects(entries, "images", source)
    ids = [e.get("id") for e in entries]
    for i, value in enumerate(ids):
        if not _is_id(value):
            raise _fail(source, f"images[{i}].id", f"expected an integer or string id, got {_shown(value)}")
    _unique(ids, "images", "id", source)
    file_names = [e.get("file_name") for e in entries]
    for i, value in enumerate(file_names):
        if not isinstance(value, str) or not value.strip():
            raise _fail(source, f"images[{i}].file_name", f"expected a non-empty string, got {_shown(value)}")
    sizes = []
    for key in ("width", "height"):
        values = [e.get(key) for e in entries]
        for i, value in enumerate(values):
            if value is not None and not (_is_number(value) and value > 0):
                raise _fail(source, f"images[{i}].{key}", f"expected a positive number, got {_shown(value)}")
        sizes.append(np.array([np.nan if v is None else v for v in values], dtype=np.float64))
    return ids, file_names, sizes[0], sizes[1]


def _categories(entries: list[Any], source: str) -> tuple[list[Any], list[str]]:
    _objects(entries, "categories", source)
    ids = [e.get("id") for e in entries]
    names = [e.get("name") for e in entries]
    for i, (cat_id, name) in enumerate(zip(ids, names, strict=True)):
        if not _is_id(cat_id):
            raise _fail(source, f"categories[{i}].id", f"expected an integer or string id, got {_shown(cat_id)}")
        if not isinstance(name, str) or not name.strip():
            raise _fail(source, f"categories[{i}].name", f"expected a non-empty string, got {_shown(name)}")
    _unique(ids, "categories", "id", source)
    names = [n.strip() for n in names]
    _unique(names, "categories", "name", source)
    return ids, names


def _annotations(
    entries: list[Any], image_ids: list[Any], cat_ids: list[Any], widths: np.ndarray, heights: np.ndarray, source: str
) -> _Annotations:
    try:  # the fast path: one list comprehension per field; the slow path below only names the culprit
        ann_images = [a["image_id"] for a in entries]
        ann_cats = [a["category_id"] for a in entries]
        raw_boxes = [a["bbox"] for a in entries]
        raw_crowd = [a.get("iscrowd", 0) for a in entries]
    except (KeyError, TypeError, AttributeError):
        _objects(entries, "annotations", source)
        for i, a in enumerate(entries):
            for key in ("image_id", "category_id", "bbox"):
                if key not in a:
                    raise _fail(source, f"annotations[{i}].{key}", "missing") from None
        raise
    image = _positions(ann_images, image_ids, "image_id", "an image id", source)
    category = _positions(ann_cats, cat_ids, "category_id", "a category id", source)
    boxes = _boxes(raw_boxes, source)
    crowd = np.asarray(raw_crowd) if raw_crowd else np.zeros(0, bool)
    if crowd.dtype.kind not in "biuf" or not np.isin(crowd, (0, 1)).all():
        bad = next(i for i, v in enumerate(raw_crowd) if v not in (0, 1) or not _is_number(v))
        raise _fail(source, f"annotations[{bad}].iscrowd", f"expected 0 or 1, got {_shown(raw_crowd[bad])}")
    x, y, w, h = boxes.T
    # Rounded to 1e-6 px: x + w in floating point gives 168.54000000000002 for 130.07 + 38.47.
    x0, y0 = np.maximum(x, 0.0), np.maximum(y, 0.0)
    x1 = np.fmin(np.round(x + w, 6), widths[image])  # fmin: an image of unknown size clips nothing
    y1 = np.fmin(np.round(y + h, 6), heights[image])
    return _Annotations(image, category, np.stack([x0, y0, x1, y1], axis=1), crowd.astype(bool))


def _positions(values: list[Any], ids: list[Any], key: str, what: str, source: str) -> np.ndarray:
    index = pd.Index(ids, dtype=object)
    positions = index.get_indexer(pd.Index(values, dtype=object)) if values else np.empty(0, np.int64)
    missing = np.flatnonzero(positions < 0)
    if len(missing):
        i = int(missing[0])
        raise _fail(source, f"annotations[{i}].{key}", f"{_shown(values[i])} is not {what} in the file")
    return positions.astype(np.int64)


def _boxes(raw: list[Any], source: str) -> np.ndarray:
    try:
        boxes = np.array(raw) if raw else np.empty((0, 4))
        well_formed = boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.dtype.kind in "iuf"
    except (ValueError, TypeError):
        well_formed = False
    if not well_formed:
        bad = next(i for i, b in enumerate(raw) if not _is_box(b))
        problem = f"expected 4 numbers [x, y, width, height], got {_shown(raw[bad])}"
        raise _fail(source, f"annotations[{bad}].bbox", problem)
    boxes = boxes.astype(np.float64)
    wrong = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if wrong.any():
        bad = int(np.flatnonzero(wrong)[0])
        problem = f"expected finite numbers with width and height >= 0, got {_shown(raw[bad])}"
        raise _fail(source, f"annotations[{bad}].bbox", problem)
    return boxes


def _extras(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """The non-standard fields of the images entries, one column each (first-seen order; None where absent)."""
    names: dict[str, None] = {}
    for entry in entries:
        for key in entry:
            if key not in STANDARD_IMAGE_FIELDS:
                names.setdefault(key, None)
    return pd.DataFrame({k: pd.Series([e.get(k) for e in entries], dtype=object) for k in names})


# ---------------------------------------------------------------------------------------------
# The vectorised conversion
# ---------------------------------------------------------------------------------------------


def _nonempty(box: np.ndarray) -> np.ndarray:
    return (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])


def _largest(anns: _Annotations, n_images: int) -> np.ndarray:
    """Per image, the position of the category with the largest total non-crowd box area (-1: none)."""
    keep = ~anns.crowd
    box = anns.box[keep]
    area = np.where(_nonempty(box), (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]), 0.0)
    totals = (
        pd.DataFrame({"image": anns.image[keep], "category": anns.category[keep], "area": area})
        .groupby(["image", "category"], sort=False)["area"]
        .sum()
        .reset_index()
        .sort_values(["image", "area", "category"], ascending=[True, False, True], kind="stable")
        .drop_duplicates("image")
    )
    label_of = np.full(n_images, -1, np.int64)
    label_of[totals["image"].to_numpy()] = totals["category"].to_numpy()
    return label_of


def _tags(anns: _Annotations, cat_names: list[str], n_images: int) -> list[list[str]]:
    """Per image, every category present (crowd included), in the order of `categories`."""
    n_cats = max(len(cat_names), 1)
    pairs = np.unique(anns.image * n_cats + anns.category)
    names = pa.array(cat_names, pa.string()).take(pa.array(pairs % n_cats))
    return _lists(names, pairs // n_cats, n_images).to_pylist()


def _regions(
    anns: _Annotations, label_of: np.ndarray, spurious: np.ndarray, cat_names: list[str], n_images: int
) -> list[str | None]:
    """Per image, the regions' JSON text (None when it has no box), boxes in the file's annotation order.

    Assembled as Arrow strings (numbers in shortest round-trip form, `16` for 16.0), joined per image by
    Arrow: no Python string operation per box.
    """
    keep = _nonempty(anns.box)
    order = np.argsort(anns.image[keep], kind="stable")
    image, category, box = anns.image[keep][order], anns.category[keep][order], anns.box[keep][order]
    kind = np.where(category == label_of[image], 0, np.where(spurious[category], 1, 2))
    kinds = pa.array(['"core"', '"spurious"', '"context"']).take(pa.array(kind))
    names = pa.array([json.dumps(n) for n in cat_names], pa.string()).take(pa.array(category))
    x0, y0, x1, y1 = (pa.array(box[:, j]).cast(pa.string()) for j in range(4))
    pieces = ['{"kind": ', kinds, ', "name": ', names, ', "box": [', x0, ", ", y0, ", ", x1, ", ", y1, "]}"]
    fragments = pc.binary_join_element_wise(*pieces, "")
    lists = _lists(fragments, image, n_images)
    text = pc.binary_join_element_wise("[", pc.binary_join(lists, ", "), "]", "")
    return pc.if_else(pc.greater(pc.list_value_length(lists), 0), text, None).to_pylist()


def _lists(values: pa.Array, owners: np.ndarray, n_images: int) -> pa.LargeListArray:
    """`values` (sorted by `owners`, an image position each) as one list per image."""
    counts = np.bincount(owners, minlength=n_images) if len(owners) else np.zeros(n_images, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)


# ---------------------------------------------------------------------------------------------
# Small predicates
# ---------------------------------------------------------------------------------------------


def _unique(values: list[Any], key: str, field: str, source: str) -> None:
    duplicated = pd.Index(values, dtype=object).duplicated()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        first = values.index(values[i])
        raise _fail(source, f"{key}[{i}].{field}", f"{_shown(values[i])} is also {key}[{first}]'s {field}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and bool(value.strip()))


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
