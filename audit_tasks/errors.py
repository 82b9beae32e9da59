"""The error hierarchy: every failure a user can fix is an AuditError whose message says what and where."""

from __future__ import annotations


class AuditError(Exception):
    """Base of every error the audit raises on purpose; the CLI maps it to exit status 2."""


class ConfigError(AuditError):
    """The config file is missing, malformed, or has an unknown/invalid key (the message names the key)."""


class ManifestError(AuditError):
    """A manifest cannot be read or lacks a required column (the message names the file)."""


class ModelError(AuditError):
    """The model cannot be built or loaded safely (the message names the checkpoint or layer)."""


class ImageError(AuditError):
    """One image cannot be used; the row carrying it is quarantined with this message as the reason."""


class PathEscapeError(AuditError):
    """A path or URI points outside the root it must stay under."""
