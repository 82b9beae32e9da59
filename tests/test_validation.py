"""Great Expectations row validation: one reason per failing row, naming every failed rule."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from audit_tasks.validation import is_empty_cell, validate_rows

CLASSES = ["doctor", "nurse"]


def frame(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"image_uri": [f"{i}.jpg" for i in range(n)], "label": ["doctor"] * n}
    base.update(columns)
    return pd.DataFrame(base)


def test_clean_rows_have_no_reason() -> None:
    reasons = validate_rows(frame(gender=["f", "m"]), classes=CLASSES, attributes=["gender"])
    assert reasons.tolist() == [None, None]


def test_reasons_keep_the_frame_index() -> None:
    data = frame(label=["doctor", "cat"])
    data.index = [10, 20]
    assert validate_rows(data, classes=CLASSES, attributes=[]).to_dict() == {
        10: None,
        20: "label 'cat' is not one of the model classes [doctor, nurse]",
    }


def test_unknown_label_is_named_with_the_classes() -> None:
    reasons = validate_rows(frame(label=["cat", "nurse"]), classes=CLASSES, attributes=[])
    assert reasons.tolist() == ["label 'cat' is not one of the model classes [doctor, nurse]", None]


def test_label_check_is_skipped_without_classes() -> None:
    assert validate_rows(frame(label=["cat"]), classes=None, attributes=[]).tolist() == [None]


@pytest.mark.parametrize("value", [None, "", "  ", float("nan")])
def test_empty_label_is_reported(value) -> None:
    assert validate_rows(frame(label=[value]), classes=CLASSES, attributes=[]).tolist() == ["label is empty"]


def test_empty_image_uri_is_reported() -> None:
    assert validate_rows(frame(image_uri=[" "]), classes=None, attributes=[]).tolist() == ["image_uri is empty"]


def test_missing_label_column_is_reported_on_every_row() -> None:
    data = frame(gender=["f", "m"]).drop(columns=["label"])
    assert validate_rows(data, classes=CLASSES, attributes=[]).tolist() == ["required column 'label' is missing"] * 2


@pytest.mark.parametrize("value", [None, "", "nan", "NaN", "None", "null", float("nan")])
def test_empty_attribute_is_reported(value) -> None:
    reasons = validate_rows(frame(gender=["f", value]), classes=CLASSES, attributes=["gender"])
    assert reasons.tolist() == [None, "attribute 'gender' is empty"]


def test_missing_attribute_column_is_reported() -> None:
    reasons = validate_rows(frame(gender=["f"]), classes=CLASSES, attributes=["skin_tone"])
    assert reasons.tolist() == ["attribute column 'skin_tone' is missing"]


def test_malformed_regions_are_reported() -> None:
    reasons = validate_rows(frame(regions=['[{"kind": "core"', None]), classes=None, attributes=[])
    assert reasons.tolist() == ["regions is not valid JSON: Expecting ',' delimiter at line 1 column 17", None]


def test_regions_outside_the_image_are_reported() -> None:
    box = '[{"kind": "spurious", "name": "wm", "box": [0, 0, 40, 10]}]'
    data = frame(regions=[box, box], width=[40, 30], height=[20, 20])
    reasons = validate_rows(data, classes=None, attributes=[])
    assert reasons.tolist() == [None, "region 0 (wm) box [0, 0, 40, 10] lies outside the 30x20 image"]


def test_every_failed_rule_of_a_row_is_joined() -> None:
    data = frame(label=["cat"], gender=[""], regions=["nope"])
    reason = validate_rows(data, classes=CLASSES, attributes=["gender"]).iloc[0]
    assert reason == (
        "label 'cat' is not one of the model classes [doctor, nurse]; "
        "regions is not valid JSON: Expecting value at line 1 column 1; attribute 'gender' is empty"
    )


def test_duplicate_image_id_keeps_the_first_row() -> None:
    data = frame(image_id=["x", "y", "x", None, None])
    assert validate_rows(data, classes=None, attributes=[]).tolist() == [
        None,
        None,
        "image_id 'x' is not unique: already used by row 1",
        None,
        None,
    ]


def test_duplicate_image_id_names_manifest_and_row_when_known() -> None:
    data = frame(image_id=["x", "x"], manifest=["m.csv", "m.csv"], row_number=[4, 7])
    assert validate_rows(data, classes=None, attributes=[]).iloc[1] == (
        "image_id 'x' is not unique: already used by manifest m.csv row 4"
    )


def test_a_rejected_first_row_does_not_make_its_duplicate_bad() -> None:
    data = frame(image_id=["x", "x"], label=["cat", "doctor"])
    assert validate_rows(data, classes=CLASSES, attributes=[]).tolist() == [
        "label 'cat' is not one of the model classes [doctor, nurse]",
        None,
    ]


def test_empty_frame_gives_empty_reasons() -> None:
    assert validate_rows(frame(label=[]), classes=CLASSES, attributes=["gender"]).empty


def test_a_thousand_rows_validate_quickly() -> None:
    data = frame(
        label=["doctor", "nurse", "cat", None] * 250,
        gender=["f", "m", "", "x"] * 250,
        image_id=[str(i % 900) for i in range(1000)],
    )
    validate_rows(data.head(2), classes=CLASSES, attributes=["gender"])  # GX import and first-use costs
    start = time.perf_counter()
    reasons = validate_rows(data, classes=CLASSES, attributes=["gender"])
    assert time.perf_counter() - start < 2.0
    assert reasons.notna().sum() == 500 + 50  # cat rows, empty-label rows, and late duplicate ids


@pytest.mark.parametrize(
    "value,missing", [(None, True), ("", True), (" nan ", True), ("NA", False), ("0", False), (0, False)]
)
def test_is_empty_cell(value, missing: bool) -> None:
    assert is_empty_cell(value) is missing
