"""The "Dataset audits" plugin, exercised through the real Airflow api-server app (simple auth manager).

Requests go through Airflow's own JWT authentication: tokens are minted by the app's auth manager,
exactly as the UI's login does, and anonymous or forged requests must be refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PREFIX = "/audit-reports"


def _write_run(root: Path, run_id: str, *, passed: bool, failed: list[str], report: bool = True) -> None:
    folder = root / run_id
    folder.mkdir(parents=True)
    summary = {"run_id": run_id, "passed": passed, "failed_gates": failed, "counts": {"images": 3}}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    if report:
        (folder / "report.html").write_text(f"<html><body>report of {run_id}</body></html>", encoding="utf-8")


@pytest.fixture(scope="module")
def api(airflow_db):
    """The api-server's FastAPI app (core apps, plugins mounted) and its auth manager."""
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.app import create_app, get_auth_manager

    app = create_app("core")
    return TestClient(app), get_auth_manager()


@pytest.fixture()
def reports(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "audit_reports"
    root.mkdir()
    monkeypatch.setenv("AIRFLOW__AUDIT__REPORTS_DIR", str(root))
    return root


def _token(auth_manager, role: str = "viewer") -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="auditor", role=role))


@pytest.mark.parametrize("path", ["/", "/api/runs", "/runs/r1/report.html"])
def test_anonymous_request_is_refused(api, reports, path):
    client, _ = api
    _write_run(reports, "r1", passed=True, failed=[])
    response = client.get(PREFIX + path)
    assert response.status_code == 401
    assert "report of" not in response.text


def test_forged_token_is_refused(api, reports):
    import jwt

    client, _ = api
    _write_run(reports, "r1", passed=True, failed=[])
    forged = jwt.encode({"sub": "auditor", "role": "admin"}, "not-the-secret-" * 8, algorithm="HS512")
    response = client.get(PREFIX + "/api/runs", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code in (401, 403)


def test_authenticated_user_sees_runs_with_verdicts_and_links(api, reports):
    client, auth_manager = api
    _write_run(reports, "scheduled__2026-01-01", passed=False, failed=["saliency/nurse/flagged_fraction"])
    _write_run(reports, "manual__2026-01-02", passed=True, failed=[])
    headers = {"Authorization": f"Bearer {_token(auth_manager)}"}

    page = client.get(PREFIX + "/", headers=headers)
    listing = client.get(PREFIX + "/api/runs", headers=headers).json()

    assert page.status_code == 200
    assert "Dataset audits" in page.text
    assert 'href="runs/scheduled__2026-01-01/report.html"' in page.text
    assert "saliency/nurse/flagged_fraction" in page.text
    verdicts = {run["run_id"]: run["passed"] for run in listing}
    assert verdicts == {"scheduled__2026-01-01": False, "manual__2026-01-02": True}


def test_ui_session_cookie_serves_the_report(api, reports):
    client, auth_manager = api
    _write_run(reports, "r1", passed=True, failed=[])
    client.cookies.set("_token", _token(auth_manager))
    try:
        response = client.get(PREFIX + "/runs/r1/report.html")
    finally:
        client.cookies.clear()
    assert response.status_code == 200
    assert response.text == "<html><body>report of r1</body></html>"
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "path",
    ["/runs/..%2F..%2Fetc/report.html", "/runs/%2E%2E/report.html", "/runs/..%5C..%5Cetc/report.html",
     "/runs/.hidden/report.html"],
)
def test_path_traversal_is_refused(api, reports, path):
    client, auth_manager = api
    (reports.parent / "report.html").write_text("outside the reports folder", encoding="utf-8")
    response = client.get(PREFIX + path, headers={"Authorization": f"Bearer {_token(auth_manager)}"})
    assert response.status_code in (400, 404)
    assert "outside the reports folder" not in response.text


def test_symlinked_run_folder_pointing_outside_is_refused(tmp_path):
    from fastapi import HTTPException

    from audit_airflow.reports_app import report_file

    root, outside = tmp_path / "reports", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (outside / "report.html").write_text("secret", encoding="utf-8")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(HTTPException) as refused:
        report_file(root, "escape")
    assert refused.value.status_code == 400


def test_plugin_registers_nav_entry_and_app(api):
    client, auth_manager = api
    response = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {_token(auth_manager, 'admin')}"})
    assert response.status_code == 200
    plugin = next(p for p in response.json()["plugins"] if p["name"] == "audit_reports")
    assert plugin["external_views"][0]["name"] == "Dataset audits"
    assert plugin["external_views"][0]["href"] == PREFIX + "/"
    assert plugin["fastapi_apps"][0]["url_prefix"] == PREFIX


# ---------------------------------------------------------------------------------------------
# object storage (fsspec through Airflow's ObjectStoragePath; memory:// stands in for s3:// etc.)
# ---------------------------------------------------------------------------------------------


def _local_run(tmp_path: Path, run_id: str) -> Path:
    _write_run(tmp_path, run_id, passed=False, failed=["subgroups/gender/accuracy_gap"])
    stages = tmp_path / run_id / "_stages"
    stages.mkdir()
    (stages / "images_shard-00000-of-00001.parquet").write_bytes(b"intermediate")
    (tmp_path / run_id / "gates.parquet").write_bytes(b"PAR1")
    return tmp_path / run_id


def test_publish_run_copies_the_run_but_not_its_stages(tmp_path):
    from audit_airflow.storage import publish_run, storage_root

    target = f"memory://audits-{tmp_path.name}"
    uri = publish_run(_local_run(tmp_path, "r7"), target)
    again = publish_run(tmp_path / "r7", target)
    published = storage_root(target) / "r7"
    assert uri == again and uri.endswith("r7/report.html")
    assert sorted(p.name for p in published.iterdir()) == ["gates.parquet", "report.html", "summary.json"]
    assert (published / "report.html").read_text() == "<html><body>report of r7</body></html>"


def test_page_reads_runs_from_object_storage(api, tmp_path, monkeypatch):
    from audit_airflow.storage import publish_run

    client, auth_manager = api
    target = f"memory://audits-{tmp_path.name}"
    publish_run(_local_run(tmp_path, "r8"), target)
    monkeypatch.setenv("AIRFLOW__AUDIT__REPORTS_DIR", target)
    headers = {"Authorization": f"Bearer {_token(auth_manager)}"}

    listing = client.get(PREFIX + "/api/runs", headers=headers).json()
    report = client.get(PREFIX + "/runs/r8/report.html", headers=headers)
    escape = client.get(PREFIX + "/runs/..%2Fr8/report.html", headers=headers)

    assert [(run["run_id"], run["passed"], run["has_report"]) for run in listing] == [("r8", False, True)]
    assert report.status_code == 200 and report.text == "<html><body>report of r8</body></html>"
    assert escape.status_code in (400, 404)
    assert client.get(PREFIX + "/api/runs").status_code == 401
