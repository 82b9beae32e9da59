"""Audit configuration: the YAML file parsed once, up front, into frozen pydantic models.

Every section and threshold is optional where the contract says so; unknown keys, wrong types and
impossible values raise one ConfigError that names every mistake by its dotted key, so a typo never
silently disables a check. Types are strict (the string "0.5" is not a number, 1 is not true; an integer
is a fine number), bounds live in each field, and the DAG params' JSON schema is derived from the same
fields (see `field_schema`). Relative paths resolve against the config file's folder; object-store URIs
stay as given (see audit_tasks.storage).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from upath import UPath

from audit_tasks.errors import ConfigError
from audit_tasks.gates import GATE_CHECKS
from audit_tasks.group_metrics import METRIC_NAMES, MULTILABEL_METRICS, MULTILABEL_ONLY_METRICS, SubgroupMetric
from audit_tasks.image_properties import IMAGE_PROPERTY_NAMES, ImagePropertyName
from audit_tasks.storage import StoragePath, is_remote, storage_path

__all__ = [
    "AuditConfig",
    "ChecksConfig",
    "CooccurrenceCheck",
    "DatasetConfig",
    "IngestCheck",
    "LeakageCheck",
    "RarityCheck",
    "ModelConfig",
    "OutputConfig",
    "PolicyConfig",
    "SaliencyCheck",
    "SaliencyConfig",
    "StrategiesCheck",
    "SubgroupCheck",
    "Waiver",
    "default_checks",
    "dotted_keys",
    "field_schema",
    "load_config",
    "parse_config",
]

# ---------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------

#: The error type of this module's own checks; its message is used as written, after the dotted key.
_PROBLEM = "config"


def _problem(message: str, **context: Any) -> PydanticCustomError:
    """A validation error whose message reads after the key ("'model.classes' has duplicate ...").

    `key` in `context` names a field below the one validated (for checks that span fields).
    """
    return PydanticCustomError(_PROBLEM, message, context)


def _base_dir(info: ValidationInfo) -> Path | None:
    """The config file's folder, when validating a file (parse_config); None for objects built in code."""
    context = info.context if isinstance(info.context, Mapping) else {}
    return context.get("base_dir")


def _location(value: Any, info: ValidationInfo) -> StoragePath:
    """A path or object-store URI: text becomes a `Path` (resolved against the config's folder) or a `UPath`."""
    if isinstance(value, (Path, UPath)):  # built in code (Airflow's ObjectStoragePath is a UPath proxy)
        location: StoragePath = value
    elif isinstance(value, str) and value:
        try:
            location = storage_path(value)
        except ValueError as exc:
            raise _problem("is not a usable location: {reason}", reason=str(exc)) from None
    else:
        raise _problem("must be a path or URI string, got {value}", value=repr(value))
    base_dir = _base_dir(info)
    if base_dir is not None and isinstance(location, Path) and not location.is_absolute():
        location = (base_dir / location).resolve()
    return location


def _existing_folder(location: StoragePath, info: ValidationInfo) -> StoragePath:
    """A local folder must exist when the config is read (a remote one is listed when used)."""
    if _base_dir(info) is not None and not is_remote(location) and not location.is_dir():
        raise _problem("folder does not exist: {path}", path=str(location))
    return location


def _existing_file(location: StoragePath, info: ValidationInfo) -> StoragePath:
    """A local file must exist when the config is read (a remote one is checked when loaded)."""
    if _base_dir(info) is not None and not is_remote(location) and not location.is_file():
        raise _problem("file does not exist: {path}", path=str(location))
    return location


def _suite_file(location: StoragePath, info: ValidationInfo) -> StoragePath:
    """A local suite file must be a GX suite's JSON when the config is read (a remote one: at ingest)."""
    from audit_tasks.gx_suite import read_suite_json

    if _base_dir(info) is not None and not is_remote(location):
        try:
            read_suite_json(location)
        except ConfigError as exc:
            raise _problem("{problem}", problem=str(exc).removeprefix("'checks.ingest.suite' ")) from None
    return location


def _list_to_tuple(value: Any) -> Any:
    """YAML gives lists; the config keeps tuples (immutable, hashable). Anything else is left to fail."""
    return tuple(value) if isinstance(value, list) else value


#: A local path or an object-store URI (s3://, gs://, ...), kept as `Path` or `UPath`.
Location = Annotated[StoragePath, PlainValidator(_location), WithJsonSchema({"type": "string", "minLength": 1})]
ExistingFolder = Annotated[Location, AfterValidator(_existing_folder)]
ExistingFile = Annotated[Location, AfterValidator(_existing_file)]
#: A GX expectation suite file: its JSON shape is checked on load; GX builds its expectations at ingest.
ExpectationSuiteFile = Annotated[ExistingFile, AfterValidator(_suite_file)]
Name = Annotated[str, StringConstraints(min_length=1)]
Names = Annotated[tuple[Name, ...], BeforeValidator(_list_to_tuple)]
Positive = Annotated[float, Field(gt=0)]
RGB = Annotated[tuple[float, float, float], BeforeValidator(_list_to_tuple)]
PositiveRGB = Annotated[tuple[Positive, Positive, Positive], BeforeValidator(_list_to_tuple)]
#: URI schemes an `image_uri` may use ("file" means local paths).
Scheme = Literal["file", "s3", "gs", "gcs", "az", "abfs", "memory", "http", "https"]


