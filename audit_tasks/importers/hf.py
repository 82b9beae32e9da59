"""A local Hugging Face dataset to a manifest and image files, with nothing downloaded.

Reads a dataset saved with `save_to_disk` (a `Dataset` or a `DatasetDict`), or local data files that
`datasets.load_dataset` reads (an imagefolder directory, Parquet/CSV/JSON files). `load_dataset` runs with
`local_files_only`, in offline mode for the call only, and with a temporary cache folder removed after
the import, so the user's environment and Hugging Face cache are left as they were.

- Images are written to `<images>/<split>/<row index>.<ext>` (deterministic: a re-import writes the same
  files). Encoded bytes (or the file a row points to) are copied unchanged, keeping their format;
  pixel arrays are saved as PNG. A row whose image cannot be read (its file is gone) keeps its URI, the
  file is not written, and the ingest quarantines that row: the import's notes count them.
- `label`: a `ClassLabel` column gives its names (-1, "no label", gives none); another column its text.
- Columns named `image_id`, `tags` (list or `|`-separated) and `regions` (the manifest's JSON) are carried
  as those manifest columns; every other scalar column becomes an attribute column (`ClassLabel` as names).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit_tasks.errors import ConfigError
from audit_tasks.importers.frame import ImportResult, attribute_columns, join_uri, manifest_frame, uri_prefix
from audit_tasks.manifest import cell_text, parse_tags
from audit_tasks.storage import atomic_path

#: Columns carried to the manifest column of the same name rather than becoming attributes.
PASSED_THROUGH = ("image_id", "tags", "regions")
#: Suffix -> `load_dataset` builder for a single data file.
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
#: PIL format -> file suffix for the images written.
FORMAT_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}
_BATCH = 256

MSG_NEEDS_DATASETS = "import hf needs the 'datasets' package: pip install 'audit-tasks[datasets]'"
MSG_NO_DATASET = "--dataset {path}: no such file or folder"
MSG_CANNOT_LOAD = "--dataset {path}: datasets cannot read it locally: {why}"
MSG_UNKNOWN_SPLIT = "--split {split!r}: {path} has splits {splits}"
MSG_WHICH_SPLIT = "--dataset {path} has splits {splits}: pass --split to choose one"
MSG_NO_COLUMN = "{option} {column!r}: {path} has no such column (columns: {columns})"
MSG_NOT_PIXELS = "--image-column {column!r}: row {row} holds neither encoded image bytes nor an image array ({why})"
NOTE_UNREADABLE = "{count} image(s) could not be read from the dataset: their rows name files that were not written"


def hf_manifest(
    dataset: Path,
    images: Path,
    *,
    split: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    image_root: Path | None = None,
) -> ImportResult:
    """Write the split's images under `images` and return its manifest (URIs relative to the image root).

    Raises:
        ConfigError: `datasets` is not installed, the dataset cannot be read locally, the split is unknown
            or ambiguous, a named column is missing, or an image column holds no image.
    """
    datasets = _require_datasets()
    if not dataset.exists():
        raise ConfigError(MSG_NO_DATASET.format(path=dataset))
    root, prefix = uri_prefix(images, image_root)
    with _loaded(datasets, dataset) as loaded:
        table, split_name = _pick_split(loaded, split, dataset)
        for option, column in (("--image-column", image_column), ("--label-column", label_column)):
            if column not in table.column_names:
                found = ", ".join(table.column_names)
                raise ConfigError(MSG_NO_COLUMN.format(option=option, column=column, path=dataset, columns=found))
        features = table.features
        if isinstance(features[image_column], datasets.Image):
            table = table.cast_column(image_column, datasets.Image(decode=False))
        width = max(6, len(str(max(len(table) - 1, 0))))
        columns: dict[str, list[Any]] = {name: [] for name in table.column_names if name != image_column}
        uris: list[str] = []
        unreadable = 0
        for batch in table.iter(batch_size=_BATCH):
            for value in batch[image_column]:
                row = len(uris)
                data = _image_bytes(value, image_column, row)
                name = f"{split_name}/{row:0{width}d}{_suffix(data, value)}"
                uris.append(join_uri(prefix, name))
                if data is None:
                    unreadable += 1
                    continue
                with atomic_path(images / name) as tmp:
                    tmp.write_bytes(data)
            for name, values in columns.items():
                values.extend(batch[name])
    labels = _labels(columns.pop(label_column), features[label_column], datasets)
    carried = {name: columns.pop(name) for name in PASSED_THROUGH if name in columns}
    for name, values in columns.items():
        if isinstance(features[name], datasets.ClassLabel):
            columns[name] = _labels(values, features[name], datasets)
    attributes, notes = attribute_columns(pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()}))
    if unreadable:
        notes.append(NOTE_UNREADABLE.format(count=unreadable))
    frame = manifest_frame(
        image_uri=uris,
        image_id=[cell_text(v) for v in carried["image_id"]] if "image_id" in carried else None,
        label=labels,
        tags=[parse_tags(v) for v in carried["tags"]] if "tags" in carried else None,
        regions=[_regions_text(v) for v in carried["regions"]] if "regions" in carried else None,
        attributes=attributes,
    )
    return ImportResult(frame=frame, image_root=root, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _require_datasets() -> Any:
    import importlib

    try:
        return importlib.import_module("datasets")  # untyped, and an optional extra: imported when used
    except ImportError as exc:
        raise ConfigError(MSG_NEEDS_DATASETS) from exc


@contextmanager
def _loaded(datasets: Any, path: Path) -> Iterator[Any]:
    """The dataset at `path`, valid inside the block (a `load_dataset` cache lives in a temporary folder)."""
    import tempfile

    if _saved_to_disk(path):
        yield _load(datasets, path, lambda: datasets.load_from_disk(str(path)))
        return
    if not path.is_dir() and path.suffix.lower() not in FILE_BUILDERS:
        raise ConfigError(MSG_CANNOT_LOAD.format(path=path, why=f"unknown data file type {path.suffix!r}"))
    with tempfile.TemporaryDirectory(prefix="audit-hf-cache-") as cache:
        options: dict[str, Any] = {
            "cache_dir": cache,
            "download_config": datasets.DownloadConfig(local_files_only=True, cache_dir=cache),
        }
        if path.is_dir():
            args: tuple[str, ...] = (str(path),)
        else:
            args = (FILE_BUILDERS[path.suffix.lower()],)
            options["data_files"] = str(path)
        with _offline(datasets):
            loaded = _load(datasets, path, lambda: datasets.load_dataset(*args, **options))
        yield loaded


def _load(datasets: Any, path: Path, load: Callable[[], Any]) -> Any:
    """Call `load`, turning what `datasets` raises for unusable input into a ConfigError naming the path."""
    try:
        return load()
    except (OSError, ValueError, TypeError, KeyError, datasets.exceptions.DatasetsError) as exc:
        raise ConfigError(MSG_CANNOT_LOAD.format(path=path, why=f"{type(exc).__name__}: {exc}")) from exc


def _saved_to_disk(path: Path) -> bool:
    """Whether `path` is a `save_to_disk` folder (of a DatasetDict, or of one Dataset)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """Hugging Face offline mode for this process, for the block only (the environment is not touched)."""
    config = datasets.config
    saved = config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE
    config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE = saved


