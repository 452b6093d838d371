"""mounts.resolve: a destination walked inside a root fd, symlinks resolved as the sandbox sees
them, never above the root (no privileges needed: plain directories)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.mounts import MountError, resolve


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "srv" / "data").mkdir(parents=True)
    (r / "srv" / "file").write_text("x")
    (r / "rel").symlink_to("srv/data")
    (r / "abs").symlink_to("/srv/data")
    (r / "up").symlink_to("srv/../srv/data")
    (r / "out").symlink_to("../outside")
    (r / "deepout").symlink_to("/srv/../../outside")
    (r / "loop").symlink_to("loop")
    (tmp_path / "outside").mkdir()
    return r


@pytest.fixture
def rootfd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(
    ("dest", "want"),
    [
        ("/srv/data", "/srv/data"),
        ("/rel", "/srv/data"),
        ("/abs", "/srv/data"),  # absolute: from the root the sandbox sees, not the host's
        ("/up", "/srv/data"),
        ("/abs/../file", "/srv/file"),  # ".." after a symlink: from where it led
        ("/srv/file", "/srv/file"),
    ],
)
def test_resolved_inside(rootfd: int, root: Path, dest: str, want: str) -> None:
    r = resolve(rootfd, dest)
    try:
        assert r.path == want
        assert os.fstat(r.fd).st_ino == os.stat(root / want.lstrip("/")).st_ino
        assert os.readlink(f"/proc/self/fd/{r.parent_fd}") == str(
            root / os.path.dirname(want).lstrip("/")
        ).rstrip("/")
        assert r.name == os.path.basename(want)
    finally:
        r.close()


@pytest.mark.parametrize(
    ("dest", "needle"),
    [
        ("/out", "resolves outside the root"),
        ("/deepout/x", "resolves outside the root"),
        ("/loop", "too many symlinks"),
        ("/srv/file/x", "'/srv/file' is not a directory"),
        ("/missing/x", "No such file or directory ('/missing' is missing)"),
    ],
)
def test_refused(rootfd: int, dest: str, needle: str) -> None:
    with pytest.raises(MountError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve(rootfd, dest)


def test_create_makes_mount_points_inside(rootfd: int, root: Path, tmp_path: Path) -> None:
    r = resolve(rootfd, "/rel/new/hosts", create="file")
    r.close()
    assert r.path == "/srv/data/new/hosts" and r.created == ["/srv/data/new", "/srv/data/new/hosts"]
    assert (root / "srv" / "data" / "new" / "hosts").is_file()
    with pytest.raises(MountError, match="outside the root"):
        resolve(rootfd, "/out/x", create="dir")
    assert os.listdir(tmp_path / "outside") == []  # nothing made outside


def test_no_fd_left_open(rootfd: int) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for dest in ("/rel", "/abs/../file"):
        resolve(rootfd, dest).close()
    for dest in ("/out", "/loop", "/deepout/x"):
        with pytest.raises(MountError):
            resolve(rootfd, dest)
    assert len(os.listdir("/proc/self/fd")) == before