class _Section(BaseModel):
    """Base of every config model: strict, closed, immutable.

    Built in code, a model with an impossible value raises ConfigError too (naming the class and key).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    if not TYPE_CHECKING:  # type checkers keep pydantic's synthesized signature

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise ConfigError(_describe(exc, type(self), type(self).__name__)) from None

        # What pydantic's own __init__ carries: validation (model_validate, a section inside a config) then
        # skips this wrapper and keeps its context, so it only words the errors of objects built in code.
        __init__.__pydantic_base_init__ = True


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class DatasetConfig(_Section):
    """Where manifests land, where images live, where the cumulative catalog is kept."""

    # Each may be an object-store URI (s3://, gs://, ...); see audit_tasks.storage.
    landing: ExistingFolder
    image_root: ExistingFolder
    catalog: Location
    # Which rows the model checks audit: the rows this run ingested, or the whole catalog.
    audit_scope: Literal["run", "catalog"] = "run"
    # URI schemes an `image_uri` may use besides plain relative paths ("file" means local paths).
    allowed_schemes: Annotated[tuple[Scheme, ...], BeforeValidator(_list_to_tuple)] = ("file",)
    # Images larger than this many pixels are refused (decompression-bomb guard).
    max_image_pixels: int = Field(default=50_000_000, gt=0)
    min_image_side: int = Field(default=8, gt=0)


def _thresholds(value: Any) -> float | dict[str, float]:
    """A probability in (0, 1), or a mapping of class name -> probability in (0, 1) (classes checked later)."""
    if isinstance(value, Mapping):
        bad = [f"{k!r}: {v!r}" for k, v in value.items() if not (isinstance(k, str) and k and _is_probability(v))]
        if bad:
            raise _problem(MSG_BAD_THRESHOLDS + "; got {bad}", bad=", ".join(bad))
        return {k: float(v) for k, v in value.items()}
    if not _is_probability(value):
        raise _problem(MSG_BAD_THRESHOLDS + "; got {value}", value=repr(value))
    return float(value)


def _is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


MSG_BAD_THRESHOLDS = "must be a number strictly between 0 and 1, or a mapping of class -> such a number"
_PROBABILITY_SCHEMA = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
#: model.thresholds: one probability for every class, or one per class.
Thresholds = Annotated[
    float | dict[str, float],
    PlainValidator(_thresholds),
    WithJsonSchema({"anyOf": [_PROBABILITY_SCHEMA, {"type": "object", "additionalProperties": _PROBABILITY_SCHEMA}]}),
]


#: Where a model comes from (audit_tasks.modelio builds each one without fetching anything).
ModelSource = Literal["torchvision", "timm", "huggingface", "python"]
#: Sources that define their own resize / crop / normalisation (`preprocess: model` reads it from them).
SOURCES_WITH_PREPROCESSING = ("timm", "huggingface")


class ModelConfig(_Section):
    """The classifier under audit and how to feed it.

    `source` says how `arch` is read: a torchvision builder, a timm model name, a Hugging Face
    `save_pretrained` folder (then `checkpoint` is that folder), or a `"pkg.module:build"` callable
    (`build(num_classes: int) -> nn.Module`). `preprocess: model` feeds the model its own resize, crop and
    normalisation (timm's data config, the folder's image processor config) and maps region boxes through
    them; `squash` resizes the whole image to `input_size` with `mean`/`std`. Left out, it is `model` for
    timm and huggingface and `squash` otherwise, so configs written before `source` existed are unchanged.
    """

    source: ModelSource = "torchvision"
    arch: Name
    checkpoint: Location  # a file, or an object-store URI; huggingface: the save_pretrained folder
    classes: Names
    # A dotted module path, or "auto" (the default): the last spatial feature map of a CNN, the last block's
    # input of a vision transformer (audit_tasks.cam_target says why and how).
    target_layer: Name = "auto"
    preprocess: Literal["model", "squash"] | None = None
    input_size: int = Field(default=224, gt=0)
    mean: RGB = (0.485, 0.456, 0.406)
    std: PositiveRGB = (0.229, 0.224, 0.225)
    # TorchScript / torch.export archives can run arbitrary graph code: loading them is opt-in.
    allow_scripted: bool = False
    # multiclass: one class per image (softmax); multilabel: every class is a target (sigmoid per class), the
    # prediction is the set of classes over their threshold and the truth is the image's tags among the classes.
    task: Literal["multiclass", "multilabel"] = Field(
        default="multiclass", description="multiclass (softmax, one class) or multilabel (sigmoid, a set)."
    )
    thresholds: Thresholds = Field(
        default=0.5, description="multilabel: probability over which a class is predicted; one number or per class."
    )

    @field_validator("classes")
    @classmethod
    def _classes_are_distinct(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if not classes:
            raise _problem("must list at least one class")
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise _problem("has duplicate class names: {names}", names=", ".join(duplicates))
        return classes

    @model_validator(mode="after")
    def _thresholds_name_classes(self) -> ModelConfig:
        if isinstance(self.thresholds, dict):
            unknown = sorted(set(self.thresholds) - set(self.classes))
            if unknown:
                raise _problem(
                    "names classes that are not in model.classes: {names}", key="thresholds", names=", ".join(unknown)
                )
        return self

    def threshold_list(self) -> list[float]:
        """One threshold per class, in class order (a class a mapping leaves out gets the default 0.5)."""
        if isinstance(self.thresholds, dict):
            return [float(self.thresholds.get(c, DEFAULT_THRESHOLD)) for c in self.classes]
        return [float(self.thresholds)] * len(self.classes)

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, location: StoragePath, info: ValidationInfo) -> StoragePath:
        """A file, or for a Hugging Face model a folder; checked only when read from a config file."""
        if info.data.get("source") == "huggingface":
            return _existing_folder(location, info)
        return _existing_file(location, info)

    @model_validator(mode="after")
    def _preprocess_fits_source(self) -> ModelConfig:
        if self.preprocess == "model" and self.source not in SOURCES_WITH_PREPROCESSING:
            raise _problem(
                "preprocess: model needs a source with its own preprocessing ({sources}); "
                "source {source} has none, use preprocess: squash",
                key="preprocess",
                sources=", ".join(SOURCES_WITH_PREPROCESSING),
                source=repr(self.source),
            )
        if self.source == "python" and ":" not in self.arch:
            raise _problem(
                "with source: python, arch must be 'pkg.module:build'; got {arch}", key="arch", arch=repr(self.arch)
            )
        return self

    @property
    def preprocessing(self) -> Literal["model", "squash"]:
        """`preprocess` with its default resolved: the model's own where the source has one, else squash."""
        if self.preprocess is not None:
            return self.preprocess
        return "model" if self.source in SOURCES_WITH_PREPROCESSING else "squash"


