"""Escapes by name: ``..`` at and above the attach root, and hostile names for every naming op.

Each test ends with ``esc.assert_contained()``: nothing outside the export was created, written,
chmodded, renamed, linked, read or listed, and no reply carried host data (see conftest.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C

from .conftest import PWN, Esc, expect_error

ROOT_NAME_ERRORS = {errno.EBUSY, errno.EINVAL, errno.EPERM, errno.EACCES, errno.ENOENT}


async def _root_ino_qid(esc: Esc) -> tuple[int, int]:
    r = await esc.client.getattr(esc.root)
    return r.qid.path, os.stat(esc.export).st_ino


# ------------------------------------------------------------------------------------- ..


async def test_dotdot_at_root_is_root(esc: Esc) -> None:
    """walk [".."] from the attach root: the qid and the inode are the root's own."""
    c = esc.client
    root_qid = (await c.getattr(esc.root)).qid
    fid, qids = await c.walk(esc.root, [b".."])
    assert qids == [root_qid]
    r = await c.getattr(fid)
    assert r.qid == root_qid
    assert r.qid.path & ((1 << 56) - 1) == os.stat(esc.export).st_ino
    esc.assert_contained()


async def test_dotdot_in_place_many_times(esc: Esc) -> None:
    """Walking ".." with newfid == fid, 100 times, never leaves the root."""
    c = esc.client
    root_qid = (await c.getattr(esc.root)).qid
    fid, _ = await c.walk(esc.root, [])
    for _ in range(100):
        _, qids = await c.walk(fid, [b".."], fid)
        assert qids == [root_qid]
    assert (await c.getattr(fid)).qid == root_qid
    esc.assert_contained()


async def test_dotdot_below_then_above_root(esc: Esc) -> None:
    """walk [sub, "..", "..", ".."]: the last three qids are all the root."""
    c = esc.client
    (esc.export / "sub").mkdir()
    root_qid = (await c.getattr(esc.root)).qid
    fid, qids = await c.walk(esc.root, [b"sub", b"..", b"..", b".."])
    assert len(qids) == 4
    assert qids[1:] == [root_qid] * 3
    assert (await c.getattr(fid)).qid == root_qid
    esc.assert_contained()


async def test_sixteen_dotdots_then_outside_name(esc: Esc) -> None:
    """15 x ".." then "outside": the outside dir (a sibling of the export) is never reached."""
    c = esc.client
    root_qid = (await c.getattr(esc.root)).qid
    # a partial walk (15 root qids, newfid not created) is the legal answer
    _, qids = await c.walk(esc.root, [b".."] * 15 + [b"outside"])
    assert len(qids) == 15 and all(q == root_qid for q in qids)
    esc.assert_contained()


async def test_dotdot_chain_to_secret(esc: Esc) -> None:
    c = esc.client
    (esc.export / "sub").mkdir()
    for names in (
        [b"..", b"outside", b"secret"],
        [b"sub", b"..", b"..", b"outside", b"secret"],
        [b"..", b"..", b"..", b"etc", b"passwd"],
    ):
        try:
            _, qids = await c.walk(esc.root, names)
        except P9Error:
            continue
        assert len(qids) < len(names), f"walk {names} reached the end"
    esc.assert_contained()


async def test_dotdot_from_deep_dir_stays_inside(esc: Esc) -> None:
    """From a/b/c, 20 ".." (two walks of 10) end at the root and not above."""
    c = esc.client
    (esc.export / "a" / "b" / "c").mkdir(parents=True)
    root_qid = (await c.getattr(esc.root)).qid
    fid, _ = await c.walk(esc.root, [b"a", b"b", b"c"])
    fid2, qids = await c.walk(fid, [b".."] * 10)
    assert qids[-1] == root_qid
    _, qids = await c.walk(fid2, [b".."] * 10)
    assert set(map(tuple, [(q.type, q.path) for q in qids])) == {(root_qid.type, root_qid.path)}
    esc.assert_contained()


async def test_readdir_of_root_lists_only_the_export(esc: Esc) -> None:
    """Root listing: ".." is the root itself, and no outside name appears."""
    c = esc.client
    (esc.export / "inside").write_bytes(b"i")
    root_qid = (await c.getattr(esc.root)).qid
    fid, _ = await c.walk(esc.root, [])
    await c.lopen(fid, C.L_O_RDONLY | C.L_O_DIRECTORY)
    ents = await c.readdir_all(fid)
    names = {e.name for e in ents}
    assert names == {b".", b"..", b"inside"}
    dotdot = next(e for e in ents if e.name == b"..")
    assert dotdot.qid.path == root_qid.path
    esc.assert_contained()


