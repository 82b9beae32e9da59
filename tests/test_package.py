"""The package is the product: importable and usable without Airflow."""

import subprocess
import sys


def test_importing_audit_tasks_does_not_import_airflow():
    code = (
        "import sys, audit_tasks, audit_tasks.pipeline, audit_tasks.cli, audit_tasks.config; "
        "print('airflow' in sys.modules or any(m.startswith('airflow.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_is_named_in_the_package():
    import audit_tasks

    for name in ("load_config", "AuditConfig", "AuditError", "ConfigError", "GateResult", "Verdict"):
        assert name in audit_tasks.__all__ and hasattr(audit_tasks, name)