#: The multilabel threshold of a class that `model.thresholds` does not name.
DEFAULT_THRESHOLD = 0.5


class SaliencyConfig(_Section):
    """How the Grad-CAM stage runs."""

    target: Literal["label", "prediction"] = "label"
    batch_size: int = Field(default=64, gt=0)
    device: Name = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = Field(default=2, ge=0)
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device in {"auto", "cpu", "cuda", "mps"} or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise _problem("must be auto, cpu, cuda or cuda:N; got {device}", device=repr(device))


class CooccurrenceCheck(_Section):
    """Thresholds of the co-occurrence balance check (see audit_tasks.cooccurrence for the rule)."""

    max_conditional: float = Field(
        default=0.9, gt=0, le=1, description="Largest allowed P(b | a) for a tag or attribute pair."
    )
    min_support: int = Field(default=30, ge=1, description="Pairs seen fewer times than this are not judged.")
    attributes: Names | None = Field(
        default=None, description="Attribute columns paired with the tags; default: the subgroup check's."
    )
    min_lift: float = Field(default=1.5, ge=1, description="A pair is flagged only when its lift is at least this.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Confidence level of the co-occurrence interval.")
    target_share: float = Field(
        default=0.2, gt=0, lt=1, description="Curator's goal for 'a without b' when suggesting images to add."
    )
    max_class_imbalance: float = Field(
        default=10.0, ge=1, description="Largest allowed ratio of the biggest to the smallest class."
    )


class SaliencyCheck(_Section):
    """Thresholds of the saliency (shortcut) check (see audit_tasks.regions for the rule)."""

    max_spurious_share: float = Field(
        default=0.5, ge=0, le=1, description="Largest allowed share of Grad-CAM energy on spurious regions."
    )
    min_spurious_enrichment: float = Field(
        default=3.0,
        gt=0,
        description="A spurious region is suspicious when its share exceeds its area this many times.",
    )
    min_core_share: float = Field(
        default=0.3, ge=0, le=1, description="Smallest acceptable share of Grad-CAM energy on the object itself."
    )
    max_flagged_fraction: float = Field(
        default=0.25, ge=0, le=1, description="Largest allowed fraction of a class's images flagged as shortcuts."
    )
    min_images: int = Field(default=20, ge=1, description="Classes with fewer audited images are not judged.")
    pairs: Names = Field(
        default=(),
        description='Co-occurring pairs "a -> b" whose class-a saliency on b regions is judged, beside flagged ones.',
    )

    @field_validator("pairs")
    @classmethod
    def _pairs_are_arrows(cls, pairs: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in pairs if len(split_pair(p)) != 2 or not all(split_pair(p))]
        if bad:
            raise _problem('has pairs not written "class -> region": {pairs}', pairs=", ".join(bad))
        return pairs

    def pair_list(self) -> list[tuple[str, str]]:
        """The configured pairs as (class, region name)."""
        return [(a, b) for a, b in (split_pair(p) for p in self.pairs)]


