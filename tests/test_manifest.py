"""Manifest reading and field parsing: formats, normalisation, row-level problems, and property tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_tasks.errors import ManifestError
from audit_tasks.manifest import (
    ROW_ERROR,
    parse_region_boxes,
    parse_tags,
    read_manifest,
    read_manifest_table,
    regions_json,
)
from fixtures_ingest import write_csv, write_jsonl, write_parquet

ROWS = [
    {"image_uri": "a.jpg", "label": "doctor", "tags": ["coat", "stethoscope"], "gender": "f"},
    {"image_uri": "b.jpg", "label": "nurse", "tags": [], "gender": "m"},
]


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer,suffix", [(write_csv, ".csv"), (write_jsonl, ".jsonl"), (write_parquet, ".parquet")])
def test_every_format_reads_to_the_same_rows(tmp_path: Path, writer, suffix: str) -> None:
    frame = read_manifest(writer(tmp_path / f"m{suffix}", ROWS))
    assert list(frame["image_uri"]) == ["a.jpg", "b.jpg"]
    assert list(frame["tags"]) == [["coat", "stethoscope"], []]
    assert list(frame["gender"]) == ["f", "m"]
    assert list(frame[ROW_ERROR]) == [None, None]


def test_ndjson_suffix_reads_as_json_lines(tmp_path: Path) -> None:
    assert len(read_manifest(write_jsonl(tmp_path / "m.ndjson", ROWS))) == 2


def test_unknown_suffix_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "m.xlsx").write_bytes(b"PK")
    with pytest.raises(ManifestError, match=r"m\.xlsx: unsupported manifest format '\.xlsx'"):
        read_manifest(tmp_path / "m.xlsx")


def test_column_names_are_stripped_but_keep_their_case(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(" image_uri , Skin Tone \na.jpg,dark\n", encoding="utf-8")
    assert list(read_manifest(tmp_path / "m.csv").columns) == ["image_uri", "Skin Tone", ROW_ERROR]


def test_missing_image_uri_names_file_and_column(tmp_path: Path) -> None:
    write_csv(tmp_path / "m.csv", [{"path": "a.jpg", "label": "doctor"}])
    with pytest.raises(
        ManifestError, match=r"m\.csv: missing required column 'image_uri' \(columns found: path, label\)"
    ):
        read_manifest(tmp_path / "m.csv")


def test_zero_byte_manifest_is_an_empty_file_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"")
    with pytest.raises(ManifestError, match="empty file"):
        read_manifest(tmp_path / "m.csv")


def test_header_only_manifest_has_zero_rows(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,label\n", encoding="utf-8")
    frame = read_manifest(tmp_path / "m.csv")
    assert len(frame) == 0 and "label" in frame.columns


def test_json_lines_with_only_blank_lines_has_zero_rows(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text("\n\n", encoding="utf-8")
    assert len(read_manifest(tmp_path / "m.jsonl")) == 0


def test_duplicate_column_names_are_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,label,label\na,b,c\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="'label' appears more than once"):
        read_manifest(tmp_path / "m.csv")


def test_empty_cells_become_none(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,label,gender\na.jpg,,\n", encoding="utf-8")
    frame = read_manifest(tmp_path / "m.csv")
    assert frame["label"].iloc[0] is None and frame["gender"].iloc[0] is None


def test_short_csv_rows_are_padded_with_none(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,label,gender\na.jpg,doctor\n", encoding="utf-8")
    frame = read_manifest(tmp_path / "m.csv")
    assert frame["gender"].iloc[0] is None and frame[ROW_ERROR].iloc[0] is None


def test_long_csv_rows_carry_a_row_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,label\na.jpg,doctor,extra\nb.jpg,nurse\n", encoding="utf-8")
    frame = read_manifest(tmp_path / "m.csv")
    assert frame[ROW_ERROR].iloc[0] == "row has 3 fields but the header has 2"
    assert frame[ROW_ERROR].iloc[1] is None


def test_non_utf8_bytes_mark_only_their_row(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"image_uri,label\na.jpg,caf\xe9\nb.jpg,nurse\n")
    frame = read_manifest(tmp_path / "m.csv")
    assert frame[ROW_ERROR].iloc[0] == "column 'label' has bytes that are not valid UTF-8 (bytes 0xe9)"
    assert frame["label"].iloc[0] == "caf\\xe9"  # shown, not silently mangled
    assert frame[ROW_ERROR].iloc[1] is None


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfimage_uri,label\na.jpg,doctor\n")
    assert list(read_manifest(tmp_path / "m.csv").columns)[:2] == ["image_uri", "label"]


def test_bad_json_line_carries_a_row_error(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"image_uri": "a.jpg"}\n{"image_uri": \n[1, 2]\n', encoding="utf-8")
    errors = list(read_manifest(tmp_path / "m.jsonl")[ROW_ERROR])
    assert errors[0] is None
    assert errors[1].startswith("line 2 is not valid JSON")
    assert errors[2] == "line 3 must be a JSON object, got a list"


def test_json_values_other_than_strings_become_json_text(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "image_uri": "a.jpg",
                "age": 41,
                "ok": True,
                "regions": [{"kind": "core", "name": "f", "box": [0, 0, 1, 1]}],
            }
        ],
    )
    row = read_manifest(tmp_path / "m.jsonl").iloc[0]
    assert (row["age"], row["ok"]) == ("41", "true")
    assert json.loads(row["regions"]) == [{"kind": "core", "name": "f", "box": [0, 0, 1, 1]}]


def test_corrupt_parquet_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "m.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match=r"m\.parquet: not a readable Parquet file"):
        read_manifest(tmp_path / "m.parquet")


# ---------------------------------------------------------------------------------------------
# Arrow fast path
# ---------------------------------------------------------------------------------------------


def test_table_fast_path_normalises_tags_from_strings(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,tags\na.jpg, x |y|x||\nb.jpg,\n", encoding="utf-8")
    table = read_manifest_table(tmp_path / "m.csv")
    assert table.column("tags").to_pylist() == [["x", "y"], []]
    assert table.schema.field("tags").type == pa.list_(pa.string())


def test_table_fast_path_normalises_tag_lists_from_parquet(tmp_path: Path) -> None:
    write_parquet(tmp_path / "m.parquet", [{"image_uri": "a", "tags": [" a", "b", "a"], "n": 3}])
    table = read_manifest_table(tmp_path / "m.parquet")
    assert table.column("tags").to_pylist() == [["a", "b"]]
    assert table.column("n").to_pylist() == ["3"]


def test_table_fast_path_drops_null_and_empty_tags_and_null_lists(tmp_path: Path) -> None:
    write_parquet(
        tmp_path / "m.parquet", [{"image_uri": "a", "tags": None}, {"image_uri": "b", "tags": ["a", None, " ", "a"]}]
    )
    assert read_manifest_table(tmp_path / "m.parquet").column("tags").to_pylist() == [[], ["a"]]


def test_table_fast_path_matches_read_manifest(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ROWS)
    frame = read_manifest(path)
    table = read_manifest_table(path)
    assert table.column("tags").to_pylist() == list(frame["tags"])
    assert table.column("gender").to_pylist() == list(frame["gender"])


def test_table_fast_path_falls_back_on_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"image_uri,label\na.jpg,caf\xe9\n")
    table = read_manifest_table(tmp_path / "m.csv")
    assert table.column("label").to_pylist() == ["caf\\xe9"]
    assert table.column(ROW_ERROR).to_pylist() == ["column 'label' has bytes that are not valid UTF-8 (bytes 0xe9)"]


def test_table_fast_path_falls_back_on_ragged_rows(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,label\na.jpg,doctor,extra\nb.jpg,nurse\n", encoding="utf-8")
    assert read_manifest_table(tmp_path / "m.csv").column(ROW_ERROR).to_pylist() == [
        "row has 3 fields but the header has 2",
        None,
    ]


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(body=st.binary(max_size=200))
def test_table_fast_path_gives_a_table_or_a_manifest_error(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"image_uri,tags\n" + body)
    try:
        table = read_manifest_table(path)
    except ManifestError:
        return
    assert table.schema.field("tags").type == pa.list_(pa.string())


def test_table_fast_path_reads_empty_json_lines_as_zero_rows(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text("\n", encoding="utf-8")
    assert read_manifest_table(tmp_path / "m.jsonl").num_rows == 0


def test_table_fast_path_requires_image_uri(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("tags\na\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="missing required column 'image_uri'"):
        read_manifest_table(tmp_path / "m.csv")


# ---------------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, []),
        (math.nan, []),
        ("", []),
        (" a | b |a||", ["a", "b"]),
        (["b", " a", "", None, "b"], ["b", "a"]),
        ((1, 2), ["1", "2"]),
    ],
)
def test_parse_tags_normalises(value, expected) -> None:
    assert parse_tags(value) == expected


_TAG = st.text(alphabet=st.characters(blacklist_characters="|", blacklist_categories=("Cs",)), min_size=0, max_size=8)


@given(st.lists(_TAG, max_size=8))
def test_tags_round_trip_through_the_pipe_form(tags: list[str]) -> None:
    parsed = parse_tags(tags)
    assert parse_tags("|".join(parsed)) == parsed
    assert parse_tags(parsed) == parsed
    assert all(t == t.strip() and t for t in parsed) and len(set(parsed)) == len(parsed)


@given(st.text(max_size=40))
def test_parse_tags_of_any_text_is_idempotent(text: str) -> None:
    assert parse_tags(parse_tags(text)) == parse_tags(text)


# ---------------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------------


def test_parse_region_boxes_reads_core_and_spurious_boxes() -> None:
    raw = (
        '[{"kind": "core", "name": "face", "box": [1, 2, 10, 20]}, '
        '{"kind": "spurious", "name": "wm", "box": [0, 0, 5.5, 5]}]'
    )
    assert parse_region_boxes(raw, width=10, height=20) == [
        {"kind": "core", "name": "face", "box": [1, 2, 10, 20]},
        {"kind": "spurious", "name": "wm", "box": [0, 0, 5.5, 5]},
    ]


@pytest.mark.parametrize("raw", [None, math.nan, "", "  ", "[]"])
def test_absent_regions_parse_to_an_empty_list(raw) -> None:
    assert parse_region_boxes(raw) == []


@pytest.mark.parametrize(
    "raw,message",
    [
        ("[{", "regions is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 3"),
        ('{"kind": "core"}', "regions must be a JSON list of objects, got an object"),
        ('["face"]', "region 0 must be an object with kind, name, box; got a string"),
        (
            '[{"kind": "core", "name": "f", "bbox": [0, 0, 1, 1]}]',
            "region 0 has unknown key(s) bbox (allowed: box, kind, name)",
        ),
        ('[{"kind": "core", "name": "f"}]', "region 0 lacks key(s) box"),
        (
            '[{"kind": "object", "name": "f", "box": [0, 0, 1, 1]}]',
            "region 0 has kind 'object'; it must be 'core', 'spurious' or 'context'",
        ),
        ('[{"kind": "core", "name": "", "box": [0, 0, 1, 1]}]', "region 0 needs a non-empty string name, got ''"),
        (
            '[{"kind": "core", "name": "f", "box": [0, 0, 1]}]',
            "region 0 (f) box must be a list of 4 numbers [x0, y0, x1, y1], got [0, 0, 1]",
        ),
        (
            '[{"kind": "core", "name": "f", "box": [0, 0, "1", 1]}]',
            "region 0 (f) box must hold finite numbers, got [0, 0, '1', 1]",
        ),
        (
            '[{"kind": "core", "name": "f", "box": [0, 0, NaN, 1]}]',
            "region 0 (f) box must hold finite numbers, got [0, 0, nan, 1]",
        ),
        (
            '[{"kind": "core", "name": "f", "box": [-1, 0, 1, 1]}]',
            "region 0 (f) box [-1, 0, 1, 1] has a negative coordinate",
        ),
        (
            '[{"kind": "core", "name": "f", "box": [5, 0, 1, 1]}]',
            "region 0 (f) box [5, 0, 1, 1] is empty or inverted (need x0 < x1 and y0 < y1)",
        ),
        (
            '[{"kind": "core", "name": "f", "box": [0, 0, 11, 1]}]',
            "region 0 (f) box [0, 0, 11, 1] lies outside the 10x10 image",
        ),
    ],
)
def test_parse_region_boxes_rejects_with_a_precise_message(raw: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_region_boxes(raw, width=10, height=10)
    assert str(info.value) == message


def test_deeply_nested_regions_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_region_boxes("[" * 100_000 + "]" * 100_000)


def test_regions_json_normalises_and_drops_empty() -> None:
    assert regions_json([]) is None
    parsed = parse_region_boxes('[ {"name": "f", "box": [0,0,1,1], "kind": "core"} ]')
    assert regions_json(parsed) == '[{"kind": "core", "name": "f", "box": [0, 0, 1, 1]}]'


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["kind", "name", "box", "x"]), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.one_of(st.text(max_size=60), _JSONISH))
def test_parse_region_boxes_raises_nothing_but_value_error(raw) -> None:
    try:
        parse_region_boxes(raw, width=50, height=50)
    except ValueError:
        pass


@given(st.data())
def test_parse_region_boxes_accepts_every_box_inside_the_image(data) -> None:
    width = data.draw(st.integers(1, 5000))
    height = data.draw(st.integers(1, 5000))
    x0 = data.draw(st.integers(0, width - 1))
    y0 = data.draw(st.integers(0, height - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    y1 = data.draw(st.integers(y0 + 1, height))
    kind = data.draw(st.sampled_from(["core", "spurious"]))
    raw = json.dumps([{"kind": kind, "name": "r", "box": [x0, y0, x1, y1]}])
    assert parse_region_boxes(raw, width=width, height=height)[0]["box"] == [x0, y0, x1, y1]


# ---------------------------------------------------------------------------------------------
# Any text as a CSV manifest
# ---------------------------------------------------------------------------------------------


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(body=st.binary(max_size=300), header=st.sampled_from([b"image_uri,label\n", b"image_uri\n", b"", b"label\n"]))
def test_arbitrary_bytes_as_csv_give_rows_or_a_manifest_error(tmp_path: Path, body: bytes, header: bytes) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(header + body)
    try:
        frame = read_manifest(path)
    except ManifestError:
        return
    assert "image_uri" in frame.columns and ROW_ERROR in frame.columns
    for column in frame.columns:
        for value in frame[column]:
            if isinstance(value, str):
                value.encode("utf-8")  # every kept value can be written to Parquet


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_as_csv_gives_rows_or_a_manifest_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image_uri,label,tags\n" + text, encoding="utf-8", errors="surrogatepass")
    try:
        frame = read_manifest(path)
    except ManifestError:
        return
    assert all(isinstance(t, list) for t in frame["tags"])
