"""Crash safety and long-running stability: killed runs re-run to identical tables; no leaks across nights."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from audit_tasks.config import load_config
from audit_tasks.pipeline import run_audit
from audit_tasks.tables import read_table
from fixtures_pipeline import lenient_checks, make_world

TABLES = (
    "images.parquet",
    "quarantine.parquet",
    "cooccurrence.parquet",
    "saliency_by_class.parquet",
    "subgroups.parquet",
    "gates.parquet",
)


def _reset_state(root: Path) -> None:
    """Forget every run: empty catalog (ledger included) and reports, keep images, manifest and model."""
    for name in ("catalog", "reports"):
        shutil.rmtree(root / name, ignore_errors=True)
    (root / "catalog").mkdir()


def _tables(run: Path) -> dict[str, pd.DataFrame]:
    return {name: read_table(run / name) for name in TABLES}


def _cli_args(config: Path, run_id: str) -> list[str]:
    return ["-q", "audit", "--config", str(config), "--run-id", run_id]


def _audit_command(config: Path, run_id: str) -> list[str]:
    return [sys.executable, "-m", "audit_tasks", *_cli_args(config, run_id)]


#: The audit CLI in a child that SIGKILLs itself the moment `argv[1]` is renamed into place: every file the run
#: writes goes through `storage.atomic_path`, whose last step is `os.replace(tmp, target)`.
_KILL_AFTER_REPLACE = """
import os, signal, sys
from audit_tasks.cli import main

target = os.path.realpath(sys.argv[1])
replace = os.replace

def replace_then_die(src, dst, *args, **kwargs):
    replace(src, dst, *args, **kwargs)
    if os.path.realpath(dst) == target:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
sys.exit(main(sys.argv[2:]))
"""


def _killed_after_writing(path: Path, config: Path, run_id: str) -> subprocess.CompletedProcess[str]:
    """Run the audit in a child that dies by SIGKILL right after `path` is written (it runs to the end if not)."""
    command = [sys.executable, "-c", _KILL_AFTER_REPLACE, str(path), *_cli_args(config, run_id)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at",
    [
        "catalog/_ledger.parquet",  # right after ingest committed its manifests
        "reports/night/_stages/audit_rows.parquet",
        "reports/night/images.parquet",  # between saliency and the checks that read it
        "reports/night/gates.parquet",  # before summary.json and the report
    ],
)
def test_a_run_killed_at_any_stage_reruns_to_identical_tables(tmp_path, kill_at):
    world = make_world(tmp_path, n_images=8, bad_rows=1)
    reference = run_audit(load_config(world.config), "night")
    expected = _tables(reference.run_dir)
    _reset_state(tmp_path)

    killed = _killed_after_writing(tmp_path / kill_at, world.config, "night")
    assert killed.returncode == -signal.SIGKILL, f"not killed at {kill_at}: exit {killed.returncode}, {killed.stderr}"
    assert (tmp_path / kill_at).is_file()
    assert not (reference.run_dir / "report.html").exists()  # the run really stopped before its end
    leftovers = [p.name for p in (tmp_path / "reports").rglob("*.tmp")]
    rerun = subprocess.run(_audit_command(world.config, "night"), capture_output=True, text=True)

    assert rerun.returncode == 0, rerun.stderr
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(read_table(reference.run_dir / name), frame, obj=name)  # the rerun's tables
    assert all(name.startswith(".") for name in leftovers)  # only hidden temp files can be left by a kill


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_twenty_nightly_audits_in_one_process_do_not_leak(tmp_path):
    world = make_world(tmp_path, n_images=4, checks=lenient_checks(), extra=None)
    config = load_config(world.config, {"dataset.audit_scope": "catalog"})
    samples = []
    for night in range(20):
        outcome = run_audit(config, f"night-{night:02d}")
        assert outcome.summary["counts"]["audited"] == 4
        gc.collect()
        samples.append((_rss_bytes(), _open_fds()))
    warm_rss, warm_fds = samples[4]
    last_rss, last_fds = samples[-1]
    assert last_fds <= warm_fds + 2
    assert last_rss - warm_rss < 64 * 2**20


def test_twenty_engine_calls_on_one_model_leave_no_hooks_behind():
    import torch
    import torchvision

    from audit_tasks.saliency import GradCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=2).train()
    engine = GradCAM(model, "layer3")  # not the closed form: the backward path with its hooks
    images = torch.rand(2, 3, 64, 64)
    for _ in range(20):
        engine.attribute(images, torch.tensor([0, 1]))
    hooked = [
        name
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
    ]
    assert hooked == []
    assert model.training
