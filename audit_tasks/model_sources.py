"""Where a model comes from: torchvision, timm, a Hugging Face folder or a Python builder, built offline.

Nothing is fetched from a hub: timm models are created with `pretrained=False` and given the checkpoint's
weights; Hugging Face models load from a local `save_pretrained` folder (`local_files_only=True`, no
remote code); a `python` source names `"pkg.module:build"`, called as `build(num_classes=N)` and expected
to return an `nn.Module` whose output is (N, classes) logits (or a dict / ModelOutput with `logits`).
timm and transformers are optional extras, imported only when their source is used.

Models whose output is not a tensor (Hugging Face `ModelOutput`s, dicts with `logits`) are wrapped in
`LogitsAdapter`, so scoring and the CAM engine always see (N, C) logits.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from audit_tasks.errors import ModelError

#: Message constants: tests assert them word for word.
MISSING_EXTRA = "{what} needs the {package} package: pip install 'audit-tasks[{extra}]'"
NOT_TIMM_MODEL = "model.arch {arch!r} is not a timm model name ({error}); see timm.list_models()"
BAD_BUILDER = "model.arch {arch!r} is not an importable 'pkg.module:build' callable ({error})"
BUILDER_RESULT = "model.arch {arch!r} returned {what}; build(num_classes: int) must return an nn.Module"
NO_LOGITS = "the model returned {what} without 'logits'; return a tensor (N, C) or a mapping with 'logits'"
HF_NUM_LABELS = (
    "Hugging Face model in {folder} has {labels} labels but model.classes lists {classes}; "
    "check model.classes against the folder's config.json id2label"
)
#: What needs an optional package -> (package, extra that installs it).
_EXTRAS = {
    "model.source 'timm'": ("timm", "timm"),
    "model.source 'huggingface'": ("transformers", "huggingface"),
    "a .safetensors checkpoint": ("safetensors", "timm"),
    "model.preprocess 'model' with timm": ("timm", "timm"),
}


class LogitsAdapter(nn.Module):
    """Wraps a model whose output is a mapping (ModelOutput, dict) so that it returns its `logits` tensor.

    The wrapped model is the child `model`: a layer path of the wrapped model is `model.<path>` here.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return logits_of(self.model(images))


def logits_of(output: Any) -> Tensor:
    """The logits tensor of a model's output: the tensor itself, or the `logits` entry of a mapping."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise ModelError(NO_LOGITS.format(what=type(output).__name__))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a LogitsAdapter (the model itself otherwise)."""
    return model.model if isinstance(model, LogitsAdapter) else model


def needs_adapter(model: nn.Module, probe: Tensor) -> bool:
    """Whether the model's output (on `probe`, in no_grad) is something other than a tensor."""
    with torch.no_grad():
        return not isinstance(model(probe), Tensor)


def build_model(source: str, arch: str, *, num_classes: int) -> nn.Module:
    """A randomly initialised model of `source` (torchvision, timm, python); never downloads weights."""
    if source == "timm":
        timm = optional_import("timm", "model.source 'timm'")
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ModelError(NOT_TIMM_MODEL.format(arch=arch, error=exc)) from exc
        return model
    if source == "python":
        return _python_builder(arch, num_classes)
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except (ValueError, KeyError) as exc:
        raise ModelError(
            f"model.arch '{arch}' is not a torchvision model builder (e.g. resnet18, resnet50, mobilenet_v2)"
        ) from exc


def load_huggingface(folder: Path, *, num_classes: int) -> nn.Module:
    """`AutoModelForImageClassification` from a local save_pretrained folder, offline, no remote code."""
    transformers = optional_import("transformers", "model.source 'huggingface'")
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the Hugging Face model in {folder}: {exc}") from exc
    labels = int(getattr(model.config, "num_labels", -1))
    if labels != num_classes:
        raise ModelError(HF_NUM_LABELS.format(folder=folder, labels=labels, classes=num_classes))
    return model


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """A .safetensors file's tensors (the format holds tensors only: nothing to execute)."""
    safetensors_torch = optional_import("safetensors.torch", "a .safetensors checkpoint")
    try:
        return dict(safetensors_torch.load_file(str(path), device="cpu"))
    except Exception as exc:  # safetensors raises its own SafetensorError for malformed files
        raise ModelError(f"cannot read model checkpoint {path}: {exc}") from exc


def _python_builder(arch: str, num_classes: int) -> nn.Module:
    module_name, _, attribute = arch.partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelError(BAD_BUILDER.format(arch=arch, error=exc)) from exc
    if not callable(builder):
        raise ModelError(BAD_BUILDER.format(arch=arch, error="not callable"))
    model = builder(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ModelError(BUILDER_RESULT.format(arch=arch, what=type(model).__name__))
    return model


def optional_import(module: str, what: str) -> Any:
    """Import an optional extra's module, or a ModelError naming the extra to install.

    Through importlib on purpose: the core's import statements name only declared dependencies
    (tests/test_package.py), and an extra is imported only where it is used.
    """
    package, extra = _EXTRAS[what]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(MISSING_EXTRA.format(what=what, package=package, extra=extra)) from exc
