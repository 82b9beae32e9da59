"""Dataset importers: COCO, image folder and Hugging Face datasets to manifests that the audit accepts.

One small world (six images of cats and dogs, some with a frisbee, boxes drawn in) is written in every
format, imported, and the manifests compared on what each format can carry; then audited end to end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from audit_tasks.cli import main
from audit_tasks.config import load_config
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.importers import (
    ImportResult,
    coco_manifest,
    hf_manifest,
    imagefolder_manifest,
    import_coco,
    write_manifest,
)
from audit_tasks.importers.coco import NOTE_EMPTY_BOXES, NOTE_NO_LABELS, NOTE_UNLABELLED
from audit_tasks.importers.frame import MSG_NESTED_ATTRIBUTE, MSG_RESERVED_ATTRIBUTE
from audit_tasks.importers.hf import MSG_NEEDS_DATASETS, MSG_WHICH_SPLIT
from audit_tasks.manifest import ROW_ERROR, read_manifest
from audit_tasks.pipeline import run_audit, run_dir, stage_ingest
from audit_tasks.tables import read_table

SIZE = 64
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "frisbee"}]
CLASSES = ("cat", "dog")


@dataclass(frozen=True)
class Picture:
    """One image of the world: its objects (category, COCO [x, y, w, h], crowd) and the label they imply."""

    file: str
    objects: tuple[tuple[str, tuple[int, int, int, int], bool], ...]
    label: str

    def tags(self) -> list[str]:
        order = [c["name"] for c in CATEGORIES]
        return sorted({name for name, _, _ in self.objects}, key=order.index)

    def regions(self) -> list[dict[str, Any]]:
        """The contract's regions: corners, `core` for the label, `spurious` for the frisbee, else context."""
        kinds = {self.label: "core", "frisbee": "spurious"}
        return [
            {"kind": kinds.get(name, "context"), "name": name, "box": [x, y, x + w, y + h]}
            for name, (x, y, w, h), _ in self.objects
        ]


WORLD = (
    Picture("a.png", (("cat", (8, 8, 40, 40), False), ("frisbee", (50, 2, 10, 8), False)), "cat"),
    Picture("b.png", (("dog", (4, 4, 50, 50), False), ("cat", (40, 40, 20, 20), False)), "dog"),
    # The crowd of dogs covers the whole image, but a crowd box never decides the label.
    Picture("c.png", (("cat", (10, 10, 30, 30), False), ("dog", (0, 0, 64, 64), True)), "cat"),
    Picture("d.png", (("dog", (12, 12, 36, 36), False),), "dog"),
    Picture("e.png", (("cat", (16, 16, 32, 32), False), ("frisbee", (2, 50, 8, 10), False)), "cat"),
    Picture("f.png", (("dog", (8, 8, 48, 40), False), ("frisbee", (50, 50, 10, 10), False)), "dog"),
)


