"""The audit over the real S3 protocol: moto's S3 server on localhost, reached through s3fs.

`memory://` (tests/test_storage.py) proves no code path needs local disk; this module adds S3's own
semantics (no rename, no folders, listing by prefix, uploads that appear whole). Its two packages are
optional test dependencies, not in the locks: `pip install s3fs 'moto[server]'`; skipped without them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

pytest.importorskip("s3fs", reason="optional: pip install s3fs 'moto[server]'")
pytest.importorskip("moto", reason="optional: pip install s3fs 'moto[server]'")

from upath import UPath

from audit_tasks.config import load_config
from audit_tasks.pipeline import run_audit
from audit_tasks.storage import atomic_path
from audit_tasks.tables import read_table
from fixtures_pipeline import make_world, without_prefix

pytestmark = pytest.mark.slow
BUCKET = "audit-lake"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server with one bucket; the AWS variables point boto (and so s3fs) at it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def s3_and_local(s3_endpoint, tmp_path_factory):
    """One world audited on local disk and with landing, images, model, catalog and reports in the bucket."""
    import yaml

    world = make_world(tmp_path_factory.mktemp("s3"), n_images=10, bad_rows=1)
    base = f"s3://{BUCKET}/team"
    for folder in ("landing", "images"):
        for local in (world.root / folder).iterdir():
            (UPath(f"{base}/{folder}") / local.name).write_bytes(local.read_bytes())
    UPath(f"{base}/models/model.pt").write_bytes((world.root / "model.pt").read_bytes())
    body = yaml.safe_load(world.config.read_text(encoding="utf-8"))
    body["dataset"].update(landing=f"{base}/landing", catalog=f"{base}/catalog", image_root=f"{base}/images")
    body["model"]["checkpoint"] = f"{base}/models/model.pt"
    body["output"] = {"dir": f"{base}/reports"}
    body["saliency"]["num_workers"] = 2  # images decoded in forked workers, each with its own s3fs instance
    config_path = world.root / "s3.yaml"
    config_path.write_text(yaml.safe_dump(body), encoding="utf-8")
    config = load_config(config_path)
    return world, run_audit(load_config(world.config), "night-1"), run_audit(config, "night-1"), config


def test_an_audit_in_an_s3_bucket_writes_the_same_tables_as_on_local_disk(s3_and_local):
    world, local, remote, config = s3_and_local
    for name in ("images", "quarantine", "gates", "subgroups", "cooccurrence", "saliency_by_class"):
        a = without_prefix(
            read_table(local.run_dir / f"{name}.parquet").drop(columns=["cam"], errors="ignore"),
            str(world.root / "images"),
        )
        b = without_prefix(
            read_table(remote.run_dir / f"{name}.parquet").drop(columns=["cam"], errors="ignore"),
            str(config.dataset.image_root),
        )
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, obj=name)


def test_the_bucket_holds_the_catalog_part_ledger_report_and_history(s3_and_local):
    _, _, remote, config = s3_and_local
    catalog = UPath(str(config.dataset.catalog))
    assert sorted(p.name for p in catalog.glob("ingest_date=*/run-*.parquet")) == ["run-night-1.parquet"]
    assert (catalog / "_ledger.parquet").is_file()
    assert (remote.run_dir / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert read_table(UPath(f"{config.output.dir}/runs.parquet"))["run_id"].tolist() == ["night-1"]


def test_a_second_night_in_the_bucket_ingests_nothing_new(s3_and_local):
    _, _, _, config = s3_and_local
    assert run_audit(config, "night-2").summary["counts"]["ingested"] == 0


def test_a_failed_upload_leaves_no_object_in_the_bucket(s3_endpoint):
    target = UPath(f"s3://{BUCKET}/atomic/summary.json")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"half": ', encoding="utf-8")
        raise RuntimeError("killed mid-write")
    assert not target.exists()
