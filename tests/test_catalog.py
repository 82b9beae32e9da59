"""The catalog: parts per run, the ledger that commits them, and the readers that trust only committed runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit_tasks.catalog import (
    CATALOG_COLUMNS,
    LEDGER_NAME,
    STATUS_INGESTED,
    catalog_frame,
    commit_run,
    read_catalog,
    read_catalog_table,
    read_ledger,
    write_part,
)
from audit_tasks.errors import ManifestError

DAY, NEXT_DAY = "2025-03-01", "2025-03-02"


def rows(run_id: str, day: str, n: int, **extra: str) -> pd.DataFrame:
    """`n` catalog rows of one run from one manifest, with `extra` as string columns."""
    records = [
        {
            "run_id": run_id,
            "ingest_date": day,
            "manifest": "m.csv",
            "row_number": i + 1,
            "image_id": f"{run_id}-{i}",
            "image_uri": f"{run_id}-{i}.jpg",
            "image_path": f"/images/{run_id}-{i}.jpg",
            "content_sha256": f"{run_id}{i}",
            "label": "doctor",
            "tags": ["a", "b"],
            "regions": None,
            "width": 32,
            "height": 24,
            **extra,
        }
        for i in range(n)
    ]
    return catalog_frame(records, list(extra))


def manifests(frame: pd.DataFrame) -> pd.DataFrame:
    """The run's ledger lines: one manifest, every row accepted."""
    return pd.DataFrame(
        [
            {
                "manifest": "m.csv",
                "sha256": f"sha-{frame['run_id'].iloc[0]}",
                "status": STATUS_INGESTED,
                "rows": len(frame),
                "accepted": len(frame),
                "quarantined": 0,
                "reason": None,
            }
        ]
    )


def land(catalog: Path, run_id: str, day: str, n: int, **extra: str) -> None:
    """Write a run's part, then commit it in the ledger, as the ingest does."""
    frame = rows(run_id, day, n, **extra)
    write_part(catalog, run_id, day, frame)
    commit_run(catalog, read_ledger(catalog), run_id, day, manifests(frame))


@pytest.fixture()
def catalog(tmp_path: Path) -> Path:
    return tmp_path / "catalog"


def test_read_catalog_returns_every_committed_run(catalog: Path) -> None:
    land(catalog, "r2", NEXT_DAY, 1)
    land(catalog, "r1", DAY, 2)
    assert read_catalog(catalog)["run_id"].tolist() == ["r1", "r1", "r2"]
    assert read_catalog(catalog, run_id="r2")["image_id"].tolist() == ["r2-0"]


def test_read_catalog_gives_tags_as_lists(catalog: Path) -> None:
    land(catalog, "r1", DAY, 1)
    assert read_catalog(catalog)["tags"].tolist() == [["a", "b"]]


def test_read_catalog_with_columns_reads_only_those_and_the_order_keys(catalog: Path) -> None:
    land(catalog, "r1", DAY, 2)
    frame = read_catalog(catalog, columns=["tags", "no_such_column"])
    assert list(frame.columns) == ["ingest_date", "run_id", "manifest", "row_number", "tags"]
    assert frame["row_number"].tolist() == [1, 2]


def test_read_catalog_of_an_empty_catalog_has_the_columns(catalog: Path) -> None:
    frame = read_catalog(catalog)
    assert frame.empty and list(frame.columns) == list(CATALOG_COLUMNS)


def test_a_part_the_ledger_does_not_list_is_never_read(catalog: Path) -> None:
    land(catalog, "r1", DAY, 1)
    write_part(catalog, "r2", DAY, rows("r2", DAY, 2))  # a crash before commit_run
    assert read_catalog(catalog)["run_id"].tolist() == ["r1"]
    assert read_catalog_table(catalog).num_rows == 1


def test_writing_a_run_again_replaces_its_part(catalog: Path) -> None:
    land(catalog, "r1", DAY, 2)
    land(catalog, "r1", NEXT_DAY, 1)  # the same run, re-run on another day
    assert sorted(p.parent.name for p in catalog.glob("*/run-*.parquet")) == [f"ingest_date={NEXT_DAY}"]
    assert read_catalog(catalog)["ingest_date"].tolist() == [NEXT_DAY]


def test_a_run_with_no_rows_leaves_no_part(catalog: Path) -> None:
    land(catalog, "r1", DAY, 2)
    assert write_part(catalog, "r1", DAY, rows("r1", DAY, 0)) is None
    assert not list(catalog.glob("*/run-*.parquet"))


def test_commit_run_replaces_only_that_runs_ledger_lines(catalog: Path) -> None:
    land(catalog, "r1", DAY, 1)
    land(catalog, "r2", DAY, 2)
    land(catalog, "r1", DAY, 3)
    ledger = read_ledger(catalog)
    assert ledger["run_id"].tolist() == ["r2", "r1"] and ledger["rows"].tolist() == [2, 3]


def test_read_catalog_table_holds_the_same_rows_as_read_catalog(catalog: Path) -> None:
    land(catalog, "r1", DAY, 2)
    land(catalog, "r2", NEXT_DAY, 1)
    table = read_catalog_table(catalog, columns=["image_id", "tags"])
    frame = read_catalog(catalog)
    assert table.column_names == ["image_id", "tags"]
    assert table.column("image_id").to_pylist() == frame["image_id"].tolist()
    assert table.column("tags").to_pylist() == frame["tags"].tolist()


def test_read_catalog_table_reads_named_columns_dictionary_encoded(catalog: Path) -> None:
    land(catalog, "r1", DAY, 2, gender="f")
    table = read_catalog_table(catalog, columns=["tags", "gender"], dictionary=["tags", "gender"])
    assert pa.types.is_dictionary(table.schema.field("gender").type)
    assert pa.types.is_dictionary(table.schema.field("tags").type.value_type)
    assert table.to_pylist() == [{"tags": ["a", "b"], "gender": "f"}] * 2


def test_read_catalog_table_can_leave_one_run_out(catalog: Path) -> None:
    land(catalog, "r1", DAY, 2)
    land(catalog, "r2", DAY, 1)
    assert read_catalog_table(catalog, columns=["run_id"], exclude_run="r1").column("run_id").to_pylist() == ["r2"]


def test_catalog_folder_reads_as_one_hive_partitioned_dataset(catalog: Path) -> None:
    land(catalog, "r1", DAY, 1)
    land(catalog, "r2", NEXT_DAY, 1)
    table = pq.read_table(catalog)  # the ledger's leading underscore keeps it out
    assert sorted(table.column("ingest_date").to_pylist()) == [DAY, NEXT_DAY]


def test_an_unreadable_ledger_is_an_error_naming_it(catalog: Path) -> None:
    catalog.mkdir()
    (catalog / LEDGER_NAME).write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match=r"_ledger\.parquet cannot be read .*restore it from backup"):
        read_catalog(catalog)
