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
        "model": {
            "arch": "resnet18",
            "checkpoint": "model.pt",
            "classes": ["doctor", "nurse"],
            "target_layer": "layer4",
        },
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


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_bootstrap", 10, r"'checks\.subgroups\.n_bootstrap' must be between 100 and 100000"),
        (
            "multiple_comparisons",
            "sidak",
            r"'checks\.subgroups\.multiple_comparisons' must be one of holm, bonferroni, none",
        ),
    ],
)
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
    del body["model"]["classes"]
    with pytest.raises(ConfigError, match=r"missing required key 'model\.classes'"):
        load_config(write_config(tmp_path, body))


def test_a_missing_target_layer_means_auto(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    del body["model"]["target_layer"]
    assert load_config(write_config(tmp_path, body)).model.target_layer == "auto"


def test_literal_choice_is_enforced(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs) | {"saliency": {"target": "guess"}}
    with pytest.raises(ConfigError, match=r"'saliency\.target' must be one of label, prediction"):
        load_config(write_config(tmp_path, body))


def test_overrides_replace_thresholds_by_dotted_key(tmp_path, dataset_dirs):
    config = load_config(write_config(tmp_path, full_body(dataset_dirs)), {"checks.saliency.max_spurious_share": 0.2})
    assert config.checks.saliency.max_spurious_share == 0.2


def test_checks_only_ignores_dataset_and_model_sections(tmp_path):
    body = {
        "dataset": {"landing": "gone", "image_root": "gone", "catalog": "gone"},
        "checks": {"cooccurrence": {"min_support": 5}},
    }
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


def test_every_mistake_is_reported_at_once_each_on_its_own_line_with_its_key(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["checks"]["saliency"] = {"max_flagged_fraction": 2}
    body["checks"]["subgroups"]["metric"] = "f2"
    body["saliency"] = {"batch_sise": 8}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, body))
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{tmp_path / 'audit.yaml'}: 3 problems:"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        [
            "'checks.saliency.max_flagged_fraction' must be a fraction in [0, 1]; got 2",
            "'checks.subgroups.metric' must be one of accuracy, recall, tpr, fpr, precision, macro_recall, "
            "macro_precision, f1, exact_match, hamming_accuracy; got 'f2'",
            "unknown key 'saliency.batch_sise' (known keys here: batch_size, compile, device, num_workers, precision, "
            "target)",
        ]
    )


def test_unknown_key_lists_the_known_keys_at_its_level(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs) | {"modle": {}}
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'modle' \(known keys here: checks, dataset, model, output, "
        r"policy, saliency\)",
    ):
        load_config(write_config(tmp_path, body))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.5", r"'checks\.subgroups\.max_gap' must be a number, got '0\.5'"),
        (True, r"'checks\.subgroups\.max_gap' must be a number, got True"),
        (float("nan"), r"'checks\.subgroups\.max_gap' must be a finite number"),
    ],
)
def test_types_are_strict_a_numeric_string_or_a_bool_is_not_a_number(tmp_path, dataset_dirs, value, message):
    body = full_body(dataset_dirs)
    body["checks"]["subgroups"]["max_gap"] = value
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, body))


def test_an_integer_is_a_fine_number_and_lists_become_tuples(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["checks"]["subgroups"]["max_gap"] = 1
    body["model"]["mean"] = [0, 0, 0]
    config = load_config(write_config(tmp_path, body))
    assert config.checks.subgroups.max_gap == 1.0 and isinstance(config.checks.subgroups.max_gap, float)
    assert config.model.mean == (0.0, 0.0, 0.0) and config.model.classes == ("doctor", "nurse")


def test_an_integer_setting_refuses_a_bool(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs) | {"saliency": {"batch_size": True}}
    with pytest.raises(ConfigError, match=r"'saliency\.batch_size' must be an integer, got True"):
        load_config(write_config(tmp_path, body))


def test_a_check_section_with_nothing_below_it_runs_with_its_defaults(tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text("checks:\n  saliency:\n  ingest:\n", encoding="utf-8")
    config = load_config(path)
    assert config.checks.saliency == SaliencyCheck() and config.checks.ingest is not None
    assert config.checks.subgroups is None


def test_object_store_uris_are_kept_as_given(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["dataset"]["catalog"] = "s3://bucket/audit/catalog"
    body["output"] = {"dir": "memory://reports/audits"}
    config = load_config(write_config(tmp_path, body))
    assert str(config.dataset.catalog) == "s3://bucket/audit/catalog"
    assert str(config.output.dir) == "memory://reports/audits"


def test_output_dir_defaults_to_a_folder_beside_the_config(tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path).output.dir == tmp_path.resolve() / "audit_reports"


def test_positive_class_must_be_one_of_the_model_classes(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs)
    body["checks"]["subgroups"]["positive_class"] = "surgeon"
    with pytest.raises(
        ConfigError, match=r"'checks\.subgroups\.positive_class' 'surgeon' is not one of model\.classes"
    ):
        load_config(write_config(tmp_path, body))


def test_source_is_not_a_key_of_the_file(tmp_path, dataset_dirs):
    body = full_body(dataset_dirs) | {"source": "elsewhere.yaml"}
    with pytest.raises(ConfigError, match="unknown key 'source'"):
        load_config(write_config(tmp_path, body))


def test_a_section_built_in_code_refuses_an_impossible_value_naming_it():
    with pytest.raises(ConfigError, match=r"SaliencyCheck: 'max_flagged_fraction' must be a fraction in \[0, 1\]"):
        SaliencyCheck(max_flagged_fraction=2)


def test_sections_are_frozen_and_equal_by_value():
    check = SaliencyCheck(min_images=5)
    assert check == SaliencyCheck(min_images=5) != SaliencyCheck()
    with pytest.raises(ValueError):
        check.min_images = 6


def test_the_example_config_names_every_key():
    import re

    from audit_tasks.config import dotted_keys

    example = Path(__file__).resolve().parents[1] / "docs" / "example-config.yaml"
    text = example.read_text(encoding="utf-8")
    parsed = yaml.safe_load(text)
    missing = []
    for key in dotted_keys():
        *sections, name = key.split(".")
        node = parsed
        for part in sections:
            node = (node or {}).get(part)
        # a key left at its default may be shown commented out: "# attributes: [gender]"
        if not (isinstance(node, dict) and name in node) and not re.search(rf"#\s*{name}:", text):
            missing.append(key)
    assert missing == []
    assert len(dotted_keys()) > 40
