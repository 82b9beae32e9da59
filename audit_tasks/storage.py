"""Where the landing area, the catalog and the run folders live: a local folder or any fsspec store.

A location is a `pathlib.Path` (local disk, the default) or a `upath.UPath` for a URI fsspec understands
(`s3://bucket/audits`, `gs://...`, `memory://...`). Both speak the pathlib API (`/`, `exists`, `iterdir`,
`read_text`, ...), so the stages are written once; this module holds the few operations where the two
differ: Parquet I/O through pyarrow, atomic writes, opening images, locks. The Airflow layer hands in
Airflow's `ObjectStoragePath` (a `UPath` proxy bound to a connection); `storage_path` unwraps it to the
`UPath` inside, which holds the connection's filesystem.

Atomic writes: a local file is written aside in its folder, fsynced and renamed over the target; an object
is written to a local temporary file first and then uploaded in one `put` (an object store shows an object
only once its upload completes, and a failed multipart upload is aborted), so a reader never sees half.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from typing_extensions import TypeIs
from upath import UPath

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: A local `Path` or an fsspec-backed `UPath` (Airflow's `ObjectStoragePath`, a proxy of one, included).
StoragePath = Path | UPath

#: Schemes that mean this machine's disk.
_LOCAL_SCHEMES = frozenset({"", "file", "local"})

__all__ = [
    "FileOpener",
    "StoragePath",
    "atomic_path",
    "exclusive_lock",
    "filesystem",
    "is_remote",
    "open_input",
    "parquet_file",
    "parquet_rows",
    "parquet_schema",
    "public_uri",
    "read_parquet",
    "scheme_of",
    "storage_path",
]


def scheme_of(text: str) -> str:
    """The URI scheme of `text` in lower case, or "" for a plain path (RFC 3986: a letter, then letters,
    digits, '+', '-' or '.')."""
    head, sep, _ = text.partition("://")
    if not sep or not head or not head[0].isalpha() or not all(c.isalnum() or c in "+-." for c in head):
        return ""
    return head.lower()


def storage_path(value: str | os.PathLike[str] | StoragePath) -> StoragePath:
    """A location from a config value: plain paths and file:// URIs give a `Path`, other URIs a `UPath`."""
    if isinstance(value, Path):
        return value
    if _is_upath(value):
        # Airflow's ObjectStoragePath proxies a UPath that holds the connection's filesystem and whose text
        # has no connection id: the stages work on that one.
        inner: UPath = getattr(value, "__wrapped__", value)
        if getattr(inner, "protocol", "") in _LOCAL_SCHEMES:
            return Path(inner.path)
        return inner
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    scheme = scheme_of(text)
    if not scheme:
        return Path(text)
    if scheme in _LOCAL_SCHEMES:  # file:///data/x, file://localhost/data/x, local:///data/x
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text!r} names another host ({parts.netloc!r}); use a path on this machine")
        return Path(unquote(parts.path))
    return UPath(text)


def is_remote(path: StoragePath) -> TypeIs[UPath]:
    """True for object-store locations (anything that is not a local `Path`); narrows to `UPath`."""
    return not isinstance(path, Path)


def public_uri(path: StoragePath | str) -> str:
    """The location as text for tables, summaries and messages: a path, or a URI without any connection id
    (Airflow writes `s3://conn_id@bucket/key`; the object is `s3://bucket/key` for every reader)."""
    text = str(path)
    if scheme_of(text) in _LOCAL_SCHEMES:
        return text
    scheme, _, rest = text.partition("://")
    authority, slash, tail = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{tail}" if "@" in authority else text


