"""Loading the classifier under audit without executing code from the checkpoint.

A state_dict is loaded with `torch.load(weights_only=True)` (or from `.safetensors`) into a model built
from `model.source` (torchvision, timm, a `python` builder; see audit_tasks.model_sources), so a
checkpoint that smuggles pickled code is refused. A Hugging Face model loads from its local
save_pretrained folder. TorchScript and torch.export archives carry their own graph code and are therefore
opt-in (`model.allow_scripted: true`). Models that return a mapping are wrapped to return their logits.

`preprocess_plan` and `cam_target` say how the loaded model is fed and which layer Grad-CAM hooks; the
scoring stage asks them, so the model object stays a plain `nn.Module`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit_tasks.cam_target import CamTarget, find_target
from audit_tasks.config import ModelConfig
from audit_tasks.errors import ModelError
from audit_tasks.model_sources import LogitsAdapter, load_huggingface, needs_adapter, read_safetensors, unwrap
from audit_tasks.model_sources import build_model as build_source_model
from audit_tasks.preprocess import PreprocessPlan, huggingface_plan, squash_plan, timm_plan
from audit_tasks.storage import is_remote, public_uri, storage_path

_SCRIPTED_HINT = "set model.allow_scripted: true in the config if you trust this file"
HF_REMOTE = "model.source 'huggingface' needs a local save_pretrained folder; got {uri}"
HF_FOLDER = "Hugging Face model folder not found: {path}"


def load_model(config: ModelConfig) -> nn.Module:
    """Build and load the configured model on the CPU, in eval mode, with its target layer checked.

    A checkpoint on object storage is first copied to a local temporary file (torch reads archives by
    seeking), and messages name it by its URI.
    """
    location = storage_path(config.checkpoint)
    if config.source == "huggingface":
        if is_remote(location):
            raise ModelError(HF_REMOTE.format(uri=public_uri(location)))
        if not location.is_dir():
            raise ModelError(HF_FOLDER.format(path=location))
        return _prepared(load_huggingface(location, num_classes=len(config.classes)), config)
    if not is_remote(location):
        if not location.is_file():
            raise ModelError(f"model checkpoint not found: {location}")
        return _load_local(location, config)
    shown = public_uri(location)
    with tempfile.TemporaryDirectory(prefix="audit-model-") as folder:
        local = Path(folder) / location.name
        try:
            if not location.is_file():
                raise ModelError(f"model checkpoint not found: {shown}")
            with location.open("rb") as source, open(local, "wb") as target:
                shutil.copyfileobj(source, target, 16 << 20)
        except ModelError:
            raise
        except Exception as exc:  # any store error (credentials, network) is a checkpoint we cannot read
            raise ModelError(f"cannot read model checkpoint {shown}: {type(exc).__name__}: {exc}") from exc
        try:
            return _load_local(local, config)
        except ModelError as exc:
            raise ModelError(str(exc).replace(str(local), shown)) from exc.__cause__
        except Exception as exc:  # name the URI the user configured, not the deleted temporary copy
            text = str(exc).replace(str(local), shown)
            raise ModelError(f"cannot load model checkpoint {shown}: {type(exc).__name__}: {text}") from exc


def model_fingerprint(config: ModelConfig) -> str:
    """A short hash of what the audited model is: the checkpoint's bytes and how it is built and fed.

    A new checkpoint (or a new class list, layer or preprocessing) changes it, and a changed model is a
    reason to audit again even when no new data arrived.
    """
    from audit_tasks.images import content_hash

    location = storage_path(config.checkpoint)
    weights: str | dict[str, str]
    try:
        if config.source == "huggingface" and not is_remote(location) and location.is_dir():
            files = sorted(f for f in location.rglob("*") if f.is_file())
            weights = {str(f.relative_to(location)): content_hash(f) for f in files}
        else:
            weights = content_hash(location)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model checkpoint {public_uri(location)}: {exc}") from exc
    recipe: dict[str, Any] = {
        "weights": weights,
        "arch": config.arch,
        "classes": list(config.classes),
        "target_layer": config.target_layer,
        "input_size": config.input_size,
        "mean": list(config.mean),
        "std": list(config.std),
        **({"task": config.task, "thresholds": config.thresholds} if config.task == "multilabel" else {}),
    }
    # Named only when not the defaults of configs written before they existed, so those keep their fingerprint.
    if config.source != "torchvision":
        recipe["source"] = config.source
    if config.preprocessing != "squash":
        recipe["preprocess"] = config.preprocessing
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _load_local(path: Path, config: ModelConfig) -> nn.Module:
    kind = checkpoint_kind(path)
    if kind == "torchscript":
        model = _load_scripted(path, config)
    elif kind == "export":
        model = _load_exported(path, config)
    else:
        model = _load_state_dict_model(path, config)
    if kind != "state_dict":
        model.eval()
        _check_target_layer(model, config)
        _check_output_width(model, config, (config.input_size, config.input_size))
        return model
    return _prepared(model, config)


def _prepared(model: nn.Module, config: ModelConfig) -> nn.Module:
    """Eval mode, logits adapter where needed, target layer resolved and output width checked."""
    model.eval()
    size = preprocess_plan(model, config).input_size
    try:
        if needs_adapter(model, torch.zeros(1, 3, *size)):
            model = LogitsAdapter(model).eval()
    except Exception as exc:  # any failure here means the model cannot be audited
        raise ModelError(f"model {config.checkpoint} failed on a {size[0]}x{size[1]} input: {exc}") from exc
    cam_target(model, config)
    _check_output_width(model, config, size)
    return model


def preprocess_plan(model: nn.Module, config: ModelConfig) -> PreprocessPlan:
    """How images are fed to this model: its own resize/crop/normalisation, or the squash of input_size."""
    if config.preprocessing == "squash":
        return squash_plan(config.input_size, config.mean, config.std)
    inner = unwrap(model)
    if config.source == "timm":
        explicit = config.input_size if "input_size" in config.model_fields_set else None
        return timm_plan(inner, explicit)
    return huggingface_plan(str(getattr(inner, "name_or_path", "") or config.checkpoint))


def cam_target(model: nn.Module, config: ModelConfig) -> CamTarget:
    """The Grad-CAM layer of the loaded model (config's path or 'auto') and its output layout."""
    size = preprocess_plan(model, config).input_size
    return find_target(model, config.target_layer, size, model_name=config.arch)


def checkpoint_kind(path: Path) -> str:
    """'torchscript', 'export' or 'state_dict', judged from the archive's member names (no unpickling)."""
    if path.suffix == ".pt2":
        return "export"
    if not zipfile.is_zipfile(path):
        return "state_dict"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "torchscript"
    if any(name.endswith("serialized_exported_program.json") or "/models/model.json" in name for name in names):
        return "export"
    return "state_dict"


def _load_state_dict_model(path: Path, config: ModelConfig) -> nn.Module:
    payload: Any
    try:
        if path.suffix == ".safetensors":
            payload = read_safetensors(path)
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"refused to load {path}: it contains pickled objects other than tensors (possibly code). "
            f"Save the weights with torch.save(model.state_dict(), path) instead. ({str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read model checkpoint {path}: {exc}") from exc
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ModelError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    state_dict = {key.removeprefix("module."): value for key, value in payload.items()}
    model = build_source_model(config.source, config.arch, num_classes=len(config.classes))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"checkpoint {path} does not fit model.arch '{config.arch}' with {len(config.classes)} classes: "
            f"{str(exc).splitlines()[0]} (check model.arch and model.classes)"
        ) from exc
    return model


