"""Grad-CAM throughput: this engine against plain inference (the floor), captum and pytorch-grad-cam.

Everything runs in ONE process on the same model object, the same input batch, the same precision and
the same memory format. Rounds are interleaved (each round times every method once) and the median is
reported, so load from other processes hits all methods alike. Before timing, the maps of every method
are checked against the engine's (after pytorch-grad-cam's ReLU / min-max / resize pipeline).

Usage:
  .venv/bin/python bench/gradcam.py                      # CPU: resnet18, batch 32, fp32, 224x224
  .venv/bin/python bench/gradcam.py --device cuda        # GPU: resnet50, batch 128, bf16, plus end to end
  .venv/bin/python bench/gradcam.py --e2e-images 256     # also time the end-to-end JPEG -> tables path
  .venv/bin/python bench/gradcam.py --sources            # one model per source: engine vs plain inference,
                                                         # and the CAM path each takes (random weights, offline)

Without a CUDA device, `--device cuda` prints that the GPU benchmark was skipped and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit_tasks.saliency import GradCAM, normalize_per_image, upsample

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.sources:
        return _sources(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device: no CUDA device available -- GPU benchmark skipped (run with --device cpu for the CPU one)")
        return 0
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    gpu = device.type == "cuda"
    arch = args.arch or ("resnet50" if gpu else "resnet18")
    batch = args.batch or (128 if gpu else 32)
    precision = args.precision or ("bf16" if gpu else "fp32")
    layer = args.layer
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    x = torch.randn(batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))
    print(_header(device, arch, batch, precision, args))

    methods = _methods(model, layer, x, targets, precision, args)
    _check_agreement(methods, x, targets, args.size)
    results = _time(methods, device, args.rounds, args.warmup, batch)
    _report(results, batch, device)
    if args.e2e_images or (gpu and args.e2e_images is None):
        _end_to_end(device, arch, precision, batch, args.e2e_images or 4096, args.size, args.workers)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--arch", default=None, help="torchvision builder (default resnet18 on CPU, resnet50 on GPU)")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 128 on GPU")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--precision", choices=sorted(DTYPES), default=None, help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model and input in channels_last for every method (default on)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the engine with torch.compile (compiles once, before timing)",
    )
    p.add_argument("--skip", default="", help="comma-separated methods to skip")
    p.add_argument("--e2e-images", type=int, default=None, help="JPEGs for the end-to-end run (GPU default 4096)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument(
        "--sources",
        action="store_true",
        help="time one model per source (torchvision, timm ConvNeXt/ViT/DeiT/Swin, Hugging Face ViT/ConvNeXt, "
        "python builder) at 224 px: engine against plain inference, and the path each takes",
    )
    return p.parse_args(argv)


def _header(device: torch.device, arch: str, batch: int, precision: str, args: argparse.Namespace) -> str:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    return (
        f"device: {name}\nmodel: {arch} (random weights), layer {args.layer}, input {args.size}x{args.size}, "
        f"batch {batch}, precision {precision}, channels_last {args.channels_last}, torch {torch.__version__}"
    )


def _autocast(device: torch.device, precision: str) -> Any:
    if DTYPES[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def _methods(model, layer, x, targets, precision, args) -> dict[str, Callable[[], Any]]:
    """name -> a call returning maps (N, h, w) as a tensor (or None for the floor)."""
    device = x.device
    skip = set(filter(None, args.skip.split(",")))
    methods: dict[str, Callable[[], Any]] = {}

    def floor():
        with torch.no_grad(), _autocast(device, precision):
            model(x)

    methods["plain inference (floor)"] = floor
    cl = args.channels_last
    engine = GradCAM(model, layer, precision=precision, channels_last=cl, fuse_batchnorm=True)
    methods["engine (closed form, folded BN)"] = lambda: engine.attribute(x, targets).cams
    if args.compile:
        compiled = GradCAM(model, layer, precision=precision, channels_last=cl, fuse_batchnorm=True, compile=True)
        methods["engine (closed form, folded BN, torch.compile)"] = lambda: compiled.attribute(x, targets).cams
    plain = GradCAM(model, layer, precision=precision, channels_last=False)
    methods["engine (closed form, model as given)"] = lambda: plain.attribute(x, targets).cams
    generic = GradCAM(model, layer, precision=precision, channels_last=cl, fuse_batchnorm=True, closed_form=False)
    methods["engine (backward path, folded BN)"] = lambda: generic.attribute(x, targets).cams
    if "captum" not in skip:
        from captum.attr import LayerGradCam

        captum = LayerGradCam(model, model.get_submodule(layer))

        def run_captum():
            with _autocast(device, precision):
                return captum.attribute(x, target=targets.to(device), relu_attributions=True)[:, 0].detach()

        methods["captum LayerGradCam"] = run_captum
    if "pgc" not in skip:
        from pytorch_grad_cam import GradCAM as PgcGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc_targets = [ClassifierOutputTarget(int(c)) for c in targets]
        pgc_precision = precision if precision == "fp32" else "fp32"  # it converts activations to NumPy

        def run_pgc():
            with (
                PgcGradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam,
                _autocast(device, pgc_precision),
            ):
                out = cam(input_tensor=x, targets=pgc_targets)
            model.zero_grad(set_to_none=True)
            return torch.from_numpy(out)

        label = "pytorch-grad-cam GradCAM" + ("" if pgc_precision == precision else " (fp32: it cannot run bf16/fp16)")
        methods[label] = run_pgc
    return methods


def _check_agreement(methods: dict[str, Callable[[], Any]], x, targets, size: int) -> None:
    reference = None
    for name, fn in methods.items():
        if name.startswith("plain"):
            continue
        maps = fn() if "compile" not in name else (fn(), fn())[1]  # the second call runs compiled
        maps = maps.float().cpu()
        if reference is None:
            reference = maps
        if maps.shape[-2:] != reference.shape[-2:]:  # pytorch-grad-cam: normalised and resized
            ours = normalize_per_image(upsample(normalize_per_image(reference), size))
            diff = float((ours - maps).abs().max())
            print(f"  agreement {name}: max |diff| {diff:.2e} after ReLU/min-max/bilinear resize")
        else:
            diff = float((maps - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
            print(f"  agreement {name}: max relative |diff| {diff:.2e}")


def _time(methods, device, rounds: int, warmup: int, batch: int) -> dict[str, dict[str, float]]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    memory = {}
    for name, fn in methods.items():
        for _ in range(max(warmup, 2 if "compile" in name else 0)):  # compile + verification batches
            fn()
        memory[name] = _peak_memory(fn, device, sync)
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "ips": batch / statistics.median(wall[name]),
            "ips_cpu": batch / statistics.median(cpu[name]),
            "peak_mb": memory[name],
        }
        for name in methods
    }


def _peak_memory(fn, device, sync) -> float:
    """Peak memory of one call in MiB above what was in use before it.

    CUDA: the caching allocator's peak. CPU: glibc's in-use heap (mallinfo2: arena + mmapped blocks in use),
    sampled every 0.5 ms from a thread while the call runs (torch ops release the GIL).
    """
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    probe = _heap_in_use()
    if probe is None:
        return float("nan")
    base = probe()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], probe())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(0.0, (peak[0] - base) / 2**20)


def _heap_in_use() -> Callable[[], int] | None:
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


def _report(results: dict[str, dict[str, float]], batch: int, device: torch.device) -> None:
    """Throughput per method; on CPU also per CPU-second (robust to other processes sharing the cores)."""
    keys = [("ips", "images/s")] + ([("ips_cpu", "img/CPU-s")] if device.type == "cpu" else [])
    floor_name, engine_name = "plain inference (floor)", "engine (closed form, folded BN)"
    head = f"{'method':<58}" + "".join(f"{label:>11}{'x floor':>9}{'engine x':>10}" for _, label in keys)
    print("\n" + head + f"{'peak MiB':>10}")
    for name, r in results.items():
        cells = "".join(
            f"{r[k]:>11.1f}{r[k] / results[floor_name][k]:>9.2f}{results[engine_name][k] / r[k]:>10.2f}"
            for k, _ in keys
        )
        print(f"{name:<58}{cells}{r['peak_mb']:>10.0f}")
    print(
        "(x floor = throughput / plain inference's; engine x = the engine's throughput / the method's;\n"
        " img/CPU-s = images per second of this process's CPU time; peak MiB = memory in use at the call's\n"
        " peak above its start: CUDA allocator, or on CPU glibc's in-use heap)"
    )


def _end_to_end(device, arch, precision, batch, n_images, size, workers) -> None:
    """JPEG files on disk -> decode, preprocess, CAM, region metrics, images table: images/s."""
    import pandas as pd
    from PIL import Image

    from audit_tasks.config import ModelConfig, SaliencyConfig
    from audit_tasks.scoring import score_images

    classes = tuple(f"class{i}" for i in range(10))
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=len(classes)).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="gradcam-e2e-") as tmp:
        records = []
        for i in range(min(n_images, 64)):  # 64 distinct files, each listed several times
            w, h = 500, 375
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
            records.append((str(path), w, h))
        rows = pd.DataFrame(
            [
                {
                    "image_id": f"img{i}",
                    "image_uri": f"{i}.jpg",
                    "image_path": records[i % len(records)][0],
                    "label": classes[i % len(classes)],
                    "width": 500,
                    "height": 375,
                    "tags": "a|b",
                    "regions": '[{"kind":"core","name":"o","box":[50,50,300,300]},'
                    '{"kind":"spurious","name":"p","box":[400,300,480,360]}]',
                }
                for i in range(n_images)
            ]
        )
        config = ModelConfig(
            arch=arch, checkpoint=Path("unused"), classes=classes, target_layer="layer4", input_size=size
        )
        saliency = SaliencyConfig(batch_size=batch, device=str(device), precision=precision, num_workers=workers)
        score_images(
            model, rows.iloc[: batch * 2], model_config=config, saliency_config=saliency, attributes=[], run_id="warmup"
        )
        start = time.perf_counter()
        result = score_images(model, rows, model_config=config, saliency_config=saliency, attributes=[], run_id="bench")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    print(
        f"\nend to end (JPEG 500x375 on disk -> decode, preprocess, CAM, region metrics, images table), "
        f"{n_images} images, {workers} decode workers: {len(result.images) / seconds:.1f} images/s "
        f"({len(result.rejected)} rejected)"
    )


def _source_models() -> dict[str, Callable[[], torch.nn.Module]]:
    """name -> builder of a model as the audit sees it (logits out), random weights, nothing downloaded."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from audit_tasks.model_sources import LogitsAdapter
    from fixtures_models import build

    def timm_model(name: str, **kwargs: Any) -> torch.nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    def hf_vit() -> torch.nn.Module:  # ViT-Tiny's shape (google/vit-base's layout): 12 x 192, patch 16
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, num_labels=10
        )
        return LogitsAdapter(ViTForImageClassification(config))

    def hf_convnext() -> torch.nn.Module:  # ConvNeXt-Atto's shape
        from transformers import ConvNextConfig, ConvNextForImageClassification

        config = ConvNextConfig(hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], num_labels=10)
        return LogitsAdapter(ConvNextForImageClassification(config))

    return {
        "torchvision resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=10),
        "timm convnext_atto": lambda: timm_model("convnext_atto"),
        "timm vit_tiny_patch16_224": lambda: timm_model("vit_tiny_patch16_224"),
        "timm deit_tiny_distilled_patch16_224": lambda: timm_model("deit_tiny_distilled_patch16_224"),
        "timm swin (tiny layout, 2 stages)": lambda: timm_model(
            "swin_tiny_patch4_window7_224", depths=(2, 2), num_heads=(3, 6)
        ),
        "huggingface ViT (tiny config)": hf_vit,
        "huggingface ConvNeXt (atto config)": hf_convnext,
        "python builder (tests/fixtures_models.py:build)": lambda: LogitsAdapter(build(10)),
    }


