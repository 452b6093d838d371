"""Tgetattr and Tsetattr, checked against os.stat of the export."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M

from .conftest import ConnectFn, Served
from .helpers import open_path, raises_errno

NS = 1_000_000_000


def _ns(sec: int, nsec: int) -> int:
    return sec * NS + nsec


def _assert_matches(attr: M.Rgetattr, st: os.stat_result) -> None:
    assert attr.valid & C.GETATTR_BASIC == C.GETATTR_BASIC, hex(attr.valid)
    assert attr.mode == st.st_mode
    assert (attr.uid, attr.gid) == (st.st_uid, st.st_gid)
    assert attr.nlink == st.st_nlink
    assert attr.rdev == st.st_rdev
    assert attr.size == st.st_size
    assert attr.blksize == st.st_blksize
    assert attr.blocks == st.st_blocks
    assert _ns(attr.mtime_sec, attr.mtime_nsec) == st.st_mtime_ns
    assert _ns(attr.ctime_sec, attr.ctime_nsec) == st.st_ctime_ns
    assert _ns(attr.atime_sec, attr.atime_nsec) == st.st_atime_ns


# ---------------------------------------------------------------- getattr


async def test_getattr_file_matches_host(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"x" * 10000)
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    os.link(p, server.export / "g")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    attr = await c.getattr(fid, C.GETATTR_BASIC)
    st = os.lstat(p)
    _assert_matches(attr, st)
    assert attr.nlink == 2
    assert (attr.mtime_sec, attr.mtime_nsec) == (1_600_000_000, 987_654_321)
    assert (attr.atime_sec, attr.atime_nsec) == (1_500_000_000, 123_456_789)
    assert attr.qid.type == C.QidType.FILE
    assert stat.S_ISREG(attr.mode)


async def test_getattr_directory(server: Served) -> None:
    (server.export / "d" / "s").mkdir(parents=True)
    c = server.client
    fid = await c.walk_to(server.root, "d")
    attr = await c.getattr(fid)
    _assert_matches(attr, os.lstat(server.export / "d"))
    assert attr.qid.type == C.QidType.DIR
    assert stat.S_ISDIR(attr.mode)
    assert attr.nlink == 3


async def test_getattr_symlink_not_followed(server: Served) -> None:
    (server.export / "t").write_bytes(b"target content")
    os.symlink("t", server.export / "l")
    c = server.client
    fid = await c.walk_to(server.root, "l")
    attr = await c.getattr(fid)
    st = os.lstat(server.export / "l")
    _assert_matches(attr, st)
    assert stat.S_ISLNK(attr.mode)
    assert attr.size == 1
    assert attr.qid.type == C.QidType.SYMLINK


async def test_getattr_device_rdev(server: Served) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mknod a device")
    os.mknod(server.export / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    c = server.client
    attr = await c.getattr(await c.walk_to(server.root, "null"))
    assert attr.rdev == os.makedev(1, 3)
    assert stat.S_ISCHR(attr.mode)


@pytest.mark.parametrize(
    "mask",
    [C.GETATTR_MODE, C.GETATTR_SIZE, C.GETATTR_MTIME | C.GETATTR_UID, C.GETATTR_ALL],
)
async def test_getattr_honours_request_mask(server: Served, mask: int) -> None:
    p = server.export / "f"
    p.write_bytes(b"abc")
    c = server.client
    attr = await c.getattr(await c.walk_to(server.root, "f"), mask)
    basic = mask & C.GETATTR_BASIC
    assert attr.valid & basic == basic, (hex(mask), hex(attr.valid))
    st = os.lstat(p)
    if mask & C.GETATTR_MODE:
        assert attr.mode == st.st_mode
    if mask & C.GETATTR_SIZE:
        assert attr.size == 3
    if mask & C.GETATTR_MTIME:
        assert _ns(attr.mtime_sec, attr.mtime_nsec) == st.st_mtime_ns
    if mask & C.GETATTR_UID:
        assert attr.uid == st.st_uid


async def test_getattr_open_fid_sees_writes(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_RDWR)
    await c.write(fid, 0, b"12345678")
    assert (await c.getattr(fid, C.GETATTR_SIZE)).size == 8


async def test_getattr_unlinked_file_still_answers(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    (server.export / "f").unlink()
    attr = await c.getattr(fid)
    assert attr.nlink == 0
    assert attr.size == 3


async def test_getattr_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.getattr(12121)


# ---------------------------------------------------------------- setattr


async def test_setattr_mode(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.chmod(p, 0o644)
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_MODE, mode=0o600)
    assert stat.S_IMODE(os.lstat(p).st_mode) == 0o600
    assert stat.S_ISREG(os.lstat(p).st_mode)
    await c.setattr(fid, C.SETATTR_MODE, mode=0o4751)
    assert stat.S_IMODE(os.lstat(p).st_mode) == 0o4751


async def test_setattr_mode_on_directory(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "d")
    await c.setattr(fid, C.SETATTR_MODE, mode=0o1777)
    assert stat.S_IMODE(os.lstat(server.export / "d").st_mode) == 0o1777


async def test_setattr_uid_gid(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_UID | C.SETATTR_GID, uid=1234, gid=5678)
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    await c.setattr(fid, C.SETATTR_GID, uid=999, gid=42)
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid) == (1234, 42)
    await c.setattr(fid, C.SETATTR_UID, uid=77, gid=999)
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid) == (77, 42)


async def test_setattr_uid_on_symlink_changes_link(server: Served) -> None:
    (server.export / "t").write_bytes(b"")
    os.symlink("t", server.export / "l")
    c = server.client
    fid = await c.walk_to(server.root, "l")
    await c.setattr(fid, C.SETATTR_UID | C.SETATTR_GID, uid=1234, gid=1234)
    assert os.lstat(server.export / "l").st_uid == 1234
    assert os.lstat(server.export / "t").st_uid == 0


async def test_setattr_size_truncates_down_and_up(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"0123456789")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_SIZE, size=4)
    assert p.read_bytes() == b"0123"
    await c.setattr(fid, C.SETATTR_SIZE, size=8)
    assert p.read_bytes() == b"0123\0\0\0\0"
    await c.setattr(fid, C.SETATTR_SIZE, size=0)
    assert p.read_bytes() == b""


async def test_setattr_size_on_open_fid(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"0123456789")
    c = server.client
    fid = await open_path(c, server.root, "f", C.L_O_RDWR)
    await c.setattr(fid, C.SETATTR_SIZE, size=3)
    assert await c.read(fid, 0, 100) == b"012"
    assert os.stat(p).st_size == 3


async def test_setattr_size_on_directory_is_eisdir(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "d")
    with raises_errno(errno.EISDIR):
        await c.setattr(fid, C.SETATTR_SIZE, size=0)


async def test_setattr_size_on_symlink_does_not_truncate_target(server: Served) -> None:
    (server.export / "t").write_bytes(b"precious")
    os.symlink("t", server.export / "l")
    c = server.client
    fid = await c.walk_to(server.root, "l")
    with pytest.raises(P9Error):
        await c.setattr(fid, C.SETATTR_SIZE, size=0)
    assert (server.export / "t").read_bytes() == b"precious"


async def test_setattr_times_set_exact(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(
        fid,
        C.SETATTR_ATIME | C.SETATTR_ATIME_SET | C.SETATTR_MTIME | C.SETATTR_MTIME_SET,
        atime=(1_000_000_000, 111_111_111),
        mtime=(1_200_000_000, 999_999_999),
    )
    st = os.lstat(p)
    assert st.st_atime_ns == _ns(1_000_000_000, 111_111_111)
    assert st.st_mtime_ns == _ns(1_200_000_000, 999_999_999)
    attr = await c.getattr(fid)
    assert (attr.mtime_sec, attr.mtime_nsec) == (1_200_000_000, 999_999_999)


async def test_setattr_mtime_only_keeps_atime(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.utime(p, ns=(_ns(1_100_000_000, 5), _ns(1_100_000_000, 6)))
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_MTIME | C.SETATTR_MTIME_SET, mtime=(1_300_000_000, 7))
    st = os.lstat(p)
    assert st.st_mtime_ns == _ns(1_300_000_000, 7)
    assert st.st_atime_ns == _ns(1_100_000_000, 5)


async def test_setattr_atime_only_keeps_mtime(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    os.utime(p, ns=(_ns(1_100_000_000, 5), _ns(1_100_000_000, 6)))
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_ATIME | C.SETATTR_ATIME_SET, atime=(1_300_000_000, 8))
    st = os.lstat(p)
    assert st.st_atime_ns == _ns(1_300_000_000, 8)
    assert st.st_mtime_ns == _ns(1_100_000_000, 6)


async def test_setattr_times_now(server: Served) -> None:
    """ATIME/MTIME without the _SET bits mean "now"; the given times are ignored."""
    p = server.export / "f"
    p.write_bytes(b"")
    os.utime(p, ns=(_ns(1_000_000_000, 0), _ns(1_000_000_000, 0)))
    c = server.client
    fid = await c.walk_to(server.root, "f")
    before = time.time_ns() - NS
    await c.setattr(
        fid,
        C.SETATTR_ATIME | C.SETATTR_MTIME,
        atime=(1_234_567_890, 0),
        mtime=(1_234_567_890, 0),
    )
    after = time.time_ns() + NS
    st = os.lstat(p)
    assert before <= st.st_atime_ns <= after
    assert before <= st.st_mtime_ns <= after


async def test_setattr_mtime_now_atime_set(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    before = time.time_ns() - NS
    await c.setattr(
        fid,
        C.SETATTR_ATIME | C.SETATTR_ATIME_SET | C.SETATTR_MTIME,
        atime=(1_111_111_111, 42),
    )
    st = os.lstat(p)
    assert st.st_atime_ns == _ns(1_111_111_111, 42)
    assert before <= st.st_mtime_ns <= time.time_ns() + NS


async def test_setattr_times_on_symlink_not_target(server: Served) -> None:
    (server.export / "t").write_bytes(b"")
    os.symlink("t", server.export / "l")
    target_before = os.stat(server.export / "t").st_mtime_ns
    c = server.client
    fid = await c.walk_to(server.root, "l")
    await c.setattr(fid, C.SETATTR_MTIME | C.SETATTR_MTIME_SET, mtime=(1_000_000_000, 1))
    assert os.lstat(server.export / "l").st_mtime_ns == _ns(1_000_000_000, 1)
    assert os.stat(server.export / "t").st_mtime_ns == target_before


async def test_setattr_everything_at_once(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"abcdef")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(
        fid,
        C.SETATTR_MODE
        | C.SETATTR_UID
        | C.SETATTR_GID
        | C.SETATTR_SIZE
        | C.SETATTR_ATIME
        | C.SETATTR_ATIME_SET
        | C.SETATTR_MTIME
        | C.SETATTR_MTIME_SET,
        mode=0o640,
        uid=1000,
        gid=1001,
        size=2,
        atime=(1_000_000_001, 1),
        mtime=(1_000_000_002, 2),
    )
    st = os.lstat(p)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert st.st_size == 2
    assert st.st_atime_ns == _ns(1_000_000_001, 1)
    assert st.st_mtime_ns == _ns(1_000_000_002, 2)


async def test_setattr_ctime_only_is_accepted(server: Served) -> None:
    p = server.export / "f"
    p.write_bytes(b"")
    before = os.lstat(p)
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_CTIME)
    after = os.lstat(p)
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
    )


async def test_setattr_seen_by_getattr_on_other_connection(
    server: Served, connect_export: ConnectFn
) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_MODE, mode=0o604)
    async with connect_export() as s2:
        attr = await s2.client.getattr(await s2.client.walk_to(s2.root, "f"))
        assert stat.S_IMODE(attr.mode) == 0o604


async def test_setattr_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.setattr(2323, C.SETATTR_MODE, mode=0o600)


async def test_setattr_unlinked_file_enoent_or_ok(server: Served) -> None:
    """An fid whose file is gone: chmod either works on the inode or fails cleanly."""
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    (server.export / "f").unlink()
    try:
        await c.setattr(fid, C.SETATTR_MODE, mode=0o600)
    except P9Error as e:
        assert e.errno in (errno.ENOENT, errno.ESTALE), e
        return
    assert stat.S_IMODE((await c.getattr(fid)).mode) == 0o600


async def test_setattr_mode_with_file_type_bits(server: Served) -> None:
    """Linux v9fs sends ``ia_mode`` including the S_IFMT bits of the inode."""
    p = server.export / "f"
    p.write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.setattr(fid, C.SETATTR_MODE, mode=stat.S_IFREG | 0o600)
    st = os.lstat(p)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


async def test_setattr_huge_size_fails_cleanly(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EINVAL, errno.EFBIG):
        await c.setattr(fid, C.SETATTR_SIZE, size=(1 << 64) - 1)
    assert (server.export / "f").read_bytes() == b"abc"
