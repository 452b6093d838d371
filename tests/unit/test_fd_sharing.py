"""A directory's host fd shared by the fids that hold it (#14, gofer9p/attach/_fids.py ``_DirFd``).

Files walked from one directory fid (or its clones) share that directory's O_PATH fd for their
``*at`` calls instead of a dup each; a clone of a directory fid holds no fd of its own.  The
charge against the fd share counts the shared fd once and always equals what is really held
(counted in /proc/self/fd), through walk, clone, lcreate, rename, remove, clunk, reclaim,
reopen and reset.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.attach import AttachPoint, Backend
from gofer9p.protocol import constants as C

ROOT = 0
FILES = 1000


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "root"
    d.mkdir()
    (d / "d").mkdir()
    (d / "e").mkdir()
    for i in range(FILES):
        (d / "d" / f"f{i}").write_bytes(b"%d" % i)
    return d


@pytest.fixture
def point(root: Path) -> Iterator[AttachPoint]:
    p = AttachPoint.open(str(root))
    # The attach point caches a directory fd per mount for re-opening files by handle:
    # open one file first, so that the counts below see only the fids' fds.
    be = Backend(p)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"d", b"f0"])
    be.open(1, C.L_O_RDONLY)
    be.close()
    yield p
    p.close()


def _held(be: Backend, base: int) -> int:
    """Host fds the backend holds now, which must be what it charges."""
    held = _open_fds() - base
    assert be.fds_charged() == held, (be.fds_charged(), held)
    return held


def test_files_walked_from_one_directory_share_its_fd(point: AttachPoint) -> None:
    """1,000 files walked from a directory fid hold one fd each plus the directory's one;
    clones of the directory fid hold none; the files keep working by name after the
    directory fid is clunked, and the last one to go closes the directory's fd."""
    base = _open_fds()
    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"d"])
    assert _held(be, base) == 2  # the root's fd and d's
    for i in range(3):
        be.walk(1, 10 + i)  # clones of d
    assert _held(be, base) == 2
    for i in range(FILES):
        be.walk(10 + i % 3, 100 + i, [f"f{i}".encode()])
    assert _held(be, base) == 2 + FILES  # was 2 + 2 * FILES with a parent fd each
    for fid in (1, 10, 11, 12):
        be.clunk(fid)
    assert _held(be, base) == 2 + FILES  # d's fd is still held by its files
    # the files' *at calls on their names still go through it
    be.rename(100, ROOT, b"moved")
    be.remove(101)
    assert not (Path(point.path) / "d" / "f1").exists()
    assert (Path(point.path) / "moved").read_bytes() == b"0"
    assert _held(be, base) == 2 + FILES - 1  # f0 now holds the root's fd as its parent
    for i in range(2, FILES):
        be.clunk(100 + i)
    assert _held(be, base) == 2  # the root's fd and f0's own: d's fd is closed
    be.close()
    assert _open_fds() == base


def test_clone_then_lcreate_keeps_the_directory_fd_as_parent(point: AttachPoint) -> None:
    """The Linux create: clone the directory fid, Tlcreate on the clone.  The clone holds no
    fd, the created file one (its open fd), and the directory's fd becomes its parent."""
    base = _open_fds()
    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"e"])
    held = _held(be, base)
    for i in range(20):
        be.walk(1, 10 + i)
        assert _held(be, base) == held + i  # the clone: none of its own
        be.lcreate(10 + i, f"n{i}".encode(), C.L_O_RDWR, 0o644, 0)
        assert be.write(10 + i, 0, b"x%d" % i) == 1 + len(str(i))
        assert _held(be, base) == held + i + 1
    be.clunk(1)
    be.setattr(15, C.SETATTR_MODE, 0o600, 0, 0, 0, (0, 0), (0, 0))  # by its fd
    be.remove(16)  # by its name in e, through e's shared fd
    assert sorted(os.listdir(Path(point.path) / "e")) == sorted(
        f"n{i}" for i in range(20) if i != 6)
    assert (Path(point.path) / "e" / "n5").stat().st_mode & 0o777 == 0o600
    for i in range(20):
        if i != 6:
            be.clunk(10 + i)
    assert _held(be, base) == 1
    be.close()
    assert _open_fds() == base


