"""Random operation sequences against one Session: only OSError, no fd leak, nothing outside.

Seeded (reproducible) sequences of every handler with hostile arguments: names
such as "..", ".", "", "a/b", symlinks to outside and to "/", random fids, flags,
offsets and readdir cookies.  After each sequence the session is reset and the
test checks that every fd was closed and that the directory beside the export
(the "outside") is byte-for-byte unchanged.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gofer9p.attach import AttachPoint, Session
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import (
    Tattach,
    Tclunk,
    Tfsync,
    Tgetattr,
    Tgetlock,
    Tlcreate,
    Tlink,
    Tlock,
    Tlopen,
    Tmkdir,
    Tmknod,
    Treaddir,
    Treadlink,
    Tremove,
    Trename,
    Trenameat,
    Tsetattr,
    Tstatfs,
    Tsymlink,
    Tunlinkat,
    Twalk,
    Twrite,
    Txattrcreate,
    Txattrwalk,
)

NAMES = [
    b"a", b"b", b"c", b"f", b"g", b"p", b"l_out", b"l_abs", b"l_dot", b"..", b".", b"",
    b"a/b", b"/", b"x\0y", b"secret", b"outside",
]
FLAGS = [
    C.L_O_RDONLY, C.L_O_WRONLY, C.L_O_RDWR, C.L_O_RDWR | C.L_O_TRUNC, C.L_O_WRONLY | C.L_O_APPEND,
    C.L_O_RDONLY | C.L_O_DIRECTORY, C.L_O_RDONLY | C.L_O_NONBLOCK, 3, 0xFFFFFFFF,
]
BIG = [0, 1, 7, 4096, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def _snapshot(top: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            data = b""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    data = fh.read()
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink, data)
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    old = os.umask(0)
    export = tmp_path / "export"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"SECRET")
    (outside / "dir").mkdir()
    (outside / "dir" / "victim").write_bytes(b"victim")
    (export / "a" / "b").mkdir(parents=True)
    (export / "f").write_bytes(b"file data")
    (export / "a" / "g").write_bytes(b"g data")
    os.mkfifo(export / "p")
    (export / "l_out").symlink_to("../outside")
    (export / "l_abs").symlink_to(str(outside / "dir"))
    (export / "l_dot").symlink_to(".")
    yield export, outside
    os.umask(old)


def _pick_fid(rng: random.Random, s: Session) -> int:
    live = list(s.backend._fids)
    if live and rng.random() < 0.85:
        return rng.choice(live)
    return rng.randrange(12)


def _random_op(rng: random.Random, s: Session, cookies: list[int]) -> None:
    fid = _pick_fid(rng, s)
    fid2 = _pick_fid(rng, s) if rng.random() < 0.5 else rng.randrange(12)
    name = rng.choice(NAMES)
    k = rng.randrange(24)
    if k == 0 or not s.backend._fids:
        fid = rng.randrange(12)
        s.attach(Tattach(1, fid, C.NOFID, b"", rng.choice([b"", b"/a", b"l_out", b"a/../.."]), 0))
    elif k in (1, 2, 3):
        names = [rng.choice(NAMES) for _ in range(rng.choice([0, 1, 1, 2, 3, 17]))]
        s.walk(Twalk(1, fid, fid2, names))
    elif k == 4:
        s.lopen(Tlopen(1, fid, rng.choice(FLAGS)))
    elif k == 5:
        s.lcreate(Tlcreate(1, fid, name, rng.choice(FLAGS), 0o644, 0))
    elif k == 6:
        s.mkdir(Tmkdir(1, fid, name, 0o755, rng.choice([0, C.NONUNAME])))
    elif k == 7:
        mode = rng.choice([stat.S_IFIFO, stat.S_IFREG, stat.S_IFSOCK, 0]) | 0o600
        s.mknod(Tmknod(1, fid, name, mode, 0, 0, 0))
    elif k == 8:
        s.symlink(Tsymlink(1, fid, name, rng.choice([b"../outside", b"/", b"f", b""]), 0))
    elif k == 9:
        s.rename(Trename(1, fid, fid2, name))
    elif k == 10:
        s.renameat(Trenameat(1, fid, name, fid2, rng.choice(NAMES)))
    elif k == 11:
        s.unlinkat(Tunlinkat(1, fid, name, rng.choice([0, C.AT_REMOVEDIR, 0x100])))
    elif k == 12:
        s.remove(Tremove(1, fid))
    elif k == 13:
        s.link(Tlink(1, fid, fid2, name))
    elif k == 14:
        s.readlink(Treadlink(1, fid))
        s.getattr(Tgetattr(1, fid, rng.choice([0, C.GETATTR_BASIC, C.GETATTR_ALL])))
        s.statfs(Tstatfs(1, fid))
    elif k == 15:
        valid = rng.randrange(0x200)
        s.setattr(Tsetattr(1, fid, valid, rng.choice([0o644, 0o7777, 0]), rng.choice([0, 1234]),
                           rng.choice([0, 4321]), rng.choice(BIG), rng.randrange(1 << 31),
                           rng.choice([0, 999_999_999, 1_000_000_000]), 5, 0))
    elif k == 16:
        s.xattrwalk(Txattrwalk(1, fid, fid2, rng.choice([b"", b"user.x", b"security.x", b"user.\0"])))
    elif k == 17:
        s.xattrcreate(Txattrcreate(1, fid, rng.choice([b"user.x", b"trusted.x"]),
                                   rng.choice([0, 3, 70000]), rng.choice([0, 1, 2, 3])))
    elif k == 18:
        off = rng.choice(cookies) if cookies and rng.random() < 0.7 else rng.choice(BIG)
        data = s.readdir(Treaddir(1, fid, off, rng.choice([0, 20, 64, 300, 65536]))).data
        pos = 0
        while pos + 24 <= len(data):
            cookies.append(int.from_bytes(data[pos + 13:pos + 21], "little"))
            pos += 24 + int.from_bytes(data[pos + 22:pos + 24], "little")
    elif k == 19:
        buf = bytearray(rng.choice([0, 1, 100, 8192]))
        s.read_into(fid, rng.choice(BIG), memoryview(buf))
    elif k == 20:
        s.write(Twrite(1, fid, rng.choice(BIG[:4]), rng.choice([b"", b"x", b"hello" * 100])))
    elif k == 21:
        s.fsync(Tfsync(1, fid, rng.randrange(2)))
        s.lock(Tlock(1, fid, rng.randrange(4), rng.randrange(3), rng.choice(BIG), rng.choice(BIG), 1, b""))
        s.getlock(Tgetlock(1, fid, rng.randrange(3), 0, 0, 1, b""))
    else:
        s.clunk(Tclunk(1, fid))


def _run(s: Session, seed: int, n: int, errors: list[BaseException], ok: list[int]) -> None:
    rng = random.Random(seed)
    cookies: list[int] = []
    for _ in range(n):
        try:
            _random_op(rng, s, cookies)
            ok.append(1)
        except OSError as e:
            assert e.errno is not None and e.errno > 0
            if e.errno in (errno.EIO, errno.EFAULT):
                errors.append(e)
        except BaseException as e:
            errors.append(e)
            return


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences(world: tuple[Path, Path], seed: int) -> None:
    export, outside = world
    before = _snapshot(outside)
    base = len(os.listdir("/proc/self/fd"))
    p = AttachPoint.open(str(export))
    s = Session(p, max_fids=10)
    s.attach(Tattach(1, 0, C.NOFID, b"", b"", 0))
    errors: list[BaseException] = []
    ok: list[int] = []
    try:
        _run(s, seed, 3000, errors, ok)
        assert not errors, errors[0]
        assert len(ok) > 600  # the sequences do get somewhere
    finally:
        s.reset()
        p.close()
    assert s.fid_count() == 0
    assert len(os.listdir("/proc/self/fd")) == base  # point's fds included
    assert _snapshot(outside) == before


def test_random_sequences_threads(world: tuple[Path, Path]) -> None:
    """Four threads share one session (fids collide on purpose): still only OSError."""
    export, outside = world
    before = _snapshot(outside)
    base = len(os.listdir("/proc/self/fd"))
    p = AttachPoint.open(str(export))
    s = Session(p)
    errors: list[BaseException] = []
    ok: list[int] = []
    threads = [
        threading.Thread(target=_run, args=(s, 100 + i, 2000, errors, ok)) for i in range(4)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert len(ok) > 1000
    finally:
        s.reset()
        p.close()
    assert len(os.listdir("/proc/self/fd")) == base
    assert _snapshot(outside) == before
