"""Dataset importers: a COCO instances file, an image folder or a local Hugging Face dataset to a manifest.

Each importer is a function returning an `ImportResult` (the manifest as a DataFrame, the image root its
URIs are relative to, notes); `write_manifest` writes one as CSV, JSON Lines or Parquet at the edge.
"""

from audit_tasks.importers.coco import coco_manifest, import_coco, read_coco
from audit_tasks.importers.frame import MANIFEST_COLUMNS, ImportResult
from audit_tasks.importers.hf import hf_manifest
from audit_tasks.importers.imagefolder import IMG_EXTENSIONS, imagefolder_manifest
from audit_tasks.importers.writer import write_manifest

__all__ = [
    "IMG_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "ImportResult",
    "coco_manifest",
    "hf_manifest",
    "imagefolder_manifest",
    "import_coco",
    "read_coco",
    "write_manifest",
]
