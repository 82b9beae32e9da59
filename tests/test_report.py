"""Tests of the HTML report: verdict and sections, skipped checks, escaping, determinism, page weight, browser."""

from __future__ import annotations

import ast
import base64
import io
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit_tasks import history
from audit_tasks.errors import AuditError
from audit_tasks.report import CSP, QUARANTINE_ROWS, render, render_report
from audit_tasks.report import data as report_data
from audit_tasks.report.images import colourise, jet_lut, render_overlay
from audit_tasks.tables import write_table
from browser import chromium_or_skip, dump_dom, screenshot
from fixtures_report import XSS_ATTR, XSS_SCRIPT, build_large_run, build_run

FIVE_MB = 5 * 1024 * 1024


#: The report's sections, in page order: the summary, then one per check.
SECTIONS = ("summary", "cooccurrence", "subgroups", "confusion", "saliency", "strategies", "rarity", "quarantine")


def _render(run_dir: Path, **kwargs) -> str:
    return render_report(run_dir, **kwargs).read_text(encoding="utf-8")


# ---- content ------------------------------------------------------------------------------------


def test_failed_run_shows_failed_verdict_with_failing_gates(tmp_path):
    page = _render(build_run(tmp_path, passed=False))
    assert '<div class="word" id="verdict">FAILED</div>' in page
    assert "3 of 7 gates failed." in page
    assert "saliency/nurse/flagged_fraction</strong>: 0.410 vs threshold 0.250" in page


def test_passed_run_shows_passed_verdict(tmp_path):
    page = _render(build_run(tmp_path, passed=True))
    assert '<div class="word" id="verdict">PASSED</div>' in page
    assert "All 7 gates passed." in page
    assert "<title>PASSED" in page


def test_report_has_every_section(tmp_path):
    page = _render(build_run(tmp_path))
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page
    assert "Skipped" not in page


def test_summary_shows_counts(tmp_path):
    page = _render(build_run(tmp_path, n_images=80))
    for key, value in (("ingested", "83"), ("quarantined", "3"), ("audited", "80")):
        assert f'<div class="k">{key}</div><div class="v">{value}</div>' in page


def test_missing_tables_show_check_skipped(tmp_path):
    run_dir = build_run(
        tmp_path,
        skip=(
            "cooccurrence",
            "class_balance",
            "subgroups",
            "confusion",
            "images",
            "saliency_by_class",
            "strategies",
            "quarantine",
            "rarity",
        ),
    )
    page = _render(run_dir)
    skipped_sections = re.findall(r'<section id="(\w+)">.*?</section>', page, flags=re.S)
    assert skipped_sections == list(SECTIONS)
    for anchor in SECTIONS[1:]:  # every check's section; the summary is always there
        body = re.search(rf'<section id="{anchor}">(.*?)</section>', page, flags=re.S).group(1)
        assert "check not configured / skipped" in body, anchor


