"""Tests of audit_tasks.run_ids: the one run-id rule that run folders, ingest and the Airflow param share."""

from __future__ import annotations

import re

import pytest

from audit_tasks import pipeline
from audit_tasks.errors import ConfigError
from audit_tasks.run_ids import MSG_BAD_RUN_ID, RUN_ID_PATTERN, check_run_id, is_run_id

GOOD = [
    "night-1",
    "r1",
    "7",
    "20250301T000000Z-abc123",
    "A.b_c+d-e",
    "demo-biased",
    "x" * 128,
    "manual__2025-03-01T00_00_00_00_00",
]
BAD = [
    "",
    ".hidden",
    "..",
    "../escape",
    "a..b",
    "a/b",
    "a\\b",
    "_lead",
    "-lead",
    "a:b",
    "a=b",
    "with space",
    "tab\there",
    "night-1\n",
    "x" * 129,
    "scheduled__2025-03-01T00:00:00+00:00",
    "caf\u00e9",
]


@pytest.mark.parametrize("run_id", GOOD)
def test_plain_folder_names_are_run_ids(run_id: str) -> None:
    assert is_run_id(run_id)
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", BAD)
def test_anything_else_is_refused_with_the_rule_in_the_message(run_id: str) -> None:
    assert not is_run_id(run_id)
    with pytest.raises(ConfigError) as raised:
        check_run_id(run_id)
    assert str(raised.value) == MSG_BAD_RUN_ID.format(run_id=run_id)


@pytest.mark.parametrize("value", [None, 7, b"night-1", ["night-1"]])
def test_a_value_that_is_not_a_string_is_not_a_run_id(value: object) -> None:
    assert not is_run_id(value)
    with pytest.raises(ConfigError):
        check_run_id(value)


@pytest.mark.parametrize("run_id", [r for r in GOOD + BAD if not r.endswith("\n")])
def test_the_pattern_alone_gives_the_same_answer_as_is_run_id(run_id: str) -> None:
    """The Airflow param validates with the bare pattern (JSON schema: `re.search`), so it must carry every part
    of the rule, `..` included. (Only a trailing newline, which `$` lets through there, needs the full match
    that check_run_id uses.)"""
    assert (re.search(RUN_ID_PATTERN, run_id) is not None) == is_run_id(run_id)


def test_new_run_ids_follow_the_rule_and_pipeline_re_exports_the_check() -> None:
    assert is_run_id(pipeline.new_run_id())
    assert pipeline.check_run_id is check_run_id
