"""The package is the product: importable and usable without Airflow, installable with what it needs."""

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
EXTRAS = {"gpu", "s3", "gcs", "timm", "huggingface", "coco", "datasets", "celery"}


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


# ---------------------------------------------------------------------------------------------
# packaging: pyproject.toml declares what the locks pin
# ---------------------------------------------------------------------------------------------


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _pins(lock: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / lock).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{lock}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_declared_dependency_is_pinned_in_the_lock_within_its_range():
    pins = _pins("requirements.lock")
    declared = [Requirement(text) for text in _pyproject()["project"]["dependencies"]]
    assert len(declared) >= 10
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is declared but requirements.lock does not pin it (make lock)"
        assert requirement.specifier.contains(pins[name]), f"{requirement} does not admit the locked {pins[name]}"


def test_dev_lock_keeps_every_runtime_pin():
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
    for tool in ("pytest", "ruff", "mypy", "statsmodels"):
        assert tool in dev, tool


#: Extras the test install pins, so that the model sources and importers they serve are tested.
TESTED_EXTRAS = {"timm", "huggingface", "coco", "datasets", "celery"}


def test_optional_extras_stay_out_of_the_runtime_install():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert set(extras) == EXTRAS
    assert extras["gpu"] == []  # the torch wheels are CUDA builds already (see the comment in pyproject.toml)
    runtime = _pins("requirements.lock")
    for extra, requirements in extras.items():
        for text in requirements:
            assert canonicalize_name(Requirement(text).name) not in runtime, f"[{extra}] {text} is in make demo"


def test_the_test_install_pins_the_tested_extras_within_their_declared_ranges():
    extras = _pyproject()["project"]["optional-dependencies"]
    dev = _pins("requirements-dev.lock")
    for extra in TESTED_EXTRAS:
        for text in extras[extra]:
            requirement = Requirement(text)
            pinned = dev.get(canonicalize_name(requirement.name))
            assert pinned is not None, f"[{extra}] {text} is not pinned in requirements-dev.lock"
            assert requirement.specifier.contains(pinned), f"[{extra}] {text} but the test lock pins {pinned}"


def test_version_has_one_source():
    import audit_tasks

    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "audit_tasks.__version__"}
    assert str(Version(audit_tasks.__version__)) == audit_tasks.__version__


def test_package_declares_the_airflow_entry_points():
    entry_points = _pyproject()["project"]["entry-points"]
    assert entry_points["airflow.plugins"] == {"audit_reports": "audit_airflow.plugin:AuditReportsPlugin"}
    assert entry_points["apache_airflow_provider"] == {"provider_info": "audit_airflow.provider:get_provider_info"}


def _third_party_imports(package: str) -> set[str]:
    import ast

    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("audit_tasks", "audit_airflow")}


def test_every_third_party_import_of_the_core_is_a_declared_dependency():
    """A module the core imports must come from a declared dependency, or a clean install breaks on it."""
    from importlib.metadata import packages_distributions

    declared = {canonicalize_name(Requirement(text).name) for text in _pyproject()["project"]["dependencies"]}
    providers = packages_distributions()
    undeclared = {
        module: providers.get(module)
        for module in _third_party_imports("audit_tasks")
        if not declared & {canonicalize_name(d) for d in providers.get(module, [])}
    }
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def test_report_templates_ship_in_the_wheel():
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    templates = sorted(p.name for p in (REPO / "audit_tasks" / "report" / "templates").iterdir())
    assert templates and data["audit_tasks.report"] == ["templates/*"]