def test_inconclusive_run_shows_inconclusive_verdict_with_its_reason(tmp_path):
    run_dir = build_run(tmp_path, passed=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(verdict="inconclusive", inconclusive_reason="no image was audited")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    page = _render(run_dir)
    assert '<header class="verdict unknown">' in page
    assert '<div class="word" id="verdict">INCONCLUSIVE</div>' in page
    assert "No verdict: no image was audited. A run without evidence is not a clean audit" in page
    assert "<title>INCONCLUSIVE" in page


def test_run_without_gates_or_summary_says_no_verdict(tmp_path):
    page = _render(build_run(tmp_path, skip=("gates", "summary")))
    assert '<div class="word" id="verdict">NO VERDICT</div>' in page


def test_missing_run_folder_raises_audit_error(tmp_path):
    with pytest.raises(AuditError, match="run folder not found"):
        render_report(tmp_path / "nope")


def test_flagged_pairs_listed_with_curator_sentence(tmp_path):
    page = _render(build_run(tmp_path))
    assert "Flagged pairs (2)" in page
    assert "&#39;stethoscope&#39; appears with &#39;gender=male&#39; in 95% of its images" in page
    assert page.count('stroke="#111" stroke-width="2.5"') >= 1  # flagged cell outlined in the heatmap


def test_subgroup_chart_marks_small_groups_and_draws_gap_limit(tmp_path):
    page = _render(build_run(tmp_path))
    section = re.search(r'<section id="subgroups">(.*?)</section>', page, flags=re.S).group(1)
    assert "n=4 · too small to judge" in section
    assert section.count(">gap limit</text>") == 3  # one per attribute (gender, skin_tone, gender&skin_tone)
    assert "(max_gap 0.050)" in section


def test_confusion_cells_link_to_their_image_anchors(tmp_path):
    page = _render(build_run(tmp_path))
    links = set(re.findall(r'href="#(cm-\d+-\d+)"', page))
    targets = set(re.findall(r'id="(cm-\d+-\d+)"', page))
    assert links and links == targets


def test_cells_show_worst_offenders_first(tmp_path):
    run_dir = build_run(tmp_path)
    page = _render(run_dir)
    images = pd.read_parquet(run_dir / "images.parquet")
    cell = images[(images["label"] == "doctor") & (images["prediction"] == "doctor")]
    worst = cell.sort_values(["spurious_flag", "spurious_share"], ascending=False).iloc[0]
    block = re.search(r'<div class="cell" id="cm-0-0">(.*?)</div></div>', page, flags=re.S).group(1)
    first = re.search(r"spur (\d+)%", block).group(1)
    assert int(first) == round(worst["spurious_share"] * 100)


def test_thumbnails_are_small_jpegs(tmp_path):
    page = _render(build_run(tmp_path), thumb_size=64)
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert uris
    img = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert img.format == "JPEG" and max(img.size) == 64


def test_missing_original_image_shows_heatmap_alone(tmp_path):
    page = _render(build_run(tmp_path))
    assert "original missing: heatmap only" in page


def test_gallery_is_bounded_by_max_gallery(tmp_path):
    page = _render(build_run(tmp_path, n_images=80), max_gallery=2)
    blocks = re.findall(r'<div class="cell" id="cm-\d+-\d+">(.*?)</div></div>', page, flags=re.S)
    figures = [block.count("<figure") for block in blocks]
    assert len(figures) >= 3  # one gallery per confusion cell that has images
    assert max(figures) == 2 and all(n <= 2 for n in figures)  # the cap was reached, and held


def test_quarantine_shows_first_rows_and_counts_the_rest(tmp_path):
    run_dir = build_run(tmp_path)
    n = QUARANTINE_ROWS + 234
    write_table(
        pd.DataFrame(
            {
                "image_uri": [f"x{i}.png" for i in range(n)],
                "manifest": "m.csv",
                "row_number": np.arange(1, n + 1),
                "reason": "image file not found",
                "stage": "ingest",
            }
        ),
        run_dir / "quarantine.parquet",
    )
    page = _render(run_dir)
    section = re.search(r'<section id="quarantine">(.*?)</section>', page, flags=re.S).group(1)
    assert section.count("<strong>image file not found</strong>") == QUARANTINE_ROWS
    assert "234 more are in quarantine.parquet" in section


def test_quarantine_lists_every_rejected_row_with_its_reason(tmp_path):
    page = _render(build_run(tmp_path))
    assert "<strong>label &#39;pilot&#39; is not one of the model&#39;s classes</strong>" in page
    assert "<strong>regions is not valid JSON</strong>" in page


# ---- security -----------------------------------------------------------------------------------


def test_hostile_strings_are_escaped_everywhere(tmp_path):
    page = _render(build_run(tmp_path, hostile=True))
    assert XSS_SCRIPT not in page and XSS_ATTR not in page
    assert "<img src=x" not in page
    assert "onerror=alert(1)>" not in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


class _StartTags(HTMLParser):
    """Every start tag of a page with its attributes, split and unescaped as a browser's tokenizer would."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _start_tags(page: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _StartTags()
    parser.feed(page)
    parser.close()
    return parser.tags


def test_hostile_strings_are_escaped_inside_attributes(tmp_path):
    tags = _start_tags(_render(build_run(tmp_path, hostile=True)))
    attributes = [(tag, name, value or "") for tag, attrs in tags for name, value in attrs]
    assert len(attributes) > 100
    assert [a for a in attributes if a[1].startswith("on")] == []  # no event handler broke out of a value
    assert "script" not in {tag for tag, _ in tags}
    assert [a for a in attributes if a[1] == "src" and not a[2].startswith("data:image/")] == []  # no <img src=x>
    titles = {value for _, name, value in attributes if name == "title"}
    assert f"{XSS_ATTR}.png" in titles  # the hostile file name round-trips whole, quotes included
    assert any(XSS_SCRIPT in value for value in titles)  # and the hostile label, in a confusion cell's title


def test_page_loads_nothing_from_the_network(tmp_path):
    page = _render(build_run(tmp_path))
    policies = [
        dict(attrs)["content"]
        for tag, attrs in _start_tags(page)
        if tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy"
    ]
    assert policies == [CSP] and "default-src 'none'" in CSP
    urls = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert any(url.startswith("data:") for url in urls) and any(url.startswith("#") for url in urls)
    assert [url for url in urls if not url.startswith(("data:", "#"))] == []
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)


def test_templates_escape_every_value_and_refuse_undefined_names():
    page = render("reports_message.html.j2", title=XSS_SCRIPT, text=XSS_ATTR)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    with pytest.raises(jinja2.UndefinedError):
        render("reports_message.html.j2", title="no text given")


def test_reading_a_run_imports_no_presentation_module():
    source = Path(report_data.__file__).read_text(encoding="utf-8")
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert "audit_tasks.storage" in imported  # the walk sees the module's imports
    assert {m for m in imported if m and m.startswith("audit_tasks.report")} == set()
    assert "jinja2" not in imported


# ---- determinism and previous run ------------------------------------------------------------------


def test_rerender_is_byte_identical(tmp_path):
    run_dir = build_run(tmp_path, hostile=True)
    first = render_report(run_dir).read_bytes()
    time.sleep(0.01)
    assert render_report(run_dir).read_bytes() == first


def test_change_since_previous_run_from_sibling_folder(tmp_path):
    build_run(tmp_path, run_id="night-1", created_at="2026-11-24T02:00:00+00:00", passed=True, n_images=60)
    build_run(tmp_path, run_id="night-0", created_at="2026-11-23T02:00:00+00:00", passed=True)
    current = build_run(tmp_path, run_id="night-2", created_at="2026-11-25T02:00:00+00:00", passed=False)
    page = _render(current)
    assert "Previous run <strong>night-1</strong>" in page
    assert "PASSED → now FAILED" in page
    assert "Newly failing:</strong> cooccurrence/" in page
    assert "<span>+20</span> since previous" in page  # audited 80 vs 60


def test_previous_run_found_through_history_index(tmp_path):
    older = build_run(tmp_path, run_id="b-older", created_at="2026-11-24T02:00:00+00:00", passed=True)
    newer_sibling = build_run(tmp_path, run_id="a-not-recorded", created_at="2026-11-24T12:00:00+00:00")
    current = build_run(tmp_path, run_id="c-now", created_at="2026-11-25T02:00:00+00:00")
    for run_dir in (older, current):
        summary = json.loads((run_dir / "summary.json").read_text())
        history.record_run(run_dir.parent, summary, history.read_headline(run_dir))
    assert newer_sibling.is_dir()
    page = _render(current)
    assert "Previous run <strong>b-older</strong>" in page


def test_previous_run_dir_argument_wins(tmp_path):
    build_run(tmp_path, run_id="night-1", created_at="2026-11-24T02:00:00+00:00")
    chosen = build_run(tmp_path, run_id="night-0", created_at="2026-11-23T02:00:00+00:00", passed=True)
    current = build_run(tmp_path, run_id="night-2", created_at="2026-11-25T02:00:00+00:00")
    page = _render(current, previous_run_dir=chosen)
    assert "Previous run <strong>night-0</strong>" in page


def test_first_run_says_nothing_to_compare(tmp_path):
    page = _render(build_run(tmp_path))
    assert "No previous run found" in page


# ---- overlays ----------------------------------------------------------------------------------------


def test_jet_lut_runs_from_blue_to_red():
    lut = jet_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0, 2] > 100 and lut[0, 0] == 0
    assert lut[-1, 0] > 100 and lut[-1, 2] == 0


def test_colourise_upsamples_to_thumbnail_and_scales_to_max():
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[3, 3] = 5.0
    rgb, norm = colourise(cam, (70, 35))
    assert rgb.shape == (35, 70, 3)
    assert norm.max() == pytest.approx(1.0) and norm.min() == 0.0


def test_overlay_draws_core_and_spurious_boxes(tmp_path):
    regions = (
        '[{"kind": "core", "name": "p", "box": [50, 50, 150, 150]}, '
        '{"kind": "spurious", "name": "w", "box": [0, 0, 40, 40]}]'
    )
    ov = render_overlay(
        np.zeros(49, dtype=np.float32), 7, 7, image_path=None, width=200, height=200, regions=regions, thumb_size=100
    )
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(ov.data_uri.split(",", 1)[1]))).convert("RGB"), dtype=int)
    assert (ov.width, ov.height) == (100, 100) and not ov.has_original
    # Boxes scaled by 0.5 (thumbnail 100 px for 200 px): the core box's left edge at x=25 is greener than
    # the box's inside at x=40; the spurious box's right edge at x=20 is redder than the map beside it.
    assert img[50, 25, 1] - img[50, 25, 2] > img[50, 40, 1] - img[50, 40, 2] + 60
    assert img[10, 20, 0] - img[10, 20, 2] > img[10, 30, 0] - img[10, 30, 2] + 60


def test_overlay_blends_over_the_original(tmp_path):
    path = tmp_path / "white.png"
    Image.new("RGB", (40, 40), (255, 255, 255)).save(path)
    ov = render_overlay(
        np.zeros(4, dtype=np.float32), 2, 2, image_path=str(path), width=40, height=40, regions=None, thumb_size=40
    )
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(ov.data_uri.split(",", 1)[1]))).convert("RGB"), dtype=int)
    assert ov.has_original
    # Half white, half jet's coldest blue (0, 0, 128): a light blue.
    assert np.abs(img[20, 20] - np.array([128, 128, 192])).sum() < 30


# ---- page weight -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_page_stays_under_5_mb_for_100k_images(tmp_path):
    run_dir = build_large_run(tmp_path, n_rows=100_000)
    path = render_report(run_dir)
    page = path.read_text(encoding="utf-8")
    assert path.stat().st_size < FIVE_MB
    assert "100,000" in page
    assert "4,000 more are in quarantine.parquet" in page


# ---- browser -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_report_opens_in_headless_chromium(tmp_path):
    chromium = chromium_or_skip()
    page = render_report(build_run(tmp_path / "data", hostile=True, passed=False))
    shot = tmp_path / "report.png"
    taken = screenshot(chromium, page, shot, tmp_path)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (1280, 2000)
        assert len(img.convert("RGB").resize((64, 100)).getcolors(64 * 100)) > 20  # not a blank page
    dom = dump_dom(chromium, page, tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<div class="word" id="verdict">FAILED</div>' in dom.stdout
    # The XSS label is text in the live DOM: no element was injected.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
    assert "<script" not in dom.stdout.lower()
    assert 'src="x"' not in dom.stdout and "onerror" not in dom.stdout.replace("onerror=alert(1)&gt;", "")
    assert taken.console_messages() == [] and dom.console_messages() == []


def test_many_classes_list_the_most_frequent_confusions(tmp_path):
    run_dir = build_run(tmp_path)
    classes = [f"c{k:03d}" for k in range(70)]
    rows = [
        {"attribute": "__overall__", "group": "__all__", "label": a, "prediction": b, "n": 1 + (i % 7)}
        for i, (a, b) in enumerate((a, b) for a in classes for b in classes[:3])
    ]
    write_table(pd.DataFrame(rows), run_dir / "confusion.parquet")
    page = _render(run_dir)
    assert "70 classes: too many to draw the matrix" in page
    assert '<table class="cm">' not in page


def test_max_gallery_zero_renders_without_thumbnails(tmp_path):
    page = _render(build_run(tmp_path), max_gallery=0)
    assert "data:image/jpeg" not in page
    assert '<section id="confusion">' in page and 'href="#cm-' not in page


def test_pair_saliency_sentence_sits_beside_its_cooccurrence_row(tmp_path):
    run = build_run(tmp_path)
    pairs = pd.DataFrame(
        {
            "class": ["stethoscope", "nurse"],
            "region": ["gender=male", "watermark"],
            "images": [40, 25],
            "mean_share": [0.31, 0.62],
            "mean_enrichment": [2.0, 9.0],
            "flagged_fraction": [0.1, 0.8],
            "flagged": [False, True],
        }
    )
    write_table(pairs, run / "saliency_pairs.parquet", name="saliency_pairs")
    section = re.search(r'<section id="cooccurrence">(.*?)</section>', _render(run), flags=re.S).group(1)
    row = re.search(r"<tr><td>stethoscope → gender=male</td>(.*?)</tr>", section, flags=re.S).group(1)
    assert "stethoscope images: 31% of the stethoscope saliency sits on the gender=male" in row
    listed = section.split("Where the model looks in co-occurring pairs")[1]
    assert "nurse images: 62% of the nurse saliency sits on the watermark" in listed
    assert "80% of them flagged; pair flagged" in listed
