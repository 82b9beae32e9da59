"""Audit configuration: the YAML file parsed once, up front, into frozen dataclasses.

Every section and threshold is optional where the contract says so; unknown keys, wrong types and
impossible values raise ConfigError naming the dotted key, so a typo never silently disables a check.
Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from audit_tasks.errors import ConfigError
from audit_tasks.storage import StoragePath, is_remote, storage_path

# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetConfig:
    """Where manifests land, where images live, where the cumulative catalog is kept."""

    # Each may be an object-store URI (s3://, gs://, ...); see audit_tasks.storage.
    landing: StoragePath
    image_root: StoragePath
    catalog: StoragePath
    # Which rows the model checks audit: the rows this run ingested, or the whole catalog.
    audit_scope: Literal["run", "catalog"] = "run"
    # URI schemes an `image_uri` may use besides plain relative paths ("file" means local paths).
    allowed_schemes: tuple[str, ...] = ("file",)
    # Images larger than this many pixels are refused (decompression-bomb guard).
    max_image_pixels: int = 50_000_000
    min_image_side: int = 8


@dataclass(frozen=True)
class ModelConfig:
    """The classifier under audit and how to feed it."""

    arch: str
    checkpoint: StoragePath  # a file, or an object-store URI
    classes: tuple[str, ...]
    target_layer: str
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # TorchScript / torch.export archives can run arbitrary graph code: loading them is opt-in.
    allow_scripted: bool = False


@dataclass(frozen=True)
class SaliencyConfig:
    """How the Grad-CAM stage runs."""

    target: Literal["label", "prediction"] = "label"
    batch_size: int = 64
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = 2
    compile: bool = False


@dataclass(frozen=True)
class CooccurrenceCheck:
    """Thresholds of the co-occurrence balance check (see audit_tasks.cooccurrence for the rule)."""

    max_conditional: float = 0.9
    min_support: int = 30
    attributes: tuple[str, ...] | None = None  # default: the subgroup check's attributes
    min_lift: float = 1.5
    confidence: float = 0.95
    target_share: float = 0.2  # the curator's goal for "a without b" when suggesting images to add
    max_class_imbalance: float = 10.0  # largest / smallest label count


@dataclass(frozen=True)
class SaliencyCheck:
    """Thresholds of the saliency (shortcut) check (see audit_tasks.regions for the rule)."""

    max_spurious_share: float = 0.5
    min_spurious_enrichment: float = 3.0
    min_core_share: float = 0.3
    max_flagged_fraction: float = 0.25
    min_images: int = 20


@dataclass(frozen=True)
class SubgroupCheck:
    """Thresholds of the subgroup performance check (see audit_tasks.subgroups for the rule)."""

    attributes: tuple[str, ...] = ()
    intersections: bool = True
    metric: Literal["accuracy", "recall", "tpr", "fpr", "precision", "macro_recall", "macro_precision"] = "accuracy"
    max_gap: float = 0.05
    min_group_size: int = 30
    confidence: float = 0.95
    # The class whose recall/TPR/FPR/precision is judged; default: the second of model.classes.
    positive_class: str | None = None
    # How the gap test's confidence is shared among comparisons: bonferroni over every pair of judgeable
    # groups (no false alarm from testing many groups), or none (each comparison at `confidence`; more alarms).
    multiple_comparisons: Literal["bonferroni", "none"] = "bonferroni"
    # Bootstrap resamples per group for the macro metrics' intervals (more: steadier intervals, slower).
    n_bootstrap: int = 2000


@dataclass(frozen=True)
class IngestCheck:
    """Thresholds on the ingest itself: too much bad input fails the audit."""

    max_quarantine_fraction: float = 0.1


@dataclass(frozen=True)
class ChecksConfig:
    """Each check is None when its section is absent: the check is skipped and the report says so."""

    cooccurrence: CooccurrenceCheck | None = None
    saliency: SaliencyCheck | None = None
    subgroups: SubgroupCheck | None = None
    ingest: IngestCheck | None = None
    # A verdict needs evidence: fewer audited images than this make the run inconclusive, never passed.
    min_audited: int = 1

    def cooccurrence_attributes(self) -> tuple[str, ...]:
        """Attributes for the co-occurrence check: its own list, else the subgroup check's."""
        if self.cooccurrence is not None and self.cooccurrence.attributes is not None:
            return self.cooccurrence.attributes
        return self.subgroups.attributes if self.subgroups is not None else ()


@dataclass(frozen=True)
class OutputConfig:
    dir: StoragePath = Path("audit_reports")  # a folder, or an object-store URI


@dataclass(frozen=True)
class AuditConfig:
    """The whole parsed config. `dataset` and `model` are None for the check-only commands."""

    dataset: DatasetConfig | None = None
    model: ModelConfig | None = None
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: Path | None = None  # the file it was read from, for messages

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