def filesystem(path: UPath) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and the path within it (for an Airflow proxy: its connection-bound filesystem)."""
    target = getattr(path, "__wrapped__", path)  # ObjectStoragePath wraps a UPath that holds the authenticated fs
    return target.fs, target.path


def _arrow_source(path: StoragePath) -> dict[str, Any]:
    if isinstance(path, Path):
        return {"source": str(path)}
    fs, inner = filesystem(path)
    return {"source": inner, "filesystem": fs}


def read_parquet(path: StoragePath, columns: Sequence[str] | None = None, **options: Any) -> pa.Table:
    """`pq.read_table` on a local or remote file (only `columns`, when given)."""
    source = _arrow_source(path)
    return pq.read_table(
        source.pop("source"), columns=list(columns) if columns is not None else None, **source, **options
    )


def parquet_schema(path: StoragePath) -> pa.Schema:
    """The Arrow schema of a Parquet file, read from its footer only."""
    source = _arrow_source(path)
    return pq.read_schema(source.pop("source"), **source)


def parquet_rows(path: StoragePath) -> int:
    """The row count of a Parquet file, read from its footer only."""
    source = _arrow_source(path)
    return int(pq.read_metadata(source.pop("source"), **source).num_rows)


def parquet_file(path: StoragePath) -> pq.ParquetFile:
    """A `ParquetFile` for reading row groups or batches one at a time (memory stays bounded)."""
    source = _arrow_source(path)
    return pq.ParquetFile(source.pop("source"), **source)


def open_input(path: StoragePath) -> Any:
    """A source Arrow's readers take (CSV, JSON, Parquet): the local path, or a seekable remote file."""
    if isinstance(path, Path):
        return str(path)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, inner = filesystem(path)
    return PyFileSystem(FSSpecHandler(fs)).open_input_file(inner)


@contextmanager
def atomic_path(target: StoragePath) -> Iterator[Path]:
    """Yield a local temporary path to write; on success it becomes `target` whole, on failure nothing does."""
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_beside(target)
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=f"audit-upload-{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
    try:
        yield tmp
        if isinstance(target, Path):
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        else:
            fs, inner = filesystem(target)
            fs.put_file(str(tmp), inner)
    finally:
        if tmp.exists():
            tmp.unlink()


def _create_beside(target: Path) -> Path:
    """Create an empty hidden `.{name}.<random>.tmp` in the target's folder, with the mode `open()` would give.

    `tempfile.mkstemp` makes its file 0600, and a rename keeps the mode: every report and table would be
    unreadable to the group and others. Creating it with 0666 lets the kernel apply the process umask,
    without changing the umask (which is process-wide, so racy with other threads).
    """
    tries = 100  # random 48-bit names: a clash is already unlikely once
    for _ in range(tries):
        candidate = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(
        f"no free temporary name beside {target} after {tries} tries; "
        f"remove stale .{target.name}.*.tmp files from {target.parent}"
    )


@contextmanager
def exclusive_lock(folder: StoragePath, name: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (POSIX flock on `<folder>/<name>`) for the block.

    A no-op where fcntl is unavailable and on object storage, which has no locks: there, writers to one
    folder must be serialised by the scheduler (`dataset_audit` runs one at a time: max_active_runs=1).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    if not isinstance(folder, Path):
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class FileOpener:
    """Opens files named by `image_path` strings: local paths directly, URIs through the root's filesystem.

    It holds the filesystem object (for Airflow, the connection-bound one), so data-loader worker processes
    forked from the task open remote images with the same credentials as the task itself.
    """

    def __init__(self, root: StoragePath | None = None) -> None:
        self._fs = filesystem(root)[0] if root is not None and is_remote(root) else None
        self._pid = os.getpid()

    def __call__(self, name: str) -> IO[bytes]:
        if scheme_of(name) in _LOCAL_SCHEMES:
            return storage_path(name).open("rb")
        fs = self._filesystem()
        if fs is None:
            return storage_path(name).open("rb")  # no root filesystem: fsspec's own credentials
        return fs.open(fs._strip_protocol(public_uri(name)), "rb")

    def _filesystem(self) -> AbstractFileSystem | None:
        """The root's filesystem; in a forked worker, a new instance with the same options and credentials
        (async filesystems such as s3fs and gcsfs refuse to run in a child of the process that made them)."""
        if self._fs is not None and os.getpid() != self._pid:
            self._fs = type(self._fs)(*self._fs.storage_args, **self._fs.storage_options)
            self._pid = os.getpid()
        return self._fs


def _is_upath(value: object) -> TypeIs[UPath]:
    """A UPath or a proxy of one (checked on the class: Airflow's `fs` property may connect when read)."""
    kind = type(value)
    return hasattr(kind, "protocol") and hasattr(kind, "fs") and hasattr(kind, "iterdir")