#: How a pair is written, in the config and in gate subjects of the co-occurrence check.
PAIR_ARROW = "->"


def split_pair(text: str) -> list[str]:
    """ "laptop -> mouse" -> ["laptop", "mouse"] (anything else: a list of another length or with blanks)."""
    return [part.strip() for part in text.split(PAIR_ARROW)]


class SubgroupCheck(_Section):
    """Thresholds of the subgroup performance check (see audit_tasks.subgroups for the rule)."""

    attributes: Names = Field(default=(), description="Attribute columns whose groups are compared.")
    # true: an intersection group fails on its own only when its flagged parents do not explain its gap;
    # report_all: every flagged intersection is its own failure (the behaviour before issue 16).
    intersections: bool | Literal["report_all"] = Field(
        default=True,
        description="Also compare the groups of every combination of attributes (report_all: fail each one).",
    )
    metric: SubgroupMetric = Field(default="accuracy", description="Metric compared across subgroups.")
    max_gap: float = Field(
        default=0.05, ge=0, le=1, description="Largest allowed metric gap between a group and the best group."
    )
    min_group_size: int = Field(default=30, ge=1, description="Groups smaller than this are reported but not judged.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Confidence level of the subgroup intervals.")
    # Default: the second of model.classes.
    positive_class: Name | None = Field(
        default=None, description="Class whose recall/TPR/FPR/precision is judged (one of model.classes)."
    )
    # holm: Holm's step-down over every comparison of the check (family-wise error 1 - confidence, more
    # power than bonferroni); bonferroni: the same family at a fixed share each; none: each comparison alone.
    multiple_comparisons: Literal["holm", "bonferroni", "none"] = Field(
        default="holm",
        description="holm (default), bonferroni: family-wise error at most 1 - confidence; none: no adjustment.",
    )
    # More resamples: steadier intervals, slower.
    n_bootstrap: int = Field(
        default=2000, ge=100, le=100_000, description="Bootstrap resamples per group for the macro metrics' intervals."
    )


class LeakageCheck(_Section):
    """Thresholds of the multilabel prediction-leakage check (see audit_tasks.leakage for the rule)."""

    max_rate_gap: float = Field(
        default=0.10,
        ge=0,
        lt=1,
        description="Largest allowed excess rate of predicting b where a is present and b absent, vs neither.",
    )
    min_support: int = Field(
        default=30, ge=1, description="Pairs with fewer images on either side (a without b; neither) are not judged."
    )
    # Above 1/2: the one-sided test at level 1 - confidence is read off a two-sided interval at 1 - 2 (1 - confidence).
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence level of the rate-gap tests.")
    multiple_comparisons: Literal["holm", "bonferroni", "none"] = Field(
        default="holm",
        description="holm (default), bonferroni: family-wise error at most 1 - confidence; none: no adjustment.",
    )
    worst_images: int = Field(
        default=4, ge=0, le=32, description="Images per flagged pair shown in the report with their Grad-CAM for b."
    )


class StrategiesCheck(_Section):
    """Saliency strategies without boxes (see audit_tasks.strategies for the clustering and the flag rule)."""

    min_cluster_share: float = Field(
        default=0.2, gt=0, le=1, description="A cluster this large a share of its class may be flagged."
    )
    min_images: int = Field(
        default=20, ge=2, description="Classes (and clusters) with fewer maps are not judged (flagged)."
    )
    max_clusters: int = Field(default=8, ge=1, le=32, description="Most clusters per class (the eigengap picks k).")
    min_peak_consistency: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="A fixed spot: at least this share of a cluster's peaks within 1 cell of its modal peak.",
    )
    max_spot_spread: float = Field(
        default=0.06,
        gt=0,
        le=1,
        description="A fixed spot: RMS spread of the hot spot at most this (fraction of the image side).",
    )
    central_region: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Side of the central square (fraction of the image) where a fixed spot is not flagged.",
    )
    min_compactness: float = Field(
        default=2.0,
        ge=0,
        description="A fixed spot: the 3x3 cells at its peak hold this many times their area's share.",
    )
    max_off_object_share: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="With core boxes: a cluster with more of its map off the boxes than this is flagged.",
    )
    max_sample: int = Field(
        default=5000,
        ge=100,
        le=50_000,
        description="Maps per class clustered at most; the rest are assigned to the nearest centroid.",
    )
    neighbours: int = Field(default=10, ge=2, le=100, description="Neighbours per map in the spectral kNN graph.")