def draw(path: Path, seed: int, objects=()) -> None:
    """A noisy picture with its boxes filled in (distinct content per seed)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, size=(SIZE, SIZE, 3), dtype=np.uint8)
    for k, (_, (x, y, w, h), _) in enumerate(objects):
        pixels[y : y + h, x : x + w, k % 3] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def coco_instances(pictures=WORLD, *, size: int = SIZE) -> dict[str, Any]:
    ids = {c["name"]: c["id"] for c in CATEGORIES}
    images = [{"id": i + 1, "file_name": p.file, "width": size, "height": size} for i, p in enumerate(pictures)]
    annotations = []
    for i, picture in enumerate(pictures):
        for name, box, crowd in picture.objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": ids[name],
                    "bbox": list(box),
                    "iscrowd": int(crowd),
                    "area": box[2] * box[3],
                }
            )
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}


@dataclass(frozen=True)
class Formats:
    root: Path
    coco: ImportResult
    folder: ImportResult
    hf_saved: ImportResult
    hf_folder: ImportResult
    hf_parquet: ImportResult


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Formats:
    """The world written as a COCO file, an image folder, a saved HF dataset and a Parquet file; imported."""
    import datasets

    root = tmp_path_factory.mktemp("world")
    for i, picture in enumerate(WORLD):
        draw(root / "coco" / "images" / picture.file, seed=i, objects=picture.objects)
        (root / "folder" / picture.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "coco" / "images" / picture.file, root / "folder" / picture.label / picture.file)
    instances = root / "coco" / "instances.json"
    instances.write_text(json.dumps(coco_instances()), encoding="utf-8")

    table = datasets.Dataset.from_dict(
        {
            "image": [str(root / "coco" / "images" / p.file) for p in WORLD],
            "label": [CLASSES.index(p.label) for p in WORLD],
            "tags": [p.tags() for p in WORLD],
            "regions": [json.dumps(p.regions()) for p in WORLD],
        }
    )
    table = table.cast_column("image", datasets.Image()).cast_column("label", datasets.ClassLabel(names=CLASSES))
    table.save_to_disk(str(root / "hf_saved"))
    (root / "hf_parquet").mkdir()
    table.to_parquet(str(root / "hf_parquet" / "data.parquet"))
    return Formats(
        root=root,
        coco=import_coco(instances, root / "coco" / "images", spurious=["frisbee"]),
        folder=imagefolder_manifest(root / "folder"),
        hf_saved=hf_manifest(root / "hf_saved", root / "hf_images_saved"),
        hf_folder=hf_manifest(root / "folder", root / "hf_images_folder"),
        hf_parquet=hf_manifest(root / "hf_parquet", root / "hf_images_parquet"),
    )


def by_content(result: ImportResult, column: str) -> dict[str, Any]:
    """The manifest's `column` keyed by the SHA-256 of each row's image file (the same image in any format)."""
    out = {}
    for row in result.frame.to_dict("records"):
        digest = hashlib.sha256((result.image_root / row["image_uri"]).read_bytes()).hexdigest()
        value = row[column]
        out[digest] = json.loads(value) if column == "regions" and value else value
    return out


# ---------------------------------------------------------------------------------------------
# One world, every format
# ---------------------------------------------------------------------------------------------


def test_every_format_imports_the_same_images_with_the_same_labels(world):
    expected = {hashlib.sha256((world.root / "coco/images" / p.file).read_bytes()).hexdigest(): p.label for p in WORLD}
    for result in (world.coco, world.folder, world.hf_saved, world.hf_folder, world.hf_parquet):
        assert by_content(result, "label") == expected


def test_coco_and_hf_imports_carry_the_same_tags_and_boxes(world):
    expected_tags = {
        hashlib.sha256((world.root / "coco/images" / p.file).read_bytes()).hexdigest(): p.tags() for p in WORLD
    }
    expected_regions = {
        hashlib.sha256((world.root / "coco/images" / p.file).read_bytes()).hexdigest(): p.regions() for p in WORLD
    }
    for result in (world.coco, world.hf_saved, world.hf_parquet):
        assert by_content(result, "tags") == expected_tags
        assert by_content(result, "regions") == expected_regions


def test_an_image_folder_carries_labels_only(world):
    assert list(world.folder.frame.columns) == ["image_uri", "label"]


@pytest.mark.parametrize(
    ("source", "suffix"), [("coco", ".jsonl"), ("folder", ".csv"), ("hf_saved", ".parquet")], ids=str
)
def test_an_imported_manifest_audits_end_to_end_with_nothing_quarantined(world, tmp_path, source, suffix):
    result: ImportResult = getattr(world, source)
    config = audit_config(tmp_path, result.image_root)
    write_manifest(result.frame, tmp_path / "landing" / f"import{suffix}")
    outcome = run_audit(load_config(config), "night-1")
    images = read_table(outcome.run_dir / "images.parquet", columns=["image_uri", "label", "has_regions"])
    assert outcome.verdict.status == "passed"
    assert len(read_table(outcome.run_dir / "quarantine.parquet")) == 0
    assert sorted(zip(images["image_uri"], images["label"], strict=True)) == sorted(
        zip(result.frame["image_uri"], result.frame["label"], strict=True)
    )
    assert images["has_regions"].all() == ("regions" in result.frame.columns)


def audit_config(root: Path, image_root: Path) -> Path:
    """A config auditing `root/landing` against images under `image_root` with a random resnet18."""
    (root / "landing").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).state_dict(), root / "model.pt")
    body = {
        "dataset": {"landing": "landing", "image_root": str(image_root), "catalog": "catalog"},
        "model": {
            "arch": "resnet18",
            "checkpoint": "model.pt",
            "classes": list(CLASSES),
            "target_layer": "layer4",
            "input_size": SIZE,
        },
        "saliency": {"batch_size": 8, "device": "cpu", "num_workers": 0},
        "checks": {
            "ingest": {"max_quarantine_fraction": 0.0},
            "saliency": {"max_flagged_fraction": 1.0, "min_images": 1},
        },
        "output": {"dir": "reports"},
    }
    config = root / "audit.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return config


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------


def convert(instances: dict[str, Any], **options: Any) -> ImportResult:
    return coco_manifest(instances, images=Path("images"), **options)


def one_image(*objects: tuple[str, tuple[float, float, float, float], bool]) -> dict[str, Any]:
    return coco_instances([Picture("x.png", objects, "")])


def test_coco_label_is_the_category_with_the_largest_total_box_area():
    two_small_dogs = one_image(
        ("cat", (0, 0, 25, 25), False), ("dog", (0, 30, 20, 20), False), ("dog", (30, 30, 20, 20), False)
    )
    assert convert(two_small_dogs).frame["label"].tolist() == ["dog"]


def test_coco_label_tie_goes_to_the_category_listed_first():
    instances = one_image(("cat", (0, 0, 10, 10), False), ("dog", (20, 20, 10, 10), False))
    instances["categories"].reverse()  # dog (id 2) is now listed first
    assert convert(instances).frame["label"].tolist() == ["dog"]


def test_coco_crowd_box_is_tagged_and_a_region_but_never_the_label():
    row = convert(one_image(("cat", (10, 10, 20, 20), False), ("dog", (0, 0, 64, 64), True))).frame.iloc[0]
    assert row["label"] == "cat"
    assert row["tags"] == ["cat", "dog"]
    assert json.loads(row["regions"])[1] == {"kind": "context", "name": "dog", "box": [0, 0, 64, 64]}


def test_coco_image_with_only_crowd_boxes_has_no_label():
    result = convert(one_image(("dog", (0, 0, 64, 64), True)))
    assert result.frame["label"].tolist() == [None]
    assert NOTE_UNLABELLED.format(count=1) in result.notes


def test_coco_image_without_annotations_is_kept_with_nothing_but_its_uri_and_id():
    instances = coco_instances(WORLD[:1])
    instances["images"].append({"id": 99, "file_name": "empty.png", "width": SIZE, "height": SIZE})
    result = convert(instances)
    assert result.frame.iloc[1][["image_uri", "image_id", "label", "regions"]].tolist() == [
        "empty.png",
        "99",
        None,
        None,
    ]
    assert result.frame.iloc[1]["tags"] == []
    assert NOTE_UNLABELLED.format(count=1) in result.notes


def test_coco_file_of_images_only_imports_every_image_without_tags():
    result = convert({"images": coco_instances()["images"]})
    assert result.frame["image_uri"].tolist() == [p.file for p in WORLD]
    assert result.frame["tags"].tolist() == [[]] * len(WORLD)
    assert result.frame["regions"].isna().all()


def test_coco_crowd_flag_written_as_a_float_is_read_as_0_or_1():
    instances = one_image(("cat", (10, 10, 20, 20), False), ("dog", (0, 0, 64, 64), True))
    for annotation in instances["annotations"]:
        annotation["iscrowd"] = float(annotation["iscrowd"])
    assert convert(instances).frame["label"].tolist() == ["cat"]


def test_coco_label_none_leaves_every_label_empty_and_no_region_core():
    result = convert(coco_instances(), label="none")
    frame = result.frame
    assert NOTE_NO_LABELS in result.notes
    assert frame["label"].isna().all()
    kinds = {r["kind"] for text in frame["regions"] for r in json.loads(text)}
    assert kinds == {"context"}


def test_coco_region_kind_is_core_for_the_label_spurious_when_listed_else_context():
    regions = json.loads(convert(coco_instances(), spurious=["frisbee"]).frame["regions"][0])
    assert [(r["name"], r["kind"]) for r in regions] == [("cat", "core"), ("frisbee", "spurious")]
    regions = json.loads(convert(coco_instances()).frame["regions"][0])
    assert [(r["name"], r["kind"]) for r in regions] == [("cat", "core"), ("frisbee", "context")]


def test_coco_boxes_become_corners_clipped_to_the_image():
    frame = convert(one_image(("cat", (-2, 10.5, 20, 20.25), False), ("dog", (50, 60, 20, 10), False))).frame
    boxes = [r["box"] for r in json.loads(frame["regions"][0])]
    assert boxes == [[0, 10.5, 18, 30.75], [50, 60, SIZE, SIZE]]


def test_coco_empty_box_is_no_region_but_its_category_stays_a_tag():
    result = convert(one_image(("cat", (10, 10, 20, 20), False), ("dog", (5, 5, 0, 10), False)))
    assert [r["name"] for r in json.loads(result.frame["regions"][0])] == ["cat"]
    assert result.frame["tags"][0] == ["cat", "dog"]
    assert NOTE_EMPTY_BOXES.format(count=1) in result.notes


def test_coco_extra_scalar_image_fields_become_attribute_columns_as_text():
    instances = coco_instances(WORLD[:2])
    instances["images"][0].update(time_of_day="night", indoor=True, people=3, license=4, coco_url="http://x")
    instances["images"][1].update(time_of_day="day", captions=["a cat"], width=SIZE)
    result = convert(instances)
    assert list(result.frame.columns) == [
        "image_uri",
        "image_id",
        "label",
        "tags",
        "regions",
        "time_of_day",
        "indoor",
        "people",
    ]
    assert result.frame[["time_of_day", "indoor", "people"]].values.tolist() == [
        ["night", "true", "3"],
        ["day", None, None],
    ]
    assert MSG_NESTED_ATTRIBUTE.format(name="captions") in result.notes


def test_coco_image_field_named_like_an_ingest_column_is_skipped():
    instances = coco_instances(WORLD[:1])
    instances["images"][0]["run_id"] = "mine"
    result = convert(instances)
    assert "run_id" not in result.frame.columns
    assert MSG_RESERVED_ATTRIBUTE.format(name="run_id") in result.notes


def test_image_uris_are_relative_to_an_image_root_above_the_images_folder(tmp_path):
    result = coco_manifest(coco_instances(WORLD[:1]), images=tmp_path / "coco" / "train", image_root=tmp_path)
    assert result.frame["image_uri"].tolist() == ["coco/train/a.png"]
    assert result.image_root == tmp_path


def test_images_outside_the_image_root_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not lie under the image root"):
        coco_manifest(coco_instances(), images=tmp_path / "a", image_root=tmp_path / "b")


def test_an_unknown_spurious_category_is_a_config_error():
    with pytest.raises(ConfigError, match=r"--spurious: 'frisbe' not a category of instances.json"):
        convert(coco_instances(), spurious=["frisbe"])


def _break(instances: dict[str, Any], how: str) -> Any:
    if how == "top level list":
        return [instances]
    if how == "no images":
        del instances["images"]
    if how == "annotations not a list":
        instances["annotations"] = {"0": {}}
    if how == "bbox of 2 numbers":
        instances["annotations"][1]["bbox"] = [1, 2]
    if how == "bbox of text":
        instances["annotations"][1]["bbox"] = ["1", 2, 3, 4]
    if how == "negative width":
        instances["annotations"][0]["bbox"] = [1, 2, -3, 4]
    if how == "bbox missing":
        del instances["annotations"][2]["bbox"]
    if how == "unknown category":
        instances["annotations"][0]["category_id"] = 99
    if how == "unknown image":
        instances["annotations"][3]["image_id"] = 999
    if how == "duplicate image id":
        instances["images"][1]["id"] = 1
    if how == "no file name":
        del instances["images"][2]["file_name"]
    if how == "crowd of 2":
        instances["annotations"][0]["iscrowd"] = 2
    return instances


@pytest.mark.parametrize(
    ("how", "message"),
    [
        (
            "top level list",
            "instances.json: expected a JSON object with an 'images' list (a COCO instances file), got a list",
        ),
        (
            "no images",
            "instances.json: images: missing (a COCO instances file has 'images', 'annotations' and 'categories')",
        ),
        ("annotations not a list", "instances.json: annotations: expected a list, got an object"),
        (
            "bbox of 2 numbers",
            "instances.json: annotations[1].bbox: expected 4 numbers [x, y, width, height], got [1, 2]",
        ),
        (
            "bbox of text",
            'instances.json: annotations[1].bbox: expected 4 numbers [x, y, width, height], got ["1", 2, 3, 4]',
        ),
        (
            "negative width",
            "instances.json: annotations[0].bbox: expected finite numbers with width and height >= 0,"
            " got [1, 2, -3, 4]",
        ),
        ("bbox missing", "instances.json: annotations[2].bbox: missing"),
        ("unknown category", "instances.json: annotations[0].category_id: 99 is not a category id in the file"),
        ("unknown image", "instances.json: annotations[3].image_id: 999 is not an image id in the file"),
        ("duplicate image id", "instances.json: images[1].id: 1 is also images[0]'s id"),
        ("no file name", "instances.json: images[2].file_name: expected a non-empty string, got null"),
        ("crowd of 2", "instances.json: annotations[0].iscrowd: expected 0 or 1, got 2"),
    ],
)
def test_a_malformed_coco_file_is_refused_whole_naming_the_file_and_field(tmp_path, how, message):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_break(coco_instances(), how)), encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        import_coco(path, tmp_path)
    assert str(caught.value) == message


def test_a_coco_file_that_is_not_json_is_refused_naming_line_and_column(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}', encoding="utf-8")
    with pytest.raises(
        ManifestError, match=r"^instances.json: not valid JSON: Expecting property name .* line 2 column 12$"
    ):
        import_coco(path, tmp_path)


def test_coco_image_listed_but_missing_is_quarantined_by_the_ingest_row_by_row(world, tmp_path):
    instances = coco_instances()
    instances["images"].append({"id": 7, "file_name": "gone.png", "width": SIZE, "height": SIZE})
    instances["annotations"].append({"id": 99, "image_id": 7, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": 0})
    result = coco_manifest(instances, images=world.root / "coco" / "images")
    config = load_config(audit_config(tmp_path, result.image_root))
    write_manifest(result.frame, tmp_path / "landing" / "import.csv")
    ingested = stage_ingest(config, "night-1")
    assert len(ingested.accepted) == len(WORLD)
    assert ingested.quarantined["image_uri"].tolist() == ["gone.png"]
    assert (run_dir(config, "night-1") / "quarantine.parquet").is_file()


def test_coco_conversion_agrees_with_pycocotools(tmp_path):
    """Tags, label and boxes of a random COCO file, against pycocotools' own index of it (getAnnIds/loadAnns)."""
    from pycocotools.coco import COCO

    rng = np.random.default_rng(15)
    categories = [{"id": int(k), "name": f"c{k}"} for k in rng.choice(np.arange(1, 200), size=12, replace=False)]
    images = [{"id": 1000 + i, "file_name": f"{i}.jpg", "width": 100 + i, "height": 80} for i in range(60)]
    annotations = []
    for k in range(400):
        image = images[int(rng.integers(0, 55))]  # the last five images have no annotation
        x, y = rng.uniform(-5, image["width"]), rng.uniform(-5, 80)
        annotations.append(
            {
                "id": k,
                "image_id": image["id"],
                "category_id": categories[int(rng.integers(0, 12))]["id"],
                "bbox": [round(x, 2), round(y, 2), round(rng.uniform(0, 60), 2), round(rng.uniform(0, 60), 2)],
                "iscrowd": int(rng.uniform() < 0.1),
                "area": 1.0,
            }
        )
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}), encoding="utf-8"
    )
    frame = import_coco(path, tmp_path).frame.set_index("image_id")

    coco = COCO(str(path))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    order = [c["name"] for c in categories]
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        row = frame.loc[str(image_id)]
        assert row["tags"] == sorted({names[a["category_id"]] for a in anns}, key=order.index)
        areas: dict[str, float] = {}
        boxes = []
        for a in anns:
            x, y, w, h = a["bbox"]
            box = [max(x, 0), max(y, 0), min(x + w, info["width"]), min(y + h, info["height"])]
            area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
            if not a["iscrowd"]:
                areas[names[a["category_id"]]] = areas.get(names[a["category_id"]], 0) + area
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append((names[a["category_id"]], box))
        label = max(areas, key=lambda n: (areas[n], -order.index(n))) if areas else None
        assert row["label"] == label
        regions = json.loads(row["regions"]) if row["regions"] else []
        assert [r["name"] for r in regions] == [name for name, _ in boxes]
        assert np.allclose([r["box"] for r in regions], [box for _, box in boxes], atol=1e-6) if boxes else True
        assert all((r["kind"] == "core") == (r["name"] == label) for r in regions)


