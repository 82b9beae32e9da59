"""The "Dataset audits" plugin, exercised through the real Airflow api-server app (simple auth manager).

Requests go through Airflow's own JWT authentication: tokens are minted by the app's auth manager,
exactly as the UI's login does, and anonymous or forged requests must be refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

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
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from fastapi.testclient import TestClient

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


@pytest.mark.parametrize("path", ["/", "/api/runs", "/runs/r1/report.html", "/dag-runs/dataset_audit/r1"])
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
    [
        "/runs/..%2F..%2Fetc/report.html",
        "/runs/%2E%2E/report.html",
        "/runs/..%5C..%5Cetc/report.html",
        "/runs/.hidden/report.html",
    ],
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


def _registered_plugin(client, auth_manager) -> dict:
    response = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {_token(auth_manager, 'admin')}"})
    assert response.status_code == 200
    return next(p for p in response.json()["plugins"] if p["name"] == "audit_reports")


def test_plugin_registers_nav_entry_and_app(api):
    plugin = _registered_plugin(*api)
    assert plugin["external_views"][0]["name"] == "Dataset audits"
    assert plugin["external_views"][0]["href"] == PREFIX + "/"
    assert plugin["fastapi_apps"][0]["url_prefix"] == PREFIX


# ---------------------------------------------------------------------------------------------
# findings of issue 13, probed through the real api-server
# ---------------------------------------------------------------------------------------------


def _write_summary(root: Path, run_id: str, text: str) -> None:
    (root / run_id).mkdir(parents=True)
    (root / run_id / "summary.json").write_text(text, encoding="utf-8")


def test_bad_summaries_neither_take_the_page_down_nor_show_as_passed(api, reports):
    client, auth_manager = api
    _write_run(reports, "good", passed=True, failed=[])
    _write_summary(reports, "null-summary", "null")
    _write_summary(reports, "list-summary", "[]")
    _write_summary(reports, "gates-not-a-list", json.dumps({"passed": False, "failed_gates": "a/b/c"}))
    _write_summary(reports, "string-passed", json.dumps({"passed": "false", "failed_gates": ["a/b/c"]}))
    headers = {"Authorization": f"Bearer {_token(auth_manager)}"}

    page = client.get(PREFIX + "/", headers=headers)
    listing = client.get(PREFIX + "/api/runs", headers=headers)

    assert page.status_code == 200 and listing.status_code == 200
    verdicts = {run["run_id"]: (run["verdict"], run["passed"]) for run in listing.json()}
    assert verdicts == {
        "good": ("passed", True),
        "null-summary": ("unreadable", False),
        "list-summary": ("unreadable", False),
        "gates-not-a-list": ("unreadable", False),
        "string-passed": ("unreadable", False),
    }
    assert page.text.count("PASSED") == 1
    assert "summary.json is not a JSON object" in page.text


def test_report_is_served_sandboxed_without_sniffing_or_referrer(api, reports):
    client, auth_manager = api
    _write_run(reports, "r1", passed=True, failed=[])
    response = client.get(PREFIX + "/runs/r1/report.html", headers={"Authorization": f"Bearer {_token(auth_manager)}"})
    assert response.status_code == 200
    policy = [part.strip() for part in response.headers["content-security-policy"].split(";")]
    assert "sandbox" in policy and "default-src 'none'" in policy
    assert "img-src data:" in policy and "style-src 'unsafe-inline'" in policy
    assert not any(part.startswith("script-src") for part in policy)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/", "/api/runs"])
def test_index_and_api_carry_nosniff_and_a_strict_policy(api, reports, path):
    client, auth_manager = api
    _write_run(reports, "r1", passed=True, failed=[])
    response = client.get(PREFIX + path, headers={"Authorization": f"Bearer {_token(auth_manager)}"})
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy


def test_api_runs_pages_with_limit_offset_and_a_total_header(api, reports):
    client, auth_manager = api
    for i in range(5):
        _write_run(reports, f"r{i}", passed=True, failed=[])
    headers = {"Authorization": f"Bearer {_token(auth_manager)}"}

    default = client.get(PREFIX + "/api/runs", headers=headers)
    page = client.get(PREFIX + "/api/runs", params={"limit": 2, "offset": 1}, headers=headers)

    assert len(default.json()) == 5 and default.headers["x-total-count"] == "5"
    assert len(page.json()) == 2 and page.headers["x-total-count"] == "5"
    assert [r["run_id"] for r in page.json()] == [r["run_id"] for r in default.json()][1:3]
    for bad in ({"limit": 0}, {"limit": 100_000}, {"offset": -1}, {"limit": "many"}):
        assert client.get(PREFIX + "/api/runs", params=bad, headers=headers).status_code == 422


def test_index_is_paged(api, reports):
    client, auth_manager = api
    for i in range(55):
        _write_run(reports, f"r{i:03d}", passed=True, failed=[], report=False)
    headers = {"Authorization": f"Bearer {_token(auth_manager)}"}

    first = client.get(PREFIX + "/", headers=headers)
    second = client.get(PREFIX + "/", params={"page": 2}, headers=headers)

    assert "runs 1\u201350 of 55" in first.text and 'href="?page=2"' in first.text
    assert "runs 51\u201355 of 55" in second.text and 'href="?page=1"' in second.text
    assert client.get(PREFIX + "/", params={"page": 0}, headers=headers).status_code == 422


def _dag_run_href(plugin: dict, dag_id: str, run_id: str) -> str:
    """The dag_run view's href filled in as Airflow's UI does (`encodeURIComponent` of each id)."""
    view = next(v for v in plugin["external_views"] if v["destination"] == "dag_run")
    return (
        view["href"].replace("{DAG_ID}", quote(dag_id, safe="!~*'()")).replace("{RUN_ID}", quote(run_id, safe="!~*'()"))
    )


def test_plugin_registers_a_dag_run_view_that_serves_that_runs_report(api, reports):
    from audit_airflow.compat import audit_run_id

    client, auth_manager = api
    airflow_run = "scheduled__2026-01-01T00:00:00+00:00"
    _write_run(reports, audit_run_id(airflow_run), passed=False, failed=["a/b/c"])
    plugin = _registered_plugin(client, auth_manager)
    view = next(v for v in plugin["external_views"] if v["destination"] == "dag_run")

    response = client.get(
        _dag_run_href(plugin, "dataset_audit", airflow_run), headers={"Authorization": f"Bearer {_token(auth_manager)}"}
    )

    assert view["url_route"] and view["name"]
    assert response.status_code == 200
    assert response.text == f"<html><body>report of {audit_run_id(airflow_run)}</body></html>"
    assert "sandbox" in response.headers["content-security-policy"]


def test_dag_run_view_finds_a_manual_run_through_its_summary(api, reports):
    client, auth_manager = api
    airflow_run = "manual__2026-01-02T00:00:00+00:00"
    _write_run(reports, "green-1", passed=True, failed=[])
    summary = json.loads((reports / "green-1" / "summary.json").read_text())
    summary["airflow"] = {"dag_id": "dataset_audit", "dag_run_id": airflow_run}
    (reports / "green-1" / "summary.json").write_text(json.dumps(summary))

    response = client.get(
        _dag_run_href(_registered_plugin(client, auth_manager), "dataset_audit", airflow_run),
        headers={"Authorization": f"Bearer {_token(auth_manager)}"},
    )

    assert response.status_code == 200 and response.text == "<html><body>report of green-1</body></html>"


@pytest.mark.parametrize(
    ("dag_id", "run_id", "status", "says"),
    [
        ("retrain_on_clean_audit", "manual__x", 404, "only the dataset_audit dag"),
        ("dataset_audit", "manual__never-ran", 404, "no audit run"),
        ("dataset_audit", "manual__..x", 400, "not a usable run id"),
    ],
)
def test_dag_run_view_without_a_report_is_a_clear_page(api, reports, dag_id, run_id, status, says):
    client, auth_manager = api
    response = client.get(
        _dag_run_href(_registered_plugin(client, auth_manager), dag_id, run_id),
        headers={"Authorization": f"Bearer {_token(auth_manager)}"},
    )
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert says in response.text.lower()


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