class RarityCheck(_Section):
    """Rarity from the model's own latent structure, and sample weights (see audit_tasks.rarity and
    audit_tasks.sample_weights for the recipe). Off unless the section is present."""

    method: Literal["histogram", "knn"] = Field(
        default="histogram",
        description="Density per class: histogram (DB-VAE: smoothed histograms per dimension) or knn.",
    )
    combine: Literal["product", "max"] = Field(
        default="product",
        description="How per-dimension histograms combine: product (weighted geometric mean) or max (the lab).",
    )
    alpha: float = Field(
        default=0.001, gt=0, le=1, description="Smoothing added to each density before 1/(density + alpha)."
    )
    bins: int = Field(default=10, ge=2, le=100, description="Histogram bins per latent dimension.")
    dims: int = Field(default=16, ge=1, le=256, description="Principal components of the features kept.")
    k: int = Field(default=10, ge=1, le=100, description="knn: the neighbour whose distance sets the density.")
    quantiles: int = Field(default=5, ge=2, le=20, description="Density quantiles per class (q1 rarest).")
    max_tail_gap: float = Field(
        default=0.10, ge=0, lt=1, description="Largest allowed accuracy gap, commonest quantile minus rarest."
    )
    min_images: int = Field(default=20, ge=1, description="Quantiles with fewer images are not judged.")
    # Above 1/2: the one-sided test at level 1 - confidence is read off a two-sided interval at 1 - 2 (1 - confidence).
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence level of the tail-gap tests.")
    max_weight: float = Field(default=10.0, ge=1, description="Cap on a sample weight (weights have mean 1).")


class ImagePropertiesCheck(_Section):
    """Image-property shortcuts (see audit_tasks.image_properties): read from the header at ingest and
    measured on the pixels while scoring (where they are decoded anyway: bench/image_properties.py), binned
    into quantiles over the catalog, paired with the labels by the co-occurrence check and compared by the
    subgroup check. On by default: a missing section measures and checks every property."""

    enabled: bool = Field(default=True, description="Measure image properties and check them.")
    bins: int = Field(default=5, ge=2, le=20, description="Quantile bins per numeric property (q1 lowest).")
    properties: Annotated[tuple[ImagePropertyName, ...], BeforeValidator(_list_to_tuple)] = Field(
        default=IMAGE_PROPERTY_NAMES, description="Properties binned and paired with the labels."
    )
    # Reported, not gated, by default: a property bin's metric moves with what the images show (a mouse near
    # the border changes the border's uniformity and F1[mouse] with it), so a gap there is a lead to read,
    # not a verdict; "gate" makes it one.
    subgroups: Literal["report", "gate", "off"] = Field(
        default="report",
        description="The subgroup metric across each property's bins: report (listed, never failing), gate, or off.",
    )


class IngestCheck(_Section):
    """Thresholds on the ingest itself: too much bad input fails the audit."""

    max_quarantine_fraction: float = Field(
        default=0.1, ge=0, le=1, description="Largest allowed fraction of input rows sent to quarantine."
    )
    suite: ExpectationSuiteFile | None = Field(
        default=None,
        description="A Great Expectations suite (GX 1.x JSON) run on the manifest rows beside the built-in rules.",
    )
    # Build GX's static Data Docs site into the run folder (data_docs/); the JSON results are always saved.
    data_docs: bool = False


class ChecksConfig(_Section):
    """Each check is None when its section is absent: the check is skipped and the report says so."""

    cooccurrence: CooccurrenceCheck | None = None
    saliency: SaliencyCheck | None = None
    subgroups: SubgroupCheck | None = None
    ingest: IngestCheck | None = None
    leakage: LeakageCheck | None = None
    strategies: StrategiesCheck | None = None
    rarity: RarityCheck | None = None
    # On by default: a missing section measures and checks every property.
    image_properties: ImagePropertiesCheck = Field(default_factory=lambda: ImagePropertiesCheck())
    # A verdict needs evidence: fewer audited images than this make the run inconclusive, never passed.
    min_audited: int = Field(
        default=1,
        ge=0,
        description="Fewer audited images than this make the run inconclusive (never green, no retraining).",
    )

    def cooccurrence_attributes(self) -> tuple[str, ...]:
        """Attributes for the co-occurrence check: its own list, else the subgroup check's."""
        if self.cooccurrence is not None and self.cooccurrence.attributes is not None:
            return self.cooccurrence.attributes
        return self.subgroups.attributes if self.subgroups is not None else ()


class OutputConfig(_Section):
    # A folder, or an object-store URI; the default resolves against the config's folder too.
    dir: Location = Field(default=Path("audit_reports"), validate_default=True)