# ---------------------------------------------------------------------------------------------
# Image folder
# ---------------------------------------------------------------------------------------------


def test_imagefolder_lists_the_files_torchvision_imagefolder_lists_in_its_order(tmp_path):
    for name in ("zebra/1.JPG", "zebra/sub/deep/2.png", "zebra/sub/3.webp", "ant/b.jpeg", "ant/a.tiff", "ant/x.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not decoded")
    peer = torchvision.datasets.ImageFolder(str(tmp_path))
    expected = [(Path(path).relative_to(tmp_path).as_posix(), peer.classes[index]) for path, index in peer.samples]
    frame = imagefolder_manifest(tmp_path).frame
    assert list(zip(frame["image_uri"], frame["label"], strict=True)) == expected


def test_imagefolder_skips_hidden_folders_and_files(tmp_path):
    for name in (".ipynb_checkpoints/a.png", "cat/.b.png", "cat/.cache/c.png", "cat/ok.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert imagefolder_manifest(tmp_path).frame["image_uri"].tolist() == ["cat/ok.png"]


def test_imagefolder_refuses_a_class_folder_without_images_as_torchvision_does(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "d.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"class folder\(s\) cat hold no image file"):
        imagefolder_manifest(tmp_path)


def test_imagefolder_refuses_a_root_without_class_folders(tmp_path):
    with pytest.raises(ConfigError, match="no class folders in it"):
        imagefolder_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


def test_hf_keeps_encoded_image_bytes_and_their_format(tmp_path):
    import datasets

    source = tmp_path / "photo.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(source, quality=70)
    original = source.read_bytes()
    table = datasets.Dataset.from_dict({"image": [str(source)], "label": ["cat"]}).cast_column(
        "image", datasets.Image()
    )
    table.save_to_disk(str(tmp_path / "saved"))
    source.unlink()  # the saved dataset holds the bytes themselves
    result = hf_manifest(tmp_path / "saved", tmp_path / "images")
    assert result.frame["image_uri"].tolist() == ["data/000000.jpg"]
    assert (tmp_path / "images" / "data" / "000000.jpg").read_bytes() == original


def test_hf_pixel_arrays_are_written_as_png(tmp_path):
    import datasets

    pixels = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Array3D((8, 8, 3), "uint8"), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [pixels.tolist()], "label": ["cat"]}, features=features).save_to_disk(
        str(tmp_path / "saved")
    )
    result = hf_manifest(tmp_path / "saved", tmp_path / "images")
    written = tmp_path / "images" / result.frame["image_uri"][0]
    assert written.suffix == ".png"
    assert np.array_equal(np.asarray(Image.open(written)), pixels)


