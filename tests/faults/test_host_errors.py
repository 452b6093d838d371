"""The host file system fails: ENOSPC on a tiny tmpfs, EIO (and worse) injected in the attach layer.

The contract: a failing system call becomes an Rlerror with its errno, data acknowledged before
the failure is intact, and the connection (and the server task) carry on.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gofer9p.attach._io as io_mod
from gofer9p.attach import _stat, _sys
from gofer9p.client import P9Error
from gofer9p.protocol import constants as C

from .conftest import Served, ServeFn


def _pattern(i: int, n: int) -> bytes:
    """Chunk ``i``: distinct content, so a misplaced or lost chunk is visible."""
    unit = f"chunk{i:05d}-".encode()
    return (unit * (n // len(unit) + 1))[:n]


# ------------------------------------------------------------------------------- ENOSPC


@pytest.mark.parametrize("chunk", [4096, 65536, 512 * 1024], ids=["4k", "64k", "512k-thread"])
async def test_write_until_enospc(
    serve_dir: ServeFn, tiny_fs: Path, chunk: int, server_errors: Callable[[], list[str]]
) -> None:
    """Fill a 1 MiB tmpfs through one fid: a clean ENOSPC, every acknowledged byte readable
    back (on the host and through 9P), and the connection fine afterwards."""
    async with serve_dir(path=tiny_fs) as s:
        c = s.client
        fid, _ = await c.walk(s.root, [])
        await c.lcreate(fid, b"big", C.L_O_RDWR | C.L_O_CREAT, 0o644)
        expected = bytearray()
        err = None
        for i in range(4 * (1 << 20) // chunk + 8):  # bounded: 4x the file system's size
            data = _pattern(i, chunk)
            try:
                n = await c.write(fid, len(expected), data)
            except P9Error as e:
                err = e.errno
                break
            assert 0 < n <= len(data)
            expected += data[:n]
        assert err == errno.ENOSPC, f"filling the fs ended with {err} after {len(expected)} bytes"
        assert len(expected) > 256 * 1024
        # earlier data intact, host side and through 9P
        assert (tiny_fs / "big").read_bytes() == bytes(expected)
        got = bytearray()
        for _ in range(10_000):
            part = await c.read(fid, len(got), 256 * 1024)
            if not part:
                break
            got += part
        assert got == expected
        # the connection is fine: metadata, then free space and write again
        await c.getattr(s.root)
        st = await c.statfs(s.root)
        assert st.bavail == 0 or st.bavail * st.bsize < chunk
        await c.clunk(fid)
        await c.unlinkat(s.root, b"big", 0)
        fid2, _ = await c.walk(s.root, [])
        await c.lcreate(fid2, b"after", C.L_O_RDWR | C.L_O_CREAT, 0o644)
        assert await c.write(fid2, 0, b"after ENOSPC") == 12
        await c.fsync(fid2)
    assert (tiny_fs / "after").read_bytes() == b"after ENOSPC"
    assert server_errors() == []


async def test_inodes_exhausted_is_enospc(serve_dir: ServeFn, tiny_fs: Path) -> None:
    """64 inodes: mkdir/lcreate/mknod/symlink until ENOSPC, then everything still works."""
    async with serve_dir(path=tiny_fs) as s:
        c = s.client
        made = 0
        err = None
        for i in range(200):  # bounded: 3x the inode count
            try:
                kind = i % 4
                name = f"n{i}".encode()
                if kind == 0:
                    await c.mkdir(s.root, name)
                elif kind == 1:
                    fid, _ = await c.walk(s.root, [])
                    try:
                        await c.lcreate(fid, name, C.L_O_RDWR | C.L_O_CREAT, 0o644)
                    finally:
                        await c.clunk(fid)
                elif kind == 2:
                    await c.mknod(s.root, name, stat.S_IFIFO | 0o644)
                else:
                    await c.symlink(s.root, name, b"target")
                made += 1
            except P9Error as e:
                err = e.errno
                break
        assert err == errno.ENOSPC, (err, made)
        assert 10 < made <= 64
        # nothing half-created by the failing request
        assert len(os.listdir(tiny_fs)) == made
        await c.unlinkat(s.root, b"n1", 0)
        await c.mkdir(s.root, b"again")
        fid, _ = await c.walk(s.root, [])
        await c.lopen(fid, C.L_O_RDONLY | C.L_O_DIRECTORY)
        names = {e.name for e in await c.readdir_all(fid)}
        assert b"again" in names and b"n1" not in names


# ----------------------------------------------------------------------------- EIO


def _failing(code: int, calls: list[str]) -> Callable[..., Any]:
    """A replacement system call that fails with ``code``; records the calling thread."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        calls.append(threading.current_thread().name)
        raise OSError(code, os.strerror(code))

    return fail


async def _open_file(s: Served, name: bytes, data: bytes, flags: int = C.L_O_RDWR) -> int:
    (s.export / name.decode()).write_bytes(data)
    fid, _ = await s.client.walk(s.root, [name])
    await s.client.lopen(fid, flags)
    return fid


@pytest.mark.parametrize("count", [4096, 2 << 20], ids=["4k", "2M"])
async def test_read_eio(
    served: Served, monkeypatch: pytest.MonkeyPatch, count: int,
    server_errors: Callable[[], list[str]],
) -> None:
    """preadv fails with EIO: Rlerror EIO; the same fid reads fine once the disk recovers."""
    c = served.client
    fid = await _open_file(served, b"f", b"x" * (3 << 20))
    calls: list[str] = []
    monkeypatch.setattr(io_mod, "_preadv", _failing(errno.EIO, calls))
    with pytest.raises(P9Error) as ei:
        await c.read(fid, 0, count)
    assert ei.value.errno == errno.EIO and calls
    await c.getattr(served.root)
    monkeypatch.undo()
    assert len(await c.read(fid, 0, count)) == count
    assert server_errors() == []


