"""The run-id rule, in one place: a run id names the run folder, the catalog part and the ledger rows.

One pattern serves every place that checks an id: the stage functions and the CLI (`check_run_id`),
ingest, the Airflow `run_id` param (a JSON-schema `pattern`, so it is written in the regex syntax that
Python and JavaScript share) and the reports page (`is_run_id`). Python code matches the whole string
(`fullmatch`), so a trailing newline, which `$` alone would let through, is refused.
"""

from __future__ import annotations

import re

from audit_tasks.errors import ConfigError

__all__ = ["MSG_BAD_RUN_ID", "RUN_ID_PATTERN", "check_run_id", "is_run_id"]

#: A plain folder name: a letter or digit, then letters, digits and `.`, `_`, `+`, `-`; at most 128
#: characters; no `..` anywhere. Nothing that could leave the output folder, hide a file, or need quoting
#: in a URL, a shell or an object-store key.
RUN_ID_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"

MSG_BAD_RUN_ID = (
    "run id {run_id!r} is not usable as a folder name: use letters, digits, '.', '_', '+', '-' "
    "(at most 128 characters, not starting with '.', no '..')"
)

_RUN_ID = re.compile(RUN_ID_PATTERN)


def is_run_id(value: object) -> bool:
    """Whether `value` is a string that follows the run-id rule (the whole string: no trailing newline)."""
    return isinstance(value, str) and _RUN_ID.fullmatch(value) is not None


def check_run_id(run_id: str) -> str:
    """`run_id` unchanged, or ConfigError saying what a run id may contain."""
    if not is_run_id(run_id):
        raise ConfigError(MSG_BAD_RUN_ID.format(run_id=run_id))
    return run_id