def test_hf_class_names_become_labels_and_scalar_columns_attributes(tmp_path):
    import datasets

    draw(tmp_path / "a.png", 0)
    table = datasets.Dataset.from_dict(
        {
            "image": [str(tmp_path / "a.png")] * 3,
            "label": [1, 0, -1],
            "gender": ["female", "male", "female"],
            "age": [41, 30, 22],
            "site": [0, 1, 1],
            "width": [64, 64, 64],
            "embedding": [[0.1, 0.2]] * 3,
        }
    )
    table = table.cast_column("image", datasets.Image()).cast_column("label", datasets.ClassLabel(names=CLASSES))
    table = table.cast_column("site", datasets.ClassLabel(names=["north", "south"]))
    table.save_to_disk(str(tmp_path / "saved"))
    result = hf_manifest(tmp_path / "saved", tmp_path / "images")
    assert result.frame["label"].tolist() == ["dog", "cat", None]
    assert result.frame[["gender", "age", "site"]].values.tolist() == [
        ["female", "41", "north"],
        ["male", "30", "south"],
        ["female", "22", "south"],
    ]
    assert "width" not in result.frame.columns and "embedding" not in result.frame.columns
    assert MSG_RESERVED_ATTRIBUTE.format(name="width") in result.notes
    assert MSG_NESTED_ATTRIBUTE.format(name="embedding") in result.notes


