"""audit_tasks: audit image datasets and image classifiers for bias, inside the pipelines that feed retraining.

The package never imports Airflow: the CLI and the Airflow DAGs are thin shells over `audit_tasks.pipeline`.
"""

from audit_tasks.config import AuditConfig, load_config
from audit_tasks.errors import (
    AuditError,
    ConfigError,
    ImageError,
    ManifestError,
    ModelError,
    PathEscapeError,
)
from audit_tasks.gates import GateResult, Verdict

__all__ = [
    "AuditConfig",
    "AuditError",
    "ConfigError",
    "GateResult",
    "ImageError",
    "ManifestError",
    "ModelError",
    "PathEscapeError",
    "Verdict",
    "load_config",
]
__version__ = "0.1.0"
