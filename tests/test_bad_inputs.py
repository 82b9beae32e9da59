"""The bad-input corpus (issue #8): generated here, ingested once, and every row's fate and reason checked.

Each bad input must leave the run going, end in quarantine with a precise reason (or be handled correctly,
like EXIF rotation and CMYK), and keep the accounting: rows in = rows accepted + rows quarantined.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from audit_tasks.catalog import read_catalog
from audit_tasks.config import IngestCheck
from audit_tasks.ingest import IngestResult, ingest, ingest_gate
from fixtures_ingest import (
    make_config,
    regions,
    write_csv,
    write_jpeg,
    write_png,
    write_png_header_only,
    write_truncated_jpeg,
)

CORPUS = "corpus.csv"
GOOD_BOX = regions(("core", "face", (0, 0, 10, 10)))


@dataclass(frozen=True)
class Corpus:
    result: IngestResult
    root: Path
    catalog: Path

    def row(self, number: int, manifest: str = CORPUS) -> pd.Series:
        """The accepted or quarantined record of one manifest row (exactly one must exist)."""
        a = self.result.accepted
        q = self.result.quarantined
        hits_a = a[(a["manifest"] == manifest) & (a["row_number"] == number)]
        hits_q = q[(q["manifest"] == manifest) & (q["row_number"] == number)]
        assert len(hits_a) + len(hits_q) == 1, f"{manifest} row {number} must end in exactly one table"
        return hits_a.iloc[0] if len(hits_a) else hits_q.iloc[0]

    def reason(self, number: int, manifest: str = CORPUS) -> str | None:
        record = self.row(number, manifest)
        return record.get("reason") if "reason" in record.index else None


# (image_uri, extra columns) per corpus.csv row; row numbers are positions + 1.
ROWS: list[tuple[str, dict]] = [
    ("good.jpg", {}),  # 1 accepted
    ("zero.jpg", {}),  # 2 zero-byte file
    ("truncated.jpg", {}),  # 3 truncated JPEG
    ("text.jpg", {}),  # 4 text named .jpg
    ("bomb.png", {}),  # 5 decompression bomb
    ("cmyk.jpg", {}),  # 6 CMYK: accepted
    ("deep16.png", {}),  # 7 16-bit PNG: accepted
    ("gray.png", {}),  # 8 grayscale: accepted
    ("palette_alpha.png", {}),  # 9 palette + alpha: accepted
    ("rotated.jpg", {"regions": regions(("core", "face", (0, 0, 20, 40)))}),  # 10 EXIF 6: 40x20 shown as 20x40
    ("missing.jpg", {}),  # 11 missing file
    ("good.jpg", {}),  # 12 duplicate row of row 1
    ("copy_of_good.jpg", {}),  # 13 same bytes as good.jpg
    ("../../etc/passwd", {}),  # 14 traversal
    ("/etc/passwd", {}),  # 15 absolute path outside the root
    ("escape_link.jpg", {}),  # 16 symlink pointing out
    ("img_a.jpg", {"regions": '[{"kind": "core", "name": "face", "box": [0, 0, 5'}),  # 17 malformed JSON
    ("img_b.jpg", {"regions": regions(("spurious", "watermark", (20, 10, 40, 20)))}),  # 18 box outside 32x24
    ("img_c.jpg", {"label": "cat"}),  # 19 unknown label
    ("img_d.jpg", {"gender": ""}),  # 20 empty attribute
    ("img_e.jpg", {"gender": "NaN"}),  # 21 NaN attribute
    ("s3://bucket/img.jpg", {}),  # 22 scheme not allowed
    ("img_f.jpg", {"image_id": "dup-1"}),  # 23 first of a duplicated image_id
    ("img_g.jpg", {"image_id": "dup-1"}),  # 24 same image_id, other content
    ("img_h.jpg", {"regions": GOOD_BOX, "tags": "coat|stethoscope"}),  # 25 accepted with regions and tags
]
ACCEPTED_ROWS = {1, 6, 7, 8, 9, 10, 23, 25}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    base = tmp_path_factory.mktemp("corpus")
    config = make_config(base, attributes=["gender"])
    root = config.dataset.image_root
    landing = config.dataset.landing

    write_jpeg(root / "good.jpg", seed=1)
    (root / "copy_of_good.jpg").write_bytes((root / "good.jpg").read_bytes())
    (root / "zero.jpg").write_bytes(b"")
    write_truncated_jpeg(root / "truncated.jpg", seed=2)
    (root / "text.jpg").write_text("this is a text file, not a JPEG\n", encoding="utf-8")
    write_png_header_only(root / "bomb.png", 100_000, 100_000)
    write_jpeg(root / "cmyk.jpg", seed=3, mode="CMYK")
    write_png(root / "deep16.png", seed=4, mode="I;16")
    write_png(root / "gray.png", seed=5, mode="L")
    write_png(root / "palette_alpha.png", seed=6, mode="P+alpha")
    write_jpeg(root / "rotated.jpg", (40, 20), seed=7, orientation=6)
    write_jpeg(base / "outside.jpg", seed=8)
    os.symlink(base / "outside.jpg", root / "escape_link.jpg")
    for seed, name in enumerate("abcdefgh", start=10):
        write_jpeg(root / f"img_{name}.jpg", seed=seed)

    records = []
    for i, (uri, extra) in enumerate(ROWS):
        records.append(
            {
                "image_uri": uri,
                "label": "doctor" if i % 2 else "nurse",
                "gender": "fm"[i % 2],
                "image_id": None,
                "tags": None,
                "regions": None,
                **extra,
            }
        )
    write_csv(landing / CORPUS, records, columns=["image_uri", "image_id", "label", "gender", "tags", "regions"])

    # Manifest-level and encoding cases, each in its own manifest.
    write_jpeg(root / "latin_ok.jpg", seed=30)
    write_jpeg(root / "latin_bad.jpg", seed=31)
    (landing / "latin1.csv").write_bytes(
        b"image_uri,label,gender\nlatin_ok.jpg,doctor,f\nlatin_bad.jpg,nurse,f\xe9minin\n"
    )
    write_csv(landing / "no_label.csv", [{"image_uri": "img_a.jpg", "gender": "f"}])
    (landing / "empty.csv").write_text("image_uri,label,gender\n", encoding="utf-8")
    (landing / "zero_bytes.csv").write_bytes(b"")
    (landing / "broken.parquet").write_bytes(b"PAR1\x00\x00garbage")
    (landing / "notes.txt").write_text("not a manifest\n", encoding="utf-8")
    write_jpeg(root / "json_ok.jpg", seed=32)
    (landing / "lines.jsonl").write_text(
        '{"image_uri": "json_ok.jpg", "label": "doctor", "gender": "m"}\n{"image_uri": "x.jpg", "label": \n',
        encoding="utf-8",
    )
    result = ingest(config, "corpus", today=date(2025, 1, 1))
    return Corpus(result=result, root=root, catalog=config.dataset.catalog)


# ---------------------------------------------------------------------------------------------
# Handled correctly
# ---------------------------------------------------------------------------------------------


def test_only_the_good_rows_are_accepted(corpus: Corpus) -> None:
    accepted = corpus.result.accepted
    assert set(accepted[accepted["manifest"] == CORPUS]["row_number"]) == ACCEPTED_ROWS


def test_exif_rotated_image_has_its_displayed_size(corpus: Corpus) -> None:
    row = corpus.row(10)
    assert (row["width"], row["height"]) == (20, 40)  # stored 40x20 with orientation 6; its box fits 20x40


@pytest.mark.parametrize("number,size", [(6, (32, 24)), (7, (32, 24)), (8, (32, 24)), (9, (32, 24))])
def test_unusual_modes_are_accepted_with_their_size(corpus: Corpus, number: int, size: tuple[int, int]) -> None:
    row = corpus.row(number)
    assert (row["width"], row["height"]) == size and row.get("reason") is None


def test_regions_and_tags_are_normalised_in_the_catalog(corpus: Corpus) -> None:
    row = corpus.row(25)
    assert row["regions"] == GOOD_BOX and list(row["tags"]) == ["coat", "stethoscope"]


# ---------------------------------------------------------------------------------------------
# Quarantined with a precise reason
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number,reason",
    [
        (2, "image file is empty (0 bytes): zero.jpg"),
        (4, "not a recognised image format: text.jpg (32 bytes)"),
        (
            5,
            "image too large: bomb.png declares 10,000,000,000 pixels, over max_image_pixels 50,000,000"
            " (decompression-bomb guard; nothing was decoded)",
        ),
        (19, "label 'cat' is not one of the model classes [doctor, nurse]"),
        (20, "attribute 'gender' is empty"),
        (21, "attribute 'gender' is empty"),
        (24, "image_id 'dup-1' is not unique: already used by manifest corpus.csv row 23"),
        (17, "regions is not valid JSON: Expecting ',' delimiter at line 1 column 50"),
        (18, "region 0 (watermark) box [20, 10, 40, 20] lies outside the 32x24 image"),
    ],
)
def test_bad_row_reason_is_exact(corpus: Corpus, number: int, reason: str) -> None:
    assert corpus.reason(number) == reason


@pytest.mark.parametrize(
    "number,pattern",
    [
        (3, r"^truncated or corrupt image truncated\.jpg: JPEG has no end-of-image marker \(image file is truncated"),
        (11, r"^image file not found: .*/images/missing\.jpg$"),
        (14, r"^path '\.\./\.\./etc/passwd' leaves the image root .*/images \(resolves to .*/etc/passwd\)$"),
        (15, r"^path '/etc/passwd' leaves the image root .*/images"),
        (
            16,
            r"^path 'escape_link\.jpg' leaves the image root .*/images through a symlink "
            r"\(real path .*/outside\.jpg\)$",
        ),
        (22, r"^URI scheme 's3://' is not allowed in 's3://bucket/img\.jpg' \(allowed: file"),
    ],
)
def test_bad_row_reason_names_the_file(corpus: Corpus, number: int, pattern: str) -> None:
    assert pd.Series([corpus.reason(number)]).str.contains(pattern, regex=True).all(), corpus.reason(number)


def test_duplicate_row_and_duplicate_content_point_at_the_first(corpus: Corpus) -> None:
    image_id = corpus.row(1)["image_id"]
    assert corpus.reason(12) == f"duplicate image content of {image_id} (manifest corpus.csv row 1)"
    assert corpus.reason(13) == f"duplicate image content of {image_id} (manifest corpus.csv row 1)"


def test_non_utf8_row_is_quarantined_and_its_neighbour_accepted(corpus: Corpus) -> None:
    assert corpus.reason(1, "latin1.csv") is None
    assert corpus.reason(2, "latin1.csv") == "column 'gender' has bytes that are not valid UTF-8 (bytes 0xe9)"
    assert corpus.row(2, "latin1.csv")["gender"] == "f\\xe9minin"


def test_bad_json_line_is_quarantined_and_its_neighbour_accepted(corpus: Corpus) -> None:
    assert corpus.reason(1, "lines.jsonl") is None
    assert corpus.reason(2, "lines.jsonl").startswith("line 2 is not valid JSON: Expecting value")


# ---------------------------------------------------------------------------------------------
# Manifest-level faults
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "manifest,reason",
    [
        ("no_label.csv", "no_label.csv: missing required column 'label' (columns found: image_uri, gender)"),
        ("zero_bytes.csv", "zero_bytes.csv: empty file (0 bytes): a manifest needs at least a header"),
        (
            "notes.txt",
            "notes.txt: unsupported manifest format '.txt' (use one of .csv, .jsonl, .ndjson, .parquet, .pq)",
        ),
    ],
)
def test_manifest_fault_is_one_quarantine_row(corpus: Corpus, manifest: str, reason: str) -> None:
    q = corpus.result.quarantined
    rows = q[q["manifest"] == manifest]
    assert rows["reason"].tolist() == [reason] and rows["row_number"].isna().all()
    status = corpus.result.manifests.set_index("manifest").loc[manifest]
    assert status["status"] == "failed" and status["reason"] == reason


def test_unreadable_parquet_is_a_manifest_fault(corpus: Corpus) -> None:
    q = corpus.result.quarantined
    (reason,) = q[q["manifest"] == "broken.parquet"]["reason"]
    assert reason.startswith("broken.parquet: not a readable Parquet file")


def test_empty_manifest_ingests_with_zero_rows(corpus: Corpus) -> None:
    status = corpus.result.manifests.set_index("manifest").loc["empty.csv"]
    assert (status["status"], status["rows"], status["accepted"], status["quarantined"]) == ("ingested", 0, 0, 0)


def test_other_manifests_still_ingest_beside_the_faults(corpus: Corpus) -> None:
    ingested = corpus.result.manifests.query("status == 'ingested'")["manifest"].tolist()
    assert ingested == ["corpus.csv", "empty.csv", "latin1.csv", "lines.jsonl"]
    assert set(corpus.result.accepted["manifest"]) == {"corpus.csv", "latin1.csv", "lines.jsonl"}


# ---------------------------------------------------------------------------------------------
# Accounting and the gate
# ---------------------------------------------------------------------------------------------


def test_every_manifest_accounts_for_every_row(corpus: Corpus) -> None:
    m = corpus.result.manifests
    assert len(m) > 0 and (m["rows"] == m["accepted"] + m["quarantined"]).all()
    for entry in m.itertuples():
        accepted = corpus.result.accepted.query("manifest == @entry.manifest")
        quarantined = corpus.result.quarantined.query("manifest == @entry.manifest")
        assert len(accepted) == entry.accepted
        if entry.status == "ingested":
            assert len(quarantined) == entry.quarantined
            numbers = sorted(accepted["row_number"].tolist() + quarantined["row_number"].tolist())
            assert numbers == list(range(1, entry.rows + 1))
        else:
            assert len(quarantined) == 1


def test_every_quarantine_row_has_a_reason_and_stage(corpus: Corpus) -> None:
    q = corpus.result.quarantined
    assert len(q) > 0
    assert q["reason"].notna().all() and (q["reason"].str.len() > 10).all()
    assert (q["stage"] == "ingest").all()


def test_catalog_holds_exactly_the_accepted_rows(corpus: Corpus) -> None:
    catalog = read_catalog(corpus.catalog, run_id="corpus")
    assert sorted(catalog["image_id"]) == sorted(corpus.result.accepted["image_id"])
    assert catalog["content_sha256"].is_unique and catalog["image_id"].is_unique


def test_no_accepted_path_leaves_the_image_root(corpus: Corpus) -> None:
    root = str(corpus.root.resolve())
    assert len(corpus.result.accepted) > 0
    assert corpus.result.accepted["image_path"].str.startswith(root + os.sep).all()


def test_too_much_bad_input_fails_the_gate(corpus: Corpus) -> None:
    [gate] = ingest_gate(corpus.result, IngestCheck(max_quarantine_fraction=0.1))
    assert not gate.passed and gate.value > 0.5
