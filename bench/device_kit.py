"""Copy the pure-Python packages the GPU machine lacks into one folder, to carry there with the checkout.

The device image has its own Python (3.12) with torch, torchvision, pandas, pyarrow, PIL, fsspec and
pytest, and no package registry. `bench/device_check.sh` needs these few more; they are pure Python, so
their installed files are copied as they are (a few MB), from this machine's `.venv`.

Usage: `.venv/bin/python bench/device_kit.py .devpy` (or `make device-kit`); then carry `.devpy`.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

#: Distributions the GPU checks import that the device image does not have.
MISSING_ON_DEVICE = ("universal_pathlib", "pathlib_abc", "captum", "grad-cam", "ttach")


def build_kit(target: Path) -> list[str]:
    """Copy each distribution's top-level packages and metadata into `target`; returns what was copied."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    copied = []
    for name in MISSING_ON_DEVICE:
        dist = importlib.metadata.distribution(name)
        root = Path(dist.locate_file(""))
        tops = sorted({Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")})
        for top in tops:
            source = root / top
            if source.is_dir():
                shutil.copytree(source, target / top, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.is_file() and source.suffix == ".py":
                shutil.copy2(source, target / top)
        copied.append(f"{name} {dist.version}")
    return copied


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".devpy")
    print(f"{folder}: " + ", ".join(build_kit(folder)))
