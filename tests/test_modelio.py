"""Model loading: weights only, never code; scripted models opt-in; mistakes named."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from audit_tasks.config import ModelConfig
from audit_tasks.errors import ModelError
from audit_tasks.modelio import checkpoint_kind, load_model


def model_config(checkpoint: Path, **overrides) -> ModelConfig:
    values = dict(arch="resnet18", checkpoint=checkpoint, classes=("a", "b"), target_layer="layer4", input_size=32)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def resnet_state_dict(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), path)
    return path


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/audit_tasks_pwned",))


def test_state_dict_loads_into_the_builder_in_eval_mode(resnet_state_dict):
    model = load_model(model_config(resnet_state_dict))
    assert not model.training
    reference = torch.load(resnet_state_dict, weights_only=True)
    assert torch.equal(model.state_dict()["fc.weight"], reference["fc.weight"])


def test_pickle_carrying_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    marker = Path("/tmp/audit_tasks_pwned")
    marker.unlink(missing_ok=True)
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _RunsCode()}, path, pickle_module=pickle)
    with pytest.raises(ModelError, match="refused to load"):
        load_model(model_config(path))
    assert not marker.exists()


def test_torchscript_needs_explicit_opt_in(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torchvision.models.resnet18(weights=None, num_classes=2).eval()).save(str(path))
    assert checkpoint_kind(path) == "torchscript"
    with pytest.raises(ModelError, match="allow_scripted"):
        load_model(model_config(path))
    model = load_model(model_config(path, allow_scripted=True))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_unknown_target_layer_is_named(resnet_state_dict):
    with pytest.raises(ModelError, match="'layer9' is not a module of resnet18"):
        load_model(model_config(resnet_state_dict, target_layer="layer9"))


def test_class_count_mismatch_is_explained(resnet_state_dict):
    with pytest.raises(ModelError, match="does not fit model.arch 'resnet18' with 3 classes"):
        load_model(model_config(resnet_state_dict, classes=("a", "b", "c")))


def test_unknown_arch_is_named(resnet_state_dict):
    with pytest.raises(ModelError, match="'resnet_9000' is not a torchvision model builder"):
        load_model(model_config(resnet_state_dict, arch="resnet_9000"))


def test_non_state_dict_payload_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ModelError, match="is not a state_dict"):
        load_model(model_config(path))
