"""The command line: the contract's commands and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import yaml

from audit_tasks.cli import main
from fixtures_pipeline import make_world, strict_ingest_checks


def test_audit_exits_0_when_every_gate_passes(tmp_path, capsys):
    world = make_world(tmp_path, n_images=4)
    assert main(["audit", "--config", str(world.config), "--run-id", "r1"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "report.html" in out


def test_audit_exits_1_when_a_gate_fails_and_still_writes_reports(tmp_path):
    world = make_world(tmp_path, n_images=4, bad_rows=1, checks=strict_ingest_checks())
    assert main(["audit", "--config", str(world.config), "--run-id", "r1"]) == 1
    assert (tmp_path / "reports" / "r1" / "report.html").is_file()


def test_audit_exits_4_when_the_night_audited_nothing(tmp_path, capsys):
    world = make_world(tmp_path, n_images=4)
    assert main(["audit", "--config", str(world.config), "--run-id", "r1"]) == 0
    assert main(["audit", "--config", str(world.config), "--run-id", "r2"]) == 4
    out = capsys.readouterr().out
    assert "INCONCLUSIVE" in out and "0 image(s) audited" in out


def test_audit_exits_2_naming_an_unknown_key(tmp_path):
    world = make_world(tmp_path, n_images=2, extra={"modle": {"arch": "resnet18"}})
    proc = subprocess.run(
        [sys.executable, "-m", "audit_tasks", "audit", "--config", str(world.config)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown key 'modle'" in proc.stderr


def test_audit_exits_2_on_a_missing_config_file(tmp_path, capsys):
    assert main(["audit", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_run_id_that_escapes_the_output_folder_is_refused(tmp_path, capsys):
    world = make_world(tmp_path, n_images=2)
    assert main(["audit", "--config", str(world.config), "--run-id", "../../etc"]) == 2
    assert "not usable as a folder name" in capsys.readouterr().err


def test_out_overrides_the_configured_output_folder(tmp_path):
    world = make_world(tmp_path, n_images=2)
    assert main(["audit", "--config", str(world.config), "--run-id", "r1", "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "r1" / "summary.json").is_file()


def test_out_may_be_an_object_store_uri_and_report_rerenders_there(tmp_path):
    from upath import UPath

    world = make_world(tmp_path, n_images=2)
    out = f"memory://cli-{tmp_path.name}/reports"
    try:
        assert main(["audit", "--config", str(world.config), "--run-id", "r1", "--out", out]) == 0
        report = UPath(f"{out}/r1/report.html")
        report.unlink()
        assert main(["report", "--run", f"{out}/r1"]) == 0
        assert report.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    finally:
        UPath(out).fs.rm(UPath(out).path, recursive=True)


def test_check_cooccurrence_reads_a_manifest_from_object_storage(tmp_path):
    from upath import UPath

    rows = [{"image_uri": f"{i}.png", "label": "a", "tags": "laptop|mouse" if i < 95 else "laptop"} for i in range(100)]
    rows += [{"image_uri": f"x{i}.png", "label": "b", "tags": "cat"} for i in range(100)]
    manifest = UPath(f"memory://cli-{tmp_path.name}/landing/m.csv")
    manifest.write_text(pd.DataFrame(rows).to_csv(index=False), encoding="utf-8")
    try:
        assert main(["check-cooccurrence", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 1
        pairs = pd.read_parquet(tmp_path / "out" / "cooccurrence.parquet")
        assert pairs.loc[(pairs.tag_a == "laptop") & (pairs.tag_b == "mouse"), "n_ab"].item() == 95
    finally:
        manifest.fs.rm(f"/cli-{tmp_path.name}", recursive=True)


def test_report_rerenders_from_the_tables(tmp_path):
    world = make_world(tmp_path, n_images=2)
    main(["audit", "--config", str(world.config), "--run-id", "r1"])
    report = tmp_path / "reports" / "r1" / "report.html"
    report.unlink()
    assert main(["report", "--run", str(report.parent)]) == 0
    assert report.is_file()


def test_check_cooccurrence_writes_its_tables_and_gates_without_config(tmp_path):
    rows = [{"image_uri": f"{i}.png", "label": "a", "tags": "laptop|mouse" if i < 95 else "laptop"} for i in range(100)]
    rows += [{"image_uri": f"x{i}.png", "label": "b", "tags": "cat"} for i in range(100)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    code = main(["check-cooccurrence", "--manifest", str(manifest), "--out", str(tmp_path / "out")])
    pairs = pd.read_parquet(tmp_path / "out" / "cooccurrence.parquet")
    gates = pd.read_parquet(tmp_path / "out" / "gates.parquet")
    assert code == 1
    assert pairs.loc[(pairs.tag_a == "laptop") & (pairs.tag_b == "mouse"), "flagged"].item()
    assert not gates["passed"].all()


def test_check_subgroups_reads_a_predictions_table(tmp_path):
    frame = pd.DataFrame(
        {"label": ["a", "b"] * 200, "prediction": ["a", "b"] * 200, "gender": ["f", "m", "m", "f"] * 100}
    )
    path = tmp_path / "predictions.parquet"
    frame.to_parquet(path)
    config = tmp_path / "checks.yaml"
    config.write_text(yaml.safe_dump({"checks": {"subgroups": {"attributes": ["gender"]}}}))
    code = main(["check-subgroups", "--predictions", str(path), "--config", str(config), "--out", str(tmp_path / "o")])
    groups = pd.read_parquet(tmp_path / "o" / "subgroups.parquet")
    assert code == 0
    assert set(groups["group"]) >= {"f", "m"}
    assert (tmp_path / "o" / "gates.parquet").is_file()
