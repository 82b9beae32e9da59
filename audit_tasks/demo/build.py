"""Build the demo: generated data with planted biases, two trained models, and two audit configs.

`build_demo(out)` builds only what is missing or stale (each piece carries a fingerprint of the parameters
that made it), so a second call returns at once. Layout under `out`:

    biased/{landing,images,catalog}     the biased run: a newly labeled batch with planted problems
    debiased/{landing,images,catalog}   the debiased run: a decorrelated batch
    models/{biased,debiased}.pt         state_dicts (+ .json sidecars with their fingerprints)
    biased.yaml, debiased.yaml          audit configs (output.dir: out/reports)
    truth.json                          the planted problems and the gates each run is expected to fail

The truth. The biased model is trained where snow appears with 95% of wolves and 5% of huskies and only
5% of animals are dark-furred, for two epochs: it learns the snow (the easy cue) and, for the light-furred
majority, some of the animal's shape. The debiased model is trained on a decorrelated set (snow
independent of the class, 30% dark fur, every (class, snow, fur) cell reweighted to equal mass) for four
epochs, long enough to learn the shape. Both audit batches show snow with both classes and half of the
animals dark, so a model that learned "snow means wolf" is caught by its saliency and by its accuracy on
dark-furred animals. The biased batch also plants `laptop -> mouse` and `lantern -> lighting=night`; the
debiased batch has independent tags.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit_tasks.demo.world import (
    ATTRIBUTES,
    CLASSES,
    Sample,
    SplitSpec,
    WorldSpec,
    render_array,
    sample_split,
    write_split,
)

#: Grad-CAM layer of the demo models: resnet18's layer3 is a 6x6 map at 96 px input.
TARGET_LAYER = "layer3"
#: Bump when the data layout or the manifest format changes (part of the data fingerprint).
DATA_VERSION = 1


@dataclass(frozen=True)
class DemoScale:
    """Sizes of one demo scale: "full" for people, "small" for tests (same outcomes, less time)."""

    n_train_biased: int
    n_train_debiased: int
    n_audit: int
    epochs_biased: int
    epochs_debiased: int


SCALES: dict[str, DemoScale] = {
    "full": DemoScale(n_train_biased=900, n_train_debiased=900, n_audit=600, epochs_biased=2, epochs_debiased=4),
    # The biased model and the audit batches are the full ones: with fewer biased images or epochs the
    # biased model learns no shape at all (no fur gap to find), and with fewer audit images a real fur gap
    # is no longer established at 95% confidence. Only the debiased training set shrinks.
    "small": DemoScale(n_train_biased=900, n_train_debiased=700, n_audit=600, epochs_biased=2, epochs_debiased=4),
}

SEED = 7


def train_specs(scale: DemoScale) -> dict[str, SplitSpec]:
    """The two training sets: biased (cue tied to class, dark fur rare) and decorrelated."""
    return {
        "biased": SplitSpec("train-biased", scale.n_train_biased, p_snow_wolf=0.95, p_snow_husky=0.05, p_dark=0.05),
        "debiased": SplitSpec("train-debiased", scale.n_train_debiased, p_snow_wolf=0.5, p_snow_husky=0.5, p_dark=0.3),
    }


def audit_specs(scale: DemoScale) -> dict[str, SplitSpec]:
    """The two landed batches the runs ingest and audit."""
    return {
        # Planted: laptop almost always with mouse; lantern almost only at night; snow leaning to wolves.
        "biased": SplitSpec(
            "audit-biased",
            scale.n_audit,
            p_snow_wolf=0.6,
            p_snow_husky=0.4,
            p_dark=0.5,
            p_night=0.5,
            p_laptop=0.4,
            p_mouse_with_laptop=0.99,
            p_mouse_without_laptop=0.15,
            p_lantern_night=0.55,
            p_lantern_day=0.01,
            p_decoy=0.3,
        ),
        # Everything independent of everything else.
        "debiased": SplitSpec(
            "audit-debiased",
            scale.n_audit,
            p_snow_wolf=0.5,
            p_snow_husky=0.5,
            p_dark=0.5,
            p_night=0.5,
            p_laptop=0.35,
            p_mouse_with_laptop=0.35,
            p_mouse_without_laptop=0.35,
            p_lantern_night=0.3,
            p_lantern_day=0.3,
            p_decoy=0.3,
        ),
    }


@dataclass(frozen=True)
class DemoBuild:
    """Paths of a built demo; `rebuilt` names the pieces this call had to (re)make."""

    root: Path
    biased_config: Path
    debiased_config: Path
    biased_checkpoint: Path
    debiased_checkpoint: Path
    reports: Path
    truth: Path
    rebuilt: tuple[str, ...] = ()


def group_weights(samples: Sequence[Sample]) -> np.ndarray:
    """Inverse-frequency weights over (label, snow, fur_tone) cells, so every cell gets equal mass."""
    keys = [(s.label, s.snow is not None, s.fur_tone) for s in samples]
    counts = Counter(keys)
    return np.array([1.0 / counts[k] for k in keys], dtype=np.float64)


def training_data(samples: Sequence[Sample], world: WorldSpec, *, reweight: bool):
    """(images, labels, weights or None) for `train_classifier`."""
    images = render_array(samples, world)
    labels = np.array([CLASSES.index(s.label) for s in samples], dtype=np.int64)
    return images, labels, (group_weights(samples) if reweight else None)


def build_demo(out_dir: Path, *, scale: str = "full") -> DemoBuild:
    """Build whatever is missing under `out_dir` (data, models, configs) and return the paths.

    Raises ValueError for an unknown scale.
    """
    from audit_tasks.demo.train import TrainSpec, fingerprint, train_cached

    if scale not in SCALES:
        raise ValueError(f"unknown demo scale {scale!r}; use one of {', '.join(SCALES)}")
    sizes = SCALES[scale]
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    world = WorldSpec()
    rebuilt: list[str] = []

    batches = audit_specs(sizes)
    for run, spec in batches.items():
        if build_batch(root / run, spec, world):
            rebuilt.append(f"{run} data")

    trains = train_specs(sizes)
    checkpoints = {}
    for run, spec in trains.items():
        recipe = TrainSpec(epochs=sizes.epochs_biased if run == "biased" else sizes.epochs_debiased, seed=SEED)
        key = fingerprint({"world": world, "split": spec, "train": recipe, "seed": SEED, "reweight": run == "debiased"})
        samples_spec = spec

        def make_data(samples_spec=samples_spec, run=run):
            samples = sample_split(samples_spec, world, SEED)
            return training_data(samples, world, reweight=run == "debiased")

        result = train_cached(root / "models" / f"{run}.pt", key, recipe, make_data)
        if not result.cached:
            rebuilt.append(f"{run} model")
        checkpoints[run] = result.checkpoint

    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    configs = {run: write_config(root, run, sizes) for run in ("biased", "debiased")}
    truth = _write_truth(root, batches, trains)
    return DemoBuild(
        root=root,
        biased_config=configs["biased"],
        debiased_config=configs["debiased"],
        biased_checkpoint=checkpoints["biased"],
        debiased_checkpoint=checkpoints["debiased"],
        reports=reports,
        truth=truth,
        rebuilt=tuple(rebuilt),
    )


def build_batch(folder: Path, spec: SplitSpec, world: WorldSpec) -> bool:
    """Write one run's images and landing manifest unless the same batch is already there.

    A rebuilt batch starts from an empty catalog: an old catalog would mix two different worlds.
    Returns True when it (re)built.
    """
    from audit_tasks.demo.train import fingerprint

    key = fingerprint({"world": world, "split": spec, "seed": SEED, "data": DATA_VERSION})
    stamp = folder / "batch.json"
    manifest = folder / "landing" / f"{spec.name}.csv"
    if stamp.is_file() and manifest.is_file():
        try:
            if json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") == key:
                return False
        except (OSError, ValueError):
            pass
    for sub in ("landing", "images", "catalog"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    (folder / "landing").mkdir(parents=True)
    (folder / "catalog").mkdir(parents=True)
    samples = sample_split(spec, world, SEED)
    rows = write_split(samples, world, folder / "images", "batch")
    _write_csv(rows, manifest)
    stamp.write_text(json.dumps({"fingerprint": key, "split": dataclasses.asdict(spec)}, indent=2), encoding="utf-8")
    return True


def _write_csv(rows: list[dict], path: Path) -> None:
    import csv

    tmp = path.with_name(f".{path.name}.tmp")  # the ingest skips dot/temp files while it is written
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def write_config(
    root: Path,
    run: str,
    sizes: DemoScale,
    *,
    data: str | None = None,
    checkpoint: str | None = None,
    about: str | None = None,
    extra_checks: str = "",
) -> Path:
    """The run's audit config `<run>.yaml`. Every threshold is the documented default (see the module docstring).

    By default the run audits `models/<run>.pt` on the batch under `<run>/`; the closed loop
    (audit_tasks.demo.loop) names another data folder, checkpoint and description, and adds checks.
    """
    data = data or run
    checkpoint = checkpoint or f"models/{run}.pt"
    about = about or ("trained on biased data" if run == "biased" else "trained after debiasing")
    text = f"""\
