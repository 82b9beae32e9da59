"""Which layer Grad-CAM explains, and how its output is laid out: found with one dry forward pass.

`target_layer: auto` picks:

* for a CNN (and channels-last hierarchical models such as timm's Swin): the last module, in execution
  order, whose output is a 4-D feature map with more than one spatial cell, run exactly once, and not a
  pass-through (Identity, eval Dropout). Among modules returning that same map, the one that finishes last
  (the outermost): torchvision ResNet `layer4`, MobileNetV2 `features`, timm ConvNeXt `stages`, Hugging
  Face ConvNeXt `convnext.encoder.stages.<last>`.
* for a vision transformer (token outputs (N, T, C) come after the last feature map): the last block of
  the last block list, and inside it the block's first LayerNorm (timm `blocks.<last>.norm1`, Hugging
  Face `vit.layers.<last>.layernorm_before`), i.e. the input of the last block. The last block's own output
  reaches a class-token head only through the class token, so its patch tokens get zero gradient (the
  reason pytorch-grad-cam's docs use `blocks[-1].norm1` too); its input gives a map for either head.

A named layer keeps working as before (a path of the model as configured; a model wrapped in a
LogitsAdapter resolves it inside). The layout is read from the chosen layer's output: 4-D is NCHW (NHWC
when the model declares `output_fmt = "NHWC"`, as timm's Swin does), 3-D is tokens, whose prefix tokens
are the model's `num_prefix_tokens` (timm), its class/distillation/register token parameters (Hugging
Face), or else the fewest leading tokens that leave a grid of the input's aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from audit_tasks.cam_layout import NCHW, ActivationLayout, infer_prefix_tokens
from audit_tasks.errors import ModelError
from audit_tasks.model_sources import LogitsAdapter, unwrap
from audit_tasks.saliency import eval_mode

AUTO = "auto"
#: Message constants: tests assert them word for word.
NO_FEATURE_MAP = (
    "target_layer: auto found no layer with a spatial feature map or patch tokens on a {height}x{width} "
    "input; name the layer with model.target_layer"
)
AUTO_SCRIPTED = "target_layer: auto needs a Python model; name the layer for a TorchScript / torch.export model"
NOT_A_MODULE = "model.target_layer {path!r} is not a module of {model}; top-level modules: {top}"
UNREADABLE_OUTPUT = "model.target_layer {path!r} returned {what}; Grad-CAM needs a feature map or patch tokens"
NOT_REACHED = "model.target_layer {path!r} did not run on a {height}x{width} input"
PROBE_FAILED = "model failed on a {height}x{width} input: {error}"
#: Parameter names of tokens placed before the patch tokens (timm and Hugging Face spellings).
_PREFIX_PARAMETERS = ("cls_token", "dist_token", "distillation_token", "reg_token", "register_tokens")


@dataclass(frozen=True)
class CamTarget:
    """The layer to hook (dotted path in the model as loaded) and how to read its output."""

    path: str
    layout: ActivationLayout


def find_target(
    model: nn.Module, target_layer: str, input_size: tuple[int, int], *, model_name: str = "the model"
) -> CamTarget:
    """Resolve `target_layer` ('auto' or a dotted path) on `model` fed (height, width) inputs.

    `model_name` names the model in messages (e.g. its model.arch).

    Raises ModelError naming the layer when it does not exist, does not run, or returns something that is
    neither a feature map nor patch tokens.
    """
    if isinstance(model, torch.jit.ScriptModule) or _is_exported(model):
        if target_layer == AUTO:
            raise ModelError(AUTO_SCRIPTED)
        return CamTarget(target_layer, NCHW)  # archives: the layer is checked by modelio, read as NCHW
    if target_layer == AUTO:
        path = _auto_path(model, input_size)
    else:
        path = _resolve_path(model, target_layer, model_name)
    output = _layer_output(model, path, input_size)
    return CamTarget(path, _layout(model, path, output, input_size))


def _resolve_path(model: nn.Module, dotted: str, model_name: str) -> str:
    for path in (dotted, f"model.{dotted}") if isinstance(model, LogitsAdapter) else (dotted,):
        try:
            model.get_submodule(path)
            return path
        except AttributeError:
            continue
    top = ", ".join(name for name, _ in unwrap(model).named_children()) or "(none)"
    raise ModelError(NOT_A_MODULE.format(path=dotted, model=model_name, top=top))


@dataclass
class _Call:
    name: str
    module: nn.Module
    output: Any
    passthrough: bool


def _dry_run(model: nn.Module, input_size: tuple[int, int], modules: dict[str, nn.Module]) -> list[_Call]:
    """One forward of a zero image, recording each listed module's output in completion order."""
    calls: list[_Call] = []
    handles = []

    def recorder(name: str, module: nn.Module) -> Any:
        def record(_m: nn.Module, inputs: Any, output: Any) -> None:
            first = inputs[0] if isinstance(inputs, tuple) and inputs else None
            calls.append(_Call(name, module, output, output is first))

        return record

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(recorder(name, module)))
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, 3, *input_size, device=next(model.parameters(), torch.zeros(0)).device))
    except ModelError:
        raise
    except Exception as exc:  # any failure means the model cannot be audited at this size
        raise ModelError(PROBE_FAILED.format(height=input_size[0], width=input_size[1], error=exc)) from exc
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _auto_path(model: nn.Module, input_size: tuple[int, int]) -> str:
    named = {name: module for name, module in model.named_modules() if name}
    calls = _dry_run(model, input_size, named)
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    channels_last = _channels_last(model)
    usable = [c for c in calls if counts[c.name] == 1 and not c.passthrough and not isinstance(c.module, nn.Identity)]
    spatial = [i for i, c in enumerate(usable) if _is_feature_map(_first(c.output), channels_last)]
    tokens = [i for i, c in enumerate(usable) if _is_tokens(_first(c.output))]
    if tokens and (not spatial or tokens[-1] > spatial[-1]):
        block = _last_block(model, {c.name for c in usable if _is_tokens(_first(c.output))})
        if block is not None:
            return block
    if not spatial:
        raise ModelError(NO_FEATURE_MAP.format(height=input_size[0], width=input_size[1]))
    last = _first(usable[spatial[-1]].output)
    same = [c.name for c in usable if _first(c.output) is last]
    return same[-1]  # the outermost module returning the last feature map finishes last