def test_rename_moves_the_fid_to_the_new_directory_fd(point: AttachPoint) -> None:
    """After a rename into another directory fid, the file fid shares that directory's fd;
    the old directory's fd is closed when nothing holds it, and not before a request that
    uses the fid has ended."""
    base = _open_fds()
    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"e"])
    be.walk(ROOT, 2, [b"d", b"f7"])  # d's fd: this fid's alone
    assert _held(be, base) == 4
    with be._ref(2) as f:
        old = f.parent
        be.rename(2, 1, b"g")
        with be._ref(1) as e:
            assert f.parent == e.fd
        assert os.fstat(old)  # retired: the request in flight may still use it
        assert _held(be, base) == 4
    with pytest.raises(OSError) as ei:
        os.fstat(old)
    assert ei.value.errno == errno.EBADF
    assert _held(be, base) == 3  # the root's, e's, the file's
    be.setattr(2, C.SETATTR_SIZE, 0, 0, 0, 0, (0, 0), (0, 0))  # re-opened by name in e
    assert (Path(point.path) / "e" / "g").stat().st_size == 0
    be.remove(2)
    assert not (Path(point.path) / "e" / "g").exists()
    be.close()
    assert _open_fds() == base


def test_charge_equals_fds_held_under_reclaim(point: AttachPoint) -> None:
    """A share far below the fids: every fid answers (reopened as needed), the shared
    directory fd goes with the last of its files reclaimed, and what is charged is exactly
    what is held after every step."""
    base = _open_fds()
    be = Backend(point, fd_share=16)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"d"])
    for i in range(60):
        be.walk(1, 100 + i, [f"f{i}".encode()])
        assert _held(be, base) <= 16
    for i in range(60):  # each reopened (most were reclaimed), its own file
        assert be.getattr(100 + i, C.GETATTR_SIZE)[9] == len(str(i))
        assert _held(be, base) <= 16
    assert be.fd_budget.reclaims and be.fd_budget.reopens
    be.walk(1, 2, [b"f1"])
    be.open(2, C.L_O_RDONLY)
    buf = bytearray(10)
    assert be.read(2, 0, memoryview(buf)) == 1 and buf[:1] == b"1"
    for i in range(0, 60, 2):
        be.clunk(100 + i)
        _held(be, base)
    be.reset()
    assert _held(be, base) == 0
    be.close()
    assert _open_fds() == base


def test_reopened_files_share_their_directory_fd(point: AttachPoint) -> None:
    """Files reclaimed and reopened while their directory fid is open share its fd again
    (found by the path it was reached by, the name checked in it), with no walk from the
    root; a directory fid reopened while its fd is held by its files shares it too."""
    base = _open_fds()
    be = Backend(point, fd_share=16)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"d"])
    be.walk(1, 2, [b"f0"])
    be.open(2, C.L_O_RDONLY)  # never reclaimed: d's fd stays open
    for i in range(1, 60):
        be.walk(1, 100 + i, [f"f{i}".encode()])
    for i in range(1, 60):
        assert be.getattr(100 + i, C.GETATTR_SIZE)[9] == len(str(i))
        assert be.getattr(1, C.GETATTR_BASIC)[4]  # the directory fid, reopened as needed
        assert _held(be, base) <= 16
    assert be.fd_budget.reclaims >= 40 and be.fd_budget.reopens >= 40
    with be._ref(1) as d:
        dfd = d.fd
    parents = set()
    for f in list(be._fids.values()):
        if not f.idle and f.fmt != stat.S_IFDIR:
            parents.add(f.parent)
    assert parents == {dfd}  # one directory fd for all of them
    be.reset()
    assert _held(be, base) == 0 and not be._dirfds
    be.close()
