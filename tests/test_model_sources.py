"""Models from timm, Hugging Face and Python builders: loading, `target_layer: auto`, token layouts, and
Grad-CAM maps that agree with pytorch-grad-cam (with its reshape_transform) and captum LayerGradCam."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

from audit_tasks.cam_layout import TOKENS_NOT_A_GRID, ActivationLayout
from audit_tasks.cam_target import find_target
from audit_tasks.config import ModelConfig
from audit_tasks.errors import ConfigError, ModelError
from audit_tasks.model_sources import HF_NUM_LABELS, MISSING_EXTRA, LogitsAdapter
from audit_tasks.modelio import cam_target, load_model, model_fingerprint, preprocess_plan
from audit_tasks.preprocess import NO_PROCESSOR_CONFIG
from audit_tasks.saliency import GradCAM, normalize_per_image, upsample
from fixtures_models import CLASSES, build, hf_convnext, hf_vit, timm_model


@dataclass(frozen=True)
class Case:
    """A model as the audit sees it (logits out), its input size, what `auto` must pick, and its CAM grid."""

    build: Callable[[], nn.Module]
    size: int
    auto: str
    layout: ActivationLayout
    grid: tuple[int, int]
    path: str  # the engine path the model takes


def _tokens(prefix: int) -> ActivationLayout:
    return ActivationLayout("tokens", prefix_tokens=prefix)


_TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
CASES = {
    "timm_convnext": Case(
        lambda: timm_model("convnext_atto"), 64, "stages", ActivationLayout(), (2, 2), "one backward"
    ),
    "timm_vit": Case(
        lambda: timm_model("test_vit"),
        160,
        "blocks.5.norm1",
        _tokens(1),
        (10, 10),
        "one backward (tokens, 1 prefix token)",
    ),
    "timm_deit_distilled": Case(
        lambda: timm_model("deit_tiny_distilled_patch16_224", **_TINY_VIT),
        32,
        "blocks.1.norm1",
        _tokens(2),
        (4, 4),
        "one backward (tokens, 2 prefix tokens)",
    ),
    "timm_vit_registers": Case(
        lambda: timm_model("vit_tiny_patch16_224", reg_tokens=4, **_TINY_VIT),
        32,
        "blocks.1.norm1",
        _tokens(5),
        (4, 4),
        "one backward (tokens, 5 prefix tokens)",
    ),
    "timm_swin": Case(
        lambda: timm_model(
            "swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 1)
        ),
        64,
        "norm",
        ActivationLayout("nhwc"),
        (8, 8),
        "one backward (nhwc)",
    ),
    "hf_vit": Case(
        lambda: LogitsAdapter(hf_vit()).eval(),
        32,
        "model.vit.layers.1.layernorm_before",
        _tokens(1),
        (4, 4),
        "one backward (tokens, 1 prefix token)",
    ),
    "hf_convnext": Case(
        lambda: LogitsAdapter(hf_convnext()).eval(),
        64,
        "model.convnext.encoder.stages.1",
        ActivationLayout(),
        (8, 8),
        "one backward",
    ),
    "python_builder": Case(
        lambda: LogitsAdapter(_seeded_build()).eval(), 32, "model.features", ActivationLayout(), (8, 8), "closed form"
    ),
}


def _seeded_build() -> nn.Module:
    torch.manual_seed(0)
    return build(len(CLASSES))


_MODELS: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    if name not in _MODELS:
        _MODELS[name] = CASES[name].build()
    return _MODELS[name]


def _inputs(size: int, n: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % len(CLASSES)


def _to_grid(activation: Tensor, case: Case) -> Tensor:
    """The reshape_transform one writes for pytorch-grad-cam, by hand (independent of cam_layout)."""
    h, w = case.grid
    if case.layout.kind == "nhwc":
        return activation.permute(0, 3, 1, 2)
    if case.layout.kind == "tokens":
        n, _, c = activation.shape
        return activation[:, case.layout.prefix_tokens :, :].reshape(n, h, w, c).permute(0, 3, 1, 2)
    return activation


def _pgc_pipeline(cams: Tensor, size: int) -> Tensor:
    """What pytorch-grad-cam does after the weighted sum: ReLU, min-max, bilinear resize, min-max again."""
    return normalize_per_image(upsample(normalize_per_image(cams.clamp_min(0)), size))


# ---------------------------------------------------------------------------------------------
# target_layer: auto, layouts and paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_auto_picks_the_documented_layer_and_layout(name):
    case = CASES[name]
    target = find_target(_model(name), "auto", (case.size, case.size))
    assert target.path == case.auto
    assert target.layout == case.layout


def test_auto_picks_layer4_on_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    assert find_target(model, "auto", (64, 64)).path == "layer4"


def test_named_layer_of_a_wrapped_model_resolves_inside_the_wrapper():
    target = find_target(_model("hf_vit"), "vit.layers.0.layernorm_before", (32, 32))
    assert target.path == "model.vit.layers.0.layernorm_before"
    assert target.layout == _tokens(1)


def test_last_block_output_gives_zero_maps_under_a_class_token_head():
    """Why auto takes the last block's input: its output reaches the CLS head through the CLS token only."""
    model = _model("timm_vit")
    x, t = _inputs(160, 2)
    cams = GradCAM(model, "blocks.5", layout=_tokens(1)).attribute(x, t).cams
    assert float(cams.abs().max()) == 0.0
    assert float(GradCAM(model, "blocks.5.norm1", layout=_tokens(1)).attribute(x, t).cams.max()) > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_reports_the_path_it_took(name):
    case = CASES[name]
    engine = GradCAM(_model(name), case.auto, layout=case.layout)
    assert engine.path is None
    x, t = _inputs(case.size, 2)
    result = engine.attribute(x, t)
    assert engine.path == case.path
    assert result.closed_form == (case.path == "closed form")
    assert result.cams.shape == (2, *case.grid)


