"""The encoded-listing cache (gofer9p/attach/_dircache.py) answers exactly what
the uncached path answers, and never a listing older than the directory."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.attach import AttachPoint, Session, _dircache
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import decode_dirents
from gofer9p.protocol.messages import Tattach, Tclunk, Tlopen, Treaddir, Twalk


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir()
    for i in range(300):
        (d / f"entry-{i:04d}").write_bytes(b"")
    (d / "sub").mkdir()
    os.symlink("x", d / "link")
    return tmp_path


@pytest.fixture
def s(tree: Path) -> Iterator[Session]:
    point = AttachPoint.open(str(tree))
    sess = Session(point, msize=65536)
    sess.attach(Tattach(1, 0, C.NOFID, b"root", b"", 0))
    yield sess
    sess.reset()
    point.close()


def settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make directories changed more than 20 ms ago cacheable, and wait that long
    (the clock tick of file timestamps is at most 10 ms)."""
    monkeypatch.setattr(_dircache, "SETTLE_NS", 20_000_000)
    time.sleep(0.05)


def listing(s: Session, count: int, path: tuple[bytes, ...] = (b"d",)) -> list[tuple[int, int, bytes]]:
    s.walk(Twalk(1, 0, 7, list(path)))
    s.lopen(Tlopen(1, 7, C.L_O_RDONLY))
    out: list[tuple[int, int, bytes]] = []
    off = 0
    try:
        while True:
            data = bytes(s.readdir(Treaddir(1, 7, off, count)).data)
            if not data:
                return out
            ents = decode_dirents(data)
            out += [(e.qid.path, e.type, e.name) for e in ents]
            off = ents[-1].offset
    finally:
        s.clunk(Tclunk(1, 7))


@pytest.mark.parametrize("count", [300, 1000, 8192, 65536 - 24])
def test_cached_equals_uncached(s: Session, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    uncached = listing(s, count)
    assert not s.backend._dirs._map
    settle(monkeypatch)
    first = listing(s, count)
    assert s.backend._dirs._map  # built on this pass
    again = listing(s, count)
    assert uncached == first == again
    names = sorted(n for _, _, n in again)
    assert names[:2] == [b".", b".."] and len(names) == 304


def test_root_listing_dotdot(s: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    uncached = listing(s, 8192, ())
    settle(monkeypatch)
    listing(s, 8192, ())
    assert listing(s, 8192, ()) == uncached


def test_changes_are_seen(s: Session, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settle(monkeypatch)
    listing(s, 8192)
    assert s.backend._dirs._map
    (tree / "d" / "new").write_bytes(b"")
    os.unlink(tree / "d" / "entry-0007")
    os.rename(tree / "d" / "entry-0008", tree / "d" / "renamed")
    names = {n for _, _, n in listing(s, 8192)}
    assert {b"new", b"renamed"} <= names
    assert not {b"entry-0007", b"entry-0008"} & names
    # and once settled again, the cached listing is the new one
    time.sleep(0.05)
    listing(s, 8192)
    assert {n for _, _, n in listing(s, 8192)} == names


def test_recent_directory_not_cached(s: Session) -> None:
    # just created by the fixture: the default settle time keeps it out
    listing(s, 8192)
    assert not s.backend._dirs._map


def test_small_count_and_foreign_cookie(s: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    settle(monkeypatch)
    listing(s, 8192)
    s.walk(Twalk(1, 0, 7, [b"d"]))
    s.lopen(Tlopen(1, 7, C.L_O_RDONLY))
    try:
        with pytest.raises(OSError) as ei:
            s.readdir(Treaddir(1, 7, 0, 10))
        assert ei.value.errno == errno.EINVAL
        data = bytes(s.readdir(Treaddir(1, 7, 0, 200)).data)
        ents = decode_dirents(data)
        # a cookie from the middle continues where the uncached path would
        rest = bytes(s.readdir(Treaddir(1, 7, ents[-1].offset, 65000)).data)
        monkeypatch.setattr(_dircache, "SETTLE_NS", 1 << 62)
        s.backend._dirs.clear()
        assert bytes(s.readdir(Treaddir(1, 7, ents[-1].offset, 65000)).data) == rest
    finally:
        s.clunk(Tclunk(1, 7))
