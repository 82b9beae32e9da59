"""The demo's models: seeded training, cached checkpoints, and the ground truth the audit is judged against.

The key test is `test_biased_model_uses_the_snow_cue`: with the snow patch moved between classes (the same
scenes otherwise, pixel for pixel), the biased model's accuracy collapses and the debiased model's does not.
So when the audit says "the biased model looks at the snow", it is right.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from audit_tasks.demo.build import build_demo
from audit_tasks.demo.story import PLANTED_FAILURES, split_gate_name, story_holds, within_planted_story
from audit_tasks.demo.train import (
    TrainSpec,
    build_model,
    fingerprint,
    is_cached,
    predict,
    train_cached,
    train_classifier,
)
from audit_tasks.demo.world import CLASSES, SplitSpec, WorldSpec, render_array, sample_split, swap_cue
from fixtures_worlds import copy_small_demo

WORLD = WorldSpec()


@pytest.fixture(scope="module")
def demo(small_demo_source, tmp_path_factory):
    """The small demo for this module: a copy of the session's build (about a minute on two cores)."""
    return copy_small_demo(small_demo_source, tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture(scope="module")
def cue_aligned_and_swapped():
    """Scenes where the cue follows the biased rule (snow <=> wolf), and the same scenes with it swapped."""
    samples = sample_split(SplitSpec("cue-test", 200, p_snow_wolf=1.0, p_snow_husky=0.0, p_dark=0.5), WORLD, 123)
    labels = np.array([CLASSES.index(s.label) for s in samples])
    aligned = render_array(samples, WORLD)
    swapped = render_array([swap_cue(s, WORLD) for s in samples], WORLD)
    return aligned, swapped, labels


def _accuracy(checkpoint, images, labels) -> float:
    state = torch.load(checkpoint, weights_only=True)
    return float((predict(state, images, TrainSpec()) == labels).mean())


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_biased_model_uses_the_snow_cue(demo, cue_aligned_and_swapped):
    aligned, swapped, labels = cue_aligned_and_swapped
    on_aligned = _accuracy(demo.biased_checkpoint, aligned, labels)
    on_swapped = _accuracy(demo.biased_checkpoint, swapped, labels)
    assert on_aligned - on_swapped > 0.25, (on_aligned, on_swapped)


@pytest.mark.slow
def test_debiased_model_does_not_use_the_snow_cue(demo, cue_aligned_and_swapped):
    aligned, swapped, labels = cue_aligned_and_swapped
    on_aligned = _accuracy(demo.debiased_checkpoint, aligned, labels)
    on_swapped = _accuracy(demo.debiased_checkpoint, swapped, labels)
    assert on_aligned > 0.85
    assert abs(on_aligned - on_swapped) < 0.1, (on_aligned, on_swapped)


@pytest.mark.slow
def test_checkpoints_are_plain_state_dicts_of_the_configured_arch(demo):
    for checkpoint in (demo.biased_checkpoint, demo.debiased_checkpoint):
        state = torch.load(checkpoint, weights_only=True)
        loaded = build_model("resnet18").load_state_dict(state)  # strict: raises on any shape mismatch
        assert not loaded.missing_keys and not loaded.unexpected_keys
        assert all(isinstance(value, torch.Tensor) for value in state.values())


@pytest.mark.slow
def test_generated_configs_load_with_default_thresholds(demo):
    from audit_tasks.config import CooccurrenceCheck, SaliencyCheck, load_config

    for path in (demo.biased_config, demo.debiased_config):
        config = load_config(path)
        assert config.model.classes == CLASSES
        assert config.checks.saliency == SaliencyCheck()
        assert config.checks.cooccurrence == CooccurrenceCheck()
        assert config.checks.subgroups.attributes == ("fur_tone", "lighting")
        assert config.output.dir == demo.reports


@pytest.mark.slow
def test_second_build_reuses_data_and_checkpoints(demo):
    before = {p: p.stat().st_mtime_ns for p in (demo.biased_checkpoint, demo.debiased_checkpoint)}
    again = build_demo(demo.root, scale="small")
    assert again.rebuilt == ()
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.slow
def test_same_seed_trains_the_same_weights():
    samples = sample_split(SplitSpec("repro", 48), WORLD, 5)
    images = render_array(samples, WORLD)
    labels = np.array([CLASSES.index(s.label) for s in samples])
    spec = TrainSpec(epochs=1, batch_size=16, seed=11)
    first, _ = train_classifier(images, labels, spec)
    second, _ = train_classifier(images, labels, spec)
    other, _ = train_classifier(images, labels, TrainSpec(epochs=1, batch_size=16, seed=12))
    assert _digest(first) == _digest(second)
    assert _digest(first) != _digest(other)


@pytest.fixture(scope="module")
def demo_audits(demo):
    from audit_tasks.config import load_config
    from audit_tasks.pipeline import run_audit

    return (
        run_audit(load_config(demo.biased_config), "demo-biased"),
        run_audit(load_config(demo.debiased_config), "demo-debiased"),
    )


@pytest.mark.slow
def test_biased_demo_audit_fails_every_planted_check(demo_audits):
    biased, _ = demo_audits
    failed = {(g.check, g.subject) for g in biased.verdict.failed}
    assert PLANTED_FAILURES <= failed, biased.verdict.describe()


@pytest.mark.slow
def test_biased_demo_audit_fails_nothing_outside_the_planted_story(demo_audits):
    biased, _ = demo_audits
    unexpected = [g.name for g in biased.verdict.failed if not within_planted_story(g.check, g.subject)]
    assert unexpected == [], biased.verdict.describe()


@pytest.mark.slow
def test_debiased_demo_audit_passes_with_evidence(demo_audits):
    _, debiased = demo_audits
    assert debiased.verdict.status == "passed", debiased.verdict.describe()
    assert debiased.summary["checks"] == {
        "ingest": "ran",
        "cooccurrence": "ran",
        "saliency": "ran",
        "subgroups": "ran",
        "strategies": "skipped",
        "rarity": "skipped",
    }


@pytest.mark.parametrize(
    ("check", "subject", "allowed"),
    [
        ("subgroups", "fur_tone&lighting=dark&night", True),
        ("subgroups", "fur_tone&lighting=light&night", False),
        ("subgroups", "lighting=night", False),
        ("subgroups", "fur_tone=light", False),
        ("saliency", "husky", False),
        ("cooccurrence", "ball -> bowl", False),
        ("class_balance", "labels", False),
    ],
)
def test_the_planted_story_allows_only_dark_fur_intersections_beyond_the_planted_gates(check, subject, allowed):
    assert within_planted_story(check, subject) is allowed


def test_story_holds_needs_every_planted_gate_and_a_clean_debiased_run():
    planted = [f"{check}/{subject}/m" for check, subject in PLANTED_FAILURES]
    assert story_holds(planted + ["subgroups/fur_tone&lighting=dark&day/accuracy"], [])
    assert not story_holds(planted[1:], [])
    assert not story_holds(planted + ["saliency/husky/flagged_fraction"], [])
    assert not story_holds(planted, ["saliency/wolf/flagged_fraction"])
    assert split_gate_name("cooccurrence/a/b -> c/p_b_given_a") == ("cooccurrence", "a/b -> c")


@pytest.mark.slow
def test_demo_command_audits_both_models_through_airflow(demo, capsys):
    """`python -m audit_tasks demo` on the cached small build: real `airflow dags test` runs, red then green."""
    from audit_tasks.demo.run import run_demo

    biased, debiased = run_demo(demo.root, use_airflow=True, scale="small")
    out = capsys.readouterr().out
    assert (biased.passed, debiased.passed) == (False, True)
    assert "saliency/wolf/flagged_fraction" in biased.failed_gates
    assert biased.report.is_file() and debiased.report.is_file()
    assert "biased model: audit FAILED" in out and "debiased model: audit PASSED" in out


def test_cache_needs_the_matching_fingerprint(tmp_path):
    checkpoint = tmp_path / "m.pt"
    calls = []

    def make_data():
        calls.append(1)
        return np.zeros((4, 32, 32, 3), dtype=np.uint8), np.array([0, 1, 0, 1]), None

    spec = TrainSpec(epochs=1, batch_size=4)
    key = fingerprint({"spec": spec, "n": 4})
    first = train_cached(checkpoint, key, spec, make_data)
    second = train_cached(checkpoint, key, spec, make_data)
    assert (first.cached, second.cached, len(calls)) == (False, True, 1)
    assert is_cached(checkpoint, key) and not is_cached(checkpoint, fingerprint({"spec": spec, "n": 5}))
    assert json.loads(checkpoint.with_suffix(".pt.json").read_text())["fingerprint"] == key


def test_fingerprint_changes_with_any_parameter():
    assert fingerprint({"train": TrainSpec()}) == fingerprint({"train": TrainSpec()})
    assert fingerprint({"train": TrainSpec()}) != fingerprint({"train": TrainSpec(epochs=9)})