def _sources(args: argparse.Namespace) -> int:
    """Per source: the auto target layer, its layout, the path the engine takes, and images/s vs plain."""
    from audit_tasks.cam_target import find_target

    device = torch.device("cuda" if args.device == "cuda" and torch.cuda.is_available() else "cpu")
    batch, size = args.batch or 16, args.size
    import timm
    import transformers

    print(
        f"device: {_header(device, '', batch, 'fp32', args).splitlines()[0].removeprefix('device: ')}\n"
        f"models: one per source (random weights), target_layer auto, input {size}x{size}, batch {batch}, fp32, "
        f"engine as scoring runs it (private copy, channels_last, BN folded), plain = the model as given; "
        f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}"
    )
    floor_name, engine_name = "plain inference (floor)", "engine"
    rows = []
    for name, make in _source_models().items():
        torch.manual_seed(0)
        model = make().eval().to(device)
        target = find_target(model, "auto", (size, size))
        engine = GradCAM(model, target.path, layout=target.layout, channels_last=True, fuse_batchnorm=True)
        x = torch.randn(batch, 3, size, size, device=device)
        targets = torch.arange(batch) % 10

        def floor(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        methods = {floor_name: floor, engine_name: lambda e=engine, x=x, t=targets: e.attribute(x, t).cams}
        results = _time(methods, device, args.rounds, args.warmup, batch)
        rows.append((name, target, engine.path, results[floor_name], results[engine_name]))
        print(f"  {name}: {target.path} ({target.layout.describe()}), {engine.path}", flush=True)
    print(
        f"\n{'model':<50}{'target layer (auto)':<38}{'path':<40}{'plain img/s':>12}{'engine img/s':>13}{'x plain':>9}"
        f"{'x plain CPU':>12}"
    )
    for name, target, path, plain, ours in rows:
        print(
            f"{name:<50}{target.path:<38}{path:<40}{plain['ips']:>12.1f}{ours['ips']:>13.1f}"
            f"{ours['ips'] / plain['ips']:>9.2f}{ours['ips_cpu'] / plain['ips_cpu']:>12.2f}"
        )
    print(
        "(x plain = the engine's throughput / plain no-grad inference's on the same model and batch;\n"
        " x plain CPU = the same per CPU-second of this process)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