# ------------------------------------------------------------------------------ the root


async def test_remove_of_root_refused(esc: Esc) -> None:
    """Tremove of the attach root would rmdir the export in its (outside) parent."""
    c = esc.client
    (esc.export / "sub").mkdir()
    fid, _ = await c.walk(esc.root, [])
    err = await expect_error(c.remove(fid))
    assert err in ROOT_NAME_ERRORS
    # the root reached another way is still the root
    for names in ([b"sub", b".."], [b".."], [b"sub", b"..", b".."]):
        fid, _ = await c.walk(esc.root, names)
        assert await expect_error(c.remove(fid)) in ROOT_NAME_ERRORS
    fid = await c.attach(uname=b"root", aname=b"sub/..", n_uname=0)
    assert await expect_error(c.remove(fid)) in ROOT_NAME_ERRORS
    assert esc.export.is_dir()
    esc.assert_contained()


async def test_rename_of_root_refused(esc: Esc) -> None:
    """Trename of the root would rename the export inside its (outside) parent."""
    c = esc.client
    (esc.export / "sub").mkdir()
    sub, _ = await c.walk(esc.root, [b"sub"])
    fid, _ = await c.walk(esc.root, [])
    for dfid in (esc.root, sub):
        await expect_error(c.rename(fid, dfid, PWN))
    assert esc.export.is_dir()
    esc.assert_contained()


async def test_rename_into_root_parent_via_dotdot_fid(esc: Esc) -> None:
    """dfid = walk(root, [".."]) is the root, so a rename there stays inside."""
    c = esc.client
    (esc.export / "f").write_bytes(b"f")
    up, _ = await c.walk(esc.root, [b".."])
    f, _ = await c.walk(esc.root, [b"f"])
    await c.rename(f, up, b"g")
    assert (esc.export / "g").read_bytes() == b"f"
    esc.assert_contained()


async def test_hard_link_of_root_refused(esc: Esc) -> None:
    c = esc.client
    fid, _ = await c.walk(esc.root, [])
    await expect_error(c.link(esc.root, fid, b"rootlink"))
    esc.assert_contained()


# -------------------------------------------------------------------- hostile names


BAD_NAMES: list[bytes] = [
    b"",
    b".",
    b"..",
    b"/",
    b"a/b",
    b"../outside/" + PWN.encode(),
    b"/tmp/" + PWN.encode(),
    b"x\x00y",
    b"\x00",
    b"a/../../outside/" + PWN.encode(),
]
BAD_IDS = ["empty", "dot", "dotdot", "slash", "a-slash-b", "dotdot-outside", "absolute",
           "nul-inside", "nul", "a-dotdot-dotdot"]

Op = Callable[[Client, int, int, bytes], Awaitable[object]]


async def _op_walk(c: Client, root: int, f: int, name: bytes) -> object:
    return await c.walk(root, [name])


async def _op_lcreate(c: Client, root: int, f: int, name: bytes) -> object:
    d, _ = await c.walk(root, [])
    return await c.lcreate(d, name, C.L_O_RDWR | C.L_O_CREAT, 0o644)


async def _op_mkdir(c: Client, root: int, f: int, name: bytes) -> object:
    return await c.mkdir(root, name, 0o755)


async def _op_mknod(c: Client, root: int, f: int, name: bytes) -> object:
    return await c.mknod(root, name, stat.S_IFIFO | 0o644)


async def _op_symlink(c: Client, root: int, f: int, name: bytes) -> object:
    return await c.symlink(root, name, b"target")


async def _op_link(c: Client, root: int, f: int, name: bytes) -> object:
    await c.link(root, f, name)
    return None


async def _op_rename(c: Client, root: int, f: int, name: bytes) -> object:
    await c.rename(f, root, name)
    return None


async def _op_renameat_old(c: Client, root: int, f: int, name: bytes) -> object:
    await c.renameat(root, name, root, PWN)
    return None


async def _op_renameat_new(c: Client, root: int, f: int, name: bytes) -> object:
    await c.renameat(root, b"victim", root, name)
    return None


async def _op_unlinkat(c: Client, root: int, f: int, name: bytes) -> object:
    await c.unlinkat(root, name, 0)
    return None