def _iso_date(value: Any) -> Any:
    """YAML reads an unquoted 2027-01-31 as a date; a quoted one (or an Airflow param) is ISO text."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise _problem("must be a date as YYYY-MM-DD, got {value}", value=repr(value)) from None
    return value


def _gate_check(name: str) -> str | None:
    """The check of a gate name `check/subject/metric`, or None when the name has not that shape."""
    parts = name.split("/")
    if len(parts) < 3 or not all(parts) or parts[0] not in GATE_CHECKS:
        return None
    return parts[0]


def _gate_name(name: str) -> str:
    if _gate_check(name) is None:
        raise _problem(
            "must name a gate as check/subject/metric with check one of {checks}; got {name}",
            checks=", ".join(GATE_CHECKS),
            name=repr(name),
        )
    return name


def _warn_name(name: str) -> str:
    return name if name in GATE_CHECKS else _gate_name(name)


def _check_metric(key: str) -> str:
    check, dot, metric = key.partition(".")
    if not dot or not metric or check not in GATE_CHECKS:
        raise _problem(
            "key {key} must be check.metric with check one of {checks}",
            key=repr(key),
            checks=", ".join(GATE_CHECKS),
        )
    return key


#: A gate's name, `check/subject/metric`, as summary.json's failed_gates prints it.
GateName = Annotated[str, StringConstraints(min_length=1), AfterValidator(_gate_name)]
WarnName = Annotated[str, StringConstraints(min_length=1), AfterValidator(_warn_name)]
CheckMetric = Annotated[str, AfterValidator(_check_metric)]


class Waiver(_Section):
    """A known failure accepted for a while: the gate it names reports `waived` instead of failing until
    `expires` (inclusive); from the day after, it fails again."""

    gate: GateName
    owner: Name
    reason: Name
    expires: Annotated[date, BeforeValidator(_iso_date)]

    def describe(self) -> str:
        """One line for gates.parquet's `waiver` column and the logs."""
        return f"{self.owner}: {self.reason} (expires {self.expires.isoformat()})"


class PolicyConfig(_Section):
    """How gate results become a verdict over nights (see audit_tasks.policy for the rule)."""

    baseline: Literal["last_clean", "none"] = Field(
        default="last_clean",
        description="last_clean: compare with the newest passing run of the same audit; none: no baseline.",
    )
    max_increase: dict[CheckMetric, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="check.metric -> largest allowed increase over the baseline's value."
    )
    warn: Annotated[tuple[WarnName, ...], BeforeValidator(_list_to_tuple)] = Field(
        default=(), description="Checks or check/subject/metric gates that warn when they fail, never fail the run."
    )
    waivers: Annotated[tuple[Waiver, ...], BeforeValidator(_list_to_tuple)] = Field(
        default=(), description="Failing gates accepted until a date, each with an owner and a reason."
    )

    @field_validator("waivers")
    @classmethod
    def _one_waiver_per_gate(cls, waivers: tuple[Waiver, ...]) -> tuple[Waiver, ...]:
        names = [w.gate for w in waivers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise _problem("waive the same gate more than once: {names}", names=", ".join(duplicates))
        return waivers


class AuditConfig(_Section):
    """The whole parsed config. `dataset` and `model` are None for the check-only commands."""

    dataset: DatasetConfig | None = None
    model: ModelConfig | None = None
    saliency: SaliencyConfig = Field(default_factory=SaliencyConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    source: Path | None = None  # the file it was read from, for messages; not a key of the file

    @model_validator(mode="after")
    def _positive_class_is_a_class(self) -> AuditConfig:
        subgroups = self.checks.subgroups
        if (
            subgroups is not None
            and subgroups.positive_class is not None
            and self.model is not None
            and subgroups.positive_class not in self.model.classes
        ):
            raise _problem(
                "{value} is not one of model.classes",
                key="checks.subgroups.positive_class",
                value=repr(subgroups.positive_class),
            )
        return self

    @model_validator(mode="after")
    def _subgroup_metric_fits_the_task(self) -> AuditConfig:
        subgroups, model = self.checks.subgroups, self.model
        if subgroups is None or model is None:
            return self
        if model.task == "multilabel" and subgroups.metric not in MULTILABEL_METRICS:
            raise _problem(
                "{value} is not a metric of a multilabel model; use one of {known}",
                key="checks.subgroups.metric",
                value=repr(subgroups.metric),
                known=", ".join(m for m in METRIC_NAMES if m in MULTILABEL_METRICS),
            )
        if model.task != "multilabel" and subgroups.metric in MULTILABEL_ONLY_METRICS:
            raise _problem(
                "{value} needs model.task: multilabel", key="checks.subgroups.metric", value=repr(subgroups.metric)
            )
        return self

    @model_validator(mode="after")
    def _leakage_needs_multilabel(self) -> AuditConfig:
        if self.checks.leakage is not None and self.model is not None and self.model.task != "multilabel":
            raise _problem(MSG_LEAKAGE_MULTICLASS, key="checks.leakage")
        return self

    def require_dataset(self) -> DatasetConfig:
        if self.dataset is None:
            raise ConfigError(f"{self._where()}: section 'dataset' is required for this command")
        return self.dataset

    def require_model(self) -> ModelConfig:
        if self.model is None:
            raise ConfigError(f"{self._where()}: section 'model' is required for this command")
        return self.model

    def attribute_columns(self) -> tuple[str, ...]:
        """Every attribute column any check reads, in first-seen order."""
        seen: dict[str, None] = {}
        if self.checks.subgroups is not None:
            seen.update(dict.fromkeys(self.checks.subgroups.attributes))
        seen.update(dict.fromkeys(self.checks.cooccurrence_attributes()))
        return tuple(seen)

    def _where(self) -> str:
        return str(self.source) if self.source else "config"


#: A leakage check on a multiclass model: predicting b never depends on a there, since one class is predicted.
MSG_LEAKAGE_MULTICLASS = (
    "needs model.task: multilabel (leakage compares how often b is predicted with and without a, "
    "which needs a model that predicts a set of classes); remove checks.leakage or set model.task"
)


#: Defaults used when a check command gets no config at all: every check on, with its defaults.
def default_checks() -> ChecksConfig:
    return ChecksConfig(
        cooccurrence=CooccurrenceCheck(),
        saliency=SaliencyCheck(),
        subgroups=SubgroupCheck(),
        ingest=IngestCheck(),
    )


#: Fields of AuditConfig that are not keys of the file.
_NOT_KEYS = frozenset({"source"})


def dotted_keys(section: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every key a config file may set, dotted (`checks.saliency.min_images`), in the models' order."""
    keys: list[str] = []
    for name, info in (section or AuditConfig).model_fields.items():
        if section is None and name in _NOT_KEYS:
            continue
        inner = _section_type(info)
        keys += dotted_keys(inner, f"{prefix}{name}.") if inner is not None else [f"{prefix}{name}"]
    return keys


def field_schema(key: str) -> dict[str, Any]:
    """The JSON schema of one dotted config key (`checks.saliency.max_flagged_fraction`), from its model:
    type, bounds, enum and description, without title and default. The DAG params are built from it.

    Raises KeyError for a key that is not in the config.
    """
    *sections, name = key.split(".")
    model: type[BaseModel] = AuditConfig
    for part in sections:
        section = _section_type(model.model_fields[part])
        if section is None:
            raise KeyError(key)
        model = section
    schema = dict(model.model_json_schema()["properties"][name])
    schema.pop("title", None)
    schema.pop("default", None)
    return schema


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, *, checks_only: bool = False
) -> AuditConfig:
    """Read, parse and validate a YAML config; `overrides` maps dotted keys to values (Airflow params).

    With `checks_only`, only the `checks` and `policy` sections are parsed (the standalone check commands
    need no dataset or model); unknown top-level keys are still refused.
    """
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"config file not found: {config_path}")
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, config_path)
    if checks_only:
        kept = ("checks", "policy")
        raw = {key: value for key, value in raw.items() if key in kept or key not in _top_level_keys()}
    return parse_config(raw, base_dir=config_path.resolve().parent, source=config_path)