def test_tokens_that_do_not_form_a_grid_are_refused():
    layout = _tokens(0)
    with pytest.raises(ModelError) as caught:
        layout.to_grid(torch.zeros(1, 17, 8), (32, 32))
    assert str(caught.value) == TOKENS_NOT_A_GRID.format(tokens=17, prefix=0, height=32, width=32)


# ---------------------------------------------------------------------------------------------
# Differential tests: the same maps as pytorch-grad-cam and captum
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_maps_match_pytorch_grad_cam(name):
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    case = CASES[name]
    model = _model(name)
    x, t = _inputs(case.size)
    ours = GradCAM(model, case.auto, layout=case.layout).attribute(x, t).cams
    assert float(ours.max()) > 0
    with PgcGradCAM(
        model=model,
        target_layers=[model.get_submodule(case.auto)],
        reshape_transform=lambda a: _to_grid(a, case),
    ) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t]))
    model.zero_grad(set_to_none=True)
    assert (_pgc_pipeline(ours, case.size) - theirs).abs().max() <= 1e-4


class _GridTap(nn.Module):
    """Wraps a layer so that its output passes through `grid` as (N, C, h, w): what captum can hook."""

    def __init__(self, layer: nn.Module, case: Case) -> None:
        super().__init__()
        self.layer = layer
        self.grid = nn.Identity()
        self.case = case

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        grid = self.grid(_to_grid(out, self.case))
        if self.case.layout.kind == "nhwc":
            return grid.permute(0, 2, 3, 1)
        if self.case.layout.kind == "tokens":
            n, c = grid.shape[:2]
            patches = grid.permute(0, 2, 3, 1).reshape(n, -1, c)
            return torch.cat([out[:, : self.case.layout.prefix_tokens], patches], dim=1)
        return grid


@pytest.mark.parametrize("name", sorted(CASES))
def test_maps_match_captum_layer_gradcam(name):
    from captum.attr import LayerGradCam

    case = CASES[name]
    model = copy.deepcopy(_model(name))
    parent_path, _, child = case.auto.rpartition(".")
    parent = model.get_submodule(parent_path)
    tap = _GridTap(getattr(parent, child), case)
    setattr(parent, child, tap)
    x, t = _inputs(case.size)
    ours = GradCAM(_model(name), case.auto, layout=case.layout).attribute(x, t).cams
    theirs = LayerGradCam(model, tap.grid).attribute(x, target=t, relu_attributions=True)[:, 0].detach()
    scale = float(theirs.abs().max())
    assert scale > 0
    assert (ours - theirs).abs().max() <= 1e-4 * scale
    assert (normalize_per_image(ours) - normalize_per_image(theirs)).abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# Loading from each source
# ---------------------------------------------------------------------------------------------


def _config(checkpoint: Path, **values) -> ModelConfig:
    return ModelConfig(checkpoint=checkpoint, **{"classes": CLASSES, "target_layer": "auto", **values})