async def _op_rmdirat(c: Client, root: int, f: int, name: bytes) -> object:
    await c.unlinkat(root, name, C.AT_REMOVEDIR)
    return None


OPS: dict[str, Op] = {
    "walk": _op_walk,
    "lcreate": _op_lcreate,
    "mkdir": _op_mkdir,
    "mknod": _op_mknod,
    "symlink": _op_symlink,
    "link": _op_link,
    "rename": _op_rename,
    "renameat-old": _op_renameat_old,
    "renameat-new": _op_renameat_new,
    "unlinkat": _op_unlinkat,
    "unlinkat-rmdir": _op_rmdirat,
}


def _export_tree(esc: Esc) -> list[str]:
    out = []
    for d, dirs, files in os.walk(esc.export):
        rel = os.path.relpath(d, esc.export)
        out += [os.path.join(rel, n) for n in dirs + files]
    return sorted(out)


@pytest.mark.parametrize("name", BAD_NAMES, ids=BAD_IDS)
@pytest.mark.parametrize("op", list(OPS), ids=list(OPS))
async def test_hostile_name(esc: Esc, op: str, name: bytes) -> None:
    """Every naming op refuses a name that is not exactly one real component.

    The export holds a directory ``a`` (so ``a/b`` would *work* if passed to the kernel),
    a file ``victim`` and a directory ``x`` (so ``x\\0y`` truncated to ``x`` would hit it).
    Walk is the one op where ``..`` is legal; it is tested separately above.
    """
    if op == "walk" and name == b"..":
        pytest.skip("'..' is a legal walk name (see the dotdot tests)")
    c = esc.client
    (esc.export / "a").mkdir()
    (esc.export / "a" / "b").write_bytes(b"ab")
    (esc.export / "victim").write_bytes(b"victim")
    (esc.export / "x").mkdir()
    before = _export_tree(esc)
    f, _ = await c.walk(esc.root, [b"victim"])
    err = await expect_error(OPS[op](c, esc.root, f, name))
    if op in ("walk", "lcreate", "mknod", "symlink", "link", "rename", "renameat-new"):
        # nothing a kernel would say by accident: the name itself must be refused
        assert err in (errno.EINVAL, errno.ENOENT, errno.EEXIST, errno.EPERM, errno.EBUSY,
                       errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY), err
    assert _export_tree(esc) == before, "the export changed on a refused request"
    await c.getattr(esc.root)  # connection still fine
    esc.assert_contained()


XATTR_BAD_NAMES = [b"..", b"../outside/secret", b"/etc/passwd", b"user.a\x00b", b"\x00"]
XATTR_IDS = ["dotdot", "path", "absolute", "nul-inside", "nul"]


@pytest.mark.parametrize("name", XATTR_BAD_NAMES, ids=XATTR_IDS)
async def test_hostile_xattrwalk_name(esc: Esc, name: bytes) -> None:
    """xattr names are not paths: nothing outside is reached, and a NUL does not truncate."""
    c = esc.client
    p = esc.export / "f"
    p.write_bytes(b"f")
    os.setxattr(p, "user.a", b"value-of-a")
    f, _ = await c.walk(esc.root, [b"f"])
    try:
        xfid, size = await c.xattrwalk(f, name)
    except P9Error:
        pass
    else:
        data = await c.read_all(xfid, size)
        assert data != b"value-of-a", "a NUL in the name truncated it to user.a"
    await c.getattr(esc.root)
    esc.assert_contained()


@pytest.mark.parametrize("name", XATTR_BAD_NAMES, ids=XATTR_IDS)
async def test_hostile_xattrcreate_name(esc: Esc, name: bytes) -> None:
    c = esc.client
    p = esc.export / "f"
    p.write_bytes(b"f")
    f, _ = await c.walk(esc.root, [b"f"])
    try:
        await c.xattrcreate(f, name, 3)
        await c.write(f, 0, b"pwn")
        await c.clunk(f)
    except P9Error:
        pass
    assert "user.a" not in os.listxattr(p), "a NUL in the name truncated it to user.a"
    await c.getattr(esc.root)
    esc.assert_contained()


async def test_walk_of_seventeen_dotdots_refused(esc: Esc) -> None:
    c = esc.client
    await expect_error(c.walk(esc.root, [b".."] * 17))
    esc.assert_contained()
