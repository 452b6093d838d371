"""A read-only attach point: every mutating request is EROFS, reads work, nothing changes."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C

from .conftest import ConnectFn, Served
from .helpers import assert_fid_unknown, clone, host_tree, raises_errno, read_path


def _populate(export: Path) -> None:
    (export / "f").write_bytes(b"file data")
    (export / "d").mkdir()
    (export / "d" / "inner").write_bytes(b"inner")
    (export / "empty").mkdir()
    os.symlink("f", export / "l")
    try:
        os.setxattr(export / "f", "user.k", b"v")
    except OSError:
        pass


def _xattrs(p: Path) -> dict[str, bytes]:
    try:
        return {n: os.getxattr(p, n) for n in os.listxattr(p)}
    except OSError:
        return {}


@pytest.fixture
async def ro(connect_export: ConnectFn, export: Path) -> AsyncIterator[Served]:
    _populate(export)
    async with connect_export(readonly=True) as s:
        yield s


Op = Callable[[Client, int, Path], Awaitable[None]]


async def _f(c: Client, root: int) -> int:
    return await c.walk_to(root, "f")


async def _lcreate(c: Client, root: int, e: Path) -> None:
    await c.lcreate(await clone(c, root), b"new", C.L_O_RDWR, 0o640, 0)


async def _lcreate_existing_dir(c: Client, root: int, e: Path) -> None:
    d = await c.walk_to(root, "d")
    await c.lcreate(d, b"new", C.L_O_WRONLY, 0o640, 0)


async def _mkdir(c: Client, root: int, e: Path) -> None:
    await c.mkdir(root, b"newdir", 0o755, 0)


async def _mknod(c: Client, root: int, e: Path) -> None:
    await c.mknod(root, b"fifo", stat.S_IFIFO | 0o640, 0, 0, 0)


async def _symlink(c: Client, root: int, e: Path) -> None:
    await c.symlink(root, b"newlink", b"f", 0)


async def _link(c: Client, root: int, e: Path) -> None:
    await c.link(root, await _f(c, root), b"hard")


async def _rename(c: Client, root: int, e: Path) -> None:
    await c.rename(await _f(c, root), root, b"renamed")


async def _renameat(c: Client, root: int, e: Path) -> None:
    await c.renameat(root, b"f", root, b"renamed")


async def _unlinkat_file(c: Client, root: int, e: Path) -> None:
    await c.unlinkat(root, b"f", 0)


async def _unlinkat_dir(c: Client, root: int, e: Path) -> None:
    await c.unlinkat(root, b"empty", C.AT_REMOVEDIR)


async def _setattr_mode(c: Client, root: int, e: Path) -> None:
    await c.setattr(await _f(c, root), C.SETATTR_MODE, mode=0o600)


async def _setattr_owner(c: Client, root: int, e: Path) -> None:
    await c.setattr(await _f(c, root), C.SETATTR_UID | C.SETATTR_GID, uid=1, gid=1)


async def _setattr_size(c: Client, root: int, e: Path) -> None:
    await c.setattr(await _f(c, root), C.SETATTR_SIZE, size=0)


async def _setattr_times(c: Client, root: int, e: Path) -> None:
    await c.setattr(
        await _f(c, root),
        C.SETATTR_ATIME | C.SETATTR_MTIME | C.SETATTR_MTIME_SET,
        mtime=(1, 0),
    )


async def _setattr_root(c: Client, root: int, e: Path) -> None:
    await c.setattr(root, C.SETATTR_MODE, mode=0o777)


async def _xattrcreate(c: Client, root: int, e: Path) -> None:
    await c.xattrcreate(await _f(c, root), b"user.new", 1, 0)


async def _xattr_remove(c: Client, root: int, e: Path) -> None:
    await c.xattrcreate(await _f(c, root), b"user.k", 0, 0)


def _lopen(flags: int) -> Op:
    async def op(c: Client, root: int, e: Path) -> None:
        await c.lopen(await _f(c, root), flags)

    return op


MUTATIONS: dict[str, Op] = {
    "lcreate": _lcreate,
    "lcreate_in_subdir": _lcreate_existing_dir,
    "mkdir": _mkdir,
    "mknod": _mknod,
    "symlink": _symlink,
    "link": _link,
    "rename": _rename,
    "renameat": _renameat,
    "unlinkat_file": _unlinkat_file,
    "unlinkat_dir": _unlinkat_dir,
    "setattr_mode": _setattr_mode,
    "setattr_owner": _setattr_owner,
    "setattr_size": _setattr_size,
    "setattr_times": _setattr_times,
    "setattr_root": _setattr_root,
    "xattrcreate": _xattrcreate,
    "xattrcreate_remove": _xattr_remove,
    "lopen_wronly": _lopen(C.L_O_WRONLY),
    "lopen_rdwr": _lopen(C.L_O_RDWR),
    "lopen_trunc": _lopen(C.L_O_RDONLY | C.L_O_TRUNC),
    "lopen_wronly_append": _lopen(C.L_O_WRONLY | C.L_O_APPEND),
}


@pytest.mark.parametrize("op", sorted(MUTATIONS))
async def test_mutation_is_erofs(ro: Served, op: str) -> None:
    before = host_tree(ro.export)
    root_mode = os.stat(ro.export).st_mode
    xattrs = _xattrs(ro.export / "f")
    with raises_errno(errno.EROFS):
        await MUTATIONS[op](ro.client, ro.root, ro.export)
    assert host_tree(ro.export) == before
    assert os.stat(ro.export).st_mode == root_mode
    assert _xattrs(ro.export / "f") == xattrs


async def test_remove_is_erofs_and_clunks(ro: Served) -> None:
    c = ro.client
    before = host_tree(ro.export)
    fid = await c.walk_to(ro.root, "f")
    with raises_errno(errno.EROFS):
        await c.remove(fid)
    assert host_tree(ro.export) == before
    await assert_fid_unknown(c, fid)


async def test_write_on_read_only_open_fails(ro: Served) -> None:
    c = ro.client
    fid = await c.walk_to(ro.root, "f")
    await c.lopen(fid, C.L_O_RDONLY)
    with raises_errno(errno.EBADF, errno.EROFS):
        await c.write(fid, 0, b"nope")
    assert (ro.export / "f").read_bytes() == b"file data"


async def test_reads_work_read_only(ro: Served) -> None:
    c = ro.client
    assert await read_path(c, ro.root, "f") == b"file data"
    assert await read_path(c, ro.root, "d/inner") == b"inner"
    attr = await c.getattr(await c.walk_to(ro.root, "f"))
    assert attr.size == 9
    assert await c.readlink(await c.walk_to(ro.root, "l")) == b"f"
    d = await clone(c, ro.root)
    await c.lopen(d, C.L_O_RDONLY)
    names = {e.name for e in await c.readdir_all(d)}
    assert {b"f", b"d", b"empty", b"l"} <= names
    r = await c.statfs(ro.root)
    assert r.blocks == os.statvfs(ro.export).f_blocks


async def test_fsync_and_read_lock_work_read_only(ro: Served) -> None:
    c = ro.client
    fid = await c.walk_to(ro.root, "f")
    await c.lopen(fid, C.L_O_RDONLY)
    await c.fsync(fid, 0)
    assert await c.lock(fid, C.LOCK_TYPE_RDLCK) == C.LOCK_SUCCESS


async def test_xattr_read_works_read_only(ro: Served) -> None:
    try:
        os.getxattr(ro.export / "f", "user.k")
    except OSError:
        pytest.skip("the export filesystem does not support user.* xattrs")
    c = ro.client
    fid = await c.walk_to(ro.root, "f")
    assert await c.getxattr(fid, b"user.k") == b"v"
    assert b"user.k" in (await c.getxattr(fid, b"")).split(b"\0")


async def test_read_only_sees_read_write_changes(server: Served, connect_export: ConnectFn) -> None:
    c = server.client
    async with connect_export(readonly=True) as ro:
        await c.mkdir(server.root, b"fresh", 0o755, 0)
        _, qids = await ro.client.walk(ro.root, [b"fresh"])
        assert qids[0].type == C.QidType.DIR
        with raises_errno(errno.EROFS):
            await ro.client.unlinkat(ro.root, b"fresh", C.AT_REMOVEDIR)
    assert (server.export / "fresh").is_dir()


async def test_read_only_connection_does_not_affect_read_write(
    server: Served, connect_export: ConnectFn
) -> None:
    async with connect_export(readonly=True) as ro:
        with pytest.raises(P9Error):
            await ro.client.mkdir(ro.root, b"x", 0o755, 0)
    await server.client.mkdir(server.root, b"x", 0o755, 0)
    assert (server.export / "x").is_dir()
