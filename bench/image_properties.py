"""Benchmark: what the image properties cost (audit_tasks.image_properties), where they are measured.

Generates `--images` JPEGs (640x480, smooth gradients plus noise, quality 60..95; generated once and
cached under `$TMPDIR/audit_tasks_bench/image_properties/`) and one CSV manifest, then:

* ingest: times `audit_tasks.ingest.ingest` on a fresh catalog (it always records the header properties:
  format, aspect, JPEG quality) and `header_properties` alone over the probed headers, so the share the
  properties add to the ingest is measured, not assumed;
* scoring: times `audit_tasks.scoring.score_images` (a random resnet18 at 224 px, Grad-CAM and region
  metrics, as the audit runs it) over the first `--scored` images with the pixel properties off and on,
  interleaved, best of `--repeats`.

Target: at most 5% added, to the ingest and to the scoring stage.

Usage: ``python bench/image_properties.py [--images 3000] [--scored 512] [--repeats 3]``
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
import pandas as pd
import torch
import torchvision
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_tasks.config import ModelConfig, SaliencyConfig, load_config  # noqa: E402
from audit_tasks.image_properties import header_properties, pixel_properties  # noqa: E402
from audit_tasks.images import probe_image  # noqa: E402
from audit_tasks.ingest import ingest  # noqa: E402
from audit_tasks.scoring import score_images  # noqa: E402


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


def run_ingest(images: Path, names: list[str]) -> float:
    root = Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    try:
        (root / "landing").mkdir()
        with open(root / "landing" / "m.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_uri", "label", "tags"])
            writer.writerows([name, ("wolf", "husky")[i % 2], "snow"] for i, name in enumerate(names))
        body = {
            "dataset": {"landing": "landing", "image_root": str(images), "catalog": "catalog"},
            "output": {"dir": "reports"},
        }
        (root / "audit.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
        config = load_config(root / "audit.yaml")
        start = time.perf_counter()
        result = ingest(config, "bench")
        elapsed = time.perf_counter() - start
        if len(result.accepted) != len(names) or result.accepted["prop_jpeg_quality"].isna().any():
            raise SystemExit(f"ingest bench: unexpected result\n{result.quarantined.head()}")
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_scoring(model: torch.nn.Module, rows: pd.DataFrame, measure: bool) -> float:
    model_config = ModelConfig.model_construct(
        arch="resnet18",
        checkpoint=Path("unused.pt"),
        classes=("husky", "wolf"),
        target_layer="layer4",
        input_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    saliency = SaliencyConfig(batch_size=64, device="cpu", num_workers=0)
    start = time.perf_counter()
    result = score_images(
        model,
        rows,
        model_config=model_config,
        saliency_config=saliency,
        attributes=(),
        run_id="bench",
        measure_properties=measure,
    )
    elapsed = time.perf_counter() - start
    if len(result.images) != len(rows) or result.images["prop_brightness"].notna().all() != measure:
        raise SystemExit("scoring bench: unexpected result")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--scored", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / "audit_tasks_bench" / "image_properties" / "jpeg"
    names = make_images(cache, args.images, png=False)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{len(names)} JPEG images 640x480")

    run_ingest(cache, names[:50])  # warm imports and the page cache
    ingest_times = [run_ingest(cache, names) for _ in range(args.repeats)]
    infos = [probe_image(cache / name, max_pixels=10**8, min_side=1) for name in names]
    start = time.perf_counter()
    for info in infos:
        header_properties(info)
    header = time.perf_counter() - start
    best = min(ingest_times)
    print(
        f"ingest (header properties included): best {best:.2f} s  (all: {', '.join(f'{t:.2f}' for t in ingest_times)})"
    )
    print(f"header_properties alone: {header * 1000:.1f} ms = {100 * header / best:.2f}% of the ingest")

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=2).eval()
    rows = pd.DataFrame(
        {
            "image_id": [f"i{i}" for i in range(args.scored)],
            "image_uri": names[: args.scored],
            "image_path": [str(cache / name) for name in names[: args.scored]],
            "label": [("husky", "wolf")[i % 2] for i in range(args.scored)],
            "width": 640,
            "height": 480,
        }
    )
    run_scoring(model, rows.head(64), True)  # warm up
    off, on = [], []
    for _ in range(args.repeats):
        off.append(run_scoring(model, rows, False))
        on.append(run_scoring(model, rows, True))
    best_off, best_on = min(off), min(on)
    # The measure alone, on batches as the scoring stage gives them: robust to a busy machine, where the
    # difference of two whole scoring runs is mostly noise.
    batch = torch.rand(64, 3, 224, 224) * 255
    alone = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(-(-args.scored // 64)):
            pixel_properties(batch)
        alone.append(time.perf_counter() - start)
    print(f"scoring {args.scored} images at 224 px on the CPU ({torch.get_num_threads()} threads):")
    print(f"  pixel properties off: best {best_off:.2f} s  (all: {', '.join(f'{t:.2f}' for t in off)})")
    print(f"  pixel properties on:  best {best_on:.2f} s  (all: {', '.join(f'{t:.2f}' for t in on)})")
    print(f"  added: {best_on - best_off:+.2f} s = {100 * (best_on - best_off) / best_off:+.1f}% of scoring")
    print(f"  pixel_properties alone on the same images: best {min(alone):.3f} s = {100 * min(alone) / best_off:.2f}%")


if __name__ == "__main__":
    main()