def parse_config(raw: Mapping[str, Any], *, base_dir: Path, source: Path | None = None) -> AuditConfig:
    """Build an AuditConfig from an already-loaded mapping (paths relative to `base_dir`).

    Every problem is reported at once: one ConfigError, one line per problem, each naming its dotted key.
    A check that spans fields (positive_class among model.classes) runs once the fields it reads are valid.
    """
    where = str(source) if source else "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    problems = [_unknown_key(key, AuditConfig) for key in raw if key in _NOT_KEYS]
    data = {key: value for key, value in raw.items() if key not in _NOT_KEYS}
    for name in ("saliency", "checks", "output", "policy"):  # `saliency:` with nothing below: its defaults
        if data.get(name) is None:
            data[name] = {}
    checks = data["checks"]
    if isinstance(checks, Mapping):  # a check section present with nothing below runs with its defaults
        sections = {name for name, info in ChecksConfig.model_fields.items() if _section_type(info) is not None}
        data["checks"] = {name: {} if value is None and name in sections else value for name, value in checks.items()}
    data["source"] = Path(source) if source is not None else None
    try:
        config = AuditConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_join(where, problems + _problems(exc, AuditConfig))) from None
    if problems:
        raise ConfigError(_join(where, problems))
    return config


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: Path) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _top_level_keys() -> frozenset[str]:
    return frozenset(AuditConfig.model_fields) - _NOT_KEYS


# ---------------------------------------------------------------------------------------------
# Messages: pydantic's errors in the config's words, each naming its dotted key
# ---------------------------------------------------------------------------------------------


def _describe(exc: ValidationError, root: type[BaseModel], where: str) -> str:
    return _join(where, _problems(exc, root))