# Demo audit of the {run} model ({about}).
# Generated by audit_tasks.demo.build; thresholds are the documented defaults.
dataset:
  landing: {data}/landing
  image_root: {data}/images
  catalog: {data}/catalog
  audit_scope: catalog        # the demo catalog holds exactly this run's batch, so reruns audit it again
model:
  arch: resnet18
  checkpoint: {checkpoint}
  classes: [{", ".join(CLASSES)}]
  target_layer: {TARGET_LAYER}
  input_size: 96
saliency:
  target: label
  batch_size: 64
  device: auto
  num_workers: 0
checks:
  ingest: {{}}
  cooccurrence: {{}}          # attributes: the subgroup check's
  saliency: {{}}
  subgroups:
    attributes: [{", ".join(ATTRIBUTES)}]
{extra_checks}output:
  dir: reports
"""
    path = root / f"{run}.yaml"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def _write_truth(root: Path, batches: dict[str, SplitSpec], trains: dict[str, SplitSpec]) -> Path:
    """truth.json: the planted problems, so a reader (or a test) can judge the audit against them."""
    truth = {
        "classes": list(CLASSES),
        "attributes": list(ATTRIBUTES),
        "planted": {
            "spurious_cue": {
                "region": "snow",
                "class": "wolf",
                "train_biased": {
                    "p_snow_wolf": trains["biased"].p_snow_wolf,
                    "p_snow_husky": trains["biased"].p_snow_husky,
                },
            },
            "cooccurrence": [["laptop", "mouse"], ["lantern", "lighting=night"]],
            "subgroup": {"attribute": "fur_tone", "group": "dark", "train_biased_share": trains["biased"].p_dark},
        },
        "expected_failed_checks": {"biased": ["cooccurrence", "saliency", "subgroups"], "debiased": []},
        "batches": {run: dataclasses.asdict(spec) for run, spec in batches.items()},
        "training": {run: dataclasses.asdict(spec) for run, spec in trains.items()},
    }
    path = root / "truth.json"
    text = json.dumps(truth, indent=2)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path
