"""Grad-CAM engine: class activation maps for a batch in one pass, exact, and with no wasted work.

Two ways to the same numbers:

* **Closed form** (no backward at all). When the target layer's output A (N,K,h,w) reaches the logits only
  through global average pooling and one Linear layer W (ResNet `layer4`, torchvision's
  MobileNetV2/EfficientNet/MNASNet `features`), d y_c / d A[k,i,j] = W[c,k] / (h*w) everywhere, so the
  Grad-CAM channel weights are alpha[c,k] = W[c,k] / (h*w) and

      Grad-CAM_c = ReLU( sum_k W[c,k] * A_k ) / (h*w).

  The pattern is found from the module tree (the model's last Linear) and then *verified* on the first
  batch: the Linear must run once, its output must be the model's output (the same tensor), its input
  must equal the spatial mean of A, and A must not be modified in place afterwards (DenseNet's in-place
  ReLU). Anything else falls back to the generic path, so the shortcut can never change a result.
* **Generic path**: the forward runs under no_grad up to the target layer; a forward hook detaches the
  activation into a leaf that requires grad, switches grad recording on for the rest of the forward,
  and hands the rest of the network a clone (so in-place ops downstream, such as torchvision's
  `out += identity` or DenseNet's final `relu(inplace=True)`, neither fail nor corrupt A). One
  `torch.autograd.grad` of the sum of the selected logits w.r.t. the leaf gives every image's gradient
  (images are independent in eval mode): no parameter gradients, nothing before the layer kept.

Layers whose output is not (N, K, h, w) -- a vision transformer block's tokens, a channels-last Swin stage,
a Hugging Face stage returning a tuple -- are read through an `ActivationLayout` (audit_tasks.cam_layout):
the generic path hooks the raw output and rearranges the activation and its gradient to (N, K, h, w) on
the patch grid; the closed form is used only for plain (N, K, h, w) outputs. `engine.path` says which path
the last call took ("closed form", "one backward", "one backward (tokens, 1 prefix token)").

Every call runs the model in eval mode (each module's `training` flag is restored afterwards) and
removes its hooks in `finally`, also when the forward raises. Results stay on the model's device.

Variants that fall out of the same (A, dY/dA) pair: Grad-CAM++ (`GradCAMPlusPlus`), HiResCAM and LayerCAM;
all of them also have a closed form for a GAP + Linear head (the gradient is constant over space there).
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audit_tasks.cam_layout import NCHW, ActivationLayout
from audit_tasks.errors import ModelError

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Message constants: tests assert them word for word.
TARGETS_LENGTH = "targets has {got} entries but the batch has {n} images: give exactly one target class per image"
TARGETS_RANGE = "targets must be class indices in [0, {classes}); got values from {low} to {high}"
TARGETS_TYPE = "targets must be a 1-D tensor of integer class indices; got {what}"
IMAGES_SHAPE = "images must be a 4-D tensor (N, C, H, W); got shape {shape}"
LAYER_MISSING = "target layer {path!r} is not a submodule of the model ({error})"
LAYER_OBJECT = "target layer is not a submodule of the model: {layer!r}"
LAYER_TWICE = "target layer {path!r} ran more than once in one forward; Grad-CAM needs a layer that runs once"
LAYER_OUTPUT = "target layer {path!r} returned {what}; Grad-CAM needs a 4-D tensor (N, K, h, w)"
LAYER_LAYOUT = "target layer {path!r} returned {what}; its layout ({layout}) needs a {rank}-D tensor"
LAYER_NOT_REACHED = "target layer {path!r} did not run during the forward pass"
CLOSED_FORM_UNAVAILABLE = (
    "closed form requested but target layer {path!r} does not feed global average pooling and a single "
    "Linear head ({why}); use closed_form=None to fall back to the backward pass"
)


@dataclass(frozen=True)
class CamResult:
    """One batch's maps: ReLU'd, float32, at the layer's native resolution, not normalised, on the device."""

    logits: Tensor  # (N, C), detached
    cams: Tensor  # (N, h, w) float32
    targets: Tensor  # (N,) long: the class each map explains
    closed_form: bool  # True when no backward pass was needed
    #: (N, D) float32 input of the model's last Linear (its penultimate features), taken from the same forward;
    #: None unless the engine was built with `collect_features=True` and the model has a Linear.
    features: Tensor | None = None


