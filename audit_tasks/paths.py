"""Paths and URIs confined to a root: a manifest row can never make the audit read outside its image root.

Two checks, because either alone can be fooled: the path is first normalised lexically (so `../..` cannot
climb out), then its real path is resolved (so a symlink inside the root cannot point outside it).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from audit_tasks.errors import PathEscapeError
from audit_tasks.storage import StoragePath, filesystem, is_remote, public_uri, scheme_of

if TYPE_CHECKING:
    from upath import UPath

#: Schemes that name a file on this machine; "file" in `allowed_schemes` also admits absolute paths.
_LOCAL_SCHEMES = frozenset({"", "file"})


def resolve_under(root: StoragePath, uri: str, *, allowed_schemes: Sequence[str] = ("file",)) -> StoragePath:
    """Resolve `uri` (relative path, absolute path, `file://` or object-store URI) to a location inside `root`.

    Relative paths are always allowed; absolute paths and `file://` URIs only when "file" is in
    `allowed_schemes`; an object-store URI (`s3://bucket/images/a.jpg`) only when its scheme is in
    `allowed_schemes` and it lies under an object-store `root`, and is then returned as `root / rest`, so it
    is opened with the root's filesystem (in Airflow: the connection's credentials). Local paths must stay
    under `root` after resolving symlinks. The file need not exist (probing it is the caller's next step).

    Raises:
        PathEscapeError: empty URI, a scheme not allowed, or a path that leaves `root`.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise PathEscapeError("image URI is empty")
    text = uri.strip()
    if "\x00" in text:
        raise PathEscapeError(f"path {uri!r} contains a NUL byte")
    scheme = scheme_of(text)
    allowed = {s.lower() for s in allowed_schemes}
    if scheme not in _LOCAL_SCHEMES:
        if scheme not in allowed:
            raise PathEscapeError(
                f"URI scheme '{scheme}://' is not allowed in {uri!r} (allowed: {', '.join(sorted(allowed)) or 'none'};"
                " plain relative paths are always allowed)"
            )
        if not is_remote(root) or scheme not in _protocols(root):
            raise PathEscapeError(f"URI {uri!r} is not under the image root {public_uri(root)}")
        # Compared as the filesystem's own paths: no connection id (s3://conn@bucket/...), one spelling.
        fs, root_path = filesystem(root)
        given = fs._strip_protocol(public_uri(text))
        prefix = root_path.rstrip("/") + "/"
        if not given.startswith(prefix):
            raise PathEscapeError(f"URI {uri!r} is not under the image root {public_uri(root)}")
        return safe_child(root, given[len(prefix) :])
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise PathEscapeError(f"file URI {uri!r} names another host ({parts.netloc!r})")
        text = unquote(parts.path)
        if not text:
            raise PathEscapeError(f"file URI {uri!r} has no path")
    candidate = Path(text)
    if candidate.is_absolute() and "file" not in allowed:
        raise PathEscapeError(f"absolute path {uri!r} is not allowed ('file' is not in allowed_schemes)")
    if is_remote(root):
        if candidate.is_absolute():
            raise PathEscapeError(f"local path {uri!r} is not under the object-store image root {root}")
        return safe_child(root, text)
    return _confine(Path(root), candidate, uri)


def safe_child(root: StoragePath, name: str) -> StoragePath:
    """`root / name` for writing, refusing absolute names and names that climb or link out of `root`.

    An object-store root has no symlinks: there the name is checked lexically (no `..` may climb out).
    """
    if not name or Path(name).is_absolute() or "\x00" in name:
        raise PathEscapeError(f"{name!r} must be a non-empty relative path under {root}")
    if is_remote(root):
        normal = posixpath.normpath(name)
        if normal == ".." or normal.startswith("../") or ":" in normal.split("/", 1)[0]:
            raise PathEscapeError(f"{name!r} would leave {public_uri(root)}")
        try:
            return root / normal
        except ValueError as exc:  # e.g. a name UPath reads as another protocol
            raise PathEscapeError(f"{name!r} cannot name an object under {public_uri(root)}: {exc}") from None
    return _confine(Path(root), Path(name), name)


def is_under(path: Path, root: Path) -> bool:
    """True when the real path of `path` is `root` itself or inside it."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    return real == real_root or real.is_relative_to(real_root)


def _confine(root: Path, candidate: Path, shown: str) -> Path:
    real_root = Path(os.path.realpath(root))
    lexical_root = Path(os.path.abspath(root))
    joined = candidate if candidate.is_absolute() else lexical_root / candidate
    lexical = Path(os.path.normpath(joined))
    # An absolute path may name the root by its real path or by the path it was configured with.
    if not (lexical.is_relative_to(lexical_root) or lexical.is_relative_to(real_root)):
        raise PathEscapeError(f"path {shown!r} leaves the image root {root} (resolves to {lexical})")
    real = Path(os.path.realpath(lexical))
    if not (real == real_root or real.is_relative_to(real_root)):
        raise PathEscapeError(f"path {shown!r} leaves the image root {root} through a symlink (real path {real})")
    return real


def _protocols(root: UPath) -> set[str]:
    """The URI schemes that name `root`'s filesystem (s3 and s3a, gs and gcs, ...)."""
    protocol = filesystem(root)[0].protocol
    return {p.lower() for p in ((protocol,) if isinstance(protocol, str) else protocol)}