#: Defaults used when a check command gets no config at all: every check on, with its defaults.
def default_checks() -> ChecksConfig:
    return ChecksConfig(
        cooccurrence=CooccurrenceCheck(),
        saliency=SaliencyCheck(),
        subgroups=SubgroupCheck(),
        ingest=IngestCheck(),
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_PATH_FIELDS = {"landing", "image_root", "catalog", "checkpoint", "dir"}
#: Keys of `checks` that are plain values, not check sections.
_CHECKS_SCALARS = {"min_audited"}


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None, *,
                checks_only: bool = False) -> AuditConfig:
    """Read, parse and validate a YAML config; `overrides` maps dotted keys to values (Airflow params).

    With `checks_only`, only the `checks` section is parsed (the standalone check commands need no
    dataset or model); unknown top-level keys are still refused.
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
        _reject_unknown(raw, AuditConfig, "", str(config_path), skip={"source"})
        raw = {"checks": raw.get("checks")}
    return parse_config(raw, base_dir=config_path.resolve().parent, source=config_path)


def parse_config(raw: Mapping[str, Any], *, base_dir: Path, source: Path | None = None) -> AuditConfig:
    """Build an AuditConfig from an already-loaded mapping (paths relative to `base_dir`)."""
    where = str(source) if source else "config"
    _reject_unknown(raw, AuditConfig, "", where, skip={"source"})
    sections: dict[str, Any] = {"source": source}
    if raw.get("dataset") is not None:
        sections["dataset"] = _build(DatasetConfig, raw["dataset"], "dataset", where, base_dir)
    if raw.get("model") is not None:
        sections["model"] = _build(ModelConfig, raw["model"], "model", where, base_dir)
    if raw.get("saliency") is not None:
        sections["saliency"] = _build(SaliencyConfig, raw["saliency"], "saliency", where, base_dir)
    if raw.get("output") is not None:
        sections["output"] = _build(OutputConfig, raw["output"], "output", where, base_dir)
    else:
        sections["output"] = OutputConfig(dir=(base_dir / "audit_reports"))
    checks_raw = raw.get("checks")
    if checks_raw is not None:
        if not isinstance(checks_raw, dict):
            raise ConfigError(f"{where}: 'checks' must be a mapping")
        _reject_unknown(checks_raw, ChecksConfig, "checks.", where)
        checks = {}
        for name, value in checks_raw.items():
            if name in _CHECKS_SCALARS:
                checks[name] = _coerce(value, _field_types(ChecksConfig)[name], f"checks.{name}", where)
                continue
            check_type = _field_types(ChecksConfig)[name]
            cls = _strip_optional(check_type)
            checks[name] = _build(cls, value if value is not None else {}, f"checks.{name}", where, base_dir)
        sections["checks"] = ChecksConfig(**checks)
    config = AuditConfig(**sections)
    _validate(config, where)
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


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if _is_union(tp) and len(args) == 1:
        return args[0]
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _reject_unknown(raw: Mapping[str, Any], cls: type, prefix: str, where: str, skip: set[str] = frozenset()) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)} - set(skip)
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key '{prefix}{key}' (known keys here: {', '.join(sorted(known))})"
            )


def _build(cls: type, raw: Any, prefix: str, where: str, base_dir: Path) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: '{prefix}' must be a mapping, got {type(raw).__name__}")
    _reject_unknown(raw, cls, prefix + ".", where)
    hints = _field_types(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ConfigError(f"{where}: missing required key '{key}'")
            continue
        value = _coerce(raw[f.name], hints[f.name], key, where)
        if f.name in _PATH_FIELDS and isinstance(value, Path) and not value.is_absolute():  # URIs stay as given
            value = (base_dir / value).resolve()
        values[f.name] = value
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists to tuples, str to Path)."""
    if tp == StoragePath:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: '{key}' must be a path or URI string, got {value!r}")
        try:
            return storage_path(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: '{key}': {exc}") from None
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: '{key}' has an invalid value {value!r}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{where}: '{key}' must be one of {', '.join(map(str, allowed))}; got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: '{key}' must have exactly {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: '{key}' must be a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: '{key}' has an unsupported type")  # pragma: no cover - schema bug


def _validate(config: AuditConfig, where: str) -> None:
    """Checks that span fields or bound values: impossible thresholds are errors, not surprises."""

    def fraction(key: str, value: float, *, open_low: bool = False) -> None:
        low_ok = value > 0 if open_low else value >= 0
        if not (low_ok and value <= 1):
            raise ConfigError(f"{where}: '{key}' must be a fraction in {'(0' if open_low else '[0'}, 1]; got {value}")

    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{where}: '{key}' must be positive; got {value}")

    if config.dataset is not None:
        d = config.dataset
        if not is_remote(d.landing) and not d.landing.is_dir():  # a remote landing is listed at ingest
            raise ConfigError(f"{where}: 'dataset.landing' folder does not exist: {d.landing}")
        if not is_remote(d.image_root) and not d.image_root.is_dir():
            raise ConfigError(f"{where}: 'dataset.image_root' folder does not exist: {d.image_root}")
        for scheme in d.allowed_schemes:
            if scheme not in {"file", "s3", "gs", "gcs", "az", "abfs", "memory", "http", "https"}:
                raise ConfigError(f"{where}: 'dataset.allowed_schemes' has unsupported scheme {scheme!r}")
        positive("dataset.max_image_pixels", d.max_image_pixels)
        positive("dataset.min_image_side", d.min_image_side)
    if config.model is not None:
        m = config.model
        if not m.classes:
            raise ConfigError(f"{where}: 'model.classes' must list at least one class")
        if len(set(m.classes)) != len(m.classes):
            raise ConfigError(f"{where}: 'model.classes' has duplicate class names")
        if not is_remote(m.checkpoint) and not m.checkpoint.is_file():  # a remote one is checked when loaded
            raise ConfigError(f"{where}: 'model.checkpoint' file does not exist: {m.checkpoint}")
        positive("model.input_size", m.input_size)
        for i, s in enumerate(m.std):
            positive(f"model.std[{i}]", s)
    s = config.saliency
    positive("saliency.batch_size", s.batch_size)
    if s.num_workers < 0:
        raise ConfigError(f"{where}: 'saliency.num_workers' must be >= 0; got {s.num_workers}")
    if not (s.device in {"auto", "cpu", "cuda", "mps"} or (s.device.startswith("cuda:") and s.device[5:].isdigit())):
        raise ConfigError(f"{where}: 'saliency.device' must be auto, cpu, cuda or cuda:N; got {s.device!r}")
    c = config.checks
    if c.cooccurrence is not None:
        fraction("checks.cooccurrence.max_conditional", c.cooccurrence.max_conditional, open_low=True)
        for key, value in (("confidence", c.cooccurrence.confidence), ("target_share", c.cooccurrence.target_share)):
            if not 0 < value < 1:
                raise ConfigError(f"{where}: 'checks.cooccurrence.{key}' must be strictly between 0 and 1; got {value}")
        positive("checks.cooccurrence.min_support", c.cooccurrence.min_support)
        if c.cooccurrence.min_lift < 1:
            raise ConfigError(f"{where}: 'checks.cooccurrence.min_lift' must be >= 1; got {c.cooccurrence.min_lift}")
        if c.cooccurrence.max_class_imbalance < 1:
            raise ConfigError(
                f"{where}: 'checks.cooccurrence.max_class_imbalance' must be >= 1; got {c.cooccurrence.max_class_imbalance}"
            )
    if c.saliency is not None:
        fraction("checks.saliency.max_spurious_share", c.saliency.max_spurious_share)
        fraction("checks.saliency.min_core_share", c.saliency.min_core_share)
        fraction("checks.saliency.max_flagged_fraction", c.saliency.max_flagged_fraction)
        positive("checks.saliency.min_spurious_enrichment", c.saliency.min_spurious_enrichment)
        if c.saliency.min_images < 1:
            raise ConfigError(f"{where}: 'checks.saliency.min_images' must be >= 1; got {c.saliency.min_images}")
    if c.subgroups is not None:
        fraction("checks.subgroups.max_gap", c.subgroups.max_gap)
        fraction("checks.subgroups.confidence", c.subgroups.confidence, open_low=True)
        if c.subgroups.confidence >= 1:
            raise ConfigError(f"{where}: 'checks.subgroups.confidence' must be below 1; got {c.subgroups.confidence}")
        if c.subgroups.min_group_size < 1:
            raise ConfigError(
                f"{where}: 'checks.subgroups.min_group_size' must be >= 1; got {c.subgroups.min_group_size}"
            )
        if not 100 <= c.subgroups.n_bootstrap <= 100_000:
            raise ConfigError(
                f"{where}: 'checks.subgroups.n_bootstrap' must be between 100 and 100000; got {c.subgroups.n_bootstrap}"
            )
    if (c.subgroups is not None and c.subgroups.positive_class is not None and config.model is not None
            and c.subgroups.positive_class not in config.model.classes):
        raise ConfigError(
            f"{where}: 'checks.subgroups.positive_class' {c.subgroups.positive_class!r} is not one of model.classes"
        )
    if c.min_audited < 0:
        raise ConfigError(f"{where}: 'checks.min_audited' must be >= 0; got {c.min_audited}")
    if c.ingest is not None:
        fraction("checks.ingest.max_quarantine_fraction", c.ingest.max_quarantine_fraction)
