"""Great Expectations as its users know it: saved results, a team's own suite, Data Docs, the report's links."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from audit_tasks.cli import main
from audit_tasks.config import AuditConfig, parse_config
from audit_tasks.errors import ConfigError
from audit_tasks.gx_results import PARTIAL_LIMIT, write_validations
from audit_tasks.gx_suite import BATCH_REASON, ROW_REASON
from audit_tasks.ingest import ingest
from audit_tasks.pipeline import run_dir, stage_ingest
from audit_tasks.report import render_report
from audit_tasks.validation import check_rows
from fixtures_ingest import write_csv, write_jpeg
from fixtures_report import XSS_SCRIPT, build_run

GENDER_IN_SET = {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "gender", "value_set": ["f", "m"]}}


def suite_file(folder: Path, *expectations: dict[str, Any], name: str = "team rules") -> Path:
    path = folder / "suite.json"
    path.write_text(json.dumps({"name": name, "expectations": list(expectations), "meta": {}}), encoding="utf-8")
    return path


def world(tmp_path: Path, genders: list[str], *, ingest_check: dict[str, Any] | None = None, **row: Any) -> dict:
    """landing/m.csv with one distinct image per gender value, and the raw config (checks.ingest as given)."""
    for name in ("landing", "images"):
        (tmp_path / name).mkdir(exist_ok=True)
    rows = []
    for i, gender in enumerate(genders):
        write_jpeg(tmp_path / "images" / f"i{i}.jpg", seed=i)
        rows.append({"image_uri": f"i{i}.jpg", "label": "doctor", "gender": gender, **row})
    write_csv(tmp_path / "landing" / "m.csv", rows)
    raw: dict[str, Any] = {
        "dataset": {"landing": "landing", "image_root": "images", "catalog": "catalog"},
        "checks": {"subgroups": {"attributes": ["gender"]}},
        "output": {"dir": "out"},
    }
    if ingest_check is not None:
        raw["checks"]["ingest"] = ingest_check
    return raw


def config_of(tmp_path: Path, raw: dict) -> AuditConfig:
    return parse_config(raw, base_dir=tmp_path)


def reasons(result) -> dict[int, str]:
    q = result.quarantined
    return dict(zip(q["row_number"].astype(int), q["reason"], strict=True))


# ---------------------------------------------------------------------------------------------
# The saved results
# ---------------------------------------------------------------------------------------------


def test_ingest_saves_the_gx_result_whose_expectations_match_the_quarantined_rows(tmp_path: Path) -> None:
    config = config_of(tmp_path, world(tmp_path, ["f", "", "m", ""]))
    result = stage_ingest(config, "r1")
    saved = json.loads((run_dir(config, "r1") / "validation" / "ingest_builtin_rules.json").read_text())
    assert saved["suite_name"] == "audit_tasks.builtin_rules" and saved["success"] is False
    failed = [r for r in saved["results"] if not r["success"]]
    assert [r["expectation_config"]["type"] for r in failed] == ["expect_column_values_to_not_be_null"]
    assert failed[0]["result"]["unexpected_count"] == 2
    assert reasons(result) == {2: "attribute 'gender' is empty", 4: "attribute 'gender' is empty"}


def test_saved_result_loads_back_as_a_gx_validation_result(tmp_path: Path) -> None:
    from great_expectations.core import ExpectationSuiteValidationResult

    config = config_of(tmp_path, world(tmp_path, ["f", ""]))
    stage_ingest(config, "r1")
    saved = json.loads((run_dir(config, "r1") / "validation" / "ingest_builtin_rules.json").read_text())
    loaded = ExpectationSuiteValidationResult(**saved)
    assert loaded.statistics["unsuccessful_expectations"] == 1


def test_saved_result_drops_the_per_row_lists_and_keeps_bounded_partial_ones() -> None:
    rows = pd.DataFrame({"image_uri": [f"{i}.jpg" for i in range(300)], "label": ["cat"] * 300})
    checked = check_rows(rows, classes=["doctor"], attributes=[])
    saved = checked.results[0].result.to_json_dict()
    failed = next(r for r in saved["results"] if not r["success"])["result"]
    assert failed["unexpected_count"] == 300
    assert not {"unexpected_list", "unexpected_index_list", "unexpected_index_query"} & set(failed)
    assert 0 < len(failed["partial_unexpected_index_list"]) <= PARTIAL_LIMIT
    assert checked.reasons.notna().all()  # the rows are still all named, through the COMPLETE result


def test_results_of_an_earlier_attempt_are_removed(tmp_path: Path) -> None:
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "ingest_suite_old.json").write_text("{}")
    (tmp_path / "data_docs").mkdir()
    (tmp_path / "data_docs" / "index.html").write_text("old")
    assert write_validations((), tmp_path, data_docs=True) == []
    assert not (tmp_path / "validation" / "ingest_suite_old.json").exists()
    assert not (tmp_path / "data_docs").exists()


# ---------------------------------------------------------------------------------------------
# A team's own suite
# ---------------------------------------------------------------------------------------------


def test_user_suite_failing_expectation_quarantines_exactly_its_rows(tmp_path: Path) -> None:
    raw = world(tmp_path, ["f", "x", "m", "y"], ingest_check={"suite": str(suite_file(tmp_path, GENDER_IN_SET))})
    result = ingest(config_of(tmp_path, raw), "r1")
    reason = ROW_REASON.format(expectation="expect_column_values_to_be_in_set(column=gender)", suite="team rules")
    assert reason == "expectation expect_column_values_to_be_in_set(column=gender) failed (suite 'team rules')"
    assert reasons(result) == {2: reason, 4: reason}
    assert sorted(result.accepted["row_number"]) == [1, 3]


def test_user_suite_result_is_saved_beside_the_built_in_one(tmp_path: Path) -> None:
    raw = world(tmp_path, ["f", "x"], ingest_check={"suite": str(suite_file(tmp_path, GENDER_IN_SET))})
    config = config_of(tmp_path, raw)
    stage_ingest(config, "r1")
    saved = json.loads((run_dir(config, "r1") / "validation" / "ingest_suite_team_rules.json").read_text())
    assert saved["suite_name"] == "team rules"
    assert [(r["success"], r["result"]["unexpected_count"]) for r in saved["results"]] == [(False, 1)]


def test_user_suite_table_level_failure_quarantines_the_whole_batch(tmp_path: Path) -> None:
    row_count = {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 10}}
    raw = world(tmp_path, ["f", "m", "f"], ingest_check={"suite": str(suite_file(tmp_path, row_count))})
    result = ingest(config_of(tmp_path, raw), "r1")
    expected = BATCH_REASON.format(
        expectation="expect_table_row_count_to_be_between()", rows=3, suite="team rules", observed="; observed 3"
    )
    assert reasons(result) == {1: expected, 2: expected, 3: expected}
    assert len(result.accepted) == 0


def test_user_expectation_on_a_column_the_manifest_lacks_quarantines_the_batch(tmp_path: Path) -> None:
    not_null = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "site"}}
    raw = world(tmp_path, ["f", "m"], ingest_check={"suite": str(suite_file(tmp_path, not_null))})
    result = ingest(config_of(tmp_path, raw), "r1")
    assert len(result.accepted) == 0
    assert all(
        r.startswith("expectation expect_column_values_to_not_be_null(column=site) could not run")
        for r in reasons(result).values()
    )


def test_a_row_the_user_suite_refuses_does_not_claim_its_image_id(tmp_path: Path) -> None:
    raw = world(tmp_path, ["x", "f"], ingest_check={"suite": str(suite_file(tmp_path, GENDER_IN_SET))}, image_id="a")
    result = ingest(config_of(tmp_path, raw), "r1")
    assert list(result.accepted["row_number"]) == [2]
    assert reasons(result)[1].startswith("expectation expect_column_values_to_be_in_set")


def test_a_row_refused_before_validation_keeps_its_first_reason(tmp_path: Path) -> None:
    raw = world(tmp_path, ["x", "f"], ingest_check={"suite": str(suite_file(tmp_path, GENDER_IN_SET))})
    (tmp_path / "images" / "i0.jpg").unlink()
    result = ingest(config_of(tmp_path, raw), "r1")
    assert "expectation" not in reasons(result)[1] and len(result.accepted) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"name": "s", "expectations": [{"expectation_type": "expect_x"}]}', "expectation #1 needs a 'type'"),
        ('{"name": "s"}', "needs an 'expectations' list"),
    ],
)
def test_malformed_suite_file_is_a_config_error_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "suite.json").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        parse_config({"checks": {"ingest": {"suite": "suite.json"}}}, base_dir=tmp_path)
    assert "'checks.ingest.suite'" in str(caught.value) and str(tmp_path / "suite.json") in str(caught.value)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("expectation", "problem"),
    [
        ({"type": "expect_column_values_to_be_purple", "kwargs": {"column": "gender"}}, "not found"),
        ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "gender"}}, "value_set"),
    ],
)
def test_suite_gx_refuses_is_a_config_error_before_any_row_moves(
    tmp_path: Path, expectation: dict, problem: str
) -> None:
    raw = world(tmp_path, ["f"], ingest_check={"suite": str(suite_file(tmp_path, GENDER_IN_SET, expectation))})
    config = config_of(tmp_path, raw)
    with pytest.raises(ConfigError, match=r"expectation #2 \(expect_column_values_to_be_") as caught:
        ingest(config, "r1")
    assert str(tmp_path / "suite.json") in str(caught.value) and problem in str(caught.value)
    assert not (tmp_path / "catalog").exists() or not any((tmp_path / "catalog").rglob("*.parquet"))


def test_cli_exits_2_naming_a_suite_gx_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = {"type": "expect_column_values_to_be_purple", "kwargs": {"column": "gender"}}
    raw = world(tmp_path, ["f"], ingest_check={"suite": "suite.json"})
    suite_file(tmp_path, unknown)
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["ingest", "--config", str(tmp_path / "audit.yaml"), "--run-id", "r1"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "suite.json") in err and "expect_column_values_to_be_purple" in err


def test_cli_exits_2_naming_a_suite_file_that_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = world(tmp_path, ["f"], ingest_check={"suite": "suite.json"})
    (tmp_path / "suite.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["ingest", "--config", str(tmp_path / "audit.yaml"), "--run-id", "r1"]) == 2
    err = capsys.readouterr().err
    assert "'checks.ingest.suite'" in err and str(tmp_path / "suite.json") in err and "not valid JSON" in err


# ---------------------------------------------------------------------------------------------
# Data Docs and the report
# ---------------------------------------------------------------------------------------------


def test_data_docs_are_built_into_the_run_folder_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = config_of(tmp_path, world(tmp_path, ["f", ""], ingest_check={"data_docs": True}))
    stage_ingest(config, "r1")
    docs = run_dir(config, "r1") / "data_docs"
    assert (docs / "index.html").is_file()
    assert any((docs / "validations").rglob("*.html"))
    assert not (tmp_path / "gx").exists() and not (tmp_path / "uncommitted").exists()  # nothing in the cwd


def test_data_docs_are_not_built_by_default(tmp_path: Path) -> None:
    config = config_of(tmp_path, world(tmp_path, ["f", ""], ingest_check={}))
    stage_ingest(config, "r1")
    assert (run_dir(config, "r1") / "validation" / "ingest_builtin_rules.json").is_file()
    assert not (run_dir(config, "r1") / "data_docs").exists()


def test_report_links_point_to_the_saved_results_and_data_docs(tmp_path: Path) -> None:
    config = config_of(tmp_path, world(tmp_path, ["f", ""], ingest_check={"data_docs": True}))
    stage_ingest(config, "r1")
    folder = run_dir(config, "r1")
    page = render_report(folder).read_text(encoding="utf-8")
    links = re.findall(r'<a href="((?:validation|data_docs)/[^"]+)"', page)
    assert sorted(links) == ["data_docs/index.html", "validation/ingest_builtin_rules.json"]
    assert all((folder / link).is_file() for link in links)


def test_report_escapes_the_suite_name_from_a_saved_result(tmp_path: Path) -> None:
    folder = build_run(tmp_path)
    (folder / "validation").mkdir()
    (folder / "validation" / "ingest_suite_x.json").write_text(json.dumps({"suite_name": XSS_SCRIPT, "success": False}))
    page = render_report(folder).read_text(encoding="utf-8")
    assert 'href="validation/ingest_suite_x.json"' in page
    assert XSS_SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