def build_model(arch: str, *, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision classifier; never downloads weights."""
    return build_source_model("torchvision", arch, num_classes=num_classes)


def _load_scripted(path: Path, config: ModelConfig) -> nn.Module:
    if not config.allow_scripted:
        raise ModelError(f"{path} is a TorchScript archive, which runs its own code; {_SCRIPTED_HINT}")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot load TorchScript model {path}: {exc}") from exc


def _load_exported(path: Path, config: ModelConfig) -> nn.Module:
    if not config.allow_scripted:
        raise ModelError(f"{path} is a torch.export archive, which runs its own graph; {_SCRIPTED_HINT}")
    try:
        return torch.export.load(str(path)).module()
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot load torch.export model {path}: {exc}") from exc


def resolve_layer(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path; works for TorchScript modules, which lack get_submodule."""
    layer: object = model
    for part in dotted.split("."):
        layer = layer[int(part)] if part.isdigit() and hasattr(layer, "__getitem__") else getattr(layer, part)
    if not isinstance(layer, nn.Module):
        raise AttributeError(dotted)
    return layer


def _check_target_layer(model: nn.Module, config: ModelConfig) -> None:
    try:
        resolve_layer(model, config.target_layer)
    except (AttributeError, IndexError, TypeError) as exc:
        top = ", ".join(name for name, _ in model.named_children()) or "(none)"
        raise ModelError(
            f"model.target_layer '{config.target_layer}' is not a module of {config.arch}; top-level modules: {top}"
        ) from exc


def _check_output_width(model: nn.Module, config: ModelConfig, size: tuple[int, int]) -> None:
    """One tiny forward pass: the model must emit one logit per configured class."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, *size)
            out = model(probe)
    except Exception as exc:  # any failure here means the model cannot be audited
        shown = f"{size[0]}px" if size[0] == size[1] else f"{size[0]}x{size[1]}"
        raise ModelError(f"model {config.checkpoint} failed on a {shown} input: {exc}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != len(config.classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model {config.checkpoint} outputs {shape}, expected (N, {len(config.classes)}) for classes "
            f"{list(config.classes)}"
        )
