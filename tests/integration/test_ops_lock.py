"""Tlock and Tgetlock.

The attach layer promises (``Session.lock`` docstring) open-file-description
locks: a lock belongs to the fid's open file, so two opens of one file (two
fids, even on different connections) conflict, a conflict is answered
BLOCKED at once, and length 0 means "to the end of the file".
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C

from .conftest import ConnectFn, Served
from .helpers import clone, open_path, raises_errno

_FLOCK = struct.Struct("hhqqi")  # struct flock on x86-64 / aarch64 (with padding)


def _host_getlk(path: os.PathLike[str], ltype: int, start: int = 0, length: int = 0) -> int:
    """F_OFD_GETLK from a fresh host open: the type of the conflicting lock, or F_UNLCK."""
    fd = os.open(path, os.O_RDWR)
    try:
        req = _FLOCK.pack(ltype, os.SEEK_SET, start, length, 0)
        res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, req)
        return int(_FLOCK.unpack(res)[0])
    finally:
        os.close(fd)


async def _two_opens(s: Served, flags: int = C.L_O_RDWR) -> tuple[int, int]:
    (s.export / "f").write_bytes(b"x" * 100)
    a = await open_path(s.client, s.root, "f", flags)
    b = await open_path(s.client, s.root, "f", flags)
    return a, b


async def test_write_lock_conflicts_between_fids(server: Served) -> None:
    c = server.client
    a, b = await _two_opens(server)
    assert await c.lock(a, C.LOCK_TYPE_WRLCK, 0, 0) == C.LOCK_SUCCESS
    assert await c.lock(b, C.LOCK_TYPE_WRLCK, 0, 0) == C.LOCK_BLOCKED
    assert await c.lock(b, C.LOCK_TYPE_RDLCK, 10, 5) == C.LOCK_BLOCKED
    # the lock is real on the host
    assert _host_getlk(server.export / "f", fcntl.F_WRLCK) == fcntl.F_WRLCK


async def test_getlock_reports_conflicting_lock(server: Served) -> None:
    c = server.client
    a, b = await _two_opens(server)
    assert await c.lock(a, C.LOCK_TYPE_WRLCK, 10, 20) == C.LOCK_SUCCESS
    r = await c.getlock(b, C.LOCK_TYPE_WRLCK, 0, 0)
    assert r.type == C.LOCK_TYPE_WRLCK
    assert (r.start, r.length) == (10, 20)
    # outside the locked range: no conflict
    r = await c.getlock(b, C.LOCK_TYPE_WRLCK, 30, 10)
    assert r.type == C.LOCK_TYPE_UNLCK


async def test_getlock_without_conflict_is_unlck(server: Served) -> None:
    c = server.client
    a, _ = await _two_opens(server)
    r = await c.getlock(a, C.LOCK_TYPE_WRLCK, 0, 0)
    assert r.type == C.LOCK_TYPE_UNLCK


async def test_unlock_then_lock_succeeds(server: Served) -> None:
    c = server.client
    a, b = await _two_opens(server)
    assert await c.lock(a, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS
    assert await c.lock(b, C.LOCK_TYPE_WRLCK) == C.LOCK_BLOCKED
    assert await c.lock(a, C.LOCK_TYPE_UNLCK) == C.LOCK_SUCCESS
    assert _host_getlk(server.export / "f", fcntl.F_WRLCK) == fcntl.F_UNLCK
    assert await c.lock(b, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS
    assert await c.lock(a, C.LOCK_TYPE_RDLCK) == C.LOCK_BLOCKED


async def test_read_locks_share(server: Served) -> None:
    c = server.client
    a, b = await _two_opens(server)
    assert await c.lock(a, C.LOCK_TYPE_RDLCK) == C.LOCK_SUCCESS
    assert await c.lock(b, C.LOCK_TYPE_RDLCK) == C.LOCK_SUCCESS
    assert await c.lock(b, C.LOCK_TYPE_WRLCK) == C.LOCK_BLOCKED
    r = await c.getlock(b, C.LOCK_TYPE_WRLCK)
    assert r.type == C.LOCK_TYPE_RDLCK
    assert _host_getlk(server.export / "f", fcntl.F_WRLCK) == fcntl.F_RDLCK


async def test_disjoint_ranges_do_not_conflict(server: Served) -> None:
    c = server.client
    a, b = await _two_opens(server)
    assert await c.lock(a, C.LOCK_TYPE_WRLCK, 0, 10) == C.LOCK_SUCCESS
    assert await c.lock(b, C.LOCK_TYPE_WRLCK, 10, 10) == C.LOCK_SUCCESS
    assert await c.lock(b, C.LOCK_TYPE_WRLCK, 5, 1) == C.LOCK_BLOCKED


async def test_lock_conflicts_across_connections(server: Served, connect_export: ConnectFn) -> None:
    c = server.client
    (server.export / "f").write_bytes(b"x")
    a = await open_path(c, server.root, "f", C.L_O_RDWR)
    assert await c.lock(a, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS
    async with connect_export() as s2:
        c2: Client = s2.client
        b = await open_path(c2, s2.root, "f", C.L_O_RDWR)
        assert await c2.lock(b, C.LOCK_TYPE_WRLCK, client_id=b"other") == C.LOCK_BLOCKED
        r = await c2.getlock(b, C.LOCK_TYPE_RDLCK)
        assert r.type == C.LOCK_TYPE_WRLCK
        await c.lock(a, C.LOCK_TYPE_UNLCK)
        assert await c2.lock(b, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS


async def test_clunk_releases_locks(server: Served) -> None:
    c = server.client
    a, b = await _two_opens(server)
    assert await c.lock(a, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS
    await c.clunk(a)
    assert await c.lock(b, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS


async def test_same_fid_can_upgrade_and_relock(server: Served) -> None:
    c = server.client
    a, _ = await _two_opens(server)
    assert await c.lock(a, C.LOCK_TYPE_RDLCK) == C.LOCK_SUCCESS
    assert await c.lock(a, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS
    assert await c.lock(a, C.LOCK_TYPE_WRLCK) == C.LOCK_SUCCESS


async def test_lock_on_unopened_fid_is_ebadf(server: Served) -> None:
    (server.export / "f").write_bytes(b"x")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EBADF):
        await c.lock(fid, C.LOCK_TYPE_WRLCK)
    with raises_errno(errno.EBADF):
        await c.getlock(fid, C.LOCK_TYPE_WRLCK)


async def test_lock_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.lock(3030, C.LOCK_TYPE_WRLCK)
    with raises_errno(errno.EBADF):
        await server.client.getlock(3030, C.LOCK_TYPE_WRLCK)


async def test_write_lock_on_read_only_open_is_ebadf(server: Served) -> None:
    """As fcntl: a write lock needs the file open for writing."""
    c = server.client
    a, _ = await _two_opens(server, C.L_O_RDONLY)
    with raises_errno(errno.EBADF):
        await c.lock(a, C.LOCK_TYPE_WRLCK)
    assert await c.lock(a, C.LOCK_TYPE_RDLCK) == C.LOCK_SUCCESS


async def test_lock_bad_type_is_einval(server: Served) -> None:
    c = server.client
    a, _ = await _two_opens(server)
    with raises_errno(errno.EINVAL):
        await c.lock(a, 7)
    with pytest.raises(P9Error):
        await c.getlock(a, 7)


async def test_lock_on_directory_fid(server: Served) -> None:
    """Directories can be opened read-only and read-locked (flock-style users do this)."""
    c = server.client
    d = await clone(c, server.root)
    await c.lopen(d, C.L_O_RDONLY)
    assert await c.lock(d, C.LOCK_TYPE_RDLCK) == C.LOCK_SUCCESS
