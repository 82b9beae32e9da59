"""Seeded CPU training of the demo's small torchvision classifiers, with checkpoints cached by fingerprint.

A checkpoint is a plain state_dict (loadable with ``torch.load(weights_only=True)``) beside a JSON sidecar
holding the fingerprint of everything that made it (world, split, training recipe, code version); a rerun
whose fingerprint matches skips training, so the demo's second run is quick.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

#: Bump when the generator or the training loop changes in a way that changes the weights.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TrainSpec:
    """The training recipe (part of the cache fingerprint)."""

    arch: str = "resnet18"
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainResult:
    """What a training run (or a cache hit) produced."""

    checkpoint: Path
    fingerprint: str
    cached: bool
    seconds: float
    train_accuracy: float | None


def fingerprint(parts: dict) -> str:
    """A short stable hash of the parameters that determine a checkpoint."""
    text = json.dumps({"recipe": RECIPE_VERSION, **parts}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _jsonable(value):
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def is_cached(checkpoint: Path, key: str) -> bool:
    """True when `checkpoint` exists and its sidecar records the fingerprint `key`."""
    sidecar = _sidecar(checkpoint)
    if not (checkpoint.is_file() and sidecar.is_file()):
        return False
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("fingerprint") == key
    except (OSError, ValueError):
        return False


def _sidecar(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(checkpoint.suffix + ".json")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Use `n` intra-op threads inside the block and restore the previous setting after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _reproducible(threads: int) -> Iterator[None]:
    """A fixed thread count and torch's deterministic algorithms inside the block, restored after.

    Seeded training then gives the same weights on every run of one machine. Across CPUs, other vector
    kernels still round differently, so the demo's planted effects keep a wide margin to every threshold
    (see audit_tasks.demo.build) instead of relying on exact weights.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with _torch_threads(threads):
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def build_model(arch: str) -> torch.nn.Module:
    """The untrained two-class torchvision model, built the way the audit's model loader builds it."""
    return torchvision.models.get_model(arch, weights=None, num_classes=2)


def to_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), the audit loader's preprocessing."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def epoch_order(rng: np.random.Generator, n: int, sample_weights: np.ndarray | None = None) -> np.ndarray:
    """The image indices one epoch visits: a permutation, or `n` weighted draws with replacement.

    Weighted draws are resampling, as torch's `WeightedRandomSampler(weights, n, replacement=True)` does
    (with this seeded NumPy generator instead of torch's, so an unweighted run is unchanged): an image of
    weight 3 is seen about three times per epoch, one of weight 0 never. Resampling rather than a weighted
    loss keeps every batch's gradient on the same scale and is what DB-VAE's debiasing does.
    """
    if sample_weights is None:
        return rng.permutation(n)
    total = float(np.sum(sample_weights))
    if len(sample_weights) != n or not np.all(np.isfinite(sample_weights)) or total <= 0:
        raise ValueError("sample_weights must be one finite weight per image, not all zero")
    return rng.choice(n, size=n, replace=True, p=sample_weights / total)


def train_classifier(
    images: np.ndarray, labels: np.ndarray, spec: TrainSpec, sample_weights: np.ndarray | None = None
) -> tuple[dict[str, torch.Tensor], float]:
    """Train from scratch on (N, H, W, 3) uint8 images; returns the state_dict and the last epoch's accuracy.

    `sample_weights` (optional, one per image) makes each epoch draw images with replacement in
    proportion to their weight (`epoch_order`): the reweighting half of the hand-built debiasing, and all
    of the closed loop's retraining on an audit's `sample_weights.parquet`.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if sample_weights is not None and (len(sample_weights) != len(labels) or np.any(sample_weights < 0)):
        raise ValueError("sample_weights must be one non-negative weight per image")
    with _reproducible(spec.threads):
        torch.manual_seed(spec.seed)
        rng = np.random.default_rng(spec.seed)
        model = build_model(spec.arch)
        x_all = to_tensor(images, spec.mean, spec.std)
        y_all = torch.as_tensor(labels, dtype=torch.long)
        n = len(y_all)
        steps_per_epoch = max(1, n // spec.batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=0.25
        )
        model.train()
        accuracy = 0.0
        for _ in range(spec.epochs):
            order = epoch_order(rng, n, sample_weights)
            correct = 0
            for step in range(steps_per_epoch):
                idx = torch.from_numpy(order[step * spec.batch_size : (step + 1) * spec.batch_size])
                x, y = x_all[idx], y_all[idx]
                flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                correct += int((logits.argmax(1) == y).sum())
            accuracy = correct / (steps_per_epoch * spec.batch_size)
        model.eval()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, accuracy


def predict(state: dict[str, torch.Tensor], images: np.ndarray, spec: TrainSpec, batch_size: int = 128) -> np.ndarray:
    """Predicted class indices for uint8 images with the given weights (eval mode, no gradients)."""
    with _torch_threads(spec.threads):
        model = build_model(spec.arch)
        model.load_state_dict(state)
        model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = to_tensor(images[start : start + batch_size], spec.mean, spec.std)
                out.append(model(x).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_cached(
    checkpoint: Path,
    key: str,
    spec: TrainSpec,
    make_data: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
) -> TrainResult:
    """Train and save to `checkpoint` unless a checkpoint with fingerprint `key` is already there.

    `make_data` is called only on a cache miss and returns (images, labels, sample_weights or None).
    The state_dict is written aside and renamed, then the sidecar, so a killed run never leaves a
    checkpoint that looks cached.
    """
    if is_cached(checkpoint, key):
        return TrainResult(checkpoint, key, True, 0.0, None)
    start = time.perf_counter()
    images, labels, weights = make_data()
    state, accuracy = train_classifier(images, labels, spec, weights)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    _sidecar(checkpoint).unlink(missing_ok=True)
    tmp = checkpoint.with_name(f".{checkpoint.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(checkpoint)
    seconds = time.perf_counter() - start
    meta = {
        "fingerprint": key,
        "arch": spec.arch,
        "train_accuracy": accuracy,
        "seconds": round(seconds, 1),
        "n_images": int(len(labels)),
    }
    side_tmp = checkpoint.with_name(f".{checkpoint.name}.json.tmp")
    side_tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    side_tmp.replace(_sidecar(checkpoint))
    return TrainResult(checkpoint, key, False, seconds, accuracy)