def upsample(cams: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinearly resize (N, h, w) maps to `size` (for overlays; the tables keep native resolution)."""
    if isinstance(size, int):
        size = (size, size)
    return F.interpolate(cams[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def normalize_per_image(cams: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-image min-max scaling to [0, 1], as the usual overlay tools do (pytorch-grad-cam's eps)."""
    flat = cams.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    flat = flat - low
    return (flat / (eps + flat.max(dim=1, keepdim=True).values)).view_as(cams)


# ---------------------------------------------------------------------------------------------
# Base class: layer resolution, model preparation, eval mode, hooks, validation, autocast
# ---------------------------------------------------------------------------------------------


class CamEngine:
    """Shared machinery of layer CAM methods; a subclass defines `_combine(A, dY/dA) -> map`.

    Args:
        model: a classifier returning logits (N, C).
        target_layer: dotted path (resolved with `model.get_submodule`) or the module itself.
        closed_form: None = use it when the head is verified to be GAP + Linear; False = always backward;
            True = require it (ModelError when the head does not qualify).
        precision: "fp32", or "bf16"/"fp16" autocast (meant for CUDA).
        channels_last: feed (and keep the engine's copy of) the model in channels_last memory format.
        fuse_batchnorm: fold eval-mode BatchNorm into the preceding convolution in the engine's copy
            (never the target layer itself): same maps up to float rounding, fewer passes over memory.
        compile: wrap the engine's copy in `torch.compile` (closed form only); any failure falls back to eager.
        device: where the engine's copy lives (default: the model's device).
        layout: how to read the layer's output as (N, K, h, w) (default: it already is); any other layout
            takes the backward path (see audit_tasks.cam_target.find_target, which infers it).
        collect_features: also return the input of the model's last Linear (`CamResult.features`), read by a
            hook during the same forward (the rarity check's embedding: no second pass).

    The caller's model is never modified: channels_last, fuse_batchnorm, compile and device make the
    engine work on a private deep copy (a snapshot of the weights at construction).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module,
        *,
        closed_form: bool | None = None,
        precision: Precision = "fp32",
        channels_last: bool = False,
        fuse_batchnorm: bool = False,
        compile: bool = False,
        device: str | torch.device | None = None,
        layout: ActivationLayout = NCHW,
        collect_features: bool = False,
    ) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16; got {precision!r}")
        self.layer_path = _layer_path(model, target_layer)
        self.precision: Precision = precision
        self.channels_last = channels_last
        self.closed_form = closed_form
        self.layout = layout
        self.collect_features = collect_features
        #: The path the last `attribute` call took (for logs and the bench); None before the first call.
        self.path: str | None = None
        if not layout.plain and closed_form is True:
            raise ModelError(
                CLOSED_FORM_UNAVAILABLE.format(path=self.layer_path, why=f"its output layout is {layout.describe()}")
            )
        scripted = isinstance(model, torch.jit.ScriptModule)
        private = not scripted and (channels_last or fuse_batchnorm or compile or device is not None)
        if private:
            model = _private_copy(
                model, self.layer_path, fuse_batchnorm=fuse_batchnorm, channels_last=channels_last, device=device
            )
        self.model = model
        self.layer = model.get_submodule(self.layer_path)
        self._private = private
        self._head = _last_linear(model)
        # None: not yet checked; False: the backward path (asked for, or a layout the closed form cannot read)
        self._verified: bool | None = False if closed_form is False or not layout.plain else None
        self._compiled: Any = None
        self._compiled_seen: dict[str, list[Any]] = {"layer": [], "head": []}
        self._compiled_handles: list[Any] = []
        if compile and private and self._head is not None and self._verified is None:
            # The copy is private, so its recording hooks can stay for good (per-call hooks would
            # make torch.compile recompile on every batch); they are verified eagerly on the first batch.
            self._compiled_handles = [
                self.layer.register_forward_hook(_recorder(self._compiled_seen["layer"], output=True, version=False)),
                self._head.register_forward_hook(_recorder(self._compiled_seen["head"], output=False)),
            ]
            self._compiled = _try_compile(model)
            if self._compiled is None:
                self._disable_compile("torch.compile unavailable")

    # -- public -----------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return _model_device(self.model)

    def attribute(self, images: Tensor, targets: Tensor | Sequence[int] | None = None) -> CamResult:
        """Maps for `images` (N, C, H, W) explaining `targets` (N,) class indices; None = predicted class.

        Raises ValueError when targets are not one valid class index per image, ModelError when the
        target layer does not behave (never runs, runs twice, returns a non-4-D output).
        """
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError(IMAGES_SHAPE.format(shape=tuple(getattr(images, "shape", ()))))
        n = images.shape[0]
        targets = _check_targets(targets, n)
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            with eval_mode(self.model):
                if self._verified is not False and self._head is not None:
                    result = self._closed_form(self._head, images, targets)
                    if result is not None:
                        self.path = "closed form"
                        return result
                elif self.closed_form is True:
                    raise ModelError(
                        CLOSED_FORM_UNAVAILABLE.format(path=self.layer_path, why="the model has no Linear layer")
                    )
                result = self._generic(images, targets)
                self.path = "one backward" if self.layout.plain else f"one backward ({self.layout.describe()})"
                return result
        finally:
            for store in self._compiled_seen.values():
                store.clear()  # drop references to this batch's tensors

    # -- subclass hook ----------------------------------------------------------------------------

    def _combine(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """(N,K,h,w) activation and gradient (float32; the gradient may be an expanded view) -> (N,h,w)."""
        raise NotImplementedError

    # -- closed form ------------------------------------------------------------------------------

    def _closed_form(self, head: nn.Linear, images: Tensor, targets: Tensor | None) -> CamResult | None:
        """Grad-CAM with no backward pass, from the layer's activation and `head`'s weights; None when the
        model turns out not to end in global average pooling and `head`."""
        seen: dict[str, list[Any]] = {"layer": [], "head": []}
        compiled = self._compiled is not None and self._verified is True
        if compiled:
            seen = self._compiled_seen
            seen["layer"].clear()
            seen["head"].clear()
        with ExitStack() as stack:
            if not compiled:  # the compiled copy carries its own permanent recording hooks
                stack.enter_context(_hook(self.layer, _recorder(seen["layer"], output=True)))
                stack.enter_context(_hook(head, _recorder(seen["head"], output=False)))
            with torch.no_grad(), self._autocast():
                logits = self._run_compiled(images) if compiled else self._run(self.model, images)
        if compiled and not (seen["layer"] and seen["head"]):
            return self._give_up_compile(
                "the compiled model did not report the target activation", head, images, targets
            )
        why = self._closed_form_obstacle(seen, logits, compiled)
        if why is not None:
            if self.closed_form is True:
                raise ModelError(CLOSED_FORM_UNAVAILABLE.format(path=self.layer_path, why=why))
            self._verified = False
            return None
        self._verified = True
        activation = seen["layer"][0][0]
        head_in = seen["head"][0][0]
        seen["layer"].clear()
        seen["head"].clear()
        targets = _resolve_targets(targets, logits)
        h, w = activation.shape[-2:]
        weight = head.weight.detach()[targets].float() / (h * w)  # Grad-CAM's alpha, exactly
        gradient = weight[:, :, None, None].expand(activation.shape)
        cams = self._combine(activation.float(), gradient)
        features = _features(head_in) if self.collect_features else None
        return CamResult(
            logits=logits.detach(), cams=cams.clamp_min_(0), targets=targets, closed_form=True, features=features
        )

    def _run_compiled(self, images: Tensor) -> Tensor:
        try:
            return self._run(self._compiled, images)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - compile is an optimisation: fall back to eager
            self._disable_compile(f"torch.compile failed, running eagerly: {exc}")
            return self._run(self.model, images)

    def _give_up_compile(self, why: str, head: nn.Linear, images: Tensor, targets: Tensor | None) -> CamResult | None:
        self._disable_compile(f"torch.compile disabled: {why}")
        return self._closed_form(head, images, targets)

    def _disable_compile(self, message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        for handle in self._compiled_handles:
            handle.remove()
        self._compiled_handles = []
        self._compiled = None

    def _closed_form_obstacle(self, seen: dict[str, Any], logits: Tensor, compiled: bool) -> str | None:
        """Why the closed form does not hold for this forward (None: it holds)."""
        layer_calls, head_calls = seen["layer"], seen["head"]
        if len(layer_calls) != 1:
            if not layer_calls:
                raise ModelError(LAYER_NOT_REACHED.format(path=self.layer_path))
            return "the target layer ran more than once"
        activation, version = layer_calls[0]
        if not isinstance(activation, Tensor) or activation.dim() != 4:
            raise ModelError(LAYER_OUTPUT.format(path=self.layer_path, what=_describe(activation)))
        if not compiled and activation._version != version:
            return "its output is modified in place after the layer"
        if len(head_calls) != 1 or (not compiled and head_calls[0][1] is not logits):
            return "the last Linear layer's output is not the model's output"
        head_in = head_calls[0][0]
        if not isinstance(head_in, Tensor) or head_in.shape != activation.shape[:2]:
            return "the last Linear layer does not read the pooled target activation"
        if self._verified is None:  # first batch: check the numbers once (one host sync)
            pooled = activation.float().mean(dim=(2, 3))
            tol = 1e-4 if self.precision == "fp32" else 2e-2
            if not torch.allclose(head_in.float(), pooled, rtol=tol, atol=tol * max(1.0, float(pooled.abs().max()))):
                return "the Linear layer's input is not the global average of the target activation"
        return None

    # -- generic backward path --------------------------------------------------------------------

    def _generic(self, images: Tensor, targets: Tensor | None) -> CamResult:
        captured: list[Tensor] = []
        layout = self.layout

        def on_layer(_m: nn.Module, _i: Any, out: Any) -> Any:
            if captured:
                raise ModelError(LAYER_TWICE.format(path=self.layer_path))
            raw = layout.unwrap(out)
            if not isinstance(raw, Tensor) or raw.dim() != layout.rank():
                if layout is NCHW:
                    raise ModelError(LAYER_OUTPUT.format(path=self.layer_path, what=_describe(out)))
                raise ModelError(
                    LAYER_LAYOUT.format(
                        path=self.layer_path, what=_describe(out), layout=layout.describe(), rank=layout.rank()
                    )
                )
            leaf = raw.detach().requires_grad_(True)
            captured.append(leaf)
            torch.set_grad_enabled(True)  # record only from here on; no_grad's exit restores the mode
            return layout.rewrap(out, leaf.clone())  # the clone shields the leaf from in-place ops downstream

        penultimate: list[Any] = []
        with ExitStack() as stack:
            stack.enter_context(_hook(self.layer, on_layer))
            if self.collect_features and self._head is not None:
                stack.enter_context(_hook(self._head, _recorder(penultimate, output=False)))
            with torch.no_grad(), self._autocast():
                logits = self._run(self.model, images)
                if not captured:
                    raise ModelError(LAYER_NOT_REACHED.format(path=self.layer_path))
                targets = _resolve_targets(targets, logits)
                if logits.requires_grad:
                    score = logits.gather(1, targets[:, None]).sum()
                    with torch.enable_grad():
                        (gradient,) = torch.autograd.grad(score, captured[0])
                else:  # the logits do not depend on the layer at all
                    gradient = torch.zeros_like(captured[0])
        size = (int(images.shape[-2]), int(images.shape[-1]))
        activation = layout.to_grid(captured[0].detach(), size)
        gradient = layout.to_grid(gradient, size)
        cams = self._combine(activation.float(), gradient.float())
        # The last call is the one that made the logits (a head run twice keeps its final input).
        features = _features(penultimate[-1][0]) if penultimate else None
        return CamResult(
            logits=logits.detach(), cams=cams.clamp_min_(0), targets=targets, closed_form=False, features=features
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _run(self, runner: Any, images: Tensor) -> Tensor:
        logits = runner(images)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != images.shape[0]:
            raise ModelError(f"the model must return logits of shape (N, C); got {_describe(logits)}")
        return logits

    def _autocast(self) -> Any:
        if self.precision == "fp32":
            return _null()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


class GradCAM(CamEngine):
    """Grad-CAM (Selvaraju et al.): channel weights are the spatial mean of dY/dA."""

    def _combine(self, activation: Tensor, gradient: Tensor) -> Tensor:
        alpha = gradient.mean(dim=(2, 3))
        return torch.einsum("nk,nkhw->nhw", alpha, activation)


class HiResCAM(CamEngine):
    """HiResCAM (Draelos & Carin): element-wise gradient x activation, summed over channels."""

    def _combine(self, activation: Tensor, gradient: Tensor) -> Tensor:
        return (gradient * activation).sum(dim=1)


class LayerCAM(CamEngine):
    """LayerCAM (Jiang et al.): element-wise positive gradient x activation, summed over channels."""

    def _combine(self, activation: Tensor, gradient: Tensor) -> Tensor:
        return (gradient.clamp_min(0) * activation).sum(dim=1)


class GradCAMPlusPlus(CamEngine):
    """Grad-CAM++ (Chattopadhyay et al.), with pytorch-grad-cam's exponential-score approximation."""

    eps = 1e-6

    def _combine(self, activation: Tensor, gradient: Tensor) -> Tensor:
        g2 = gradient.pow(2)
        g3 = g2 * gradient
        sum_a = activation.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g3 + self.eps)
        aij = torch.where(gradient != 0, aij, torch.zeros_like(aij))
        weights = (gradient.clamp_min(0) * aij).sum(dim=(2, 3))
        return torch.einsum("nk,nkhw->nhw", weights, activation)


