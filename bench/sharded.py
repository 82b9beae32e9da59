"""Benchmark: the saliency stage sharded over parallel worker processes vs one process, same machine.

Generates a world (PNG images with a core object and a spurious patch, a CSV manifest, a random
resnet18 saved with torch.save, a config), ingests it once, then times on the same audit rows:

* single: `stage_saliency(config, run_id)`, one process using every CPU thread (or the GPU);
* sharded: `stage_saliency(..., shard=i, num_shards=K)` in K processes started at once (what K
  mapped `score_shard` tasks on K workers do; each process gets cores/K torch threads on CPU),
  then `stage_merge_shards` — wall time from the first start to the merged images.parquet.

Throughput counts audited images per second of wall time, config and model load included (every
mapped task loads them too); the shard processes' interpreter start and imports are reported apart. Both
runs' images tables are compared before anything is printed. A section "## Sharded" is written into
bench/RESULTS.md (other sections are kept).

Usage: ``python bench/sharded.py [--images 96] [--shards 2] [--input-size 112] [--batch-size 32] [--no-write]``
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLASSES = ("doctor", "nurse")
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Sharded"


def build_world(root: Path, images: int, input_size: int, batch_size: int, device: str) -> Path:
    """Images + manifest + random resnet18 + audit.yaml under `root`; returns the config path."""
    import numpy as np
    import torch
    import torchvision
    import yaml
    from PIL import Image

    for name in ("landing", "images", "catalog"):
        (root / name).mkdir(parents=True, exist_ok=True)
    size = input_size
    rows = []
    for i in range(images):
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        lo, hi = size // 4, 3 * size // 4
        pixels[lo:hi, lo:hi, i % 3] = 220
        pixels[2 : size // 8, size - size // 5 : size - 2] = 255
        uri = f"img_{i:05d}.png"
        Image.fromarray(pixels).save(root / "images" / uri)
        rows.append(
            {
                "image_uri": uri,
                "label": CLASSES[i % 2],
                "tags": "person|coat" + ("|stethoscope" if i % 2 == 0 else ""),
                "regions": json.dumps(
                    [
                        {"kind": "core", "name": "object", "box": [lo, lo, hi, hi]},
                        {"kind": "spurious", "name": "patch", "box": [size - size // 5, 2, size - 2, size // 8]},
                    ]
                ),
                "gender": "female" if i % 3 else "male",
            }
        )
    with open(root / "landing" / "batch.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).state_dict(), root / "model.pt")
    config = {
        "dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog"},
        "model": {
            "arch": "resnet18",
            "checkpoint": "model.pt",
            "classes": list(CLASSES),
            "target_layer": "layer4",
            "input_size": input_size,
        },
        "saliency": {"batch_size": batch_size, "device": device, "num_workers": 0},
        "checks": {"saliency": {"max_flagged_fraction": 1.0, "min_images": 1}},
        "output": {"dir": "reports"},
    }
    path = root / "audit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _score_shard(config_path: str, run_id: str, shard: int, num_shards: int, threads: int) -> float:
    """One mapped task's work in its own process; returns its wall seconds."""
    import torch
    import torchvision  # noqa: F401 - imported before the clock, as in the single-process run

    from audit_tasks import modelio, pipeline, scoring  # noqa: F401 - likewise imported before the clock
    from audit_tasks.config import load_config

    torch.set_num_threads(threads)
    start = time.perf_counter()
    pipeline.stage_saliency(load_config(config_path), run_id, shard=shard, num_shards=num_shards)
    return time.perf_counter() - start


def run_single(config_path: Path, run_id: str) -> float:
    from audit_tasks import pipeline
    from audit_tasks.config import load_config

    start = time.perf_counter()
    pipeline.stage_saliency(load_config(config_path), run_id)
    return time.perf_counter() - start


def run_sharded(config_path: Path, run_id: str, shards: int, threads: int) -> tuple[float, list[float], float]:
    """Wall seconds of the whole sharded stage, each shard's own seconds, and the merge's seconds."""
    from audit_tasks import pipeline
    from audit_tasks.config import load_config

    context = mp.get_context("spawn")  # a fresh interpreter per shard, like a task on a worker
    start = time.perf_counter()
    with context.Pool(shards) as pool:
        per_shard = pool.starmap(_score_shard, [(str(config_path), run_id, i, shards, threads) for i in range(shards)])
    merge_start = time.perf_counter()
    pipeline.stage_merge_shards(load_config(config_path), run_id, shards)
    end = time.perf_counter()
    return end - start, per_shard, end - merge_start


