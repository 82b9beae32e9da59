"""Benchmark: a COCO instances file of 1M annotations over ~120k images converted to a manifest.

Generates (once, cached under ``$TMPDIR/audit_tasks_bench/importers/``) a synthetic COCO instances file
shaped like COCO train2017 (80 categories, about 8 boxes per image, 1% crowd boxes, 1% of images without
annotations, a polygon segmentation per box, an extra per-image field), then times, best of N:

* read: ``read_coco`` (plain ``json``);
* convert: ``coco_manifest`` (validation, label, tags, regions, attributes: the vectorised part);
* write: ``write_manifest`` to Parquet;

and, as a reference point only, ``pycocotools.COCO(path)`` (load + index, no manifest) when installed.

Usage: ``python bench/importers.py [--annotations 1000000] [--images 120000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def generate(path: Path, n_annotations: int, n_images: int, seed: int = 0) -> None:
    """Write the synthetic instances file (sizes and shapes as COCO's, content random)."""
    rng = np.random.default_rng(seed)
    widths = rng.choice([640, 480, 500, 427], size=n_images)
    heights = rng.choice([480, 640, 375, 333], size=n_images)
    images = [
        {
            "id": int(i + 1),
            "file_name": f"{i + 1:012d}.jpg",
            "width": int(widths[i]),
            "height": int(heights[i]),
            "license": 1,
            "date_captured": "2013-11-14 17:02:52",
            "time_of_day": ("day", "night")[i % 2],
        }
        for i in range(n_images)
    ]
    annotated = rng.permutation(n_images)[: int(n_images * 0.99)]
    owner = np.sort(rng.choice(annotated, size=n_annotations))
    w = rng.uniform(2, 200, size=n_annotations).round(2)
    h = rng.uniform(2, 200, size=n_annotations).round(2)
    x = (rng.uniform(0, 1, size=n_annotations) * (widths[owner] - w)).round(2)
    y = (rng.uniform(0, 1, size=n_annotations) * (heights[owner] - h)).round(2)
    category = rng.integers(1, 81, size=n_annotations)
    crowd = rng.uniform(size=n_annotations) < 0.01
    annotations = [
        {
            "id": k + 1,
            "image_id": int(owner[k] + 1),
            "category_id": int(category[k]),
            "iscrowd": int(crowd[k]),
            "area": float(round(w[k] * h[k], 2)),
            "bbox": [float(x[k]), float(y[k]), float(w[k]), float(h[k])],
            "segmentation": [
                [float(x[k]), float(y[k]), float(x[k] + w[k]), float(y[k]), float(x[k] + w[k]), float(y[k] + h[k])]
            ],
        }
        for k in range(n_annotations)
    ]
    categories = [{"id": c, "name": f"category_{c:02d}", "supercategory": "thing"} for c in range(1, 81)]
    body = {"info": {"description": "synthetic"}, "images": images, "annotations": annotations}
    body["categories"] = categories
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body), encoding="utf-8")
    tmp.replace(path)


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=3)
    default_dir = Path(tempfile.gettempdir()) / "audit_tasks_bench" / "importers"
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    args = parser.parse_args(argv)

    from audit_tasks.importers import coco_manifest, read_coco, write_manifest

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.machine()} cores available={cores} python {platform.python_version()}")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = args.data_dir / f"instances_{args.annotations}_{args.images}.json"
    if not path.exists():
        start = time.perf_counter()
        generate(path, args.annotations, args.images)
        print(f"generated {path} in {time.perf_counter() - start:.1f} s (not timed below)")
    print(f"file: {path.stat().st_size / 1e6:.0f} MB, {args.annotations:,} annotations, {args.images:,} images")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min) before timing: {load:.1f}")

    read_s, instances = timed(lambda: read_coco(path), args.repeats)
    convert_s, result = timed(
        lambda: coco_manifest(instances, images=args.data_dir / "images", spurious=["category_01"]), args.repeats
    )
    out = args.data_dir / "manifest.parquet"
    write_s, _ = timed(lambda: write_manifest(result.frame, out), args.repeats)
    total = read_s + convert_s + write_s
    frame = result.frame
    print(
        f"rows {len(frame):,}, labelled {frame['label'].notna().sum():,}, "
        f"regions {sum(r.count('kind') for r in frame['regions'].dropna()):,}"
    )
    print(f"read_coco (json): {read_s:.2f} s")
    print(f"coco_manifest (convert): {convert_s:.2f} s")
    print(f"write_manifest (parquet): {write_s:.2f} s")
    print(f"total: {total:.2f} s, {args.annotations / total:,.0f} annotations/s (best of {args.repeats} each)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    try:
        from pycocotools.coco import COCO
    except ImportError:
        print("pycocotools not installed: no reference point")
        return 0
    with contextlib.redirect_stdout(io.StringIO()):
        peer_s, _ = timed(lambda: COCO(str(path)), 1)
    print(f"reference: pycocotools COCO(path) load + index only (no manifest): {peer_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
