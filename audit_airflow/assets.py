"""The asset a passing audit emits; `retrain_on_clean_audit` is scheduled on it.

A logical URI (not a file) because the event means "the dataset passed its audit", wherever the
reports live; the event's extra carries the run's summary, including the report path.
"""

from __future__ import annotations

from airflow.sdk import Asset

#: Emitted by `dataset_audit`'s final `gate` task only when every gate passed.
AUDIT_CLEAN = Asset(name="dataset_audit_clean", uri="audit://dataset_audit/clean", group="audit")

__all__ = ["AUDIT_CLEAN"]
