"""Tlcreate, Tmkdir, Tmknod, Tsymlink, Treadlink, and names a create must refuse.

Modes in these tests avoid the bits a 022 umask would clear, so that they
test the server's mode handling, not the test process's umask.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C

from .conftest import Served
from .helpers import clone, host_tree, raises_errno

# ---------------------------------------------------------------- lcreate


async def test_lcreate_makes_open_file(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    qid, iounit = await c.lcreate(fid, b"new", C.L_O_RDWR, 0o640, 0)
    st = os.lstat(server.export / "new")
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert qid.type == C.QidType.FILE
    assert 0 <= iounit <= c.msize - C.IOHDRSZ
    # the fid is now the open file
    assert await c.write(fid, 0, b"payload") == 7
    assert await c.read(fid, 0, 100) == b"payload"
    assert (server.export / "new").read_bytes() == b"payload"
    assert (await c.getattr(fid)).qid == qid


async def test_lcreate_requested_gid(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    await c.lcreate(fid, b"g", C.L_O_WRONLY, 0o604, 4321)
    st = os.lstat(server.export / "g")
    assert st.st_gid == 4321
    assert stat.S_IMODE(st.st_mode) == 0o604


async def test_lcreate_as_other_uid(server: Served) -> None:
    c = server.client
    (server.export / "pub").mkdir()
    (server.export / "pub").chmod(0o777)
    u = await c.attach(uname=b"u", n_uname=1234)
    fid, _ = await c.walk(u, [b"pub"])
    await c.lcreate(fid, b"f", C.L_O_RDWR, 0o600, 1234)
    await c.write(fid, 0, b"mine")
    st = os.lstat(server.export / "pub" / "f")
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert await c.read(fid, 0, 10) == b"mine"


async def test_lcreate_existing_is_eexist(server: Served) -> None:
    (server.export / "f").write_bytes(b"keep")
    c = server.client
    fid = await clone(c, server.root)
    with raises_errno(errno.EEXIST):
        await c.lcreate(fid, b"f", C.L_O_RDWR, 0o640, 0)
    assert (server.export / "f").read_bytes() == b"keep"
    # the fid is unchanged (still the directory) and still usable
    assert (await c.getattr(fid)).qid.type == C.QidType.DIR


async def test_lcreate_existing_symlink_is_eexist_and_not_followed(server: Served) -> None:
    os.symlink("elsewhere", server.export / "lnk")
    c = server.client
    fid = await clone(c, server.root)
    with raises_errno(errno.EEXIST):
        await c.lcreate(fid, b"lnk", C.L_O_RDWR, 0o640, 0)
    assert not (server.export / "elsewhere").exists()


async def test_lcreate_in_file_fid_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENOTDIR):
        await c.lcreate(fid, b"x", C.L_O_RDWR, 0o640, 0)


async def test_lcreate_on_open_fid_fails(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    await c.lopen(fid, C.L_O_RDONLY)
    with pytest.raises(P9Error):
        await c.lcreate(fid, b"x", C.L_O_RDWR, 0o640, 0)


async def test_lcreate_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.lcreate(999, b"x", C.L_O_RDWR, 0o640, 0)


async def test_lcreate_with_trunc_and_append(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    await c.lcreate(fid, b"f", C.L_O_WRONLY | C.L_O_APPEND | C.L_O_TRUNC, 0o640, 0)
    await c.write(fid, 0, b"ab")
    await c.write(fid, 0, b"cd")
    assert (server.export / "f").read_bytes() == b"abcd"


# ------------------------------------------------------------------ mkdir


async def test_mkdir(server: Served) -> None:
    c = server.client
    qid = await c.mkdir(server.root, b"d", 0o750, 55)
    st = os.lstat(server.export / "d")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_uid, st.st_gid) == (0, 55)
    assert qid.type == C.QidType.DIR
    _, qids = await c.walk(server.root, [b"d"])
    assert qids[0] == qid
    # the parent's link count went up
    assert os.stat(server.export).st_nlink == 3


async def test_mkdir_existing_is_eexist(server: Served) -> None:
    (server.export / "d").mkdir()
    (server.export / "f").write_bytes(b"")
    c = server.client
    with raises_errno(errno.EEXIST):
        await c.mkdir(server.root, b"d", 0o755, 0)
    with raises_errno(errno.EEXIST):
        await c.mkdir(server.root, b"f", 0o755, 0)


async def test_mkdir_in_file_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENOTDIR):
        await c.mkdir(fid, b"d", 0o755, 0)


async def test_mkdir_in_removed_dir_is_enoent(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "d")
    (server.export / "d").rmdir()
    with raises_errno(errno.ENOENT):
        await c.mkdir(fid, b"x", 0o755, 0)


# ------------------------------------------------------------------ mknod


async def test_mknod_fifo(server: Served) -> None:
    c = server.client
    qid = await c.mknod(server.root, b"fifo", stat.S_IFIFO | 0o640, 0, 0, 12)
    st = os.lstat(server.export / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == 12
    assert qid.type == C.QidType.FILE
    assert qid.path == (await c.walk(server.root, [b"fifo"]))[1][0].path


async def test_mknod_regular(server: Served) -> None:
    c = server.client
    await c.mknod(server.root, b"reg", stat.S_IFREG | 0o604, 0, 0, 0)
    st = os.lstat(server.export / "reg")
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert st.st_size == 0


async def test_mknod_char_device(server: Served) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    c = server.client
    await c.mknod(server.root, b"null", stat.S_IFCHR | 0o640, 1, 3, 0)
    st = os.lstat(server.export / "null")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)
    attr = await c.getattr(await c.walk_to(server.root, "null"))
    assert attr.rdev == os.makedev(1, 3)


async def test_mknod_existing_is_eexist(server: Served) -> None:
    (server.export / "f").write_bytes(b"x")
    with raises_errno(errno.EEXIST):
        await server.client.mknod(server.root, b"f", stat.S_IFIFO | 0o640, 0, 0, 0)
    assert stat.S_ISREG(os.lstat(server.export / "f").st_mode)


async def test_mknod_directory_type_is_refused(server: Served) -> None:
    """mknod(S_IFDIR) is EINVAL on Linux (mkdir is the way); EPERM is accepted too."""
    with raises_errno(errno.EINVAL, errno.EPERM):
        await server.client.mknod(server.root, b"d", stat.S_IFDIR | 0o755, 0, 0, 0)
    assert not (server.export / "d").exists()


# ---------------------------------------------------------- symlink/readlink


@pytest.mark.parametrize(
    "target", [b"file", b"/etc/passwd", b"does/not/exist", b"../../../outside", b"\xff\xfe"]
)
async def test_symlink_and_readlink(server: Served, target: bytes) -> None:
    c = server.client
    qid = await c.symlink(server.root, b"lnk", target, 7)
    p = server.export / "lnk"
    st = os.lstat(p)
    assert stat.S_ISLNK(st.st_mode)
    assert os.readlink(os.fsencode(p)) == target
    assert st.st_gid == 7
    assert qid.type == C.QidType.SYMLINK
    fid, qids = await c.walk(server.root, [b"lnk"])
    assert qids[0] == qid
    assert await c.readlink(fid) == target


async def test_symlink_existing_is_eexist(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    with raises_errno(errno.EEXIST):
        await server.client.symlink(server.root, b"f", b"x", 0)
    assert not (server.export / "f").is_symlink()


async def test_symlink_in_file_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENOTDIR):
        await c.symlink(fid, b"l", b"x", 0)


async def test_readlink_on_non_symlink_is_einval(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.EINVAL):
        await c.readlink(fid)
    with raises_errno(errno.EINVAL):
        await c.readlink(server.root)


async def test_readlink_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.readlink(4444)


async def test_readlink_host_made_symlink(server: Served) -> None:
    os.symlink("/absolute/target", server.export / "abs")
    c = server.client
    assert await c.readlink(await c.walk_to(server.root, "abs")) == b"/absolute/target"


# ---------------------------------------------------------------- bad names

CreateFn = Callable[[Client, int, bytes], Awaitable[object]]


async def _lcreate(c: Client, dirfid: int, name: bytes) -> object:
    fid = await clone(c, dirfid)
    return await c.lcreate(fid, name, C.L_O_RDWR, 0o640, 0)


async def _mkdir(c: Client, dirfid: int, name: bytes) -> object:
    return await c.mkdir(dirfid, name, 0o755, 0)


async def _mknod(c: Client, dirfid: int, name: bytes) -> object:
    return await c.mknod(dirfid, name, stat.S_IFIFO | 0o640, 0, 0, 0)


async def _symlink(c: Client, dirfid: int, name: bytes) -> object:
    return await c.symlink(dirfid, name, b"target", 0)


CREATORS: dict[str, CreateFn] = {
    "lcreate": _lcreate,
    "mkdir": _mkdir,
    "mknod": _mknod,
    "symlink": _symlink,
}


@pytest.mark.parametrize("op", sorted(CREATORS))
@pytest.mark.parametrize("name", [b"a/b", b"/abs", b"..", b".", b""])
async def test_create_bad_name_is_einval(server: Served, op: str, name: bytes) -> None:
    """Names with ``/``, ``.``, ``..`` and the empty name are not valid create targets.

    ``a`` exists as a directory, so a server that passed ``a/b`` to the host
    would create ``a/b``; nothing may change on the host.
    """
    (server.export / "a").mkdir()
    before = host_tree(server.export)
    errs = (errno.EINVAL,) if b"/" in name or name == b".." else (errno.EINVAL, errno.ENOENT)
    with raises_errno(*errs):
        await CREATORS[op](server.client, server.root, name)
    assert host_tree(server.export) == before
    assert not (server.export.parent / "abs").exists()


async def test_create_nul_name_is_einval(server: Served) -> None:
    for op in CREATORS.values():
        with raises_errno(errno.EINVAL):
            await op(server.client, server.root, b"a\0b")
    assert os.listdir(server.export) == []


async def test_create_long_name_is_enametoolong(server: Served) -> None:
    for op in CREATORS.values():
        with raises_errno(errno.ENAMETOOLONG):
            await op(server.client, server.root, b"n" * 256)
    assert os.listdir(server.export) == []
    # 255 is fine
    await _mkdir(server.client, server.root, b"n" * 255)
    assert (server.export / ("n" * 255)).is_dir()


async def test_lcreate_mode_with_file_type_bits(server: Served) -> None:
    """Linux sends S_IFREG in the Tlcreate mode (and S_IFDIR in Tmkdir)."""
    c = server.client
    fid = await clone(c, server.root)
    await c.lcreate(fid, b"f", C.L_O_RDWR, stat.S_IFREG | 0o640, 0)
    st = os.lstat(server.export / "f")
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    await c.mkdir(server.root, b"d", stat.S_IFDIR | 0o750, 0)
    st = os.lstat(server.export / "d")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750


async def test_mknod_socket(server: Served) -> None:
    c = server.client
    await c.mknod(server.root, b"sock", stat.S_IFSOCK | 0o640, 0, 0, 0)
    st = os.lstat(server.export / "sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640


async def test_mkdir_sticky_bit(server: Served) -> None:
    """mkdir keeps the sticky bit (S_ISGID follows the parent on Linux, so it is not tested)."""
    await server.client.mkdir(server.root, b"d", 0o1750, 0)
    assert stat.S_IMODE(os.lstat(server.export / "d").st_mode) == 0o1750


async def test_symlink_target_with_nul_is_einval(server: Served) -> None:
    with raises_errno(errno.EINVAL):
        await server.client.symlink(server.root, b"l", b"a\0b", 0)
    assert not os.path.lexists(server.export / "l")
