"""Benchmark: the ingest time the image properties add (audit_tasks.image_properties).

Generates `--images` JPEGs (640x480, smooth gradients plus noise, quality 60..95; generated once and
cached under `$TMPDIR/audit_tasks_bench/image_properties/`) and one CSV manifest, then times
`audit_tasks.ingest.ingest` on a fresh catalog with `checks.image_properties.enabled` false and true,
interleaved, best of `--repeats`. It also times `measure_image` alone over the same files. Target: the
properties add at most 5% to the ingest time.

Usage: ``python bench/image_properties.py [--images 3000] [--repeats 3] [--png]``
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_tasks.config import load_config  # noqa: E402
from audit_tasks.image_properties import measure_image  # noqa: E402
from audit_tasks.ingest import ingest  # noqa: E402


def make_images(folder: Path, n: int, png: bool) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "png" if png else "jpg"
    names = [f"img_{i:05d}.{suffix}" for i in range(n)]
    if all((folder / name).is_file() for name in names):
        return names
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    for i, name in enumerate(names):
        base = (x * rng.uniform(0.1, 0.4) + y * rng.uniform(0.1, 0.4) + rng.uniform(0, 100))[..., None]
        pixels = np.clip(base + rng.normal(0, 12, (480, 640, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if png:
            image.save(folder / name)
        else:
            image.save(folder / name, quality=int(60 + i % 36))
    return names


def run_ingest(images: Path, names: list[str], enabled: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    try:
        (root / "landing").mkdir()
        with open(root / "landing" / "m.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_uri", "label", "tags"])
            writer.writerows([name, ("wolf", "husky")[i % 2], "snow"] for i, name in enumerate(names))
        body = {
            "dataset": {"landing": "landing", "image_root": str(images), "catalog": "catalog"},
            "checks": {"image_properties": {"enabled": enabled}},
            "output": {"dir": "reports"},
        }
        (root / "audit.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
        config = load_config(root / "audit.yaml")
        start = time.perf_counter()
        result = ingest(config, "bench")
        elapsed = time.perf_counter() - start
        assert len(result.accepted) == len(names), result.quarantined.head()
        measured = result.accepted["prop_brightness"].notna().all()
        assert measured == enabled
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--png", action="store_true", help="PNG instead of JPEG (no draft decode)")
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / "audit_tasks_bench" / "image_properties" / ("png" if args.png else "jpeg")
    names = make_images(cache, args.images, args.png)
    off, on = [], []
    run_ingest(cache, names[:50], True)  # warm imports and the page cache
    for _ in range(args.repeats):
        off.append(run_ingest(cache, names, False))
        on.append(run_ingest(cache, names, True))
    start = time.perf_counter()
    for name in names:
        measure_image(cache / name, width=640, height=480)
    alone = time.perf_counter() - start
    best_off, best_on = min(off), min(on)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{len(names)} {'PNG' if args.png else 'JPEG'} images 640x480")
    print(f"ingest, properties off: best {best_off:.2f} s  (all: {', '.join(f'{t:.2f}' for t in off)})")
    print(f"ingest, properties on:  best {best_on:.2f} s  (all: {', '.join(f'{t:.2f}' for t in on)})")
    print(f"added: {best_on - best_off:+.2f} s = {100 * (best_on - best_off) / best_off:+.1f}% of ingest")
    print(f"measure_image alone: {alone:.2f} s = {1000 * alone / len(names):.2f} ms per image")


if __name__ == "__main__":
    main()
