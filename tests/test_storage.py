"""Object storage: the landing area, the catalog and the run folders may live on any fsspec store.

`memory://` (fsspec's in-process store) stands in for s3:// and gs://: nothing in the code path is local
disk, so a rename-based or `os`-based shortcut would fail here as it would on a bucket.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pandas as pd
import pytest
from upath import UPath

from audit_tasks.catalog import read_catalog, read_ledger
from audit_tasks.config import load_config
from audit_tasks.errors import PathEscapeError
from audit_tasks.paths import safe_child
from audit_tasks.pipeline import run_audit
from audit_tasks.storage import FileOpener, atomic_path, is_remote, public_uri, storage_path
from audit_tasks.tables import read_table, write_json, write_table, write_text
from fixtures_pipeline import (
    assert_audit_tables_equal,
    audit_tables,
    forget_object_store,
    make_world,
    move_to_object_store,
)


class _NotATensor:
    """A pickled object a state_dict must not contain."""


@pytest.fixture
def bucket():
    prefix = f"bucket-{uuid.uuid4().hex[:8]}"
    yield prefix
    forget_object_store(prefix)


def test_plain_paths_and_file_uris_stay_local_paths():
    assert storage_path("reports") == Path("reports")
    assert storage_path("file:///data/catalog") == Path("/data/catalog")
    assert storage_path("file://localhost/data/my%20catalog") == Path("/data/my catalog")
    assert not is_remote(storage_path("/data/catalog"))


def test_a_file_uri_naming_another_host_is_refused():
    with pytest.raises(ValueError, match="names another host"):
        storage_path("file://fileserver/data/catalog")


def test_a_connection_id_is_left_out_of_a_public_uri():
    assert public_uri("s3://aws_default@bucket/audit/r1/report.html") == "s3://bucket/audit/r1/report.html"
    assert public_uri("/data/audit/r1/report.html") == "/data/audit/r1/report.html"


def test_object_store_uris_become_fsspec_paths():
    located = storage_path("memory://bucket/catalog")
    assert is_remote(located)
    assert located.protocol == "memory" and str(located) == "memory://bucket/catalog"


def test_config_keeps_object_store_uris_and_resolves_relative_paths(tmp_path):
    world = make_world(tmp_path, n_images=2)
    config = load_config(world.config, {"dataset.catalog": "memory://lake/catalog", "output.dir": "memory://lake/out"})
    assert str(config.dataset.catalog) == "memory://lake/catalog" and is_remote(config.dataset.catalog)
    assert str(config.output.dir) == "memory://lake/out"
    assert config.dataset.landing == (tmp_path / "landing").resolve()


def test_a_table_written_to_object_storage_reads_back(bucket):
    target = UPath(f"memory://{bucket}/run/gates.parquet")
    write_table(pd.DataFrame({"check": ["ingest"], "passed": [True]}), target, name="gates")
    assert read_table(target).to_dict("records") == [{"check": "ingest", "passed": True}]


def test_a_failed_write_to_object_storage_leaves_no_object_and_no_temp_file(bucket):
    target = UPath(f"memory://{bucket}/run/report.html")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("<html>half a report", encoding="utf-8")
        raise RuntimeError("renderer crashed")
    assert not target.exists()
    assert not tmp.exists()


#: What `_written_modes` writes: one file through each writer.
WRITTEN = ("gates.parquet", "report.html", "summary.json")


def _written_modes(folder: Path, umask: int) -> dict[str, int]:
    """The permission bits of a table, a text file and a JSON file written under `umask`."""
    previous = os.umask(umask)
    try:
        write_table(pd.DataFrame({"check": ["ingest"]}), folder / "gates.parquet", name="gates")
        write_text("<!DOCTYPE html>", folder / "report.html")
        write_json({"passed": True}, folder / "summary.json")
    finally:
        os.umask(previous)
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in sorted(folder.iterdir())}


def test_written_files_are_readable_by_group_and_others_under_umask_022(tmp_path):
    assert _written_modes(tmp_path / "run", 0o022) == dict.fromkeys(WRITTEN, 0o644)


def test_written_files_follow_the_umask_not_a_fixed_mode(tmp_path):
    assert _written_modes(tmp_path / "wide", 0o002) == dict.fromkeys(WRITTEN, 0o664)
    assert _written_modes(tmp_path / "private", 0o077) == dict.fromkeys(WRITTEN, 0o600)


def test_a_failed_local_write_leaves_neither_the_target_nor_a_temp_file(tmp_path):
    target = tmp_path / "run" / "report.html"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".report.html.") and tmp.name.endswith(".tmp")
        tmp.write_text("<html>half a report", encoding="utf-8")
        raise RuntimeError("renderer crashed")
    assert list(target.parent.iterdir()) == []


def test_a_catalog_part_name_cannot_climb_out_of_an_object_store_root(bucket):
    root = UPath(f"memory://{bucket}/catalog")
    with pytest.raises(PathEscapeError):
        safe_child(root, "../elsewhere/run-x.parquet")
    assert str(safe_child(root, "ingest_date=2026-11-26/run-x.parquet")).startswith(f"memory://{bucket}/catalog/")


@pytest.fixture(scope="module")
def local_and_remote(tmp_path_factory):
    """One world audited twice: on local disk, and with landing, images, catalog and reports on object storage."""
    prefix = f"lake-{uuid.uuid4().hex[:8]}"
    world = make_world(tmp_path_factory.mktemp("storage"), n_images=10, bad_rows=1)
    remote_config = load_config(move_to_object_store(world, prefix))
    local = run_audit(load_config(world.config), "night-1")
    remote = run_audit(remote_config, "night-1")
    yield world, local, remote, remote_config
    forget_object_store(prefix)


def test_an_audit_on_object_storage_writes_the_same_tables_as_on_local_disk(local_and_remote):
    world, local, remote, config = local_and_remote
    assert is_remote(remote.run_dir)
    assert_audit_tables_equal(
        audit_tables(world.root / "images", "night-1", local.run_dir),
        audit_tables(str(config.dataset.image_root), "night-1", remote.run_dir),
    )
    assert remote.verdict.passed == local.verdict.passed


def test_images_under_an_object_store_image_root_are_read_from_it(local_and_remote):
    _, _, remote, config = local_and_remote
    images = read_table(remote.run_dir / "images.parquet", columns=["image_path"])
    assert len(images) == 10
    assert images["image_path"].str.startswith(f"{config.dataset.image_root}/").all()
    assert '<img src="data:image/jpeg;base64,' in (remote.run_dir / "report.html").read_text(encoding="utf-8")


def test_an_audit_on_object_storage_writes_its_report_summary_and_history(local_and_remote):
    _, _, remote, config = local_and_remote
    assert (remote.run_dir / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert remote.summary["counts"]["audited"] == 10 and remote.summary["counts"]["quarantined"] == 1
    assert read_table(storage_path(config.output.dir) / "runs.parquet")["run_id"].tolist() == ["night-1"]


def test_the_object_store_catalog_holds_the_run_and_a_second_night_ingests_nothing_new(local_and_remote):
    _, _, _, config = local_and_remote
    assert len(read_catalog(config.dataset.catalog)) == 10
    assert read_ledger(config.dataset.catalog)["run_id"].tolist() == ["night-1"]
    second = run_audit(config, "night-2")
    assert second.summary["counts"]["ingested"] == 0
    assert len(read_catalog(config.dataset.catalog)) == 10


def test_an_object_store_landing_prefix_with_no_objects_is_an_empty_landing_area(tmp_path, bucket):
    UPath(f"memory://{bucket}/catalog/.keep").write_bytes(b"")  # the bucket exists
    world = make_world(tmp_path, n_images=2)
    config = load_config(
        world.config,
        {"dataset.landing": f"memory://{bucket}/empty-landing", "dataset.catalog": f"memory://{bucket}/catalog"},
    )
    from audit_tasks.ingest import ingest

    result = ingest(config, "night-1")
    assert result.rows_in == 0 and result.catalog_part is None


def test_object_store_image_uris_in_a_manifest_are_ingested_only_under_the_image_root(tmp_path, bucket):
    from audit_tasks.ingest import ingest

    world = make_world(tmp_path, n_images=2)
    remote_config = move_to_object_store(world, bucket)
    images = f"memory://{bucket}/images"
    manifest = UPath(f"memory://{bucket}/landing/batch_001.csv")
    manifest.write_text(
        "image_uri,label,gender\n"
        f"{images}/img_000.png,doctor,female\n"
        f"memory://{bucket}/elsewhere/img_001.png,nurse,male\n"
        f"{images}/../landing/batch_001.csv,nurse,male\n",
        encoding="utf-8",
    )
    config = load_config(remote_config, {"dataset.allowed_schemes": ["memory"]})
    result = ingest(config, "night-1")
    assert result.accepted["image_path"].tolist() == [f"{images}/img_000.png"]
    assert result.quarantined["reason"].str.contains("not under the image root|would leave").tolist() == [True, True]


def test_a_checkpoint_on_object_storage_loads_and_its_errors_name_the_uri(tmp_path, bucket):
    import torch

    from audit_tasks.errors import ModelError
    from audit_tasks.modelio import load_model

    world = make_world(tmp_path, n_images=2)
    config = load_config(move_to_object_store(world, bucket))
    assert not load_model(config.model).training
    evil = UPath(f"memory://{bucket}/models/evil.pt")
    local = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _NotATensor()}, local)  # refused by weights_only
    evil.write_bytes(local.read_bytes())
    with pytest.raises(ModelError, match=f"refused to load {evil}"):
        load_model(config.model.model_copy(update={"checkpoint": evil}))


def test_a_landing_area_in_a_bucket_that_does_not_exist_is_a_config_error(tmp_path, bucket):
    from audit_tasks.errors import ConfigError
    from audit_tasks.ingest import ingest

    world = make_world(tmp_path, n_images=2)
    config = load_config(world.config, {"dataset.landing": f"memory://{bucket}-typo/landing"})
    with pytest.raises(ConfigError, match=f"'dataset.landing' folder does not exist: memory://{bucket}-typo/landing"):
        ingest(config, "night-1")


def test_a_connection_id_in_the_image_root_stays_out_of_the_catalog(tmp_path, bucket):
    from audit_tasks.ingest import ingest

    world = make_world(tmp_path, n_images=2)
    config = load_config(move_to_object_store(world, bucket))
    from airflow.sdk import ObjectStoragePath

    with_conn = ObjectStoragePath(f"memory://my_conn@{bucket}/images")  # a connection written into the URI
    result = ingest(
        config.model_copy(update={"dataset": config.dataset.model_copy(update={"image_root": with_conn})}), "night-1"
    )
    assert len(result.accepted) == 2
    assert not result.accepted["image_path"].str.contains("my_conn").any()
    assert FileOpener(with_conn)(result.accepted["image_path"].iloc[0]).read(4) == b"\x89PNG"


def test_a_name_that_reads_as_another_protocol_is_quarantined_not_fatal(tmp_path, bucket):
    from audit_tasks.ingest import ingest

    world = make_world(tmp_path, n_images=1)
    config = load_config(move_to_object_store(world, bucket))
    UPath(f"memory://{bucket}/landing/batch_002.csv").write_text(
        "image_uri,label,gender\ngs:/x.jpg,doctor,female\n", encoding="utf-8"
    )
    result = ingest(config, "night-1")
    assert result.quarantined["reason"].str.contains("cannot name an object|would leave").tolist() == [True]


def test_the_image_opener_makes_its_own_filesystem_in_a_forked_worker(bucket, monkeypatch):
    """Async filesystems (s3fs, gcsfs) refuse to run in a child of the process that created them."""
    import os

    UPath(f"memory://{bucket}/images/a.png").write_bytes(b"\x89PNG...")
    opener = FileOpener(UPath(f"memory://{bucket}/images"))
    parents = opener._filesystem()
    monkeypatch.setattr(os, "getpid", lambda: -1)  # what a data-loader worker sees after the fork
    assert opener._filesystem() is not parents
    assert opener(f"memory://{bucket}/images/a.png").read() == b"\x89PNG..."


def test_a_checkpoint_in_the_store_that_is_not_an_archive_is_a_model_error_naming_the_uri(tmp_path, bucket):
    from audit_tasks.errors import ModelError
    from audit_tasks.modelio import load_model

    world = make_world(tmp_path, n_images=1)
    config = load_config(move_to_object_store(world, bucket))
    broken = UPath(f"memory://{bucket}/models/broken.pt2")
    broken.write_bytes(b"not a torch.export archive")
    with pytest.raises(ModelError, match=f"checkpoint {broken}"):
        load_model(config.model.model_copy(update={"checkpoint": broken, "allow_scripted": True}))
