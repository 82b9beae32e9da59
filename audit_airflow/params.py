"""DAG params: the config path and every threshold, JSON-schema validated, turned into config overrides.

Each threshold param defaults to null, meaning "use the config file's value"; a number typed in the
trigger form overrides exactly one dotted config key. The schema bounds mirror the ones
`audit_tasks.config` enforces, so a bad value is refused by the form before any task runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk import Param

from audit_airflow import compat

__all__ = ["RUN_ID_PATTERN", "THRESHOLDS", "Threshold", "audit_params", "config_overrides"]

#: Same rule as audit_tasks.pipeline.check_run_id: a plain folder name.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"


@dataclass(frozen=True)
class Threshold:
    """One overridable threshold: its param name, the dotted config key and its JSON schema."""

    param: str
    key: str
    schema: Mapping[str, Any]
    description: str

    @property
    def section(self) -> str:
        """The trigger form groups params by check."""
        return "Threshold overrides: " + self.key.split(".")[1]


_FRACTION = {"type": ["null", "number"], "minimum": 0, "maximum": 1}
_OPEN_FRACTION = {"type": ["null", "number"], "exclusiveMinimum": 0, "maximum": 1}
_OPEN_UNIT = {"type": ["null", "number"], "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_POSITIVE = {"type": ["null", "number"], "exclusiveMinimum": 0}
_AT_LEAST_ONE = {"type": ["null", "number"], "minimum": 1}
_COUNT = {"type": ["null", "integer"], "minimum": 1}

#: Every threshold in the config's `checks` section (see audit_tasks.config for their meaning).
THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("cooccurrence_max_conditional", "checks.cooccurrence.max_conditional", _OPEN_FRACTION,
              "Largest allowed P(b | a) for a tag or attribute pair."),
    Threshold("cooccurrence_min_support", "checks.cooccurrence.min_support", _COUNT,
              "Pairs seen fewer times than this are not judged."),
    Threshold("cooccurrence_min_lift", "checks.cooccurrence.min_lift", _AT_LEAST_ONE,
              "A pair is flagged only when its lift is at least this."),
    Threshold("cooccurrence_confidence", "checks.cooccurrence.confidence", _OPEN_UNIT,
              "Confidence level of the co-occurrence interval."),
    Threshold("cooccurrence_target_share", "checks.cooccurrence.target_share", _OPEN_FRACTION,
              "Curator's goal for 'a without b' when suggesting images to add."),
    Threshold("cooccurrence_max_class_imbalance", "checks.cooccurrence.max_class_imbalance", _AT_LEAST_ONE,
              "Largest allowed ratio of the biggest to the smallest class."),
    Threshold("saliency_max_spurious_share", "checks.saliency.max_spurious_share", _FRACTION,
              "Largest allowed share of Grad-CAM energy on spurious regions."),
    Threshold("saliency_min_spurious_enrichment", "checks.saliency.min_spurious_enrichment", _POSITIVE,
              "A spurious region is suspicious when its share exceeds its area this many times."),
    Threshold("saliency_min_core_share", "checks.saliency.min_core_share", _FRACTION,
              "Smallest acceptable share of Grad-CAM energy on the object itself."),
    Threshold("saliency_max_flagged_fraction", "checks.saliency.max_flagged_fraction", _FRACTION,
              "Largest allowed fraction of a class's images flagged as shortcuts."),
    Threshold("saliency_min_images", "checks.saliency.min_images", _COUNT,
              "Classes with fewer audited images are not judged."),
    Threshold("subgroups_max_gap", "checks.subgroups.max_gap", _FRACTION,
              "Largest allowed metric gap between a group and the best group."),
    Threshold("subgroups_min_group_size", "checks.subgroups.min_group_size", _COUNT,
              "Groups smaller than this are reported but not judged."),
    Threshold("subgroups_confidence", "checks.subgroups.confidence", _OPEN_UNIT,
              "Confidence level of the subgroup intervals."),
    Threshold("subgroups_metric", "checks.subgroups.metric",
              {"type": ["null", "string"],
               "enum": [None, "accuracy", "recall", "tpr", "fpr", "precision", "macro_recall", "macro_precision"]},
              "Metric compared across subgroups."),
    Threshold("subgroups_positive_class", "checks.subgroups.positive_class", {"type": ["null", "string"], "minLength": 1},
              "Class whose recall/TPR/FPR/precision is judged (one of model.classes)."),
    Threshold("subgroups_multiple_comparisons", "checks.subgroups.multiple_comparisons",
              {"type": ["null", "string"], "enum": [None, "bonferroni", "none"]},
              "bonferroni: share the confidence over every pair of groups (fewer false alarms); none: do not."),
    Threshold("subgroups_n_bootstrap", "checks.subgroups.n_bootstrap",
              {"type": ["null", "integer"], "minimum": 100, "maximum": 100000},
              "Bootstrap resamples per group for the macro metrics' intervals."),
    Threshold("min_audited", "checks.min_audited", {"type": ["null", "integer"], "minimum": 0},
              "Fewer audited images than this make the run inconclusive (never green, no retraining)."),
    Threshold("ingest_max_quarantine_fraction", "checks.ingest.max_quarantine_fraction", _FRACTION,
              "Largest allowed fraction of input rows sent to quarantine."),
)

_BY_PARAM = {t.param: t for t in THRESHOLDS}


def audit_params() -> dict[str, Param]:
    """The `params` of `dataset_audit`: config path, run id, shard size, then one param per threshold."""
    params: dict[str, Param] = {
        "config": Param(
            compat.default_config_path(),
            type="string",
            minLength=1,
            title="Config file",
            description="Path of the audit YAML config, as seen by the workers.",
        ),
        "run_id": Param(
            None,
            type=["null", "string"],
            pattern=RUN_ID_PATTERN,
            title="Audit run id",
            description="Folder name of this audit under output.dir. Empty: derived from the Airflow run id.",
        ),
        "shard_size": Param(
            compat.default_shard_size(),
            type="integer",
            minimum=1,
            title="Images per shard",
            description="The saliency stage runs as one mapped task per shard of this many images.",
        ),
    }
    for t in THRESHOLDS:
        params[t.param] = Param(
            None,
            description=f"{t.description} Empty: use the config file's `{t.key}`.",
            title=t.key,
            section=t.section,
            **dict(t.schema),
        )
    return params


def config_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from the run's params: every non-null threshold, nothing else."""
    overrides: dict[str, Any] = {}
    for name, value in params.items():
        threshold = _BY_PARAM.get(name)
        if threshold is None or value is None:
            continue
        overrides[threshold.key] = value
    return overrides
