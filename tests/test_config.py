"""Config: parsed once into typed objects; every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from audit_tasks.config import AuditConfig, SaliencyCheck, load_config
from audit_tasks.errors import ConfigError


def write_config(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


@pytest.fixture
def dataset_dirs(tmp_path: Path) -> dict:
    for name in ("landing", "images", "catalog"):
        (tmp_path / name).mkdir()
    (tmp_path / "model.pt").write_bytes(b"")
    return {"landing": "landing", "image_root": "images", "catalog": "catalog"}


def full_body(dataset_dirs: dict) -> dict:
    return {
        "dataset": dataset_dirs,
        "model": {"arch": "resnet18", "checkpoint": "model.pt", "classes": ["doctor", "nurse"], "target_layer": "layer4"},
        "checks": {"saliency": {}, "subgroups": {"attributes": ["gender"], "max_gap": 0.1}},
    }


def test_relative_paths_resolve_against_the_config_folder(tmp_path, dataset_dirs):
    config = load_config(write_config(tmp_path, full_body(dataset_dirs)))
    assert config.dataset.landing == (tmp_path / "landing").resolve()
    assert config.model.checkpoint == (tmp_path / "model.pt").resolve()


def test_present_section_without_thresholds_uses_defaults(tmp_path, dataset_dirs):
    config = load_config(write_config(tmp_path, full_body(dataset_dirs)))
    assert config.checks.saliency == SaliencyCheck()
    assert config.checks.subgroups.max_gap == 0.1
    assert config.checks.subgroups.min_group_size == 30


def test_missing_check_section_means_check_skipped(tmp_path, dataset_dirs):
    config = load_config(write_config(tmp_path, full_body(dataset_dirs)))
    assert config.checks.cooccurrence is None


def test_unknown_top_level_key_is_named(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs) | {"chekcs": {}}
    with pytest.raises(ConfigError, match="unknown key 'chekcs'"):
        load_config(write_config(tmp_path, body))


def test_unknown_nested_key_is_named_with_its_path(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["checks"]["saliency"] = {"max_spurius_share": 0.3}
    with pytest.raises(ConfigError, match=r"unknown key 'checks\.saliency\.max_spurius_share'"):
        load_config(write_config(tmp_path, body))


def test_wrong_type_is_named(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["saliency"] = {"batch_size": "sixty-four"}
    with pytest.raises(ConfigError, match=r"'saliency\.batch_size' must be an integer"):
        load_config(write_config(tmp_path, body))


def test_impossible_threshold_is_named(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["checks"]["subgroups"]["max_gap"] = 1.5
    with pytest.raises(ConfigError, match=r"'checks\.subgroups\.max_gap' must be a fraction"):
        load_config(write_config(tmp_path, body))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("n_bootstrap", 10, r"'checks\.subgroups\.n_bootstrap' must be between 100 and 100000"),
    ("multiple_comparisons", "holm", r"'checks\.subgroups\.multiple_comparisons' must be one of bonferroni, none"),
])
def test_unusable_subgroup_test_settings_are_named(tmp_path, dataset_dirs, key, value, message):
    body = full_body(dataset_dirs)
    body["checks"]["subgroups"][key] = value
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, body))


def test_missing_checkpoint_file_is_named(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["model"]["checkpoint"] = "nowhere.pt"
    with pytest.raises(ConfigError, match=r"'model\.checkpoint' file does not exist"):
        load_config(write_config(tmp_path, body))


def test_missing_landing_folder_is_named(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["dataset"]["landing"] = "no-such-folder"
    with pytest.raises(ConfigError, match=r"'dataset\.landing' folder does not exist"):
        load_config(write_config(tmp_path, body))


def test_missing_required_key_is_named(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    del body["model"]["target_layer"]
    with pytest.raises(ConfigError, match=r"missing required key 'model\.target_layer'"):
        load_config(write_config(tmp_path, body))


def test_literal_choice_is_enforced(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs) | {"saliency": {"target": "guess"}}
    with pytest.raises(ConfigError, match=r"'saliency\.target' must be one of label, prediction"):
        load_config(write_config(tmp_path, body))


def test_overrides_replace_thresholds_by_dotted_key(tmp_path, dataset_dirs):
    config = load_config(write_config(tmp_path, full_body(dataset_dirs)),
                         {"checks.saliency.max_spurious_share": 0.2})
    assert config.checks.saliency.max_spurious_share == 0.2


def test_checks_only_ignores_dataset_and_model_sections(tmp_path):
    body = {"dataset": {"landing": "gone", "image_root": "gone", "catalog": "gone"},
            "checks": {"cooccurrence": {"min_support": 5}}}
    config = load_config(write_config(tmp_path, body), checks_only=True)
    assert config.dataset is None and config.checks.cooccurrence.min_support == 5


def test_cooccurrence_attributes_default_to_the_subgroup_attributes(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["checks"]["cooccurrence"] = {}
    config = load_config(write_config(tmp_path, body))
    assert config.checks.cooccurrence_attributes() == ("gender",)


def test_non_mapping_yaml_is_refused(tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_empty_config_is_all_defaults(tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text("", encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, AuditConfig) and config.dataset is None and config.checks.saliency is None


def test_the_documented_example_config_parses_with_every_key(tmp_path):
    import shutil
    from pathlib import Path as _Path

    example = _Path(__file__).resolve().parents[1] / "docs" / "example-config.yaml"
    shutil.copy(example, tmp_path / "audit.yaml")
    for name in ("data/landing", "data/images", "models"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "models" / "model.pt").write_bytes(b"")
    config = load_config(tmp_path / "audit.yaml")
    assert config.checks.subgroups.attributes == ("skin_tone", "gender")
    assert config.checks.cooccurrence_attributes() == ("skin_tone", "gender")
