"""A fake but realistic finished run folder (every table of the contract), for report and history tests.

`build_run` writes a small run with real PNG images on disk, random CAMs, flagged and unflagged pairs,
subgroups including a too-small one, quarantine rows and failing and passing gates. With `hostile=True`
labels, tags, attribute values, file names and reasons carry HTML/script payloads. `build_large_run`
writes a 100k-image run efficiently (numpy/pyarrow, a handful of shared image files) for page-weight tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from audit_tasks import schemas
from audit_tasks.config import RarityCheck, StrategiesCheck
from audit_tasks.gates import GATES_SCHEMA
from audit_tasks.rarity import check_rarity
from audit_tasks.schemas import STRATEGIES
from audit_tasks.strategies import check_strategies
from audit_tasks.tables import write_json, write_table

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(1)>'
CAM_H, CAM_W = 7, 7
ALL_TABLES = (
    "images",
    "rarity",
    "quarantine",
    "cooccurrence",
    "class_balance",
    "saliency_by_class",
    "subgroups",
    "confusion",
    "strategies",
    "gates",
    "summary",
)


def make_images(folder: Path, count: int = 6, *, size: tuple[int, int] = (64, 48), hostile: bool = False) -> list[Path]:
    """Small generated PNGs (gradients plus noise); with `hostile`, one file name carries an HTML payload."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    w, h = size
    for i in range(count):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 4 + i * 40) % 256, (y * 5 + i * 25) % 256, ((x + y) * 2 + i * 60) % 256], axis=-1)
        noise = rng.integers(0, 30, size=(h, w, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        name = f"{XSS_ATTR}.png" if hostile and i == count - 1 else f"img_{i:02d}.png"
        path = folder / name
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def _cam(rng: np.random.Generator, hot: tuple[int, int]) -> np.ndarray:
    cam = rng.random((CAM_H, CAM_W), dtype=np.float32) * 0.3
    cam[hot[0], hot[1]] += 2.0
    return cam.ravel()


def _gates(passed: bool, hostile: bool) -> pd.DataFrame:
    rows = [
        ("ingest", "all", "quarantine_fraction", 0.04, 0.1, True, "4% of rows rejected"),
        (
            "cooccurrence",
            "stethoscope\u2192gender=male",
            "p_b_given_a",
            0.95 if not passed else 0.6,
            0.9,
            passed,
            "stethoscope appears with gender=male in 95% of its images",
        ),
        ("class_balance", "all", "imbalance_ratio", 2.0, 10.0, True, ""),
        (
            "saliency",
            "nurse",
            "flagged_fraction",
            0.41 if not passed else 0.1,
            0.25,
            passed,
            "41% of nurse images look at the watermark",
        ),
        ("saliency", "doctor", "flagged_fraction", 0.05, 0.25, True, ""),
        ("subgroups", "skin_tone", "gap", 0.12 if not passed else 0.02, 0.05, passed, "dark vs light"),
        ("subgroups", "gender", "gap", 0.03, 0.05, True, ""),
    ]
    if hostile:
        rows.append(("subgroups", XSS_ATTR, "gap", 0.01, 0.05, True, XSS_SCRIPT))
    frame = pd.DataFrame(rows, columns=[f.name for f in GATES_SCHEMA][:7])
    frame["judged"] = True
    return frame


def build_run(
    root: Path,
    *,
    run_id: str = "night-2026-11-25",
    created_at: str = "2026-11-25T02:00:00+00:00",
    n_images: int = 80,
    hostile: bool = False,
    passed: bool = False,
    skip: Iterable[str] = (),
    seed: int = 0,
) -> Path:
    """Write a finished run folder `<root>/runs/<run_id>` (images under `<root>/images`); returns its path.

    `skip` names tables (see ALL_TABLES) to leave out, as when a check is not configured.
    """
    skip = set(skip)
    rng = np.random.default_rng(seed)
    run_dir = Path(root) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    image_files = make_images(Path(root) / "images", hostile=hostile)
    classes = ["doctor", "nurse", "surgeon"] + ([XSS_SCRIPT] if hostile else [])
    genders = ["female", "male"] + ([XSS_ATTR] if hostile else [])
    tones = ["dark", "light", "medium"]

    # images.parquet ---------------------------------------------------------------------------
    labels = [classes[i % len(classes)] for i in range(n_images)]
    predictions = [lab if rng.random() < 0.75 else classes[(classes.index(lab) + 1) % len(classes)] for lab in labels]
    shares = rng.dirichlet([2.0, 1.0, 1.5], size=n_images)
    paths = []
    for i in range(n_images):
        if i % 11 == 5:
            paths.append(str(Path(root) / "images" / f"missing_{i}.png"))  # deleted since the audit
        else:
            paths.append(str(image_files[i % len(image_files)]))
    regions = [
        json.dumps(
            [
                {"kind": "core", "name": "person", "box": [16, 8, 48, 44]},
                {"kind": "spurious", "name": XSS_ATTR if hostile else "watermark", "box": [0, 0, 14, 10]},
            ]
        )
        for _ in range(n_images)
    ]
    spurious_share = shares[:, 1]
    spurious_flag = spurious_share > 0.45
    images = pd.DataFrame(
        {
            "run_id": run_id,
            "image_id": [f"id{i:04d}" for i in range(n_images)],
            "image_uri": [Path(p).name if i % 11 != 5 else f"missing_{i}.png" for i, p in enumerate(paths)],
            "image_path": paths,
            "label": labels,
            "prediction": predictions,
            "confidence": rng.uniform(0.4, 1.0, n_images),
            "correct": [a == b for a, b in zip(labels, predictions, strict=True)],
            "target_class": labels,
            "width": 64,
            "height": 48,
            "gender": [genders[i % len(genders)] for i in range(n_images)],
            "skin_tone": [tones[i % len(tones)] for i in range(n_images)],
            "tags": [
                ["stethoscope", "scrubs"] + ([XSS_SCRIPT] if hostile and i % 4 == 0 else []) for i in range(n_images)
            ],
            "regions": regions,
            "core_share": shares[:, 0],
            "spurious_share": spurious_share,
            "outside_share": shares[:, 2],
            "core_enrichment": shares[:, 0] / 0.41,
            "spurious_enrichment": spurious_share / 0.045,
            "spurious_detail": [
                json.dumps({"watermark": {"share": float(s), "enrichment": float(s / 0.045)}}) for s in spurious_share
            ],
            "peak_x": rng.random(n_images),
            "peak_y": rng.random(n_images),
            "pointing_hit": rng.random(n_images) < 0.6,
            "has_regions": True,
            "spurious_flag": spurious_flag,
            "cam_height": CAM_H,
            "cam_width": CAM_W,
        }
    )
    cams = np.stack([_cam(rng, (int(rng.integers(0, CAM_H)), int(rng.integers(0, CAM_W)))) for _ in range(n_images)])
    table = pa.Table.from_pandas(images, preserve_index=False)
    table = table.append_column("cam", pa.FixedSizeListArray.from_arrays(pa.array(cams.ravel()), CAM_H * CAM_W))
    if "images" not in skip:
        write_table(table, run_dir / "images.parquet", name="images")

    # strategies.parquet (its gates are left out: the gate counts above stay the report tests' own) -------
    if "strategies" not in skip:
        clusters = check_strategies(images.assign(cam=list(cams.reshape(n_images, -1))), StrategiesCheck(min_images=5))
        write_table(clusters.clusters, run_dir / "strategies.parquet", name="strategies", schema=STRATEGIES)

    # saliency_by_class.parquet ------------------------------------------------------------------
    by_class = (
        images.groupby("target_class")
        .agg(
            images=("image_id", "size"),
            mean_core_share=("core_share", "mean"),
            mean_spurious_share=("spurious_share", "mean"),
            mean_outside_share=("outside_share", "mean"),
            mean_spurious_enrichment=("spurious_enrichment", "mean"),
            pointing_accuracy=("pointing_hit", "mean"),
            flagged_fraction=("spurious_flag", "mean"),
        )
        .reset_index()
        .rename(columns={"target_class": "class"})
    )
    by_class.insert(2, "images_with_regions", by_class["images"])
    by_class["flagged"] = by_class["flagged_fraction"] > 0.25
    if "saliency_by_class" not in skip:
        write_table(by_class, run_dir / "saliency_by_class.parquet", name="saliency_by_class")

    # cooccurrence.parquet + class_balance.parquet --------------------------------------------------
    tags = ["stethoscope", "scrubs", "mask", "clipboard", "watermark"] + ([XSS_SCRIPT] if hostile else [])
    partners = tags + ["gender=female", "gender=male", "skin_tone=dark"] + ([f"gender={XSS_ATTR}"] if hostile else [])
    co_rows = []
    for a in tags:
        for b in partners:
            if a == b:
                continue
            n_a, n_b = int(rng.integers(40, 200)), int(rng.integers(40, 200))
            n_ab = int(rng.integers(5, min(n_a, n_b)))
            p = n_ab / n_a
            planted = {("stethoscope", "gender=male"), ("watermark", "nurse"), ("mask", "skin_tone=dark")}
            flagged = (a, b) in planted or (hostile and a == XSS_SCRIPT and b == "gender=female")
            if flagged:
                n_ab, p = int(n_a * 0.95), 0.95
            co_rows.append(
                {
                    "tag_a": a,
                    "tag_b": b,
                    "n_a": n_a,
                    "n_b": n_b,
                    "n_ab": n_ab,
                    "n_a_only": n_a - n_ab,
                    "n_b_only": n_b - n_ab,
                    "p_b_given_a": p,
                    "ci_low": max(0.0, p - 0.06),
                    "ci_high": min(1.0, p + 0.04),
                    "lift": p / (n_b / 400),
                    "npmi": float(np.clip(rng.normal(0.9 if flagged else 0.05, 0.2), -1, 1)),
                    "flagged": flagged,
                    "message": (
                        f"'{a}' appears with '{b}' in {p:.0%} of its images: add images of {a} without {b}."
                        if flagged
                        else ""
                    ),
                    "suggested_additions": int(n_a * 0.3) if flagged else 0,
                }
            )
    if "cooccurrence" not in skip:
        write_table(pd.DataFrame(co_rows), run_dir / "cooccurrence.parquet", name="cooccurrence")
    balance = images.groupby("label").size().rename("n").reset_index()
    balance["share"] = balance["n"] / balance["n"].sum()
    if "class_balance" not in skip:
        write_table(balance, run_dir / "class_balance.parquet", name="class_balance")

    # subgroups.parquet + confusion.parquet ---------------------------------------------------------
    sg_rows = []
    groups = {
        "gender": genders,
        "skin_tone": tones,
        "gender&skin_tone": [f"{g}&{t}" for g in genders[:2] for t in tones],
    }
    for attribute, values in groups.items():
        for k, group in enumerate(values):
            n = 4 if group in ("medium", "male&medium") else int(rng.integers(40, 300))
            value = float(np.clip(0.9 - 0.04 * k - (0.08 if group == "dark" else 0.0), 0, 1))
            half = 1.4 / np.sqrt(n) * 0.5
            sg_rows.append(
                {
                    "attribute": attribute,
                    "group": group,
                    "n": n,
                    "metric": "accuracy",
                    "value": value,
                    "ci_low": max(0.0, value - half),
                    "ci_high": min(1.0, value + half),
                }
            )
    subgroups = pd.DataFrame(sg_rows)
    small = subgroups["n"] < 30
    best = subgroups["value"].where(~small).groupby(subgroups["attribute"]).transform("max")
    subgroups["gap"] = (best - subgroups["value"]).where(~small, np.nan)
    subgroups["flagged"] = (subgroups["gap"] > 0.05) & ~small
    subgroups["status"] = np.where(small, "too small to judge", np.where(subgroups["flagged"], "gap", "ok"))
    if "subgroups" not in skip:
        write_table(subgroups, run_dir / "subgroups.parquet", name="subgroups")
    overall = images.groupby(["label", "prediction"]).size().rename("n").reset_index()
    overall.insert(0, "group", "__all__")
    overall.insert(0, "attribute", "__overall__")
    per_gender = (
        images.groupby(["gender", "label", "prediction"])
        .size()
        .rename("n")
        .reset_index()
        .rename(columns={"gender": "group"})
    )
    per_gender.insert(0, "attribute", "gender")
    if "confusion" not in skip:
        write_table(
            pd.concat([overall, per_gender], ignore_index=True), run_dir / "confusion.parquet", name="confusion"
        )

    # quarantine.parquet ---------------------------------------------------------------------------
    q_rows = [
        {
            "image_uri": "missing/a.png",
            "image_id": "",
            "label": "doctor",
            "tags": "mask",
            "regions": "",
            "manifest": "batch_01.csv",
            "row_number": 3,
            "reason": "image file not found: missing/a.png",
            "stage": "ingest",
        },
        {
            "image_uri": "b.png",
            "image_id": "",
            "label": "pilot",
            "tags": "",
            "regions": "",
            "manifest": "batch_01.csv",
            "row_number": 9,
            "reason": "label 'pilot' is not one of the model's classes",
            "stage": "ingest",
        },
        {
            "image_uri": "c.png",
            "image_id": "c",
            "label": "nurse",
            "tags": "",
            "regions": "[[",
            "manifest": "batch_02.jsonl",
            "row_number": 1,
            "reason": "regions is not valid JSON",
            "stage": "scoring",
        },
    ]
    if hostile:
        q_rows.append(
            {
                "image_uri": XSS_ATTR,
                "image_id": XSS_SCRIPT,
                "label": XSS_SCRIPT,
                "tags": XSS_SCRIPT,
                "regions": "",
                "manifest": f"{XSS_ATTR}.csv",
                "row_number": 4,
                "reason": f"cannot decode image {XSS_SCRIPT}",
                "stage": "ingest",
            }
        )
    if "quarantine" not in skip:
        write_table(pd.DataFrame(q_rows), run_dir / "quarantine.parquet", name="quarantine")

    # rarity.parquet + sample_weights.parquet (the check's own functions on made-up densities) ----------
    density = rng.random(n_images)
    rarity = check_rarity(images, density, check=RarityCheck(min_images=2), describe=["gender", "tags"])
    if "rarity" not in skip:
        write_table(rarity.quantiles, run_dir / "rarity.parquet", name="rarity", schema=schemas.RARITY)
        weights = pd.DataFrame(
            {
                "image_id": images["image_id"],
                "label": images["label"],
                "density": density,
                "rarity_weight": 1 / (density + 0.001),
                "pair_weight": 1.0,
            }
        ).assign(weight=lambda f: f["rarity_weight"] / f["rarity_weight"].mean())
        write_table(weights, run_dir / "sample_weights.parquet", name="sample_weights", schema=schemas.SAMPLE_WEIGHTS)

    # gates.parquet + summary.json -------------------------------------------------------------------
    gates = _gates(passed, hostile)
    if "gates" not in skip:
        write_table(gates, run_dir / "gates.parquet", name="gates", schema=GATES_SCHEMA)
    failed = [f"{r.check}/{r.subject}/{r.metric}" for r in gates.itertuples() if not r.passed]
    summary = {
        "run_id": run_id,
        "passed": not failed,
        "failed_gates": failed,
        "counts": {"ingested": n_images + len(q_rows), "quarantined": len(q_rows), "audited": n_images},
        "checks": {
            "ingest": "skipped" if "quarantine" in skip else "ran",
            "cooccurrence": "skipped" if "cooccurrence" in skip else "ran",
            "saliency": "skipped" if "saliency_by_class" in skip else "ran",
            "subgroups": "skipped" if "subgroups" in skip else "ran",
            "strategies": "skipped" if "strategies" in skip else "ran",
            "rarity": "skipped" if "rarity" in skip else "ran",
        },
        "created_at": created_at,
        "config": "/etc/audit/config.yaml",
    }
    if "summary" not in skip:
        write_json(summary, run_dir / "summary.json")
    return run_dir


def build_large_run(
    root: Path, *, n_rows: int = 100_000, n_classes: int = 10, n_quarantine: int = 5_000, run_id: str = "large-run"
) -> Path:
    """A 100k-image run written straight from numpy/pyarrow; the images share a handful of files."""
    rng = np.random.default_rng(1)
    run_dir = Path(root) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    files = np.array([str(p) for p in make_images(Path(root) / "images", count=5)], dtype=object)
    classes = np.array([f"class_{k:02d}" for k in range(n_classes)], dtype=object)
    label_idx = rng.integers(0, n_classes, n_rows)
    wrong = rng.random(n_rows) < 0.2
    pred_idx = np.where(wrong, rng.integers(0, n_classes, n_rows), label_idx)
    shares = rng.dirichlet([2.0, 1.0, 1.5], size=n_rows)
    ids = np.char.add("img", np.arange(n_rows).astype(str)).astype(object)
    region = json.dumps(
        [
            {"kind": "core", "name": "object", "box": [16, 8, 48, 44]},
            {"kind": "spurious", "name": "tag", "box": [0, 0, 14, 10]},
        ]
    )
    cams = rng.random(n_rows * CAM_H * CAM_W, dtype=np.float32)
    columns = {
        "run_id": pa.array(np.full(n_rows, run_id, dtype=object)),
        "image_id": pa.array(ids),
        "image_uri": pa.array(np.char.add(ids.astype(str), ".png").astype(object)),
        "image_path": pa.array(files[np.arange(n_rows) % len(files)]),
        "label": pa.array(classes[label_idx]),
        "prediction": pa.array(classes[pred_idx]),
        "confidence": pa.array(rng.uniform(0.3, 1.0, n_rows)),
        "correct": pa.array(label_idx == pred_idx),
        "target_class": pa.array(classes[label_idx]),
        "width": pa.array(np.full(n_rows, 64, dtype=np.int32)),
        "height": pa.array(np.full(n_rows, 48, dtype=np.int32)),
        "gender": pa.array(np.array(["female", "male"], dtype=object)[rng.integers(0, 2, n_rows)]),
        "tags": pa.array([["tag_a", "tag_b"]] * 1, type=pa.list_(pa.string())).take(np.zeros(n_rows, dtype=np.int64)),
        "regions": pa.array(np.full(n_rows, region, dtype=object)),
        "core_share": pa.array(shares[:, 0]),
        "spurious_share": pa.array(shares[:, 1]),
        "outside_share": pa.array(shares[:, 2]),
        "spurious_enrichment": pa.array(shares[:, 1] / 0.045),
        "pointing_hit": pa.array(rng.random(n_rows) < 0.5),
        "has_regions": pa.array(np.ones(n_rows, dtype=bool)),
        "spurious_flag": pa.array(shares[:, 1] > 0.5),
        "cam": pa.FixedSizeListArray.from_arrays(pa.array(cams), CAM_H * CAM_W),
        "cam_height": pa.array(np.full(n_rows, CAM_H, dtype=np.int32)),
        "cam_width": pa.array(np.full(n_rows, CAM_W, dtype=np.int32)),
    }
    write_table(pa.table(columns), run_dir / "images.parquet", name="images")
    frame = pd.DataFrame(
        {
            "class": classes[label_idx],
            "label": classes[label_idx],
            "prediction": classes[pred_idx],
            "spur": shares[:, 1],
            "flag": shares[:, 1] > 0.5,
        }
    )
    sal = (
        frame.groupby("class")
        .agg(images=("spur", "size"), mean_spurious_share=("spur", "mean"), flagged_fraction=("flag", "mean"))
        .reset_index()
    )
    sal["images_with_regions"] = sal["images"]
    sal["mean_core_share"], sal["mean_outside_share"], sal["mean_spurious_enrichment"] = 0.4, 0.3, 5.0
    sal["pointing_accuracy"], sal["flagged"] = 0.5, sal["flagged_fraction"] > 0.25
    write_table(sal, run_dir / "saliency_by_class.parquet", name="saliency_by_class")
    cm = frame.groupby(["label", "prediction"]).size().rename("n").reset_index()
    cm.insert(0, "group", "__all__")
    cm.insert(0, "attribute", "__overall__")
    write_table(cm, run_dir / "confusion.parquet", name="confusion")
    q = pd.DataFrame(
        {
            "image_uri": [f"bad_{i}.png" for i in range(n_quarantine)],
            "manifest": "big.csv",
            "row_number": np.arange(1, n_quarantine + 1),
            "reason": "image file not found",
            "stage": "ingest",
        }
    )
    write_table(q, run_dir / "quarantine.parquet", name="quarantine")
    write_table(_gates(False, False), run_dir / "gates.parquet", name="gates", schema=GATES_SCHEMA)
    write_json(
        {
            "run_id": run_id,
            "passed": False,
            "failed_gates": ["saliency/nurse/flagged_fraction"],
            "counts": {"ingested": n_rows + n_quarantine, "quarantined": n_quarantine, "audited": n_rows},
            "checks": {"ingest": "ran", "cooccurrence": "skipped", "saliency": "ran", "subgroups": "ran"},
            "created_at": "2026-11-25T03:00:00+00:00",
        },
        run_dir / "summary.json",
    )
    return run_dir