def _pick_split(loaded: Any, split: str | None, path: Path) -> tuple[Any, str]:
    if not hasattr(loaded, "keys"):  # one Dataset
        return loaded, split or (str(loaded.split) if loaded.split else "data")
    splits = list(loaded.keys())
    if split is None:
        if len(splits) != 1:
            raise ConfigError(MSG_WHICH_SPLIT.format(path=path, splits=", ".join(splits)))
        split = splits[0]
    if split not in splits:
        raise ConfigError(MSG_UNKNOWN_SPLIT.format(split=split, path=path, splits=", ".join(splits)))
    return loaded[split], split


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def _image_bytes(value: Any, column: str, row: int) -> bytes | None:
    """The image as file bytes: encoded bytes as stored, the file a row points to, else pixels as PNG.

    None when the row points to a file that cannot be read (carried through for the ingest to quarantine).
    """
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            return bytes(value["bytes"])
        try:
            return Path(value["path"]).read_bytes() if value.get("path") else None
        except OSError:
            return None
    from PIL import Image

    try:
        pixels = np.asarray(value)  # nested lists come back as int64: any integers in 0..255 are pixels
        if pixels.dtype.kind not in "iu" or pixels.size == 0 or pixels.min() < 0 or pixels.max() > 255:
            raise ValueError(f"{pixels.dtype} values, expected integers in 0..255")
        pixels = pixels.astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
    except (ValueError, TypeError) as exc:
        raise ConfigError(MSG_NOT_PIXELS.format(column=column, row=row, why=exc)) from exc
    return buffer.getvalue()


def _suffix(data: bytes | None, value: Any) -> str:
    """The file suffix for the image bytes: from their format, else the source file's suffix, else `.png`."""
    if data is not None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                suffix = FORMAT_SUFFIXES.get(image.format or "")
        except (UnidentifiedImageError, OSError):
            suffix = None
        if suffix:
            return suffix
    source = value.get("path") if isinstance(value, dict) else None
    return Path(source).suffix.lower() if source and Path(source).suffix else ".png"


def _labels(values: list[Any], feature: Any, datasets: Any) -> list[str | None]:
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(int(v)) if v is not None and int(v) >= 0 else None for v in values]
    return [cell_text(v) for v in values]


def _regions_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    return json.dumps(value)
