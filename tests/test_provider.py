"""The installed package plugs into Airflow: provider metadata with the `[audit]` section, the UI plugin.

These read the installed distribution's metadata (`make` installs the package editable), so an entry
point that is declared in pyproject.toml but not reinstalled shows up here as missing.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST = "audit-tasks"
PROVIDER_TARGET = "audit_airflow.provider:get_provider_info"
PLUGIN_TARGET = "audit_airflow.plugin:AuditReportsPlugin"
REINSTALL = "reinstall: .venv/bin/python -m pip install --no-deps -e . (make does it when pyproject.toml changes)"


def _our_entry_points(group: str) -> list[metadata.EntryPoint]:
    return [ep for ep in metadata.distribution(DIST).entry_points if ep.group == group]


def _settings_read_by_the_code() -> dict[str, ast.expr]:
    """Every `audit_setting("key", fallback)` call in the Airflow layer, DAGs and plugins: key -> fallback."""
    calls: dict[str, ast.expr] = {}
    for folder in ("audit_airflow", "dags", "plugins"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name != "audit_setting" or not node.args:
                    continue
                key = node.args[0]
                assert isinstance(key, ast.Constant) and isinstance(key.value, str), (
                    f"{path}:{node.lineno}: audit_setting's key must be a literal so it can be declared"
                )
                calls[key.value] = node.args[1]
    return calls


@pytest.fixture(scope="module")
def provider_info() -> dict:
    (entry_point,) = _our_entry_points("apache_airflow_provider") or pytest.fail(
        f"no provider entry point; {REINSTALL}"
    )
    assert entry_point.value == PROVIDER_TARGET
    return entry_point.load()()


def test_provider_info_passes_airflows_schema_and_names_this_distribution(provider_info):
    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(provider_info, schema)
    assert provider_info["package-name"] == DIST  # Airflow refuses provider info naming another package
    assert provider_info["versions"] == [metadata.version(DIST)]
    assert "plugins" not in provider_info  # the plugin has its own entry point; listing it twice loads it twice


def test_audit_section_declares_exactly_the_settings_the_code_reads(provider_info):
    read = set(_settings_read_by_the_code())
    declared = set(provider_info["config"]["audit"]["options"])
    assert len(read) >= 8  # the scan still finds the calls
    assert read == declared, {"read but not declared": read - declared, "declared but never read": declared - read}


def test_declared_defaults_never_hide_the_codes_own_fallback(provider_info):
    """Airflow consults provider defaults before a caller's fallback, so a default must equal the fallback."""
    options = provider_info["config"]["audit"]["options"]
    for key, fallback in _settings_read_by_the_code().items():
        default = options[key]["default"]
        if isinstance(fallback, ast.Constant) and fallback.value != "":
            assert default == fallback.value, key
        else:  # computed (environment) or empty fallback: declaring a value would override it
            assert default is None, key


def test_settings_named_in_docs_and_compose_are_declared(provider_info):
    declared = set(provider_info["config"]["audit"]["options"])
    mentioned: set[str] = set()
    for path in [REPO / "README.md", *sorted((REPO / "docker").glob("*")), *sorted((REPO / "docs").rglob("*.md"))]:
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            mentioned |= {name.lower() for name in re.findall(r"AIRFLOW__AUDIT__([A-Z0-9_]+)", text)}
    assert mentioned  # the docker README and compose file name several
    assert mentioned <= declared, mentioned - declared


def test_plugin_entry_point_loads_the_plugin_class():
    from airflow.plugins_manager import is_valid_plugin

    from audit_airflow.plugin import AuditReportsPlugin

    (entry_point,) = _our_entry_points("airflow.plugins") or pytest.fail(f"no plugin entry point; {REINSTALL}")
    assert entry_point.value == PLUGIN_TARGET
    assert entry_point.load() is AuditReportsPlugin
    assert is_valid_plugin(AuditReportsPlugin) and AuditReportsPlugin.name == "audit_reports"


