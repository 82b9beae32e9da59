"""One folder per class to a manifest, read the way torchvision's `ImageFolder` reads it.

Same classes (the sorted sub-folders of the root), same files (a walk of each class folder, nested folders
included and symlinks followed, sorted, kept when the name ends in one of torchvision's `IMG_EXTENSIONS`,
case-insensitively), same order. One deliberate difference: hidden entries (a name starting with ".")
are skipped, as folders (`.ipynb_checkpoints` is no class) and as files (`._photo.jpg` is macOS metadata,
not a photo); torchvision would take both. The label is the class folder's name; the folder carries no
tags, boxes or ids (the ingest derives ids from the content), so the manifest has none.
"""

from __future__ import annotations

import os
from pathlib import Path

from audit_tasks.errors import ConfigError
from audit_tasks.importers.frame import ImportResult, join_uri, manifest_frame, uri_prefix

#: torchvision.datasets.folder.IMG_EXTENSIONS, copied so that the import needs no torchvision.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

MSG_NOT_A_FOLDER = "--root {root}: not a folder"
MSG_NO_CLASSES = "--root {root}: no class folders in it (one sub-folder per class, as torchvision's ImageFolder)"
MSG_EMPTY_CLASSES = "--root {root}: class folder(s) {names} hold no image file (extensions: {extensions})"


def find_classes(root: Path) -> list[str]:
    """The class names: the sorted names of the root's visible sub-folders (symlinked folders count).

    Raises:
        ConfigError: the root is not a folder or has no class folder.
    """
    if not root.is_dir():
        raise ConfigError(MSG_NOT_A_FOLDER.format(root=root))
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not _hidden(e.name))
    if not classes:
        raise ConfigError(MSG_NO_CLASSES.format(root=root))
    return classes


def image_files(folder: Path) -> list[Path]:
    """A class folder's image files in torchvision's order: the sorted walk, each folder's sorted names."""
    found = []
    for current, _dirs, names in sorted(os.walk(folder, followlinks=True)):
        relative = Path(current).relative_to(folder)
        if any(_hidden(part) for part in relative.parts):
            continue
        for name in sorted(names):
            if not _hidden(name) and name.lower().endswith(IMG_EXTENSIONS):
                found.append(Path(current) / name)
    return found


def imagefolder_manifest(root: Path, *, image_root: Path | None = None) -> ImportResult:
    """A manifest with one row per image file, labelled by its class folder; URIs relative to the image root.

    Raises:
        ConfigError: no class folder, or a class folder without any image file (torchvision refuses both).
    """
    classes = find_classes(root)
    base, prefix = uri_prefix(root, image_root, what="--root")
    uris: list[str] = []
    labels: list[str] = []
    empty = []
    for name in classes:
        files = image_files(root / name)
        if not files:
            empty.append(name)
        uris.extend(join_uri(prefix, path.relative_to(root).as_posix()) for path in files)
        labels.extend([name] * len(files))
    if empty:
        raise ConfigError(
            MSG_EMPTY_CLASSES.format(root=root, names=", ".join(empty), extensions=" ".join(IMG_EXTENSIONS))
        )
    return ImportResult(frame=manifest_frame(image_uri=uris, label=labels), image_root=base)


def _hidden(name: str) -> bool:
    return name.startswith(".")
