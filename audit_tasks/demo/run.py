"""Run the demo story: audit the biased and the debiased model, through the real `dataset_audit` DAG.

Airflow runs in a subprocess (`airflow dags test`, an embedded SQLite metadata DB under the demo
folder), so this package still never imports Airflow; `use_airflow=False` runs the same stages in process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from audit_tasks.config import load_config
from audit_tasks.demo.story import story_holds
from audit_tasks.errors import AuditError
from audit_tasks.storage import is_remote, public_uri


@dataclass(frozen=True)
class DemoRun:
    """One audited model: what the audit said, and whether that is what the demo's story expects."""

    name: str
    expected_pass: bool
    passed: bool
    failed_gates: tuple[str, ...]
    report: Path
    run_dir: Path

    @property
    def ok(self) -> bool:
        return self.passed == self.expected_pass


def repo_root() -> Path:
    """The checkout holding dags/ and plugins/ next to this package (editable install or source tree)."""
    return Path(__file__).resolve().parents[2]


def run_demo(out: Path, *, use_airflow: bool = True, scale: str = "full") -> list[DemoRun]:
    """Build what is missing, audit both models, print each verdict; return the runs."""
    from audit_tasks.demo.build import build_demo

    out = Path(out).resolve()
    print(f"demo: building the generated world and models under {out} (cached after the first run)", flush=True)
    build = build_demo(out, scale=scale)
    airflow_env = airflow_environment(out) if use_airflow else None
    runs = []
    for name, config_path, expected_pass in (
        ("biased", build.biased_config, False),
        ("debiased", build.debiased_config, True),
    ):
        run_id = f"demo-{name}"
        if airflow_env is not None:
            audit_in_airflow(config_path, run_id, airflow_env, out / "airflow" / f"{name}.log")
        else:
            from audit_tasks.pipeline import run_audit

            run_audit(load_config(config_path), run_id)
        runs.append(read_run(name, config_path, run_id, expected_pass))
    for run in runs:
        verdict = "PASSED" if run.passed else "FAILED"
        print(f"\n== {run.name} model: audit {verdict}")
        for gate in run.failed_gates:
            print(f"   failed gate: {gate}")
        print(f"   report: {run.report}")
    story = came_out_as_planted(runs)
    print(
        "\ndemo: "
        + (
            "the biased model failed every planted check and nothing else, the debiased one passed"
            if story
            else "UNEXPECTED: the audits did not come out as the planted truth says"
        )
    )
    return runs


def came_out_as_planted(runs: list[DemoRun]) -> bool:
    """The biased audit failed every planted check and nothing outside the story; the debiased one passed."""
    by_name = {run.name: run for run in runs}
    return all(run.ok for run in runs) and story_holds(by_name["biased"].failed_gates, by_name["debiased"].failed_gates)


def read_run(name: str, config_path: Path, run_id: str, expected_pass: bool) -> DemoRun:
    config = load_config(config_path)
    if is_remote(config.output.dir):
        raise AuditError(f"the demo reads its runs from this machine, not from {public_uri(config.output.dir)}")
    run_dir = config.output.dir / run_id
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise AuditError(f"the {name} audit left no summary at {summary_path}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return DemoRun(
        name, expected_pass, bool(summary["passed"]), tuple(summary["failed_gates"]), run_dir / "report.html", run_dir
    )


def airflow_environment(out: Path) -> dict[str, str]:
    """Environment for an Airflow of our own: SQLite DB under the demo folder, our dags and plugins."""
    home = out / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    if not (root / "dags" / "dataset_audit.py").is_file():
        raise AuditError(
            f"cannot find dags/dataset_audit.py next to the package ({root}); "
            "run the demo from a checkout, or pass --no-airflow"
        )
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AUDIT_REPORTS_DIR": str(out / "reports"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])),
        }
    )
    marker = home / ".db-migrated"
    if not marker.exists():
        print("demo: initialising Airflow's metadata DB (SQLite)", flush=True)
        _airflow(["db", "migrate"], env, home / "db-migrate.log")
        marker.touch()
    return env


def audit_in_airflow(config_path: Path, run_id: str, env: dict[str, str], log_path: Path) -> int:
    conf = json.dumps({"config": str(config_path), "run_id": run_id})
    print(f"demo: airflow dags test dataset_audit (config {config_path.name}); log: {log_path}", flush=True)
    return _airflow(["dags", "test", "dataset_audit", "-c", conf], env, log_path, allowed=(0, 1))


def retrain_in_airflow(
    config_path: Path, weights: Path, checkpoint: Path, epochs: int, seed: int, env: dict[str, str], log_path: Path
) -> Path:
    """Run `retrain_on_clean_audit` with its EXAMPLE training on, given the red audit's weights explicitly.

    Returns the checkpoint; AuditError naming the log when the DAG run wrote none.
    """
    conf = json.dumps(
        {
            "config": str(config_path),
            "example_training": True,
            "sample_weights": str(weights),
            "checkpoint": str(checkpoint),
            "epochs": epochs,
            "seed": seed,
        }
    )
    print(f"demo: airflow dags test retrain_on_clean_audit (weights {weights.name}); log: {log_path}", flush=True)
    _airflow(["dags", "test", "retrain_on_clean_audit", "-c", conf], env, log_path)
    if not checkpoint.is_file():
        raise AuditError(f"retrain_on_clean_audit wrote no {checkpoint}; see {log_path}")
    return checkpoint


def _airflow(args: list[str], env: dict[str, str], log_path: Path, allowed: tuple[int, ...] = (0,)) -> int:
    airflow = Path(sys.executable).with_name("airflow")
    command = [str(airflow) if airflow.exists() else "airflow", *args]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode not in allowed:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise AuditError(f"`airflow {' '.join(args[:3])}` exited {proc.returncode}; see {log_path}\n{tail}")
    return proc.returncode