# ---------------------------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------------------------


def _layer_path(model: nn.Module, target_layer: str | nn.Module) -> str:
    if isinstance(target_layer, str):
        try:
            model.get_submodule(target_layer)
        except AttributeError as exc:
            raise ModelError(LAYER_MISSING.format(path=target_layer, error=exc)) from exc
        return target_layer
    for name, module in model.named_modules():
        if module is target_layer:
            return name
    raise ModelError(LAYER_OBJECT.format(layer=type(target_layer).__name__))


def _last_linear(model: nn.Module) -> nn.Linear | None:
    """The candidate head: the last Linear in registration order (verified at run time before use)."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


def _features(head_input: Any) -> Tensor | None:
    """The last Linear's input as (N, D) float32, detached; None when it is not a tensor."""
    if not isinstance(head_input, Tensor):
        return None
    return head_input.detach().flatten(1).float()


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _check_targets(targets: Tensor | Sequence[int] | None, n: int) -> Tensor | None:
    """One integer class per image; the range is checked against the logits' width after the forward."""
    if targets is None:
        return None
    if not isinstance(targets, Tensor):
        try:
            targets = torch.as_tensor(list(targets))
        except (TypeError, ValueError) as exc:
            raise ValueError(TARGETS_TYPE.format(what=type(targets).__name__)) from exc
    if targets.dim() != 1 or targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(TARGETS_TYPE.format(what=f"{targets.dtype} of shape {tuple(targets.shape)}"))
    if targets.shape[0] != n:
        raise ValueError(TARGETS_LENGTH.format(got=targets.shape[0], n=n))
    return targets.long()


