"""``attach/_cstat.c`` against its Python twins in ``attach/_stat.py``: the same answers,
the same errors.  Runs where the C module was built (the compiled build; the CI's compiled
tier), skipped in a pure build, where the twins are what the backend calls."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.attach import _stat
from gofer9p.protocol.codec import RGETATTR

cstat = pytest.importorskip("gofer9p.attach._cstat")


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[int]:
    """A directory fd holding a file, a subdirectory, a symlink, a dangling one, a FIFO."""
    (tmp_path / "f").write_bytes(b"x" * 5000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "e").mkdir()
    (tmp_path / "l").symlink_to("f")
    (tmp_path / "dangling").symlink_to("nowhere")
    os.mkfifo(tmp_path / "p")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _same_error(f1: object, f2: object, *args: object) -> type[BaseException]:
    kinds: list[tuple[type[BaseException], object]] = []
    for f in (f1, f2):
        with pytest.raises(Exception) as e:
            f(*args)  # type: ignore[operator]
        kinds.append((type(e.value), getattr(e.value, "errno", None)))
    assert kinds[0] == kinds[1], kinds
    return kinds[0][0]


@pytest.mark.parametrize("name", [b"f", b"d", b"l", b"dangling", b"p", b".", b"..", b"d/e/../.."])
def test_ident_at_is_lstat_s_identity(tree: int, name: bytes) -> None:
    assert cstat.ident_at(tree, name) == _stat.ident_at_py(tree, name)
    st = os.stat(name, dir_fd=tree, follow_symlinks=False)
    assert cstat.ident_at(tree, name) == (st.st_dev, st.st_ino)


def test_ident_at_fails_as_os_stat_does(tree: int) -> None:
    assert _same_error(cstat.ident_at, _stat.ident_at_py, tree, b"missing") is FileNotFoundError
    assert _same_error(cstat.ident_at, _stat.ident_at_py, tree, b"f/x") is NotADirectoryError
    assert _same_error(cstat.ident_at, _stat.ident_at_py, tree, b"a\0b") is ValueError
    bad = os.open("/", os.O_RDONLY)
    os.close(bad)
    with pytest.raises(OSError) as e:
        cstat.ident_at(bad, b"f")
    assert e.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        cstat.ident_at(tree, "f")


@pytest.mark.parametrize(
    "ns", [1_700_000_000_123_456_789, 0, -1, -1_500_000_000, (1 << 62) + 7, -(1 << 62)]
)
@pytest.mark.parametrize("name", ["f", "d", "l", "p"])
def test_rgetattr_packs_what_python_packs(tmp_path: Path, ns: int, name: str) -> None:
    (tmp_path / "f").write_bytes(b"y" * 12345)
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f")
    os.mkfifo(tmp_path / "p")
    try:
        os.utime(tmp_path / name, ns=(ns, ns), follow_symlinks=False)
    except OSError as e:  # a time this file system cannot hold
        pytest.skip(f"utime: {e}")
    fd = os.open(tmp_path / name, os.O_PATH | os.O_NOFOLLOW)
    try:
        for args in [(0, 0, 0, 0, 0), (0xFFFF, 0x7FF, 0x80, 0xFFFFFFFF, (1 << 64) - 1),
                     (17, 0x17, 2, 3, 1 << 56 | 42)]:
            c = cstat.rgetattr(fd, *args)
            assert c == _stat.rgetattr_py(fd, *args)
            assert len(c) == RGETATTR.size
    finally:
        os.close(fd)


def test_rgetattr_of_a_device(tmp_path: Path) -> None:
    fd = os.open("/dev/null", os.O_PATH)
    try:
        c = cstat.rgetattr(fd, 1, 0x7FF, 0, 0, 9)
        assert c == _stat.rgetattr_py(fd, 1, 0x7FF, 0, 0, 9)
        assert RGETATTR.unpack(c)[11] == os.stat("/dev/null").st_rdev
    finally:
        os.close(fd)


def test_rgetattr_fails_as_os_fstat_does(tmp_path: Path) -> None:
    bad = os.open(tmp_path, os.O_RDONLY)
    os.close(bad)
    assert _same_error(cstat.rgetattr, _stat.rgetattr_py, bad, 1, 0, 0, 0, 0) is OSError
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for args in [(1 << 16, 0, 0, 0, 0), (0, 1 << 64, 0, 0, 0), (0, 0, 256, 0, 0),
                     (0, 0, 0, 1 << 32, 0), (0, 0, 0, 0, 1 << 64), (-1, 0, 0, 0, 0)]:
            with pytest.raises(OverflowError):
                cstat.rgetattr(fd, *args)
            with pytest.raises(struct.error):
                _stat.rgetattr_py(fd, *args)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", [b"f", b"d", b"l", b"dangling", b"p", b".", b".."])
def test_open_at_opens_as_itself_and_says_what(tree: int, name: bytes) -> None:
    got = []
    for f in (cstat.open_at, _stat.open_at_py):
        fd, dev, ino, mode = f(tree, name)
        try:
            st = os.fstat(fd)
            assert (dev, ino, mode) == (st.st_dev, st.st_ino, st.st_mode)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            assert flags & os.O_PATH and fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        finally:
            os.close(fd)
        got.append((dev, ino, mode))
    assert got[0] == got[1]
    lst = os.stat(name, dir_fd=tree, follow_symlinks=False)
    assert got[0] == (lst.st_dev, lst.st_ino, lst.st_mode)  # a symlink itself, not its target


def test_open_at_fails_as_os_open_does_and_leaks_no_fd(tree: int) -> None:
    before = set(os.listdir("/proc/self/fd"))
    assert _same_error(cstat.open_at, _stat.open_at_py, tree, b"missing") is FileNotFoundError
    assert _same_error(cstat.open_at, _stat.open_at_py, tree, b"f/x") is NotADirectoryError
    assert _same_error(cstat.open_at, _stat.open_at_py, tree, b"a\0b") is ValueError
    assert _same_error(cstat.open_at, _stat.open_at_py, -1, b"f") is OSError
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("name", ["f", "d", "l", "p"])
def test_fstat_ids_is_fstat_s_identity_mode_and_owner(tmp_path: Path, name: str) -> None:
    (tmp_path / "f").write_bytes(b"z")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f")
    os.mkfifo(tmp_path / "p")
    os.chown(tmp_path / name, 1234, 5678, follow_symlinks=False)
    fd = os.open(tmp_path / name, os.O_PATH | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        want = (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid)
        assert cstat.fstat_ids(fd) == _stat.fstat_ids_py(fd) == want
        assert want[3:] == (1234, 5678)
    finally:
        os.close(fd)
    assert _same_error(cstat.fstat_ids, _stat.fstat_ids_py, fd) is OSError