def _airflow_env(tmp_path: Path) -> dict[str, str]:
    """A fresh AIRFLOW_HOME; the checkout on sys.path and as plugins folder, as conftest.py and the demo have it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__AUDIT__")}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
    )
    return env


def test_airflow_registers_the_plugin_once_with_no_import_error(tmp_path):
    """Plugins folder and entry point both offer the plugin; Airflow must end with one copy and no error."""
    code = (
        "import json; from airflow import plugins_manager as pm; pm.ensure_plugins_loaded(); "
        "print(json.dumps({'plugins': pm.get_plugin_info(attrs_to_dump=['name', 'source']), "
        "'errors': pm.get_import_errors()}, default=str))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_airflow_env(tmp_path), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [plugin for plugin in loaded["plugins"] if plugin["name"] == "audit_reports"]
    assert len(ours) == 1 and DIST in ours[0]["source"], ours  # registered from the installed entry point
    assert loaded["errors"] == {}, (
        f"{loaded['errors']}: a second copy of the {DIST} metadata on sys.path (an audit_tasks.egg-info that "
        "`pip install -e .` leaves in the checkout) makes Airflow load the entry point twice; remove it"
    )


def test_plugins_folder_file_stands_aside_only_when_the_entry_point_is_installed(monkeypatch):
    from airflow.plugins_manager import _load_plugins_from_plugin_directory

    def load() -> list[str]:
        plugins, errors = _load_plugins_from_plugin_directory(plugins_folder=str(REPO / "plugins"))
        assert errors == {}
        return [plugin.name for plugin in plugins]

    assert load() == []
    monkeypatch.setattr(metadata, "entry_points", lambda **_: metadata.EntryPoints(()))
    assert load() == ["audit_reports"]


def test_airflow_config_list_shows_the_audit_section(tmp_path, provider_info):
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "config", "list", "--section", "audit", "--defaults"],
        cwd=tmp_path,
        env=_airflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[audit]" in done.stdout
    for key, option in provider_info["config"]["audit"]["options"].items():
        assert f"AIRFLOW__AUDIT__{key.upper()}" in done.stdout
        assert option["description"].split(".")[0] in done.stdout, key


def test_providers_manager_lists_the_package():
    from airflow.providers_manager import ProvidersManager

    providers = ProvidersManager().providers
    assert DIST in providers
    assert providers[DIST].version == metadata.version(DIST)


def test_provider_defaults_reach_airflows_config_but_env_fallbacks_still_win(monkeypatch, tmp_path):
    """Settings read through the Task SDK's conf: declared defaults apply, computed fallbacks are not masked."""
    from airflow.sdk import conf

    from audit_airflow import compat

    for key in ("CONFIG", "REPORTS_DIR", "GPU_POOL", "SHARD_SIZE"):
        monkeypatch.delenv(f"AIRFLOW__AUDIT__{key}", raising=False)
    monkeypatch.setenv("AUDIT_CONFIG", str(tmp_path / "audit.yaml"))
    monkeypatch.setenv("AUDIT_REPORTS_DIR", str(tmp_path / "reports"))

    assert conf.get("audit", "gpu_pool") == "default_pool"  # no fallback given: only the provider declares it
    assert compat.default_config_path() == str(tmp_path / "audit.yaml")
    assert compat.reports_dir() == str(tmp_path / "reports")
    assert compat.default_shard_size() == 512


def test_importing_the_provider_module_pulls_in_neither_pandas_nor_torch():
    """Airflow calls every provider's info while building its configuration, in every component."""
    heavy = "{'pandas', 'torch', 'pyarrow', 'audit_tasks'}"
    code = f"import sys, audit_airflow.provider; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_reading_the_provider_info_imports_no_airflow_sdk():
    """Airflow imports our provider info while it reads its configuration: that must stay cheap."""
    code = "import sys, audit_airflow.provider; print(any(m.startswith('airflow.sdk') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