def compare(config_path: Path, single_id: str, sharded_id: str) -> int:
    """The two images tables must match (ids, predictions, shares); returns the row count."""
    import numpy as np

    from audit_tasks import pipeline
    from audit_tasks.config import load_config
    from audit_tasks.tables import read_table

    config = load_config(config_path)
    a = read_table(pipeline.run_dir(config, single_id) / "images.parquet")
    b = read_table(pipeline.run_dir(config, sharded_id) / "images.parquet")
    if list(a["image_id"]) != list(b["image_id"]) or list(a["prediction"]) != list(b["prediction"]):
        raise SystemExit("sharded and single-process images tables differ (ids or predictions)")
    for column in ("confidence", "core_share", "spurious_share"):
        if not np.allclose(a[column].to_numpy(float), b[column].to_numpy(float), rtol=1e-4, atol=1e-6):
            raise SystemExit(f"sharded and single-process images tables differ in {column}")
    return len(a)


def write_results(text: str) -> None:
    """Replace (or append) the "## Sharded" section of bench/RESULTS.md, keeping every other section."""
    existing = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    lines = existing.splitlines()
    out, skipping = [], False
    for line in lines:
        if line.strip() == SECTION:
            skipping = True
            continue
        if skipping and line.startswith("## "):
            skipping = False
        if not skipping:
            out.append(line)
    body = "\n".join(out).rstrip() + "\n\n" + text.rstrip() + "\n"
    RESULTS.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)

    import torch

    from audit_tasks import pipeline
    from audit_tasks.config import load_config

    cores = os.cpu_count() or 1
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    threads = max(1, cores // args.shards)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-sharded-") as tmp:
        root = Path(tmp)
        config_path = build_world(root, args.images, args.input_size, args.batch_size, args.device)
        config = load_config(config_path)
        # Ingest once; the sharded run gets a copy of the same audit rows (ingest consumes the landing area).
        pipeline.stage_ingest(config, "single")
        shutil.copytree(pipeline.run_dir(config, "single") / "_stages", pipeline.run_dir(config, "sharded") / "_stages")
        run_single(config_path, "single")  # warm-up: imports, first-call allocations
        single_s = min(run_single(config_path, "single") for _ in range(args.repeats))
        sharded_runs = [run_sharded(config_path, "sharded", args.shards, threads) for _ in range(args.repeats)]
        sharded_s, per_shard, merge_s = min(sharded_runs, key=lambda r: r[0])
        n = compare(config_path, "single", "sharded")

    single_ips, sharded_ips = n / single_s, n / sharded_s
    startup_s = sharded_s - merge_s - max(per_shard)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
    report = (
        f"{SECTION}\n\n"
        f"`python bench/sharded.py --images {args.images} --shards {args.shards} --input-size {args.input_size} "
        f"--batch-size {args.batch_size} --repeats {args.repeats}` (best of {args.repeats}) — "
        f"saliency stage (resnet18, random weights, Grad-CAM on layer4), "
        f"{n} generated {args.input_size}px images; wall time incl. model load; tables compared equal.\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {cores} CPU cores (os.cpu_count), device {device}"
        f" (GPU: {gpu}), torch {torch.__version__}.\n\n"
        f"| run | processes | torch threads each | wall s | images/s |\n"
        f"| --- | --- | --- | --- | --- |\n"
        f"| single process | 1 | {torch.get_num_threads()} | {single_s:.2f} | {single_ips:.1f} |\n"
        f"| sharded + merge | {args.shards} | {threads} | {sharded_s:.2f} | {sharded_ips:.1f} |\n"
        f"| sharded, slowest shard only | {args.shards} | {threads} | {max(per_shard):.2f} | "
        f"{n / max(per_shard):.1f} |\n\n"
        f"Per-shard wall s: {', '.join(f'{s:.2f}' for s in per_shard)}; merge {merge_s:.2f} s; starting the shard "
        f"processes (fresh interpreters importing torch/pandas, as mapped tasks do) {startup_s:.2f} s. "
        f"Speed-up {single_s / sharded_s:.2f}x end to end. On one machine the shards share the same cores (or GPU), "
        f"so sharding cannot beat one process there; it pays off when the mapped `score_shard` tasks land on "
        f"separate GPU workers (the `gpu` Celery queue), where the stage then takes about one shard's time on "
        f"its own device. Load average at the start: {load_at_start:.1f} (the machine may be shared).\n"
    )
    print(report)
    if not args.no_write:
        write_results(report)
        print(f"wrote the '{SECTION}' section of {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
