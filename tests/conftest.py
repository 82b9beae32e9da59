"""Test session setup: an isolated Airflow home, set before anything imports airflow.

Airflow reads its configuration once, at first import, so these variables are set at conftest import.
The metadata DB is migrated lazily, only for tests that use the `airflow_db` fixture.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="audit-airflow-home-"))
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)

os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API_AUTH__JWT_SECRET": "audit-tests-only-secret-" * 4,
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the session's SQLite metadata DB once (a few seconds); returns AIRFLOW_HOME."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def small_demo_source(tmp_path_factory) -> Path:
    """The small demo (both batches, both trained models, both configs), built once per session.

    Read-only: audits consume a landing area and fill a catalog, so each user copies it
    (`fixtures_worlds.copy_small_demo`).
    """
    from audit_tasks.demo.build import build_demo

    root = tmp_path_factory.mktemp("small-demo-source")
    build_demo(root, scale="small")
    return root