def test_hf_dataset_dict_with_several_splits_needs_one_chosen(tmp_path):
    import datasets

    draw(tmp_path / "a.png", 0)
    draw(tmp_path / "b.png", 1)
    split = {"train": ["a.png"], "test": ["b.png", "a.png"]}
    splits = {
        name: datasets.Dataset.from_dict({"image": [str(tmp_path / f) for f in files], "label": ["cat"] * len(files)})
        for name, files in split.items()
    }
    datasets.DatasetDict(splits).cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ConfigError) as caught:
        hf_manifest(tmp_path / "saved", tmp_path / "images")
    assert str(caught.value) == MSG_WHICH_SPLIT.format(path=tmp_path / "saved", splits="train, test")
    result = hf_manifest(tmp_path / "saved", tmp_path / "images", split="test")
    assert result.frame["image_uri"].tolist() == ["test/000000.png", "test/000001.png"]


def test_hf_image_files_are_named_deterministically(world, tmp_path):
    first = hf_manifest(world.root / "hf_saved", tmp_path / "one")
    second = hf_manifest(world.root / "hf_saved", tmp_path / "two")
    assert first.frame.equals(second.frame)
    for uri in first.frame["image_uri"]:
        assert (tmp_path / "one" / uri).read_bytes() == (tmp_path / "two" / uri).read_bytes()