def _last_block(model: nn.Module, token_modules: set[str]) -> str | None:
    """The first LayerNorm of the last block of the last block list whose blocks output tokens."""
    lists: list[tuple[bool, str]] = []  # (its blocks hold a LayerNorm, last block) per qualifying list
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
            continue
        children = [f"{name}.{child}" if name else child for child in module._modules]
        if all(child in token_modules for child in children):
            normed = all(any(isinstance(m, nn.LayerNorm) for m in child.modules()) for child in module.children())
            lists.append((normed, children[-1]))
    if not lists:
        return None
    # transformer blocks hold LayerNorms; a Sequential MLP inside a block (Linear, GELU, Linear) does not
    best = [block for normed, block in lists if normed][-1:] or [lists[-1][1]]
    best_path = best[0]
    for name, module in model.get_submodule(best_path).named_modules():
        if isinstance(module, nn.LayerNorm):
            return f"{best_path}.{name}" if name else best_path
    return best_path


def _layer_output(model: nn.Module, path: str, input_size: tuple[int, int]) -> Any:
    calls = _dry_run(model, input_size, {path: model.get_submodule(path)})
    if not calls:
        raise ModelError(NOT_REACHED.format(path=path, height=input_size[0], width=input_size[1]))
    return calls[0].output


def _layout(model: nn.Module, path: str, output: Any, input_size: tuple[int, int]) -> ActivationLayout:
    tuple_output = isinstance(output, tuple)
    activation = _first(output)
    if isinstance(activation, Tensor) and activation.dim() == 4:
        return ActivationLayout("nhwc" if _channels_last(model) else "nchw", tuple_output=tuple_output)
    if _is_tokens(activation):
        tokens = int(activation.shape[1])
        prefix = _declared_prefix(model)
        if prefix is None:
            prefix = infer_prefix_tokens(tokens, input_size)
        layout = ActivationLayout("tokens", prefix_tokens=prefix or 0, tuple_output=tuple_output)
        layout.to_grid(activation, input_size)  # raises TOKENS_NOT_A_GRID when they do not form a grid
        return layout
    what = f"a tensor of shape {tuple(activation.shape)}" if isinstance(activation, Tensor) else type(output).__name__
    raise ModelError(UNREADABLE_OUTPUT.format(path=path, what=what))


def _declared_prefix(model: nn.Module) -> int | None:
    """Class/distillation/register tokens the model declares (timm's attribute, or their parameters)."""
    inner = unwrap(model)
    declared = getattr(inner, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    count = None
    for name, parameter in inner.named_parameters():
        if name.rsplit(".", 1)[-1] in _PREFIX_PARAMETERS and parameter.dim() == 3:
            count = (count or 0) + int(parameter.shape[1])
    return count


def _channels_last(model: nn.Module) -> bool:
    return str(getattr(unwrap(model), "output_fmt", "")).endswith("NHWC")


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) and output else output


def _is_feature_map(value: Any, channels_last: bool) -> bool:
    if not isinstance(value, Tensor) or value.dim() != 4:
        return False
    h, w = (value.shape[1], value.shape[2]) if channels_last else (value.shape[2], value.shape[3])
    return h * w > 1


def _is_tokens(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 3 and value.shape[1] > 1


def _is_exported(model: nn.Module) -> bool:
    return type(model).__name__ == "GraphModule" or isinstance(model, torch.fx.GraphModule)
