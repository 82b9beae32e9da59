"""Ingest: what lands in the catalog, quarantine and ledger; idempotence, crash safety, de-duplication, the gate."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from audit_tasks.catalog import LEDGER_NAME, read_catalog, read_ledger
from audit_tasks.config import AuditConfig, IngestCheck
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.ingest import ingest, ingest_gate
from audit_tasks.tables import table_metadata
from fixtures_ingest import make_config, regions, write_csv, write_jpeg, write_jsonl, write_parquet

DAY = date(2025, 3, 1)


@pytest.fixture()
def config(tmp_path: Path) -> AuditConfig:
    return make_config(tmp_path, attributes=["gender"])


def images(config: AuditConfig, *seeds: int) -> list[str]:
    """Write one distinct JPEG per seed under the image root; return their relative URIs."""
    names = []
    for seed in seeds:
        write_jpeg(config.dataset.image_root / f"img{seed}.jpg", (32, 24), seed=seed)
        names.append(f"img{seed}.jpg")
    return names


def rows(uris: list[str], **extra) -> list[dict]:
    return [
        {"image_uri": u, "label": "doctor" if i % 2 == 0 else "nurse", "gender": "fm"[i % 2], **extra}
        for i, u in enumerate(uris)
    ]


def landing(config: AuditConfig) -> Path:
    return config.dataset.landing


# ---------------------------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------------------------


def test_accepted_rows_land_in_a_dated_catalog_part(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", rows(images(config, 1, 2)))
    result = ingest(config, "r1", today=DAY)
    part = config.dataset.catalog / "ingest_date=2025-03-01" / "run-r1.parquet"
    assert result.catalog_part == part and part.is_file()
    assert table_metadata(part)["table"] == "catalog"
    assert len(pq.read_table(part)) == 2


def test_catalog_rows_have_the_contract_columns(config: AuditConfig) -> None:
    uris = images(config, 1)
    box = regions(("core", "face", (0, 0, 10, 10)))
    write_csv(
        landing(config) / "m.csv", [{**rows(uris)[0], "tags": "coat| stethoscope |coat", "regions": box, "site": "A"}]
    )
    row = ingest(config, "r1", today=DAY).accepted.iloc[0]
    assert list(row.index) == [
        "run_id",
        "ingest_date",
        "manifest",
        "row_number",
        "image_id",
        "image_uri",
        "image_path",
        "content_sha256",
        "label",
        "tags",
        "regions",
        "width",
        "height",
        "prop_aspect",
        "prop_jpeg_quality",
        "prop_format",
        "gender",
        "site",
    ]
    assert (row.run_id, row.ingest_date, row.manifest, row.row_number) == ("r1", "2025-03-01", "m.csv", 1)
    assert row.image_path == str((config.dataset.image_root / "img1.jpg").resolve())
    assert row.image_id == row.content_sha256[:16] and len(row.content_sha256) == 64
    assert row.tags == ["coat", "stethoscope"]
    assert row.regions == '[{"kind": "core", "name": "face", "box": [0, 0, 10, 10]}]'
    assert (row.width, row.height, row.gender, row.site) == (32, 24, "f", "A")
    # The header's properties (tests/test_image_properties.py checks their values; pixels are measured later).
    assert row.prop_format == "JPEG" and row.prop_aspect == 32 / 24 and row.prop_jpeg_quality > 0


def test_catalog_values_are_stripped(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", [{"image_uri": " img1.jpg ", "label": " doctor ", "gender": " f "}])
    images(config, 1)
    row = ingest(config, "r1", today=DAY).accepted.iloc[0]
    assert (row.image_uri, row.label, row.gender) == ("img1.jpg", "doctor", "f")


def test_read_catalog_gives_tags_as_lists(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", [{**rows(images(config, 1))[0], "tags": "a|b"}])
    ingest(config, "r1", today=DAY)
    assert read_catalog(config.dataset.catalog)["tags"].tolist() == [["a", "b"]]


def test_given_image_id_is_kept(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", [{**rows(images(config, 1))[0], "image_id": "photo-1"}])
    assert ingest(config, "r1", today=DAY).accepted["image_id"].tolist() == ["photo-1"]


@pytest.mark.parametrize("writer,suffix", [(write_csv, ".csv"), (write_jsonl, ".jsonl"), (write_parquet, ".parquet")])
def test_every_manifest_format_ingests(config: AuditConfig, writer, suffix: str) -> None:
    writer(landing(config) / f"m{suffix}", rows(images(config, 1, 2)))
    assert len(ingest(config, "r1", today=DAY).accepted) == 2


def test_manifests_are_read_in_name_order_skipping_hidden_and_temp_files(config: AuditConfig) -> None:
    uris = images(config, 1, 2, 3, 4, 5)
    write_csv(landing(config) / "b.csv", rows(uris[1:2]))
    write_csv(landing(config) / "a.csv", rows(uris[0:1]))
    write_csv(landing(config) / ".hidden.csv", rows(uris[2:3]))
    write_csv(landing(config) / "c.csv.part", rows(uris[3:4]))
    write_csv(landing(config) / "_SUCCESS", [])
    (landing(config) / "sub").mkdir()
    write_csv(landing(config) / "sub" / "d.csv", rows(uris[4:5]))
    result = ingest(config, "r1", today=DAY)
    assert result.manifests["manifest"].tolist() == ["a.csv", "b.csv"]


# ---------------------------------------------------------------------------------------------
# Ledger and idempotence
# ---------------------------------------------------------------------------------------------


def test_two_concurrent_ingests_land_each_manifest_once(config: AuditConfig) -> None:
    from concurrent.futures import ThreadPoolExecutor

    write_csv(landing(config) / "m1.csv", rows(images(config, 1, 2, 3)))
    write_csv(landing(config) / "m2.csv", rows(images(config, 4, 5)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda run_id: ingest(config, run_id, today=DAY), ["r1", "r2"]))
    assert sorted(len(r.accepted) for r in results) == [0, 5]  # one took both manifests, the other found none
    catalog = read_catalog(config.dataset.catalog)
    assert catalog["image_id"].is_unique and len(catalog) == 5
    assert sorted(read_ledger(config.dataset.catalog)["manifest"]) == ["m1.csv", "m2.csv"]


def test_second_run_finds_nothing_new(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", rows(images(config, 1, 2)))
    ingest(config, "r1", today=DAY)
    again = ingest(config, "r2", today=DAY)
    assert again.manifests.empty and again.accepted.empty and again.quarantined.empty
    assert len(read_catalog(config.dataset.catalog)) == 2


def test_same_run_id_again_gives_identical_tables_and_no_duplicates(config: AuditConfig) -> None:
    uris = images(config, 1, 2, 3)
    write_csv(landing(config) / "m.csv", rows(uris) + [{"image_uri": "nope.jpg", "label": "doctor", "gender": "f"}])
    first = ingest(config, "r1", today=DAY)
    ledger = read_ledger(config.dataset.catalog)
    second = ingest(config, "r1", today=date(2030, 1, 1))  # a re-run keeps its first date
    pd.testing.assert_frame_equal(first.accepted, second.accepted)
    pd.testing.assert_frame_equal(first.quarantined, second.quarantined)
    pd.testing.assert_frame_equal(first.manifests, second.manifests)
    pd.testing.assert_frame_equal(ledger, read_ledger(config.dataset.catalog))
    assert len(read_catalog(config.dataset.catalog)) == 3
    assert [p.parent.name for p in config.dataset.catalog.glob("*/run-*.parquet")] == ["ingest_date=2025-03-01"]


def test_a_renamed_copy_of_an_ingested_manifest_is_skipped(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", rows(images(config, 1)))
    ingest(config, "r1", today=DAY)
    (landing(config) / "m-copy.csv").write_bytes((landing(config) / "m.csv").read_bytes())
    assert ingest(config, "r2", today=DAY).manifests.empty


def test_rerun_ignores_manifests_that_arrived_after_the_run(config: AuditConfig) -> None:
    uris = images(config, 1, 2)
    write_csv(landing(config) / "m1.csv", rows(uris[:1]))
    ingest(config, "r1", today=DAY)
    write_csv(landing(config) / "m2.csv", rows(uris[1:]))
    assert ingest(config, "r1", today=DAY).manifests["manifest"].tolist() == ["m1.csv"]
    assert ingest(config, "r2", today=DAY).manifests["manifest"].tolist() == ["m2.csv"]


def test_rerun_refuses_when_its_manifest_is_gone(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", rows(images(config, 1)))
    ingest(config, "r1", today=DAY)
    (landing(config) / "m.csv").unlink()
    with pytest.raises(ManifestError, match=r"cannot re-run ingest 'r1': manifest\(s\) m\.csv are no longer"):
        ingest(config, "r1", today=DAY)
    assert len(read_catalog(config.dataset.catalog)) == 1  # nothing was overwritten


def test_ledger_records_every_manifest_with_its_counts(config: AuditConfig) -> None:
    write_csv(
        landing(config) / "m.csv",
        rows(images(config, 1, 2)) + [{"image_uri": "x.jpg", "label": "doctor", "gender": "f"}],
    )
    ingest(config, "r1", today=DAY)
    ledger = read_ledger(config.dataset.catalog)
    assert ledger[
        ["manifest", "run_id", "ingest_date", "status", "rows", "accepted", "quarantined"]
    ].values.tolist() == [
        ["m.csv", "r1", "2025-03-01", "ingested", 3, 2, 1],
    ]


def test_failed_manifest_is_not_retried_but_a_fixed_one_ingests(config: AuditConfig) -> None:
    uris = images(config, 1)
    write_csv(landing(config) / "m.csv", [{"image_uri": uris[0], "gender": "f"}])  # no label column
    first = ingest(config, "r1", today=DAY)
    assert first.manifests["status"].tolist() == ["failed"]
    assert ingest(config, "r2", today=DAY).manifests.empty  # the same bad content is not retried
    write_csv(landing(config) / "m.csv", rows(uris))  # fixed in place: new content hash
    fixed = ingest(config, "r3", today=DAY)
    assert fixed.manifests["status"].tolist() == ["ingested"] and len(fixed.accepted) == 1


def test_ledger_is_written_after_the_catalog_part(config: AuditConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit_tasks.ingest as module

    write_csv(landing(config) / "m.csv", rows(images(config, 1, 2)))

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the catalog write and the ledger write")

    monkeypatch.setattr(module, "commit_run", crash)
    with pytest.raises(RuntimeError):
        ingest(config, "r1", today=DAY)
    assert not (config.dataset.catalog / LEDGER_NAME).exists()
    assert read_catalog(config.dataset.catalog).empty  # the orphan part is not trusted
    monkeypatch.undo()
    recovered = ingest(config, "r2", today=DAY)  # the manifests are still pending, not duplicates
    assert len(recovered.accepted) == 2 and recovered.quarantined.empty
    assert read_catalog(config.dataset.catalog)["run_id"].tolist() == ["r2", "r2"]


def test_crashed_run_rerun_with_its_id_completes(config: AuditConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit_tasks.ingest as module

    write_csv(landing(config) / "m.csv", rows(images(config, 1)))
    monkeypatch.setattr(module, "commit_run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        ingest(config, "r1", today=DAY)
    monkeypatch.undo()
    assert len(ingest(config, "r1", today=DAY).accepted) == 1
    assert len(read_catalog(config.dataset.catalog)) == 1


def test_unreadable_manifest_is_refused_and_retried_next_run(
    config: AuditConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audit_tasks.ingest as module

    write_csv(landing(config) / "m.csv", rows(images(config, 1)))
    real = module.content_hash

    def failing(path: Path) -> str:
        if path.suffix == ".csv":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(module, "content_hash", failing)
    first = ingest(config, "r1", today=DAY)
    assert first.quarantined["reason"].tolist() == ["m.csv: cannot read manifest (permission or I/O error)"]
    assert first.manifests["status"].tolist() == ["failed"]
    monkeypatch.undo()
    assert len(ingest(config, "r2", today=DAY).accepted) == 1


def test_bad_run_id_is_refused(config: AuditConfig) -> None:
    with pytest.raises(ConfigError, match="run id '../escape' is not usable as a folder name"):
        ingest(config, "../escape", today=DAY)


def test_airflow_style_run_id_is_accepted(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", rows(images(config, 1)))
    result = ingest(config, "scheduled__2025-03-01T00_00_00_00_00", today=DAY)  # as compat.audit_run_id makes it
    assert result.catalog_part.name == "run-scheduled__2025-03-01T00_00_00_00_00.parquet"


# ---------------------------------------------------------------------------------------------
# De-duplication
# ---------------------------------------------------------------------------------------------


def test_duplicate_content_within_a_run_keeps_the_first(config: AuditConfig) -> None:
    uris = images(config, 1)
    write_jpeg(config.dataset.image_root / "copy.jpg", (32, 24), seed=1)
    write_csv(landing(config) / "a.csv", rows(uris))
    write_csv(landing(config) / "b.csv", rows(["copy.jpg"]))
    result = ingest(config, "r1", today=DAY)
    image_id = result.accepted["image_id"].iloc[0]
    assert result.quarantined["reason"].tolist() == [f"duplicate image content of {image_id} (manifest a.csv row 1)"]


def test_duplicate_content_of_an_earlier_run_is_quarantined(config: AuditConfig) -> None:
    uris = images(config, 1)
    write_csv(landing(config) / "a.csv", rows(uris))
    first = ingest(config, "r1", today=DAY)
    write_csv(landing(config) / "b.csv", rows(uris, site="B"))  # another manifest naming the same image
    second = ingest(config, "r2", today=DAY)
    image_id = first.accepted["image_id"].iloc[0]
    assert second.quarantined["reason"].tolist() == [
        f"duplicate image content of {image_id} (run r1, manifest a.csv row 1)"
    ]


def test_image_id_reused_for_other_content_in_a_later_run_is_quarantined(config: AuditConfig) -> None:
    uris = images(config, 1, 2)
    write_csv(landing(config) / "a.csv", [{**rows(uris[:1])[0], "image_id": "p1"}])
    ingest(config, "r1", today=DAY)
    write_csv(landing(config) / "b.csv", [{**rows(uris[1:])[0], "image_id": "p1"}])
    assert ingest(config, "r2", today=DAY).quarantined["reason"].tolist() == [
        "image_id 'p1' is already used for different image content (run r1, manifest a.csv row 1)"
    ]


# ---------------------------------------------------------------------------------------------
# Quarantine rows and the gate
# ---------------------------------------------------------------------------------------------


def test_quarantine_rows_keep_the_row_as_given(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", [{"image_uri": "gone.jpg", "label": "doctor", "gender": "f", "tags": "a|b"}])
    q = ingest(config, "r1", today=DAY).quarantined
    assert list(q.columns) == ["image_uri", "label", "gender", "tags", "manifest", "row_number", "reason", "stage"]
    assert q.iloc[0][["image_uri", "label", "gender", "tags", "manifest", "row_number", "stage"]].tolist() == [
        "gone.jpg",
        "doctor",
        "f",
        "a|b",
        "m.csv",
        1,
        "ingest",
    ]


def test_reserved_column_in_a_manifest_fails_that_manifest(config: AuditConfig) -> None:
    write_csv(landing(config) / "m.csv", [{**rows(images(config, 1))[0], "width": "9"}])
    result = ingest(config, "r1", today=DAY)
    assert result.quarantined["reason"].tolist() == [
        "m.csv: column(s) width are reserved for what the ingest records; rename them"
    ]


def test_gate_passes_under_the_threshold(config: AuditConfig) -> None:
    uris = images(config, *range(1, 10))
    write_csv(landing(config) / "m.csv", rows(uris) + [{"image_uri": "gone.jpg", "label": "doctor", "gender": "f"}])
    [gate] = ingest_gate(ingest(config, "r1", today=DAY), IngestCheck(max_quarantine_fraction=0.1))
    assert (gate.check, gate.subject, gate.metric) == ("ingest", "all manifests", "quarantine_fraction")
    assert gate.passed and gate.value == pytest.approx(0.1) and gate.threshold == 0.1
    assert gate.detail.startswith("1 of 10 rows quarantined (10.0%); most common: 1 x image file not found")


def test_gate_fails_over_the_threshold(config: AuditConfig) -> None:
    write_csv(
        landing(config) / "m.csv",
        rows(images(config, 1)) + [{"image_uri": "gone.jpg", "label": "doctor", "gender": "f"}],
    )
    [gate] = ingest_gate(ingest(config, "r1", today=DAY), IngestCheck(max_quarantine_fraction=0.1))
    assert not gate.passed and gate.value == pytest.approx(0.5)


def test_gate_counts_a_failed_manifest(config: AuditConfig) -> None:
    (landing(config) / "m.csv").write_bytes(b"")
    [gate] = ingest_gate(ingest(config, "r1", today=DAY), IngestCheck())
    assert not gate.passed and gate.value == 1.0


def test_gate_passes_when_nothing_is_new(config: AuditConfig) -> None:
    [gate] = ingest_gate(ingest(config, "r1", today=DAY), IngestCheck())
    assert gate.passed and gate.value == 0.0 and gate.detail == "no new rows to ingest"


def test_ingest_without_a_model_skips_the_label_check(tmp_path: Path) -> None:
    config = make_config(tmp_path, classes=None)
    write_jpeg(config.dataset.image_root / "a.jpg", seed=1)
    write_csv(config.dataset.landing / "m.csv", [{"image_uri": "a.jpg", "label": "anything"}])
    assert len(ingest(config, "r1", today=DAY).accepted) == 1