def test_hf_load_dataset_runs_offline_with_local_files_only_and_leaves_the_environment_alone(
    world, tmp_path, monkeypatch
):
    import datasets

    seen = {}
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        seen.update(offline=datasets.config.HF_HUB_OFFLINE, local=kwargs["download_config"].local_files_only)
        seen.update(cache=kwargs["cache_dir"])
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    environ, offline = dict(os.environ), datasets.config.HF_HUB_OFFLINE
    hf_manifest(world.root / "folder", tmp_path / "images")
    assert seen["offline"] is True and seen["local"] is True
    assert not Path(seen["cache"]).exists()  # a temporary cache, removed after the import
    assert dict(os.environ) == environ and datasets.config.HF_HUB_OFFLINE == offline


def test_hf_without_the_datasets_package_names_the_extra_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError) as caught:
        hf_manifest(tmp_path, tmp_path / "images")
    assert str(caught.value) == MSG_NEEDS_DATASETS


def test_hf_unreadable_dataset_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match=r"--dataset .*data: datasets cannot read it locally"):
        hf_manifest(tmp_path / "data", tmp_path / "images")


# ---------------------------------------------------------------------------------------------
# Writing manifests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_written_manifest_reads_back_as_the_importer_built_it(world, tmp_path, suffix):
    instances = coco_instances()
    instances["images"][0]["note"] = 'says "hi",\nthen leaves'
    frame = coco_manifest(instances, images=Path("images")).frame
    read = read_manifest(write_manifest(frame, tmp_path / f"m{suffix}")).drop(columns=[ROW_ERROR])
    regions = [json.loads(r) for r in frame.pop("regions")]
    assert [json.loads(r) for r in read.pop("regions")] == regions
    pd.testing.assert_frame_equal(read, frame)


