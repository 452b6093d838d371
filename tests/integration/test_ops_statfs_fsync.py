"""Tstatfs and Tfsync."""

from __future__ import annotations

import errno
import os

import pytest

from gofer9p.protocol import constants as C

from .conftest import Served
from .helpers import clone, open_path, raises_errno


async def test_statfs_matches_host(server: Served) -> None:
    c = server.client
    r = await c.statfs(server.root)
    st = os.statvfs(server.export)
    assert r.bsize in (st.f_bsize, st.f_frsize)
    assert r.bsize > 0
    assert r.blocks == st.f_blocks
    assert r.files == st.f_files
    assert r.namelen == 255 == st.f_namemax
    assert 0 <= r.bavail <= r.bfree <= r.blocks
    assert 0 <= r.ffree <= r.files
    # free counts move with other users of the disk; they stay close
    assert abs(r.bfree - st.f_bfree) <= max(st.f_blocks // 100, 1024)


async def test_statfs_on_file_fid(server: Served) -> None:
    (server.export / "f").write_bytes(b"x")
    c = server.client
    r = await c.statfs(await c.walk_to(server.root, "f"))
    assert r.blocks == os.statvfs(server.export).f_blocks


async def test_statfs_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.statfs(5151)


@pytest.mark.parametrize("datasync", [0, 1])
async def test_fsync_open_fid(server: Served, datasync: int) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_RDWR)
    await c.write(fid, 0, b"durable")
    await c.fsync(fid, datasync)
    assert (server.export / "f").read_bytes() == b"durable"


async def test_fsync_open_directory(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    await c.lopen(fid, C.L_O_RDONLY)
    await c.fsync(fid, 0)


async def test_fsync_unopened_fid_is_ebadf(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EBADF):
        await c.fsync(fid, 0)


async def test_fsync_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.fsync(6161, 0)