def _join(where: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{where}: {problems[0]}"
    return f"{where}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)


def _problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    return list(dict.fromkeys(_problem_line(error, root) for error in exc.errors()))


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problem_line(error: Any, root: type[BaseModel]) -> str:
    """One pydantic error as one line of the message, in the same words the config has always used."""
    loc: tuple[Any, ...] = tuple(error["loc"])
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == _PROBLEM and "key" in ctx:
        loc += tuple(ctx["key"].split("."))
    key = _dotted(loc)
    if kind == _PROBLEM:
        return f"'{key}' {error['msg']}"
    if kind == "extra_forbidden":
        return _unknown_key(key, _section_at(root, loc[:-1]))
    if kind == "missing":
        annotation = _annotation_at(root, loc[:-1])
        if isinstance(loc[-1], int) and typing.get_origin(annotation) is tuple:
            got = f", got {len(value)}" if isinstance(value, (tuple, list)) else ""
            return f"'{_dotted(loc[:-1])}' must have exactly {len(typing.get_args(annotation))} items{got}"
        return f"missing required key '{key}'"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"'{key or 'top level'}' must be a mapping, got {type(value).__name__}"
    if kind == "literal_error":
        choices = typing.get_args(_annotation_at(root, loc))
        return f"'{key}' must be one of {', '.join(map(str, choices))}; got {value!r}"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"'{key}' must be {_bounds_phrase(_bounds_at(root, loc) or ctx)}; got {value}"
    if kind == "too_long" and ctx.get("field_type") == "Tuple":
        return f"'{key}' must have exactly {ctx['max_length']} items, got {ctx['actual_length']}"
    if kind in _TYPE_WORDS:
        return f"'{key}' must be {_TYPE_WORDS[kind]}, got {value!r}"
    return f"'{key}': {error['msg']}; got {value!r}"


#: What a value of the wrong type should have been, by pydantic error type.
_TYPE_WORDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a non-empty string",
    "string_too_short": "a non-empty string",
    "tuple_type": "a list",
    "list_type": "a list",
}


def _unknown_key(key: str, section: type[BaseModel] | None) -> str:
    known = sorted(set(section.model_fields) - (_NOT_KEYS if section is AuditConfig else set())) if section else []
    return f"unknown key '{key}' (known keys here: {', '.join(known)})"


def _bounds_phrase(bounds: Mapping[str, Any]) -> str:
    """ "a fraction in [0, 1]", "strictly between 0 and 1", "positive", ">= 1", "between 100 and 100000"."""
    ge, gt, le, lt = (bounds.get(name) for name in ("ge", "gt", "le", "lt"))
    if le == 1 and lt is None and (ge == 0 or gt == 0):
        return f"a fraction in {'[' if ge == 0 else '('}0, 1]"
    if gt is not None and lt is not None:
        return f"strictly between {gt} and {lt}"
    if ge is not None and le is not None:
        return f"between {ge} and {le}"
    if gt == 0 and le is None and lt is None:
        return "positive"
    parts = [f"{op} {v}" for op, v in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if v is not None]
    return " and ".join(parts)


def _section_type(info: FieldInfo) -> type[BaseModel] | None:
    """The model a field holds (itself or Optional), or None for a plain value."""
    annotation = _strip_optional(info.annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _field_at(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[FieldInfo | None, Any]:
    """The field a location falls in and the annotation at that location (descending into tuple items)."""
    model: type[BaseModel] | None = root
    info: FieldInfo | None = None
    annotation: Any = None
    for part in loc:
        if isinstance(part, str):
            if model is None or part not in model.model_fields:
                return None, None
            info = model.model_fields[part]
            annotation = _strip_optional(info.annotation)
            model = _section_type(info)
        else:
            model = None
            annotation = _strip_optional(annotation)
            args = typing.get_args(annotation)
            if typing.get_origin(annotation) is not tuple or not args:
                return None, None
            annotation = args[0] if len(args) == 2 and args[1] is Ellipsis else args[min(part, len(args) - 1)]
    return info, annotation


def _section_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    if not loc:
        return root
    info, _ = _field_at(root, loc)
    return _section_type(info) if info is not None else None


def _annotation_at(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    annotation = _field_at(root, loc)[1]
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return _strip_optional(annotation)


def _bounds_at(root: type[BaseModel], loc: tuple[Any, ...]) -> dict[str, Any]:
    """The bounds declared on the field (or tuple item) at `loc`: {"ge": 0, "le": 1}."""
    info, annotation = _field_at(root, loc)
    if info is None:
        return {}
    metadata = list(info.metadata) if not isinstance(loc[-1], int) else []
    while typing.get_origin(annotation) is Annotated:
        args = typing.get_args(annotation)
        annotation = args[0]
        for extra in args[1:]:
            metadata += extra.metadata if isinstance(extra, FieldInfo) else [extra]
    bounds: dict[str, Any] = {}
    for item in metadata:  # annotated_types' Ge(ge=0), Gt(gt=0), Le(le=1), Lt(lt=1)
        bounds.update({name: getattr(item, name) for name in ("ge", "gt", "le", "lt") if hasattr(item, name)})
    return bounds