def test_a_csv_manifest_refuses_a_tag_holding_a_pipe(tmp_path):
    frame = pd.DataFrame({"image_uri": ["a.png"], "label": ["cat"], "tags": [["cat|dog"]]})
    with pytest.raises(ConfigError, match=r"tag 'cat\|dog' \(row 1\) holds '\|'"):
        write_manifest(frame, tmp_path / "m.csv")
    assert not list(tmp_path.iterdir())


def test_a_manifest_name_without_a_known_suffix_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot tell the manifest format from '.txt'"):
        write_manifest(pd.DataFrame({"image_uri": ["a.png"]}), tmp_path / "m.txt")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_cli_import_coco_writes_the_manifest_and_exits_0(world, tmp_path, capsys):
    out = tmp_path / "coco.parquet"
    argv = ["import", "coco", "--annotations", str(world.root / "coco" / "instances.json")]
    argv += ["--images", str(world.root / "coco" / "images"), "--spurious", "frisbee", "--out", str(out)]
    assert main(argv) == 0
    assert f"{len(WORLD)} row(s) written to {out}" in capsys.readouterr().out
    assert read_manifest(out)["label"].tolist() == [p.label for p in WORLD]


def test_cli_import_imagefolder_and_hf_exit_0(world, tmp_path):
    assert main(["import", "imagefolder", "--root", str(world.root / "folder"), "--out", str(tmp_path / "f.csv")]) == 0
    argv = ["import", "hf", "--dataset", str(world.root / "hf_saved"), "--images", str(tmp_path / "images")]
    assert main([*argv, "--out", str(tmp_path / "h.jsonl")]) == 0
    assert len(read_manifest(tmp_path / "f.csv")) == len(read_manifest(tmp_path / "h.jsonl")) == len(WORLD)


def test_cli_import_of_a_malformed_coco_file_exits_2_naming_the_file_and_field(tmp_path, capsys):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_break(coco_instances(), "bbox of 2 numbers")), encoding="utf-8")
    argv = ["import", "coco", "--annotations", str(path), "--images", str(tmp_path), "--out", str(tmp_path / "m.csv")]
    assert main(argv) == 2
    assert "instances.json: annotations[1].bbox: expected 4 numbers" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()