def _resolve_targets(targets: Tensor | None, logits: Tensor) -> Tensor:
    if targets is None:
        return logits.detach().argmax(dim=1)
    classes = logits.shape[1]
    if targets.numel():
        low, high = int(targets.min()), int(targets.max())  # host tensors: no device sync
        if low < 0 or high >= classes:
            raise ValueError(TARGETS_RANGE.format(classes=classes, low=low, high=high))
    return targets.to(logits.device, non_blocking=True)


def _recorder(store: list[Any], *, output: bool, version: bool = True) -> Any:
    """A forward hook appending (layer output, its version) or (the module's input, its output)."""
    if output:

        def record(_m: nn.Module, inp: Any, out: Any) -> None:
            store.append((out, out._version if version and isinstance(out, Tensor) else None))
    else:

        def record(_m: nn.Module, inp: Any, out: Any) -> None:
            store.append((inp[0] if inp else None, out))

    return record


@contextmanager
def _hook(module: nn.Module, fn: Any) -> Iterator[None]:
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; every module's own flag comes back (a frozen BN stays frozen)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def _null() -> Iterator[None]:
    yield


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _private_copy(
    model: nn.Module, layer_path: str, *, fuse_batchnorm: bool, channels_last: bool, device: str | torch.device | None
) -> nn.Module:
    """The engine's own eval-mode copy: the caller's model keeps its weights, format, device and hooks."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)  # the engine never needs parameter gradients
    if fuse_batchnorm:
        fold_batchnorm(clone, protect=clone.get_submodule(layer_path))
    if device is not None:
        clone = clone.to(device)
    if channels_last:
        clone = clone.to(memory_format=torch.channels_last)
    return clone


def fold_batchnorm(model: nn.Module, protect: nn.Module | None = None) -> int:
    """Fold eval BatchNorm2d into the Conv2d that feeds it, in place; returns how many were folded.

    Only pairs whose data flow is known are folded: consecutive children of a plain nn.Sequential, and
    torchvision's ResNet stem and BasicBlock/Bottleneck `convN -> bnN`. `protect` (the target layer)
    is never folded away or changed, so its output stays what Grad-CAM should see.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs: list[tuple[nn.Module, str, str]] = []
    for parent in model.modules():
        if type(parent).forward is nn.Sequential.forward and isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs += [(parent, a, b) for a, b in itertools.pairwise(names)]
        elif _is_torchvision_resnet_part(parent):
            pairs += [(parent, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
    folded = 0
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
        if not (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d):
            continue
        if conv is protect or bn is protect or bn.running_mean is None or conv.out_channels != bn.num_features:
            continue
        if conv._forward_hooks or bn._forward_hooks or conv._forward_pre_hooks or bn._forward_pre_hooks:
            continue
        setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        setattr(parent, bn_name, nn.Identity())
        folded += 1
    return folded


def _is_torchvision_resnet_part(module: nn.Module) -> bool:
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return type(module) in (BasicBlock, Bottleneck, ResNet)


def _try_compile(model: nn.Module) -> Any:
    """torch.compile with weight freezing (the copy is an eval-only snapshot): constant-folded, prepacked weights."""
    try:
        return torch.compile(model, options={"freezing": True})
    except Exception:  # noqa: BLE001 - compile is an optimisation; any failure means eager
        return None
