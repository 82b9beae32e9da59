"""DAG params: the config path, every threshold and the policy, JSON-schema validated, turned into config
overrides.

Each threshold param defaults to null, meaning "use the config file's value"; a number typed in the
trigger form overrides exactly one dotted config key. Each threshold's schema (type, bounds, enum) and
description are those of its field in `audit_tasks.config`'s pydantic models, made nullable, so the form
refuses exactly what the config refuses, before any task runs. DAG files may not import `audit_tasks`
(the parse budget), so the params read the models' field schemas from the generated
`audit_airflow.threshold_schemas`; tests/test_dags.py fails when that copy differs from the models.
Regenerate it with `python -c "from audit_airflow.params import write_field_schemas; write_field_schemas()"`.

The policy's baseline, tiers and allowed increases are params too (section "Policy"), so a manual run can
be judged without a baseline or with a check demoted to a warning. Waivers are not: a waiver carries an
owner, a reason and an expiry that belong in the reviewed config file, not in a one-off form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.sdk import Param

from audit_airflow import compat
from audit_airflow.threshold_schemas import FIELD_SCHEMAS

__all__ = [
    "POLICY_KEYS",
    "POLICY_SETTINGS",
    "RUN_ID_PATTERN",
    "THRESHOLDS",
    "Threshold",
    "audit_params",
    "config_overrides",
    "config_param",
    "field_schemas",
    "nullable",
    "write_field_schemas",
]

#: audit_tasks.run_ids.RUN_ID_PATTERN, mirrored: DAG parsing may not import audit_tasks (a test holds them equal).
RUN_ID_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"

#: The JSON-schema keywords a threshold param takes from its config field (not title, default, ...).
_VALIDATION_KEYWORDS = (
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "multipleOf",
    "items",
    "additionalProperties",
)
#: The policy keys a trigger may override (waivers stay in the reviewed config file: see above).
POLICY_KEYS = ("policy.baseline", "policy.max_increase", "policy.warn")


@dataclass(frozen=True)
class Threshold:
    """One overridable threshold: its param name, the dotted config key and its (nullable) JSON schema."""

    param: str
    key: str
    schema: Mapping[str, Any]
    description: str

    @property
    def section(self) -> str:
        """The trigger form groups params by check, and the policy's apart."""
        if self.key.startswith("policy."):
            return "Policy"
        return "Threshold overrides: " + self.key.split(".")[1]


def nullable(field: Mapping[str, Any]) -> dict[str, Any]:
    """A config field's JSON schema as a param's: its validation keywords, with null allowed (null means
    "use the config file's value"). An optional field's `anyOf: [X, null]` becomes X's keywords."""
    branches = [b for b in field.get("anyOf", [field]) if b.get("type") != "null"]
    if len(branches) != 1 or "type" not in branches[0]:
        raise ValueError(f"no single JSON type to make nullable in {dict(field)!r}")
    merged = {**{k: v for k, v in field.items() if k != "anyOf"}, **branches[0]}
    schema = {k: merged[k] for k in _VALIDATION_KEYWORDS if k in merged}
    schema["type"] = ["null", schema["type"]]
    if "enum" in schema:
        schema["enum"] = [None, *schema["enum"]]
    return schema


def _param_name(key: str) -> str:
    """`checks.saliency.min_images` -> `saliency_min_images`; `checks.min_audited` -> `min_audited`;
    `policy.baseline` -> `policy_baseline`."""
    return key.removeprefix("checks.").replace(".", "_")


#: Every threshold of the config's `checks` section (its scalars: numbers and choices, not lists or
#: switches), in the models' order. A threshold added to the models appears once the schemas are regenerated.
THRESHOLDS: tuple[Threshold, ...] = tuple(
    Threshold(_param_name(key), key, nullable(field), field.get("description", key))
    for key, field in FIELD_SCHEMAS.items()
    if key.startswith("checks.")
)
#: The policy settings a trigger may override (POLICY_KEYS), as params of their own section.
POLICY_SETTINGS: tuple[Threshold, ...] = tuple(
    Threshold(_param_name(key), key, nullable(FIELD_SCHEMAS[key]), FIELD_SCHEMAS[key].get("description", key))
    for key in POLICY_KEYS
)
_BY_PARAM = {t.param: t for t in (*THRESHOLDS, *POLICY_SETTINGS)}


def field_schemas() -> dict[str, dict[str, Any]]:
    """Every threshold's field schema, fresh from audit_tasks.config (imports it: never at DAG parse time)."""
    from audit_tasks.config import dotted_keys, field_schema

    schemas = {key: field_schema(key) for key in dotted_keys() if key.startswith("checks.")}
    thresholds = {key: f for key, f in schemas.items() if _json_type(f) in {"number", "integer", "string"}}
    return thresholds | {key: field_schema(key) for key in POLICY_KEYS}


def _json_type(field: Mapping[str, Any]) -> str | None:
    types = [b.get("type") for b in field.get("anyOf", [field]) if b.get("type") != "null"]
    return types[0] if len(types) == 1 else None


def write_field_schemas(path: Path | None = None) -> Path:
    """Regenerate `audit_airflow/threshold_schemas.py` from the config models; returns the file written."""
    target = path or Path(__file__).with_name("threshold_schemas.py")
    body = "".join(
        f"    {key!r}: {{\n" + "".join(f"        {name!r}: {value!r},\n" for name, value in field.items()) + "    },\n"
        for key, field in field_schemas().items()
    )
    target.write_text(
        '"""JSON schemas of the config\'s thresholds, generated from audit_tasks.config\'s models: do not edit.\n\n'
        "The DAG params are built from them (see audit_airflow.params). Regenerate:\n"
        'python -c "from audit_airflow.params import write_field_schemas; write_field_schemas()"\n'
        '"""\n\n'
        "from typing import Any\n\n"
        f"FIELD_SCHEMAS: dict[str, dict[str, Any]] = {{\n{body}}}\n",
        encoding="utf-8",
    )
    return target


def config_param(description: str) -> Param:
    """The `config` param both DAGs take: the audit YAML, by default `[audit] config`."""
    return Param(compat.default_config_path(), type="string", minLength=1, title="Config file", description=description)


def audit_params() -> dict[str, Param]:
    """The `params` of `dataset_audit`: config path, run id, shard size, then one param per threshold."""
    params: dict[str, Param] = {
        "config": config_param("Path of the audit YAML config, as seen by the workers."),
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
    for t in (*THRESHOLDS, *POLICY_SETTINGS):
        params[t.param] = Param(
            None,
            description=f"{t.description} Empty: use the config file's `{t.key}`.",
            title=t.key,
            section=t.section,
            **dict(t.schema),
        )
    return params


def config_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from the run's params: every non-null threshold or policy setting, nothing else."""
    overrides: dict[str, Any] = {}
    for name, value in params.items():
        threshold = _BY_PARAM.get(name)
        if threshold is None or value is None:
            continue
        overrides[threshold.key] = value
    return overrides
