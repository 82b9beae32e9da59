"""Grad-CAM engine: exactness against captum and pytorch-grad-cam, closed form == backward, and the traps."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torchvision
from torch import nn

from audit_tasks.errors import ModelError
from audit_tasks.saliency import (
    TARGETS_LENGTH,
    CamResult,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    fold_batchnorm,
    normalize_per_image,
    upsample,
)

SIZE = 64


@functools.cache
def _model(arch: str) -> nn.Module:
    """A small random torchvision model whose BatchNorm statistics are set from random data (O(1) activations)."""
    torch.manual_seed(0)
    model = _BUILDERS[arch]()
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average over the calibration batches
        for _ in range(2):
            model(torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


_BUILDERS = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=5),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=5, width_mult=0.35),
    # torchvision's own DenseNet class (same forward: features -> relu(inplace=True) -> pool -> Linear), kept tiny.
    "densenet": lambda: torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2, num_classes=5
    ),
}


def _inputs(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.arange(n) % 5


def _pgc_pipeline(cams: torch.Tensor, size: int) -> torch.Tensor:
    """What pytorch-grad-cam does after the weighted sum: ReLU, min-max, bilinear resize, min-max again."""
    return normalize_per_image(upsample(normalize_per_image(cams.clamp_min(0)), size))


LAYERS = {"resnet18": "layer4", "mobilenet_v2": "features"}


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_closed_form_equals_generic_backward(arch):
    model = _model(arch)
    x, t = _inputs()
    closed = GradCAM(model, LAYERS[arch]).attribute(x, t)
    backward = GradCAM(model, LAYERS[arch], closed_form=False).attribute(x, t)
    assert closed.closed_form and not backward.closed_form
    assert closed.cams.max() > 0
    torch.testing.assert_close(closed.cams, backward.cams, rtol=1e-5, atol=1e-6 * float(backward.cams.max()))
    torch.testing.assert_close(closed.logits, backward.logits)


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_maps_match_captum_layer_gradcam(arch):
    from captum.attr import LayerGradCam

    model = _model(arch)
    x, t = _inputs()
    ours = GradCAM(model, LAYERS[arch]).attribute(x, t).cams
    theirs = (
        LayerGradCam(model, model.get_submodule(LAYERS[arch]))
        .attribute(x, target=t, relu_attributions=True)[:, 0]
        .detach()
    )
    scale = float(theirs.abs().max())
    assert scale > 0
    assert (ours - theirs).abs().max() <= 1e-4 * scale
    assert (normalize_per_image(ours) - normalize_per_image(theirs)).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_maps_match_pytorch_grad_cam(arch):
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model(arch)
    x, t = _inputs()
    ours = _pgc_pipeline(GradCAM(model, LAYERS[arch]).attribute(x, t).cams, SIZE)
    with PgcGradCAM(model=model, target_layers=[model.get_submodule(LAYERS[arch])]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t]))
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "ours_cls, pgc_name", [(GradCAMPlusPlus, "GradCAMPlusPlus"), (HiResCAM, "HiResCAM"), (LayerCAM, "LayerCAM")]
)
def test_variants_match_pytorch_grad_cam(ours_cls, pgc_name):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model("resnet18")
    x, t = _inputs()
    result = ours_cls(model, "layer4").attribute(x, t)
    generic = ours_cls(model, "layer4", closed_form=False).attribute(x, t)
    torch.testing.assert_close(result.cams, generic.cams, rtol=1e-4, atol=1e-5 * float(generic.cams.max()))
    with getattr(pytorch_grad_cam, pgc_name)(model=model, target_layers=[model.layer4]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t]))
    assert (_pgc_pipeline(result.cams, SIZE) - theirs).abs().max() <= 1e-4


def test_densenet_inplace_relu_after_features_gives_backward_result():
    """DenseNet's forward applies relu(inplace=True) to `features`' output: no closed form, A stays pre-ReLU."""
    from captum.attr import LayerGradCam

    model = _model("densenet")
    x, t = _inputs(2)
    result = GradCAM(model, "features").attribute(x, t)
    theirs = LayerGradCam(model, model.features).attribute(x, target=t, relu_attributions=True)[:, 0].detach()
    assert not result.closed_form
    assert (result.cams - theirs).abs().max() <= 1e-4 * float(theirs.max())


def test_layer_followed_by_inplace_residual_add_is_exact():
    """torchvision's BasicBlock does `out += identity` on bn2's output; the engine must not see the sum."""
    from captum.attr import LayerGradCam

    model = _model("resnet18")
    x, t = _inputs()
    result = GradCAM(model, "layer4.1.bn2").attribute(x, t)
    theirs = LayerGradCam(model, model.layer4[1].bn2).attribute(x, target=t, relu_attributions=True)[:, 0].detach()
    assert not result.closed_form
    assert (result.cams - theirs).abs().max() <= 1e-4 * float(theirs.max())


def test_batch_of_n_equals_n_single_calls():
    model = _model("resnet18")
    x, t = _inputs(5)
    for kwargs in ({}, {"closed_form": False}):
        engine = GradCAM(model, "layer4", **kwargs)
        batch = engine.attribute(x, t).cams
        singles = torch.cat([engine.attribute(x[i : i + 1], t[i : i + 1]).cams for i in range(5)])
        # Other batch sizes may take other kernels: tolerance relative to the maps' scale, not absolute.
        torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-5 * float(singles.abs().max()))


def test_result_is_float32_native_resolution_relu_and_detached():
    model = _model("resnet18")
    x, t = _inputs()
    result = GradCAM(model, "layer4").attribute(x, t)
    assert isinstance(result, CamResult)
    assert result.cams.dtype == torch.float32 and result.cams.shape == (4, 2, 2)
    assert (result.cams >= 0).all()
    assert not result.logits.requires_grad and not result.cams.requires_grad
    assert result.targets.tolist() == t.tolist()


def test_no_parameter_gradients_and_no_hooks_left():
    model = _model("resnet18")
    x, t = _inputs()
    model.zero_grad(set_to_none=True)  # the cached model may carry pytorch-grad-cam's gradients
    GradCAM(model, "layer4", closed_form=False).attribute(x, t)
    GradCAM(model, "layer4").attribute(x, t)
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_removed_and_training_flags_restored_when_forward_raises():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    model.fc = nn.Sequential(_Exploding(), nn.Linear(512, 3))
    model.train()
    model.bn1.eval()  # a frozen BatchNorm must stay frozen after the call
    x, t = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1])
    for kwargs in ({}, {"closed_form": False}):
        with pytest.raises(RuntimeError, match="boom"):
            GradCAM(model, "layer4", **kwargs).attribute(x, t)
        assert all(not m._forward_hooks for m in model.modules())
        assert model.training and model.layer4.training and not model.bn1.training
    assert torch.is_grad_enabled()


def test_runs_in_eval_mode_whatever_the_model_mode():
    model = _model("resnet18")
    x, t = _inputs()
    expected = GradCAM(model, "layer4").attribute(x, t).cams
    model.train()
    try:
        got = GradCAM(model, "layer4").attribute(x, t).cams
        assert model.training
    finally:
        model.eval()
    torch.testing.assert_close(got, expected)


def test_targets_length_must_match_batch():
    x, _ = _inputs(4)
    with pytest.raises(ValueError) as err:
        GradCAM(_model("resnet18"), "layer4").attribute(x, torch.tensor([0, 1, 2]))
    assert str(err.value) == TARGETS_LENGTH.format(got=3, n=4)


@pytest.mark.parametrize("bad", [torch.tensor([0, 1, 2, 5]), torch.tensor([0, -1, 2, 3])])
def test_targets_out_of_range_raise(bad):
    x, _ = _inputs(4)
    with pytest.raises(ValueError, match="class indices in \\[0, 5\\)"):
        GradCAM(_model("resnet18"), "layer4", closed_form=False).attribute(x, bad)


def test_float_targets_raise():
    x, _ = _inputs(2)
    with pytest.raises(ValueError, match="integer class indices"):
        GradCAM(_model("resnet18"), "layer4").attribute(x, torch.tensor([0.0, 1.0]))


def test_no_targets_explain_the_predicted_class():
    model = _model("resnet18")
    x, _ = _inputs()
    result = GradCAM(model, "layer4").attribute(x)
    assert torch.equal(result.targets, result.logits.argmax(1))
    torch.testing.assert_close(result.cams, GradCAM(model, "layer4").attribute(x, result.targets).cams)


def test_unknown_layer_path_raises_model_error():
    with pytest.raises(ModelError, match="layer9"):
        GradCAM(_model("resnet18"), "layer9")


def test_layer_given_as_module_object():
    model = _model("resnet18")
    x, t = _inputs()
    torch.testing.assert_close(
        GradCAM(model, model.layer4).attribute(x, t).cams, GradCAM(model, "layer4").attribute(x, t).cams
    )


def test_closed_form_required_but_unavailable_raises():
    x, t = _inputs(2)
    with pytest.raises(ModelError, match="closed form requested"):
        GradCAM(_model("resnet18"), "layer3", closed_form=True).attribute(x, t)


def test_fused_channels_last_copy_gives_same_maps_and_leaves_model_untouched():
    model = _model("resnet18")
    x, t = _inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = GradCAM(model, "layer4").attribute(x, t)
    fast = GradCAM(model, "layer4", fuse_batchnorm=True, channels_last=True).attribute(x, t)
    assert fast.closed_form
    assert (fast.cams - plain.cams).abs().max() <= 1e-4 * float(plain.cams.max())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.conv1.weight.is_contiguous()


def test_fold_batchnorm_never_folds_the_target_layer():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    folded = fold_batchnorm(model, protect=model.layer4[1].bn2)
    assert folded == 19  # 20 conv/bn pairs in resnet18, one protected
    assert isinstance(model.layer4[1].bn2, nn.BatchNorm2d) and isinstance(model.layer4[1].bn1, nn.Identity)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    model = _model("resnet18")
    x, t = _inputs()
    expected = GradCAM(model, "layer4").attribute(x, t).cams

    def broken_compile(module, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    engine = GradCAM(model, "layer4", compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = engine.attribute(x, t).cams  # eager verification batch
        second = engine.attribute(x, t).cams  # compiled call fails -> eager
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    assert any("torch.compile failed" in str(w.message) for w in caught)
    assert engine._compiled is None and all(not m._forward_hooks for m in engine.model.modules())


def test_upsample_returns_requested_size():
    cams = torch.rand(3, 7, 7)
    out = upsample(cams, (224, 160))
    assert out.shape == (3, 224, 160)
    assert out.min() >= cams.min() - 1e-6 and out.max() <= cams.max() + 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_cuda_agrees_with_fp32(precision):
    model = _model("resnet18")
    x, t = _inputs(8)
    reference = GradCAM(model, "layer4", device="cuda").attribute(x, t).cams
    fast = GradCAM(model, "layer4", precision=precision, channels_last=True, fuse_batchnorm=True, device="cuda")
    closed = fast.attribute(x, t)
    generic = GradCAM(
        model, "layer4", precision=precision, channels_last=True, fuse_batchnorm=True, device="cuda", closed_form=False
    ).attribute(x, t)
    assert closed.cams.device.type == "cuda" and closed.cams.dtype == torch.float32
    assert closed.closed_form and not generic.closed_form
    scale = float(reference.max())
    # bf16 keeps 8 bits of mantissa: about 5% of the map's maximum on random weights (CPU stand-in: 2-5%).
    tolerance = {"bf16": 0.1, "fp16": 0.02}[precision]
    assert (closed.cams - reference).abs().max() <= tolerance * scale
    assert (generic.cams - closed.cams).abs().max() <= 0.01 * scale  # same model, same precision


@pytest.mark.slow
def test_torch_compile_gives_the_eager_maps():
    model = _model("resnet18")
    x, t = _inputs()
    expected = GradCAM(model, "layer4").attribute(x, t).cams
    engine = GradCAM(model, "layer4", compile=True, fuse_batchnorm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        engine.attribute(x, t)  # eager verification batch
        got = engine.attribute(x, t).cams  # compiled
    assert engine._compiled is not None
    assert (got - expected).abs().max() <= 1e-4 * float(expected.max())
