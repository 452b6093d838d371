"""Txattrwalk and Txattrcreate (get, list, set, replace, remove)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C

from .conftest import Served
from .helpers import assert_fid_unknown, clone, host_has_user_xattrs, raises_errno


@pytest.fixture(autouse=True)
def _need_user_xattrs(export: Path) -> None:
    if not host_has_user_xattrs(export):
        pytest.skip("the export filesystem does not support user.* xattrs")


async def _setxattr_sequence(c: Client, fid: int, name: bytes, value: bytes, flags: int) -> None:
    """xattrcreate + write + clunk on a clone of ``fid``; the clone is gone afterwards.

    The error of a refused set may come from Txattrcreate or (as QEMU and the
    Linux client expect) from the committing Tclunk; either way the clone is
    freed.
    """
    xfid = await clone(c, fid)
    try:
        await c.xattrcreate(xfid, name, len(value), flags)
        if value:
            assert await c.write(xfid, 0, value) == len(value)
    except BaseException:
        await c.clunk(xfid)
        raise
    try:
        await c.clunk(xfid)
    finally:
        await assert_fid_unknown(c, xfid)


async def test_setxattr_then_get_and_list(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await _setxattr_sequence(c, fid, b"user.test", b"hello\0world", 0)
    assert os.getxattr(p, "user.test", follow_symlinks=False) == b"hello\0world"
    assert await c.getxattr(fid, b"user.test") == b"hello\0world"
    names = await c.getxattr(fid, b"")
    assert names.endswith(b"\0")
    assert b"user.test" in names.split(b"\0")


async def test_xattrwalk_size_and_partial_reads(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    value = bytes(range(200))
    os.setxattr(p, "user.big", value)
    c = server.client
    fid = await c.walk_to(server.root, "f")
    xfid, size = await c.xattrwalk(fid, b"user.big")
    assert size == 200
    assert await c.read(xfid, 0, 50) == value[:50]
    assert await c.read(xfid, 150, 100) == value[150:]
    assert await c.read(xfid, 200, 10) == b""
    await c.clunk(xfid)


async def test_list_matches_host(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    for i in range(5):
        os.setxattr(p, f"user.k{i}", b"v")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    xfid, size = await c.xattrwalk(fid, b"")
    data = await c.read_all(xfid, size)
    await c.clunk(xfid)
    assert len(data) == size
    listed = {n for n in data.split(b"\0") if n}
    host = {os.fsencode(n) for n in os.listxattr(p, follow_symlinks=False)}
    assert listed == host
    assert {f"user.k{i}".encode() for i in range(5)} <= listed


async def test_xattr_on_directory(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "d")
    await _setxattr_sequence(c, fid, b"user.dir", b"1", 0)
    assert os.getxattr(server.export / "d", "user.dir") == b"1"


async def test_xattrcreate_turns_fid_into_xattr_fid_not_file(server: Served) -> None:
    """Writes to an xattrcreate fid fill the attribute, never the file."""
    p = server.export / "f"
    p.write_bytes(b"file data")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await _setxattr_sequence(c, fid, b"user.x", b"XXXX", 0)
    assert p.read_bytes() == b"file data"
    assert os.getxattr(p, "user.x") == b"XXXX"


async def test_xattrcreate_in_pieces(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    xfid = await clone(c, fid)
    await c.xattrcreate(xfid, b"user.pieces", 6, 0)
    await c.write(xfid, 0, b"abc")
    await c.write(xfid, 3, b"def")
    await c.clunk(xfid)
    assert os.getxattr(p, "user.pieces") == b"abcdef"


async def test_xattr_create_flag_on_existing_is_eexist(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user.test", b"old")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EEXIST):
        await _setxattr_sequence(c, fid, b"user.test", b"new", C.XATTR_CREATE)
    assert os.getxattr(p, "user.test") == b"old"


async def test_xattr_create_flag_on_new_name(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await _setxattr_sequence(c, fid, b"user.fresh", b"v", C.XATTR_CREATE)
    assert os.getxattr(p, "user.fresh") == b"v"


async def test_xattr_replace_flag_on_missing_is_enodata(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENODATA):
        await _setxattr_sequence(c, fid, b"user.missing", b"v", C.XATTR_REPLACE)
    assert "user.missing" not in os.listxattr(p)


async def test_xattr_replace_flag_on_existing(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user.test", b"old")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await _setxattr_sequence(c, fid, b"user.test", b"newer", C.XATTR_REPLACE)
    assert os.getxattr(p, "user.test") == b"newer"


async def test_xattr_size_zero_removes(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user.gone", b"x")
    os.setxattr(p, "user.stays", b"y")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await _setxattr_sequence(c, fid, b"user.gone", b"", 0)
    assert "user.gone" not in os.listxattr(p)
    assert os.getxattr(p, "user.stays") == b"y"
    with raises_errno(errno.ENODATA):
        await c.xattrwalk(fid, b"user.gone")


async def test_xattrwalk_missing_is_enodata(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    newfid = c.new_fid()
    with raises_errno(errno.ENODATA):
        await c.xattrwalk(fid, b"user.nothing", newfid)
    await assert_fid_unknown(c, newfid)


async def test_xattrwalk_on_symlink_not_followed(server: Served) -> None:
    p = server.export / "t"
    p.write_bytes(b"")
    os.setxattr(p, "user.target", b"t")
    os.symlink("t", server.export / "l")
    c = server.client
    fid = await c.walk_to(server.root, "l")
    try:
        names = await c.getxattr(fid, b"")
    except P9Error as e:
        assert e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENODATA), e
        return
    assert b"user.target" not in names.split(b"\0")


async def test_xattrwalk_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.xattrwalk(4545, b"user.x")


async def test_xattrcreate_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.xattrcreate(4545, b"user.x", 1, 0)


async def test_xattrcreate_on_open_fid_never_writes_file(server: Served) -> None:
    """Linux always clones first; an open fid is refused or becomes a pure xattr fid."""
    p = server.export / "f"
    p.write_bytes(b"file")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.lopen(fid, C.L_O_RDWR)
    try:
        await c.xattrcreate(fid, b"user.x", 2, 0)
    except P9Error:
        assert await c.read(fid, 0, 10) == b"file"
        return
    await c.write(fid, 0, b"XY")
    await c.clunk(fid)
    assert p.read_bytes() == b"file"
    assert os.getxattr(p, "user.x") == b"XY"


async def test_xattr_write_beyond_declared_size_fails(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    xfid = await clone(c, fid)
    await c.xattrcreate(xfid, b"user.small", 2, 0)
    with pytest.raises(P9Error):
        await c.write(xfid, 0, b"too long")
    try:
        await c.clunk(xfid)
    except P9Error:
        pass
    if "user.small" in os.listxattr(p):
        assert len(os.getxattr(p, "user.small")) <= 2


async def test_xattr_fid_cannot_be_read_after_create(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    xfid = await clone(c, fid)
    await c.xattrcreate(xfid, b"user.w", 3, 0)
    with pytest.raises(P9Error):
        await c.read(xfid, 0, 3)
    await c.write(xfid, 0, b"abc")
    await c.clunk(xfid)


async def test_xattrcreate_empty_name_is_einval(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EINVAL):
        await c.xattrcreate(await clone(c, fid), b"", 1, 0)


async def test_xattr_too_large_is_refused(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.E2BIG, errno.ERANGE, errno.ENOSPC):
        await c.xattrcreate(await clone(c, fid), b"user.huge", 1 << 30, 0)


async def test_write_to_xattrwalk_fid_fails(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user.k", b"v")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    xfid, _ = await c.xattrwalk(fid, b"user.k")
    with pytest.raises(P9Error):
        await c.write(xfid, 0, b"w")
    await c.clunk(xfid)
    assert os.getxattr(p, "user.k") == b"v"
    assert p.read_bytes() == b""


@pytest.mark.parametrize("ns", ["trusted", "security"])
async def test_non_user_namespaces_are_not_served(server: Served, ns: str) -> None:
    """Only user.* xattrs are served: host policy attributes stay invisible and unwritable."""
    if os.geteuid() != 0:
        pytest.skip("setting trusted.*/security.* on the host needs root")
    p = server.export / "f"
    p.write_bytes(b"")
    name = f"{ns}.gofer9ptest"
    try:
        os.setxattr(p, name, b"host")
    except OSError:
        pytest.skip(f"the export filesystem refuses {ns}.* xattrs")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    assert name.encode() not in (await c.getxattr(fid, b"")).split(b"\0")
    with pytest.raises(P9Error):
        await c.getxattr(fid, name.encode())
    with pytest.raises(P9Error):
        await _setxattr_sequence(c, fid, name.encode(), b"guest", 0)
    assert os.getxattr(p, name) == b"host"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_xattrcreate_on_the_fid_tlcreate_opened(server: Served) -> None:
    """After Tlcreate the fid's handle and open fd are one fd: turning that fid into
    an xattr fid must keep it (no I/O through the fid any more, the xattr still
    commits at clunk), and clunk must close it exactly once."""
    c = server.client
    counts = []
    for name in ("made", "again"):  # the first round opens the mount's handle fd, kept for good
        fid = await clone(c, server.root)
        await c.lcreate(fid, name.encode(), C.L_O_RDWR, 0o644)
        assert await c.write(fid, 0, b"data") == 4
        await c.xattrcreate(fid, b"user.k", 3, 0)
        assert await c.write(fid, 0, b"val") == 3  # goes to the xattr, not the file
        await c.clunk(fid)
        assert os.getxattr(server.export / name, "user.k") == b"val"
        assert (server.export / name).read_bytes() == b"data"
        counts.append(_open_fds())
    assert counts[0] == counts[1]


async def test_tlcreate_fid_clone_and_clunk_close_each_fd_once(server: Served) -> None:
    """A clone of a created fid has its own fds; clunking both in either order
    leaves no fd open and closes nothing that belongs to someone else."""
    c = server.client
    before = _open_fds()
    for order in ("created-first", "clone-first"):
        fid = await clone(c, server.root)
        await c.lcreate(fid, f"f-{order}".encode(), C.L_O_RDWR, 0o644)
        twin = await clone(c, fid)
        assert await c.write(fid, 0, b"x") == 1
        first, second = (fid, twin) if order == "created-first" else (twin, fid)
        await c.clunk(first)
        st = await c.getattr(second)  # the other one's fd is still its own
        assert st.size == 1
        await c.clunk(second)
        assert _open_fds() == before
    # and the session still works with fresh fds after those closes
    probe = await clone(c, server.root)
    await c.getattr(probe)
    await c.clunk(probe)


async def test_xattrcreate_on_a_created_fid_drops_its_locks(server: Served) -> None:
    """A fid that becomes an xattr fid does no more file I/O: locks it held on the
    file go away (as they do for a Tlopen'd fid, whose open fd is closed), even
    after Tlcreate, where the open fd stays as the fid's handle."""
    c = server.client
    fid = await clone(c, server.root)
    await c.lcreate(fid, b"locked", C.L_O_RDWR, 0o644)
    assert await c.lock(fid, C.LOCK_TYPE_WRLCK, proc_id=1) == C.LOCK_SUCCESS
    other, _ = await c.walk(server.root, [b"locked"])
    await c.lopen(other, C.L_O_RDWR)
    assert await c.lock(other, C.LOCK_TYPE_WRLCK, proc_id=2) == C.LOCK_BLOCKED
    await c.xattrcreate(fid, b"user.k", 1, 0)
    assert await c.lock(other, C.LOCK_TYPE_WRLCK, proc_id=2) == C.LOCK_SUCCESS
    assert await c.write(fid, 0, b"v") == 1
    await c.clunk(fid)
    assert os.getxattr(server.export / "locked", "user.k") == b"v"
    await c.clunk(other)
