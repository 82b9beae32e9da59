"""The "Dataset audits" page's own logic, without the api-server: verdicts, confinement, paging, lookups.

The routes, headers and authentication are exercised through the real api-server in test_plugin.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import pytest

from audit_airflow import reports_app
from audit_airflow.reports_app import AUDIT_DAG_ID, find_dag_run, list_runs, render_index, report_file

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, run_id: str, summary: object, *, report: bool = True, modified: float | None = None) -> Path:
    """A run folder; `summary` is written as JSON unless it is already text."""
    folder = root / run_id
    folder.mkdir(parents=True)
    text = summary if isinstance(summary, str) else json.dumps(summary)
    (folder / "summary.json").write_text(text, encoding="utf-8")
    if report:
        (folder / "report.html").write_text(f"report of {run_id}", encoding="utf-8")
    if modified is not None:
        os.utime(folder / "summary.json", (modified, modified))
    return folder


def _only(root: Path) -> reports_app.AuditRun:
    page = list_runs(root)
    assert page.total == 1
    return page.runs[0]


# ---------------------------------------------------------------------------------------------
# one summary.json -> one verdict, never an exception, never a false green
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["null", "[]", '["passed"]', "3", '"passed"'])
def test_summary_that_is_not_an_object_is_unreadable_and_logged(tmp_path, caplog, text):
    _run(tmp_path, "r1", text)
    with caplog.at_level(logging.WARNING, logger=reports_app.__name__):
        run = _only(tmp_path)
    assert (run.verdict, run.passed, run.reason) == ("unreadable", False, reports_app.NOT_AN_OBJECT)
    assert any("r1" in r.getMessage() and reports_app.NOT_AN_OBJECT in r.getMessage() for r in caplog.records)


def test_summary_that_is_not_json_is_unreadable(tmp_path):
    _run(tmp_path, "r1", "{not json")
    run = _only(tmp_path)
    assert (run.verdict, run.reason) == ("unreadable", reports_app.NOT_JSON)


@pytest.mark.parametrize("failed_gates", ["saliency/nurse/flagged_fraction", {"name": "x"}, 3])
def test_failed_gates_that_is_not_a_list_is_unreadable(tmp_path, failed_gates):
    _run(tmp_path, "r1", {"passed": False, "failed_gates": failed_gates})
    run = _only(tmp_path)
    assert (run.verdict, run.passed, run.reason) == ("unreadable", False, reports_app.GATES_NOT_A_LIST)


@pytest.mark.parametrize("passed", ["false", "true", 1, None])
def test_passed_that_is_not_a_json_boolean_is_never_passed(tmp_path, passed):
    _run(tmp_path, "r1", {"passed": passed, "failed_gates": ["saliency/nurse/flagged_fraction"]})
    run = _only(tmp_path)
    assert (run.verdict, run.passed, run.reason) == ("unreadable", False, reports_app.PASSED_NOT_BOOLEAN)


def test_passed_true_beside_failed_gates_is_not_passed(tmp_path):
    _run(tmp_path, "r1", {"passed": True, "failed_gates": ["saliency/nurse/flagged_fraction"]})
    run = _only(tmp_path)
    assert (run.verdict, run.passed, run.reason) == ("unreadable", False, reports_app.CONTRADICTION)


def test_summary_without_verdict_or_passed_is_unreadable(tmp_path):
    _run(tmp_path, "r1", {"run_id": "r1"})
    assert _only(tmp_path).reason == reports_app.NO_VERDICT


@pytest.mark.parametrize(
    ("summary", "verdict", "passed"),
    [
        ({"passed": True, "failed_gates": []}, "passed", True),
        ({"passed": False, "failed_gates": ["a/b/c"]}, "failed", False),
        ({"verdict": "passed", "passed": True, "failed_gates": []}, "passed", True),
        ({"verdict": "failed", "passed": True, "failed_gates": []}, "failed", False),
        ({"verdict": "inconclusive", "passed": True, "failed_gates": []}, "inconclusive", False),
    ],
)
def test_verdict_wins_over_passed_and_passed_is_the_fallback(tmp_path, summary, verdict, passed):
    _run(tmp_path, "r1", summary)
    run = _only(tmp_path)
    assert (run.verdict, run.passed) == (verdict, passed)


def test_inconclusive_run_carries_its_reason(tmp_path):
    why = "0 image(s) audited; at least 1 needed (checks.min_audited)"
    _run(tmp_path, "r1", {"verdict": "inconclusive", "passed": False, "failed_gates": [], "inconclusive_reason": why})
    run = _only(tmp_path)
    assert (run.verdict, run.passed, run.reason) == ("inconclusive", False, why)


@pytest.mark.parametrize("verdict", ["PASSED", "green", True, None, ["passed"]])
def test_unknown_verdict_is_unreadable(tmp_path, verdict):
    _run(tmp_path, "r1", {"verdict": verdict, "passed": True, "failed_gates": []})
    run = _only(tmp_path)
    assert (run.verdict, run.passed, run.reason) == ("unreadable", False, reports_app.UNKNOWN_VERDICT)


def test_one_bad_run_leaves_the_others_listed(tmp_path):
    _run(tmp_path, "good", {"verdict": "passed", "passed": True, "failed_gates": []}, modified=1_000)
    _run(tmp_path, "bad", "null", modified=2_000)
    page = list_runs(tmp_path)
    assert [(r.run_id, r.verdict) for r in page.runs] == [("bad", "unreadable"), ("good", "passed")]


def test_inconclusive_and_unreadable_runs_are_never_green_on_the_index(tmp_path):
    _run(tmp_path, "maybe", {"verdict": "inconclusive", "failed_gates": [], "inconclusive_reason": "nothing judged"})
    _run(tmp_path, "broken", "[]")
    html = render_index(list_runs(tmp_path), page_size=50)
    styles = dict(re.findall(r"tr\.(\w+) td\.verdict \{ color: (#[0-9a-f]{6})", html))
    assert styles["passed"] == "#137333"
    assert styles["inconclusive"] not in (styles["passed"], styles["failed"])
    assert styles["unreadable"] not in (styles["passed"], styles["failed"])
    assert '<tr class="inconclusive">' in html and "INCONCLUSIVE" in html and "nothing judged" in html
    assert '<tr class="unreadable">' in html and reports_app.NOT_AN_OBJECT in html


# ---------------------------------------------------------------------------------------------
# symlinks: followed only while they stay inside the reports root
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def roots(tmp_path) -> tuple[Path, Path]:
    root, outside = tmp_path / "reports", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def test_run_folder_linking_outside_the_root_is_not_listed(roots):
    root, outside = roots
    _run(outside, "elsewhere", {"verdict": "passed", "passed": True, "failed_gates": []})
    (root / "escape").symlink_to(outside / "elsewhere", target_is_directory=True)
    assert list_runs(root).total == 0


def test_run_folder_linking_inside_the_root_is_listed(roots):
    root, _ = roots
    _run(root, "real", {"verdict": "failed", "passed": False, "failed_gates": ["a/b/c"]})
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert sorted((r.run_id, r.verdict, r.has_report) for r in list_runs(root).runs) == [
        ("alias", "failed", True),
        ("real", "failed", True),
    ]
    assert report_file(root, "alias").read_text() == "report of real"


def test_summary_linking_outside_the_root_is_not_read(roots):
    root, outside = roots
    (outside / "summary.json").write_text(json.dumps({"verdict": "passed", "failed_gates": []}), encoding="utf-8")
    (root / "r1").mkdir()
    (root / "r1" / "summary.json").symlink_to(outside / "summary.json")
    assert list_runs(root).total == 0


def test_report_linking_outside_the_root_is_neither_linked_nor_served(roots):
    from fastapi import HTTPException

    root, outside = roots
    _run(root, "r1", {"verdict": "failed", "passed": False, "failed_gates": ["a/b/c"]}, report=False)
    (outside / "report.html").write_text("secret", encoding="utf-8")
    (root / "r1" / "report.html").symlink_to(outside / "report.html")
    assert _only(root).has_report is False
    with pytest.raises(HTTPException) as refused:
        report_file(root, "r1")
    assert refused.value.status_code == 400


# ---------------------------------------------------------------------------------------------
# long ids and many runs
# ---------------------------------------------------------------------------------------------


def test_long_run_id_wraps_and_keeps_the_full_id_in_a_title(tmp_path):
    long_id = "manual__" + "x" * 120
    _run(tmp_path, long_id, {"verdict": "passed", "passed": True, "failed_gates": []})
    html = render_index(list_runs(tmp_path), page_size=50)
    assert f'<td class="run" title="{long_id}">' in html
    assert "table-layout: fixed" in html and re.search(r"td\.run \{[^}]*overflow-wrap: anywhere", html)


def test_runs_are_paged_newest_first_with_a_total(tmp_path):
    for i in range(7):
        _run(tmp_path, f"r{i}", {"verdict": "passed", "passed": True, "failed_gates": []}, modified=1_000 + i)
    first, last = list_runs(tmp_path, offset=0, limit=3), list_runs(tmp_path, offset=6, limit=3)
    assert [r.run_id for r in first.runs] == ["r6", "r5", "r4"] and first.total == 7
    assert [r.run_id for r in last.runs] == ["r0"] and last.total == 7
    assert list_runs(tmp_path, offset=50, limit=3).runs == ()


def test_a_page_of_many_runs_is_small_fast_and_reads_only_its_own_summaries(tmp_path, caplog):
    page_size = 50
    for i in range(2_000):
        newest = i >= 2_000 - page_size
        summary = {"verdict": "passed", "passed": True, "failed_gates": []} if newest else "null"
        _run(tmp_path, f"run-{i:05d}", summary, report=False, modified=1_000_000 + i)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger=reports_app.__name__):
        html = render_index(list_runs(tmp_path, offset=0, limit=page_size), page_size=page_size)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert len(html.encode()) < 40_000
    assert "runs 1\u201350 of 2,000" in html and 'href="?page=2"' in html
    assert html.count("<tr class=") == page_size and "run-01999" in html and "run-01949" not in html
    assert not caplog.records  # the 1,950 older (unreadable) summaries were never opened


def test_index_pages_link_back_and_forward(tmp_path):
    for i in range(5):
        _run(tmp_path, f"r{i}", {"verdict": "passed", "passed": True, "failed_gates": []}, modified=1_000 + i)
    middle = render_index(list_runs(tmp_path, offset=2, limit=2), page_size=2)
    assert "runs 3\u20134 of 5" in middle
    assert 'href="?page=1"' in middle and 'href="?page=3"' in middle


# ---------------------------------------------------------------------------------------------
# a DAG run's report
# ---------------------------------------------------------------------------------------------

AIRFLOW_RUN = "manual__2026-01-01T00:00:00+00:00"


def test_dag_run_maps_to_its_audit_run_folder(tmp_path):
    from audit_airflow.compat import audit_run_id

    _run(tmp_path, audit_run_id(AIRFLOW_RUN), {"verdict": "passed", "passed": True, "failed_gates": []})
    assert find_dag_run(tmp_path, AUDIT_DAG_ID, AIRFLOW_RUN) == "manual__2026-01-01T00_00_00_00_00"


def test_dag_run_with_a_run_id_param_is_found_through_its_summary(tmp_path):
    airflow = {"dag_id": AUDIT_DAG_ID, "dag_run_id": AIRFLOW_RUN}
    _run(tmp_path, "green-1", {"verdict": "passed", "passed": True, "failed_gates": [], "airflow": airflow})
    _run(
        tmp_path,
        "other",
        {
            "verdict": "passed",
            "passed": True,
            "failed_gates": [],
            "airflow": {"dag_id": AUDIT_DAG_ID, "dag_run_id": "manual__other"},
        },
    )
    assert find_dag_run(tmp_path, AUDIT_DAG_ID, AIRFLOW_RUN) == "green-1"
    assert find_dag_run(tmp_path, AUDIT_DAG_ID, "manual__2030-01-01T00:00:00+00:00") is None


def test_direct_folder_that_belongs_to_another_dag_run_is_not_taken(tmp_path):
    from audit_airflow.compat import audit_run_id

    other = {"dag_id": AUDIT_DAG_ID, "dag_run_id": "a manual run that chose this run_id"}
    _run(tmp_path, audit_run_id(AIRFLOW_RUN), {"verdict": "failed", "failed_gates": [], "airflow": other})
    mine = {"dag_id": AUDIT_DAG_ID, "dag_run_id": AIRFLOW_RUN}
    _run(tmp_path, "mine", {"verdict": "passed", "failed_gates": [], "airflow": mine})
    assert find_dag_run(tmp_path, AUDIT_DAG_ID, AIRFLOW_RUN) == "mine"


@pytest.mark.parametrize("dag_run_id", ["..", "manual__../../etc", "a/b", "a\\b", "x" * 300, ""])
def test_dag_run_ids_that_could_escape_are_refused(tmp_path, dag_run_id):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as refused:
        find_dag_run(tmp_path, AUDIT_DAG_ID, dag_run_id)
    assert refused.value.status_code == 400


def test_audit_dag_id_is_the_dag_files_id():
    source = (REPO / "dags" / "dataset_audit.py").read_text(encoding="utf-8")
    assert re.search(r'dag_id="([^"]+)"', source).group(1) == AUDIT_DAG_ID


def test_object_storage_root_lists_judges_and_finds_runs(tmp_path):
    from audit_airflow.storage import storage_root

    root = storage_root(f"memory://reports-app-{tmp_path.name}")
    for run_id, summary in (
        (
            "old",
            {
                "verdict": "passed",
                "passed": True,
                "failed_gates": [],
                "airflow": {"dag_id": AUDIT_DAG_ID, "dag_run_id": AIRFLOW_RUN},
            },
        ),
        ("new", None),
    ):
        (root / run_id).mkdir(parents=True, exist_ok=True)
        (root / run_id / "summary.json").write_text(json.dumps(summary))
        time.sleep(0.01)  # memory:// records creation times; keep them apart
    (root / "old" / "report.html").write_text("report of old")

    page = list_runs(root)

    assert [(r.run_id, r.verdict, r.has_report) for r in page.runs] == [
        ("new", "unreadable", False),
        ("old", "passed", True),
    ]
    assert find_dag_run(root, AUDIT_DAG_ID, AIRFLOW_RUN) == "old"
    assert report_file(root, "old").read_text() == "report of old"