def test_timm_model_loads_from_safetensors_with_its_own_preprocessing(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "convnext.safetensors"
    save_file(_model("timm_convnext").state_dict(), path)
    config = _config(path, source="timm", arch="convnext_atto", input_size=64)
    model = load_model(config)
    assert not model.training and not isinstance(model, LogitsAdapter)
    assert cam_target(model, config).path == "stages"
    plan = preprocess_plan(model, config)
    assert (plan.kind, plan.input_size, plan.resize_to, plan.interpolation) == ("model", (64, 64), (73, 73), "bicubic")
    x, _ = _inputs(64, 2)
    torch.testing.assert_close(model(x), _model("timm_convnext")(x))


def test_timm_vit_loads_from_a_state_dict_at_its_own_size(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(_model("timm_vit").state_dict(), path)
    config = _config(path, source="timm", arch="test_vit")
    model = load_model(config)
    assert preprocess_plan(model, config).input_size == (160, 160)
    assert cam_target(model, config).layout == _tokens(1)


def test_huggingface_folder_loads_offline_and_returns_logits(tmp_path):
    hf_vit(tmp_path / "vit")
    config = _config(tmp_path / "vit", source="huggingface", arch="vit")
    model = load_model(config)
    assert isinstance(model, LogitsAdapter)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, len(CLASSES))
    assert cam_target(model, config).path == "model.vit.layers.1.layernorm_before"
    assert preprocess_plan(model, config).input_size == (32, 32)


def test_huggingface_convnext_reads_its_processor_crop(tmp_path):
    hf_convnext(tmp_path / "convnext")
    config = _config(tmp_path / "convnext", source="huggingface", arch="convnext")
    plan = preprocess_plan(load_model(config), config)
    assert (plan.resize, plan.resize_to, plan.crop, plan.crop_rounding) == ("shorter", (73, 73), (64, 64), "floor")


def test_huggingface_label_count_must_match_the_classes(tmp_path):
    hf_vit(tmp_path / "vit")
    with pytest.raises(ModelError) as caught:
        load_model(_config(tmp_path / "vit", source="huggingface", arch="vit", classes=("a", "b")))
    assert str(caught.value) == HF_NUM_LABELS.format(folder=tmp_path / "vit", labels=3, classes=2)


def test_huggingface_folder_without_processor_config_needs_squash(tmp_path):
    folder = tmp_path / "vit"
    hf_vit(folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError) as caught:
        load_model(_config(folder, source="huggingface", arch="vit"))
    assert str(caught.value) == NO_PROCESSOR_CONFIG.format(folder=folder)
    model = load_model(_config(folder, source="huggingface", arch="vit", preprocess="squash", input_size=32))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(CLASSES))


def test_python_builder_is_called_and_its_dict_output_adapted(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(_seeded_build().state_dict(), path)
    config = _config(path, source="python", arch="fixtures_models:build", input_size=32)
    model = load_model(config)
    assert isinstance(model, LogitsAdapter)
    assert cam_target(model, config).path == "model.features"
    assert preprocess_plan(model, config).kind == "squash"


def test_python_builder_that_does_not_import_is_named(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(_seeded_build().state_dict(), path)
    with pytest.raises(ModelError, match="'no_such_module:build' is not an importable 'pkg.module:build'"):
        load_model(_config(path, source="python", arch="no_such_module:build", input_size=32))


def test_missing_extra_is_named(tmp_path, monkeypatch):
    path = tmp_path / "vit.pt"
    torch.save(_model("timm_vit").state_dict(), path)
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ModelError) as caught:
        load_model(_config(path, source="timm", arch="test_vit"))
    assert str(caught.value) == MISSING_EXTRA.format(what="model.source 'timm'", package="timm", extra="timm")


def test_preprocess_model_needs_a_source_that_has_one(tmp_path):
    with pytest.raises(ConfigError, match="preprocess: model needs a source with its own preprocessing"):
        _config(tmp_path / "m.pt", arch="resnet18", preprocess="model")


def test_preprocess_defaults_keep_old_configs_on_squash(tmp_path):
    assert _config(tmp_path / "m.pt", arch="resnet18").preprocessing == "squash"
    assert _config(tmp_path / "m.pt", arch="resnet18", source="timm").preprocessing == "model"


def test_fingerprint_changes_with_source_and_preprocessing(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(_model("timm_vit").state_dict(), path)
    config = _config(path, source="timm", arch="test_vit")
    squash = config.model_copy(update={"preprocess": "squash"})
    python = config.model_copy(update={"source": "python", "arch": "fixtures_models:build", "preprocess": None})
    prints = {model_fingerprint(c) for c in (config, squash, python)}
    assert len(prints) == 3


def test_fingerprint_of_a_config_without_the_new_keys_is_unchanged(tmp_path):
    """Configs written before model.source keep their fingerprint (no spurious 'model changed' re-audit)."""
    import hashlib
    import json

    from audit_tasks.images import content_hash

    path = tmp_path / "m.pt"
    path.write_bytes(b"weights")
    config = _config(path, arch="resnet18", target_layer="layer4")
    recipe = {
        "weights": content_hash(path),
        "arch": "resnet18",
        "classes": list(CLASSES),
        "target_layer": "layer4",
        "input_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    expected = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    assert model_fingerprint(config) == expected
