"""Tlopen, Tread, Twrite, Tclunk."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C

from .conftest import ConnectFn, Served
from .helpers import (
    assert_fid_unknown,
    clone,
    create_file,
    open_path,
    raises_errno,
    read_path,
)

# ------------------------------------------------------------------ lopen


async def test_lopen_rdonly_reads_host_content(server: Served) -> None:
    (server.export / "f").write_bytes(b"hello world")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    qid, iounit = await c.lopen(fid, C.L_O_RDONLY)
    assert qid.type == C.QidType.FILE
    assert qid == (await c.getattr(fid)).qid
    assert 0 <= iounit <= c.msize - C.IOHDRSZ
    assert await c.read(fid, 0, 100) == b"hello world"


async def test_lopen_wronly_writes_host(server: Served) -> None:
    (server.export / "f").write_bytes(b"0123456789")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_WRONLY)
    assert await c.write(fid, 2, b"ab") == 2
    await c.clunk(fid)
    assert (server.export / "f").read_bytes() == b"01ab456789"


async def test_lopen_wronly_fid_cannot_read(server: Served) -> None:
    (server.export / "f").write_bytes(b"data")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_WRONLY)
    with raises_errno(errno.EBADF):
        await c.read(fid, 0, 4)


async def test_lopen_rdwr_reads_and_writes(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_RDWR)
    await c.write(fid, 3, b"def")
    assert await c.read(fid, 0, 10) == b"abcdef"
    assert (server.export / "f").read_bytes() == b"abcdef"


async def test_lopen_trunc_truncates(server: Served) -> None:
    (server.export / "f").write_bytes(b"something long")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_WRONLY | C.L_O_TRUNC)
    assert os.stat(server.export / "f").st_size == 0
    await c.write(fid, 0, b"new")
    await c.clunk(fid)
    assert (server.export / "f").read_bytes() == b"new"


async def test_lopen_append_appends_at_offset_zero(server: Served) -> None:
    (server.export / "f").write_bytes(b"start-")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_WRONLY | C.L_O_APPEND)
    await c.write(fid, 0, b"end1-")
    await c.write(fid, 0, b"end2")
    await c.clunk(fid)
    assert (server.export / "f").read_bytes() == b"start-end1-end2"


async def test_lopen_directory_then_readdir(server: Served) -> None:
    (server.export / "d").mkdir()
    (server.export / "d" / "x").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "d")
    qid, _ = await c.lopen(fid, C.L_O_RDONLY)
    assert qid.type == C.QidType.DIR
    names = {e.name for e in await c.readdir_all(fid)}
    assert b"x" in names


async def test_tread_on_open_directory_is_eisdir(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await open_path(c, server.root, "d")
    with raises_errno(errno.EISDIR):
        await c.read(fid, 0, 100)


async def test_twrite_on_open_directory_fails(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await open_path(c, server.root, "d")
    with raises_errno(errno.EISDIR, errno.EBADF):
        await c.write(fid, 0, b"x")


async def test_lopen_twice_fails(server: Served) -> None:
    (server.export / "f").write_bytes(b"data")
    c = server.client
    fid = await open_path(c, server.root, "f")
    with pytest.raises(P9Error):
        await c.lopen(fid, C.L_O_RDONLY)
    # the first open is intact
    assert await c.read(fid, 0, 4) == b"data"


@pytest.mark.parametrize("flags", [C.L_O_WRONLY, C.L_O_RDWR])
async def test_lopen_directory_for_write_is_eisdir(server: Served, flags: int) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "d")
    with raises_errno(errno.EISDIR):
        await c.lopen(fid, flags)


async def test_lopen_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.lopen(4242, C.L_O_RDONLY)


async def test_lopen_symlink_fails_without_following(server: Served) -> None:
    """A symlink fid is never opened through to its target (the client follows links itself)."""
    (server.export / "target").write_bytes(b"secret")
    os.symlink("target", server.export / "lnk")
    c = server.client
    fid = await c.walk_to(server.root, "lnk")
    with pytest.raises(P9Error):
        await c.lopen(fid, C.L_O_RDONLY)


async def test_lopen_directory_with_o_directory_on_file_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENOTDIR):
        await c.lopen(fid, C.L_O_RDONLY | C.L_O_DIRECTORY)


async def test_lopen_with_harmless_flags(server: Served) -> None:
    """Flags Linux passes along (O_LARGEFILE, O_CLOEXEC, O_NOCTTY) must not break an open."""
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.lopen(fid, C.L_O_RDONLY | C.L_O_LARGEFILE | C.L_O_CLOEXEC | C.L_O_NOCTTY)
    assert await c.read(fid, 0, 3) == b"abc"


# ------------------------------------------------------------- read/write


async def test_read_offsets_and_short_read_at_eof(server: Served) -> None:
    data = bytes(range(256)) * 4
    (server.export / "f").write_bytes(data)
    c = server.client
    fid = await open_path(c, server.root, "f")
    assert await c.read(fid, 0, 10) == data[:10]
    assert await c.read(fid, 500, 20) == data[500:520]
    assert await c.read(fid, 1000, 100) == data[1000:]  # short: 24 bytes
    assert await c.read(fid, 1024, 100) == b""
    assert await c.read(fid, 1 << 40, 100) == b""


async def test_read_count_is_clamped_by_msize(connect_export: ConnectFn) -> None:
    async with connect_export(msize=65536) as s:
        data = os.urandom(200_000)
        (s.export / "big").write_bytes(data)
        c = s.client
        assert c.msize == 65536
        fid = await open_path(c, s.root, "big")
        got = await c.read(fid, 0, 10 << 20)
        assert 0 < len(got) <= 65536 - C.IOHDRSZ
        assert got == data[: len(got)]


async def test_read_zero_count(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await open_path(c, server.root, "f")
    assert await c.read(fid, 0, 0) == b""


async def test_write_at_offset_past_eof_makes_hole(server: Served) -> None:
    (server.export / "f").write_bytes(b"ab")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_RDWR)
    assert await c.write(fid, 10, b"z") == 1
    assert (server.export / "f").read_bytes() == b"ab" + b"\0" * 8 + b"z"


async def test_large_file_round_trip(server: Served) -> None:
    data = os.urandom(4 << 20)
    c = server.client
    fid = await create_file(c, server.root, "big", data, keep_open=True)
    assert fid is not None
    await c.clunk(fid)
    host = (server.export / "big").read_bytes()
    assert hashlib.sha256(host).digest() == hashlib.sha256(data).digest()
    back = await read_path(c, server.root, "big")
    assert len(back) == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


async def test_read_after_unlink(server: Served) -> None:
    (server.export / "f").write_bytes(b"still here")
    c = server.client
    fid = await open_path(c, server.root, "f")
    await c.unlinkat(server.root, b"f")
    assert not (server.export / "f").exists()
    assert await c.read(fid, 0, 100) == b"still here"


async def test_read_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.read(777, 0, 10)


async def test_read_unopened_fid_is_ebadf(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EBADF):
        await c.read(fid, 0, 3)


async def test_write_unopened_fid_is_ebadf(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EBADF):
        await c.write(fid, 0, b"x")
    assert (server.export / "f").read_bytes() == b"abc"


async def test_write_on_rdonly_fid_is_ebadf(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_RDONLY)
    with raises_errno(errno.EBADF):
        await c.write(fid, 0, b"x")
    assert (server.export / "f").read_bytes() == b"abc"


async def test_write_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.write(31337, 0, b"x")


async def test_write_updates_mtime_and_size(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_WRONLY)
    await c.write(fid, 0, b"12345")
    st = os.stat(p)
    assert st.st_size == 5
    assert st.st_mtime_ns > 1_000_000_000
    attr = await c.getattr(fid)
    assert attr.size == 5


# ------------------------------------------------------------------ clunk


async def test_clunk_frees_fid(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    await c.clunk(fid)
    await assert_fid_unknown(c, fid)
    with raises_errno(errno.EBADF):
        await c.clunk(fid)


async def test_clunk_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.clunk(123456)


async def test_clunk_open_fid_closes_and_fid_number_reusable(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    (server.export / "g").write_bytes(b"xyz")
    c = server.client
    fid = await open_path(c, server.root, "f")
    await c.clunk(fid)
    # the same fid number can be used again for a different file
    _, _ = await c.walk(server.root, [b"g"], newfid=fid)
    await c.lopen(fid, C.L_O_RDONLY)
    assert await c.read(fid, 0, 3) == b"xyz"


@pytest.mark.parametrize("offset", [1 << 63, (1 << 64) - 1])
async def test_read_at_huge_offset(server: Served, offset: int) -> None:
    """Offsets beyond off_t are EINVAL or an empty read, never an internal error."""
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await open_path(c, server.root, "f")
    try:
        data = await c.read(fid, offset, 10)
    except P9Error as e:
        assert e.errno in (errno.EINVAL, errno.EOVERFLOW), e
    else:
        assert data == b""
    assert await c.read(fid, 0, 10) == b"abc"


@pytest.mark.parametrize("offset", [1 << 63, (1 << 64) - 1])
async def test_write_at_huge_offset(server: Served, offset: int) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_RDWR)
    with raises_errno(errno.EINVAL, errno.EFBIG, errno.EOVERFLOW):
        await c.write(fid, offset, b"x")
    assert (server.export / "f").read_bytes() == b"abc"