@pytest.mark.parametrize("size", [100, 256 * 1024], ids=["100", "256k"])
async def test_write_eio(
    served: Served, monkeypatch: pytest.MonkeyPatch, size: int,
    server_errors: Callable[[], list[str]],
) -> None:
    c = served.client
    fid = await _open_file(served, b"f", b"")
    calls: list[str] = []
    monkeypatch.setattr(io_mod, "_pwrite", _failing(errno.EIO, calls))
    with pytest.raises(P9Error) as ei:
        await c.write(fid, 0, b"w" * size)
    assert ei.value.errno == errno.EIO and calls
    monkeypatch.undo()
    assert await c.write(fid, 0, b"ok") == 2
    assert (served.export / "f").read_bytes() == b"ok"
    assert server_errors() == []


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS])
async def test_fsync_errors_reported(
    served: Served, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """fsync is where delayed write errors surface: the client must hear them."""
    c = served.client
    fid = await _open_file(served, b"f", b"")
    await c.write(fid, 0, b"data")
    calls: list[str] = []
    monkeypatch.setattr(os, "fsync", _failing(code, calls))
    monkeypatch.setattr(os, "fdatasync", _failing(code, calls))
    for datasync in (0, 1):
        with pytest.raises(P9Error) as ei:
            await c.fsync(fid, datasync)
        assert ei.value.errno == code
    assert len(calls) == 2
    monkeypatch.undo()
    await c.fsync(fid)


async def test_truncate_eio_in_worker_thread(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Truncation runs in a worker thread (it may free many blocks): an error there is the
    same clean Rlerror, on an unopened fid and on an opened one."""
    c = served.client
    (served.export / "f").write_bytes(b"0123456789")
    fid, _ = await c.walk(served.root, [b"f"])
    ofid = await _open_file(served, b"g", b"0123456789")
    calls: list[str] = []
    monkeypatch.setattr(os, "ftruncate", _failing(errno.EIO, calls))
    for f in (fid, ofid):
        with pytest.raises(P9Error) as ei:
            await c.setattr(f, C.SETATTR_SIZE, size=3)
        assert ei.value.errno == errno.EIO
    assert len(calls) == 2 and "MainThread" not in calls, calls
    monkeypatch.undo()
    await c.setattr(fid, C.SETATTR_SIZE, size=3)
    assert (served.export / "f").read_bytes() == b"012"


async def test_fifo_read_eio_in_worker_thread(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIFO reads run in a worker thread; a failing readv there is an Rlerror too."""
    c = served.client
    fifo = served.export / "p"
    os.mkfifo(fifo)
    wfd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer, so the FIFO has data
    try:
        os.write(wfd, b"through the pipe")
        fid, _ = await c.walk(served.root, [b"p"])
        await c.lopen(fid, C.L_O_RDONLY)
        calls: list[str] = []
        monkeypatch.setattr(os, "readv", _failing(errno.EIO, calls))
        with pytest.raises(P9Error) as ei:
            await c.read(fid, 0, 100)
        assert ei.value.errno == errno.EIO
        assert calls and "MainThread" not in calls, calls
        monkeypatch.undo()
        assert await c.read(fid, 0, 100) == b"through the pipe"
    finally:
        os.close(wfd)


async def test_readdir_eio(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    c = served.client
    for i in range(5):
        (served.export / f"e{i}").write_bytes(b"")
    fid, _ = await c.walk(served.root, [])
    await c.lopen(fid, C.L_O_RDONLY | C.L_O_DIRECTORY)
    calls: list[str] = []
    monkeypatch.setattr(_sys.DirentBuffer, "fill", _failing(errno.EIO, calls))
    with pytest.raises(P9Error) as ei:
        await c.readdir(fid)
    assert ei.value.errno == errno.EIO and calls
    monkeypatch.undo()
    assert len(await c.readdir_all(fid)) == 7


async def test_metadata_eio(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """fstat (getattr) and the walk's openat fail with EIO: clean Rlerrors."""
    c = served.client
    (served.export / "f").write_bytes(b"f")
    calls: list[str] = []
    failing = _failing(errno.EIO, calls)
    monkeypatch.setattr(_stat, "_fstat", failing)  # getattr, and the walk's step (open_at)
    for coro in (c.getattr(served.root), c.walk(served.root, [b"f"])):
        with pytest.raises(P9Error) as ei:
            await coro
        assert ei.value.errno == errno.EIO
    monkeypatch.undo()
    fid, _ = await c.walk(served.root, [b"f"])
    await c.getattr(fid)
    assert served.client  # still connected


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad value"), RuntimeError("boom"), OverflowError("too big"), KeyError("k"),
     MemoryError()],
    ids=["ValueError", "RuntimeError", "OverflowError", "KeyError", "MemoryError"],
)
async def test_unexpected_exception_in_handler(
    served: Served, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    """A non-OSError from deep in a handler is the server's bug, not the client's: it must
    still be one Rlerror (EIO or a mapped errno), and the connection must live on."""
    c = served.client
    fid = await _open_file(served, b"f", b"hello")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(io_mod, "_preadv", boom)
    with pytest.raises(P9Error):
        await c.read(fid, 0, 100)
    monkeypatch.undo()
    assert await c.read(fid, 0, 100) == b"hello"
