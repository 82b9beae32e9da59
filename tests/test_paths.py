"""Paths and URIs stay under their root: traversal, absolute paths, symlinks and schemes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from upath import UPath

from audit_tasks.errors import PathEscapeError
from audit_tasks.paths import is_under, resolve_under, safe_child


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    return tmp_path / "root"


def test_relative_path_resolves_under_root(root: Path) -> None:
    assert resolve_under(root, "sub/a.jpg") == (root / "sub" / "a.jpg").resolve()


def test_dotdot_inside_root_is_allowed(root: Path) -> None:
    assert resolve_under(root, "sub/../sub/a.jpg") == (root / "sub" / "a.jpg").resolve()


def test_dotdot_traversal_out_of_root_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match=r"'\.\./\.\./etc/passwd' leaves the image root"):
        resolve_under(root, "../../etc/passwd")


def test_absolute_path_inside_root_is_allowed(root: Path) -> None:
    assert resolve_under(root, str(root / "sub" / "a.jpg")) == (root / "sub" / "a.jpg").resolve()


def test_absolute_path_outside_root_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match="leaves the image root"):
        resolve_under(root, "/etc/passwd")


def test_file_uri_inside_root_is_allowed(root: Path) -> None:
    uri = (root / "sub" / "a.jpg").resolve().as_uri()
    assert resolve_under(root, uri) == (root / "sub" / "a.jpg").resolve()


def test_file_uri_outside_root_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match="leaves the image root"):
        resolve_under(root, "file:///etc/passwd")


def test_file_uri_with_remote_host_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match="names another host"):
        resolve_under(root, "file://evil.example/sub/a.jpg")


def test_absolute_paths_need_the_file_scheme(root: Path) -> None:
    with pytest.raises(PathEscapeError, match="'file' is not in allowed_schemes"):
        resolve_under(root, str(root / "sub" / "a.jpg"), allowed_schemes=())


def test_relative_paths_need_no_scheme(root: Path) -> None:
    assert resolve_under(root, "sub/a.jpg", allowed_schemes=()).name == "a.jpg"


def test_symlink_pointing_out_is_refused(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside.jpg", root / "link.jpg")
    with pytest.raises(PathEscapeError, match="through a symlink"):
        resolve_under(root, "link.jpg")


def test_symlinked_directory_pointing_out_is_refused(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path, root / "up")
    with pytest.raises(PathEscapeError, match="through a symlink"):
        resolve_under(root, "up/outside.jpg")


def test_symlink_inside_root_is_followed(root: Path) -> None:
    os.symlink(root / "sub" / "a.jpg", root / "alias.jpg")
    assert resolve_under(root, "alias.jpg") == (root / "sub" / "a.jpg").resolve()


def test_root_reached_through_a_symlink_still_works(root: Path, tmp_path: Path) -> None:
    os.symlink(root, tmp_path / "root_link")
    assert resolve_under(tmp_path / "root_link", "sub/a.jpg") == (root / "sub" / "a.jpg").resolve()


def test_scheme_not_allowed_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match=r"scheme 's3://' is not allowed"):
        resolve_under(root, "s3://bucket/a.jpg")


def test_an_allowed_object_store_uri_outside_a_local_root_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match="is not under the image root"):
        resolve_under(root, "s3://bucket/a.jpg", allowed_schemes=("file", "s3"))


def test_an_object_store_uri_under_an_object_store_root_resolves_below_it() -> None:
    bucket = UPath("memory://bucket/images")
    assert (
        str(resolve_under(bucket, "memory://bucket/images/sub/a.jpg", allowed_schemes=("memory",)))
        == "memory://bucket/images/sub/a.jpg"
    )


def test_a_relative_path_under_an_object_store_root_resolves_below_it() -> None:
    assert str(resolve_under(UPath("memory://bucket/images"), "sub/a.jpg")) == "memory://bucket/images/sub/a.jpg"


@pytest.mark.parametrize(
    "uri",
    [
        "memory://bucket/other/a.jpg",
        "memory://bucket/images/../other/a.jpg",
        "memory://bucket/images-2/a.jpg",
        "../other/a.jpg",
        "/etc/passwd",
    ],
)
def test_names_that_leave_an_object_store_root_are_refused(uri: str) -> None:
    with pytest.raises(PathEscapeError):
        resolve_under(UPath("memory://bucket/images"), uri, allowed_schemes=("memory", "file"))


def test_empty_uri_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match="empty"):
        resolve_under(root, "  ")


def test_nul_byte_is_refused(root: Path) -> None:
    with pytest.raises(PathEscapeError, match="NUL"):
        resolve_under(root, "sub/a.jpg\x00.png")


def test_missing_file_still_resolves(root: Path) -> None:
    assert resolve_under(root, "sub/nothing.jpg") == (root / "sub" / "nothing.jpg").resolve()


def test_safe_child_allows_nested_relative_names(root: Path) -> None:
    assert safe_child(root, "d=1/run-x.parquet") == (root / "d=1" / "run-x.parquet").resolve()


@pytest.mark.parametrize("name", ["../x.parquet", "/tmp/x.parquet", ""])
def test_safe_child_refuses_names_that_leave_the_root(root: Path, name: str) -> None:
    with pytest.raises(PathEscapeError):
        safe_child(root, name)


def test_is_under_compares_real_paths(root: Path, tmp_path: Path) -> None:
    assert is_under(root / "sub" / "a.jpg", root)
    assert not is_under(tmp_path / "outside.jpg", root)
