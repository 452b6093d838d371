"""Escapes through symlinks planted in the export (by the host or by the client itself).

A symlink is data for the client to resolve (Treadlink); the gofer must never follow one on the
host: not in a walk, not in an open, not as the directory of a create/rename/link/unlink, not in
setattr or xattr calls, and not when a new name is created over a dangling link.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable

import pytest

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C

from .conftest import PWN, XATTR_NAME, XATTR_VALUE, Esc, World, expect_error


def plant(world: World) -> dict[str, str]:
    """Create the symlink zoo in the export; returns name -> target."""
    links = {
        "abs_passwd": "/etc/passwd",
        "abs_secret": str(world.secret),
        "rel_secret": "../outside/secret",
        "abs_outdir": str(world.outdir),
        "rel_outdir": "../outside/dir",
        "chain1": "chain2",
        "chain2": "rel_secret",
        "chaindir1": "chaindir2",
        "chaindir2": "rel_outdir",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
        "self": "self",
        "dotdot": "..",
        "slash": "/",
        "dangling_rel": f"../outside/{PWN}-rel",
        "dangling_abs": f"{world.outside}/{PWN}-abs",
    }
    for name, target in links.items():
        os.symlink(target, world.export / name)
    (world.export / "f").write_bytes(b"inside file")
    return links


FILE_LINKS = ["abs_passwd", "abs_secret", "rel_secret", "chain1", "loop_a", "self",
              "dangling_rel", "dangling_abs"]
DIR_LINKS = ["abs_outdir", "rel_outdir", "chaindir1", "dotdot", "slash"]
THROUGH = {
    "abs_outdir": [b"x"],
    "rel_outdir": [b"x"],
    "chaindir1": [b"x"],
    "dotdot": [b"outside", b"secret"],
    "slash": [b"etc", b"passwd"],
    "loop_a": [b"x"],
}


@pytest.fixture
def links(esc: Esc) -> dict[str, str]:
    return plant(esc.world)


# ----------------------------------------------------------------------- walk / open


@pytest.mark.parametrize("link", sorted(THROUGH))
async def test_walk_through_symlink_stops(esc: Esc, links: dict[str, str], link: str) -> None:
    """A walk through a symlink stops at the link (partial Rwalk or Rlerror), never past it."""
    c = esc.client
    names = [link.encode(), *THROUGH[link]]
    try:
        _, qids = await c.walk(esc.root, names)
    except P9Error:
        pass
    else:
        assert len(qids) == 1, f"walk {names} went through the symlink: {qids}"
        assert qids[0].type & C.QidType.SYMLINK
    esc.assert_contained()


@pytest.mark.parametrize("link", FILE_LINKS + DIR_LINKS)
async def test_walk_to_symlink_gives_the_link(esc: Esc, links: dict[str, str], link: str) -> None:
    """The fid is the link: symlink qid, lstat attributes, readlink = the planted target."""
    c = esc.client
    fid, qids = await c.walk(esc.root, [link.encode()])
    assert qids[0].type & C.QidType.SYMLINK
    r = await c.getattr(fid)
    assert stat.S_ISLNK(r.mode), oct(r.mode)
    assert r.size == len(links[link])
    assert await c.readlink(fid) == links[link].encode()
    esc.assert_contained()


OPEN_FLAGS = {
    "rdonly": C.L_O_RDONLY,
    "rdwr": C.L_O_RDWR,
    "wronly-trunc": C.L_O_WRONLY | C.L_O_TRUNC,
    "directory": C.L_O_RDONLY | C.L_O_DIRECTORY,
    "append": C.L_O_WRONLY | C.L_O_APPEND,
}


@pytest.mark.parametrize("flags", list(OPEN_FLAGS.values()), ids=list(OPEN_FLAGS))
@pytest.mark.parametrize("link", ["abs_passwd", "rel_secret", "chain1", "loop_a", "rel_outdir",
                                  "dangling_rel"])
async def test_lopen_symlink_is_eloop(
    esc: Esc, links: dict[str, str], link: str, flags: int
) -> None:
    """Tlopen of a symlink fid is ELOOP and never opens (reads, truncates) the target."""
    c = esc.client
    fid, _ = await c.walk(esc.root, [link.encode()])
    err = await expect_error(c.lopen(fid, flags))
    assert err == errno.ELOOP, errno.errorcode.get(err)
    # the fid is still usable for what a symlink fid is good for
    await c.readlink(fid)
    with pytest.raises(P9Error):
        await c.read(fid, 0, 4096)
    assert not os.path.lexists(esc.world.outside / f"{PWN}-rel")
    esc.assert_contained()


async def test_readdir_of_dir_symlink(esc: Esc, links: dict[str, str]) -> None:
    """A directory symlink can be neither opened as a directory nor read as one."""
    c = esc.client
    for link in DIR_LINKS:
        fid, _ = await c.walk(esc.root, [link.encode()])
        with pytest.raises(P9Error):
            await c.readdir(fid)
        await expect_error(c.lopen(fid, C.L_O_RDONLY | C.L_O_DIRECTORY))
        with pytest.raises(P9Error):
            await c.readdir(fid)
    esc.assert_contained()


# ------------------------------------------------------- creating through a link


CREATORS = ["lcreate", "mkdir", "mknod", "symlink", "link"]


@pytest.mark.parametrize("creator", CREATORS)
@pytest.mark.parametrize("link", ["rel_outdir", "abs_outdir", "chaindir1", "dotdot", "slash"])
async def test_create_inside_symlinked_dir(
    esc: Esc, links: dict[str, str], link: str, creator: str
) -> None:
    """dfid = a directory symlink: every create fails, nothing appears outside."""
    c = esc.client
    d, _ = await c.walk(esc.root, [link.encode()])
    f, _ = await c.walk(esc.root, [b"f"])
    name = PWN.encode()
    coro: Awaitable[object]
    if creator == "lcreate":
        coro = c.lcreate(d, name, C.L_O_RDWR | C.L_O_CREAT, 0o644)
    elif creator == "mkdir":
        coro = c.mkdir(d, name)
    elif creator == "mknod":
        coro = c.mknod(d, name, stat.S_IFIFO | 0o644)
    elif creator == "symlink":
        coro = c.symlink(d, name, b"/etc/shadow")
    else:
        coro = c.link(d, f, name)
    await expect_error(coro)
    esc.assert_contained()


@pytest.mark.parametrize("creator", ["lcreate", "mkdir", "mknod", "symlink", "link"])
@pytest.mark.parametrize("link", ["dangling_rel", "dangling_abs"])
async def test_create_over_dangling_symlink(
    esc: Esc, links: dict[str, str], link: str, creator: str
) -> None:
    """Creating a name that is a dangling symlink must not create the link's target outside
    (open(O_CREAT) without O_EXCL|O_NOFOLLOW would)."""
    c = esc.client
    name = link.encode()
    f, _ = await c.walk(esc.root, [b"f"])
    if creator == "lcreate":
        d, _ = await c.walk(esc.root, [])
        for flags in (C.L_O_RDWR | C.L_O_CREAT, C.L_O_WRONLY | C.L_O_CREAT | C.L_O_TRUNC):
            await expect_error(c.lcreate(d, name, flags, 0o644))
    elif creator == "mkdir":
        await expect_error(c.mkdir(esc.root, name))
    elif creator == "mknod":
        await expect_error(c.mknod(esc.root, name, stat.S_IFREG | 0o644))
    elif creator == "symlink":
        await expect_error(c.symlink(esc.root, name, b"x"))
    else:
        await expect_error(c.link(esc.root, f, name))
    assert os.path.islink(esc.export / link)
    esc.assert_contained()


# ------------------------------------------------------------ rename / unlink


@pytest.mark.parametrize("link", ["rel_outdir", "abs_outdir", "dotdot"])
async def test_rename_into_symlinked_dir(esc: Esc, links: dict[str, str], link: str) -> None:
    """Trename/Trenameat with a directory symlink as the target dir: refused."""
    c = esc.client
    d, _ = await c.walk(esc.root, [link.encode()])
    f, _ = await c.walk(esc.root, [b"f"])
    await expect_error(c.rename(f, d, PWN.encode()))
    await expect_error(c.renameat(esc.root, b"f", d, PWN.encode()))
    assert (esc.export / "f").read_bytes() == b"inside file"
    esc.assert_contained()


@pytest.mark.parametrize("link", ["rel_outdir", "abs_outdir", "chaindir1"])
async def test_rename_out_of_symlinked_dir(esc: Esc, links: dict[str, str], link: str) -> None:
    """Trenameat with a directory symlink as the *source* dir would steal outside/dir/x."""
    c = esc.client
    d, _ = await c.walk(esc.root, [link.encode()])
    await expect_error(c.renameat(d, b"x", esc.root, b"stolen"))
    await expect_error(c.renameat(d, b"victim", d, b"victim2"))
    assert not os.path.lexists(esc.export / "stolen")
    esc.assert_contained()


@pytest.mark.parametrize("link", ["rel_outdir", "abs_outdir", "chaindir1"])
async def test_unlink_inside_symlinked_dir(esc: Esc, links: dict[str, str], link: str) -> None:
    c = esc.client
    d, _ = await c.walk(esc.root, [link.encode()])
    await expect_error(c.unlinkat(d, b"victim", 0))
    await expect_error(c.unlinkat(d, b"x", 0))
    esc.assert_contained()


async def test_rename_of_symlink_moves_the_link(esc: Esc, links: dict[str, str]) -> None:
    c = esc.client
    await c.renameat(esc.root, b"rel_secret", esc.root, b"moved")
    assert os.readlink(esc.export / "moved") == "../outside/secret"
    fid, _ = await c.walk(esc.root, [b"abs_secret"])
    await c.rename(fid, esc.root, b"moved2")
    assert os.readlink(esc.export / "moved2") == links["abs_secret"]
    esc.assert_contained()


async def test_rename_over_symlink_replaces_the_link(esc: Esc, links: dict[str, str]) -> None:
    """Renaming a file onto a symlink's name replaces the link, never the link's target."""
    c = esc.client
    await c.renameat(esc.root, b"f", esc.root, b"rel_secret")
    assert (esc.export / "rel_secret").read_bytes() == b"inside file"
    assert not os.path.islink(esc.export / "rel_secret")
    (esc.export / "g").write_bytes(b"g")
    g, _ = await c.walk(esc.root, [b"g"])
    await c.rename(g, esc.root, b"abs_secret")
    assert not os.path.islink(esc.export / "abs_secret")
    esc.assert_contained()


async def test_unlink_and_remove_symlink_only(esc: Esc, links: dict[str, str]) -> None:
    c = esc.client
    await c.unlinkat(esc.root, b"rel_secret", 0)
    fid, _ = await c.walk(esc.root, [b"abs_secret"])
    await c.remove(fid)
    await expect_error(c.unlinkat(esc.root, b"rel_outdir", C.AT_REMOVEDIR))
    await c.unlinkat(esc.root, b"rel_outdir", 0)
    assert not os.path.lexists(esc.export / "rel_secret")
    assert not os.path.lexists(esc.export / "abs_secret")
    esc.assert_contained()


# ----------------------------------------------------------- link / setattr / xattr


@pytest.mark.parametrize("link", ["rel_secret", "abs_secret", "abs_passwd", "chain1"])
async def test_link_to_symlink_links_the_link(esc: Esc, links: dict[str, str], link: str) -> None:
    """Tlink of a symlink fid makes a second link to the *symlink* (or fails), never a hard
    link to the outside target (that would be a permanent handle on the secret)."""
    c = esc.client
    fid, _ = await c.walk(esc.root, [link.encode()])
    try:
        await c.link(esc.root, fid, b"hl")
    except P9Error:
        assert not os.path.lexists(esc.export / "hl")
    else:
        st = os.lstat(esc.export / "hl")
        assert stat.S_ISLNK(st.st_mode), "Tlink followed the symlink"
        assert os.readlink(esc.export / "hl") == links[link]
    esc.assert_contained()


SETATTRS = {
    "chmod": dict(valid=C.SETATTR_MODE, mode=0o777),
    "truncate": dict(valid=C.SETATTR_SIZE, size=0),
    "extend": dict(valid=C.SETATTR_SIZE, size=1 << 20),
    "chown": dict(valid=C.SETATTR_UID | C.SETATTR_GID, uid=4321, gid=4321),
    "utimes": dict(valid=C.SETATTR_ATIME | C.SETATTR_MTIME | C.SETATTR_ATIME_SET
                   | C.SETATTR_MTIME_SET, atime=(5, 0), mtime=(5, 0)),
    "all": dict(valid=C.SETATTR_MODE | C.SETATTR_UID | C.SETATTR_SIZE | C.SETATTR_MTIME,
                mode=0o6777, uid=4321, size=0),
}


@pytest.mark.parametrize("what", list(SETATTRS))
@pytest.mark.parametrize("link", ["rel_secret", "abs_secret", "chain1", "rel_outdir"])
async def test_setattr_on_symlink_spares_target(
    esc: Esc, links: dict[str, str], link: str, what: str
) -> None:
    """chmod/truncate/chown/utimes on a symlink fid act on the link or fail; the target
    keeps its mode, size, owner and times (the snapshot checks all of them)."""
    c = esc.client
    fid, _ = await c.walk(esc.root, [link.encode()])
    try:
        await c.setattr(fid, **SETATTRS[what])  # type: ignore[arg-type]
    except P9Error:
        pass
    assert os.path.islink(esc.export / link)
    esc.assert_contained()


@pytest.mark.parametrize("link", ["rel_secret", "abs_secret", "chain1"])
async def test_xattrs_on_symlink_spare_target(esc: Esc, links: dict[str, str], link: str) -> None:
    """xattrwalk/xattrcreate on a symlink fid never read or write the target's xattrs."""
    c = esc.client
    fid, _ = await c.walk(esc.root, [link.encode()])
    try:
        value = await c.getxattr(fid, XATTR_NAME)
    except P9Error:
        value = b""
    assert value != XATTR_VALUE
    try:
        names = await c.getxattr(fid, b"")
    except P9Error:
        names = b""
    assert XATTR_NAME.encode() not in names
    for name, val in ((b"user.pwn", b"x"), (XATTR_NAME.encode(), b"overwritten"),
                      (b"trusted.pwn", b"x"), (b"security.pwn", b"x")):
        try:
            await c.setxattr(fid, name, val)
        except P9Error:
            pass
    try:
        await c.setxattr(fid, XATTR_NAME.encode(), b"")  # size 0: remove
    except P9Error:
        pass
    esc.assert_contained()


# ------------------------------------------------------ client-made symlinks


async def test_client_made_symlinks_are_not_followed(esc: Esc) -> None:
    """The sandbox plants its own links with Tsymlink: same rules."""
    c = esc.client
    w = esc.world
    for name, target in ((b"m1", b"../outside/secret"), (b"m2", str(w.secret).encode()),
                         (b"m3", b"/etc/passwd"), (b"md", b"../outside/dir"),
                         (b"mroot", b"/"), (b"mup", b"..")):
        await c.symlink(esc.root, name, target)
        fid, _ = await c.walk(esc.root, [name])
        assert await c.readlink(fid) == target
        await expect_error(c.lopen(fid, C.L_O_RDONLY))
        await expect_error(c.lopen(fid, C.L_O_RDWR | C.L_O_TRUNC))
        try:
            _, qids = await c.walk(esc.root, [name, b"x"])
        except P9Error:
            pass
        else:
            assert len(qids) == 1
        await expect_error(c.lcreate(fid, PWN.encode(), C.L_O_RDWR | C.L_O_CREAT, 0o644))
        await expect_error(c.mkdir(fid, PWN.encode()))
    esc.assert_contained()


async def test_symlink_loops_do_not_hang(esc: Esc, links: dict[str, str]) -> None:
    c = esc.client
    for link in (b"loop_a", b"loop_b", b"self"):
        fid, _ = await c.walk(esc.root, [link])
        assert await c.readlink(fid) in (b"loop_a", b"loop_b", b"self")
        assert await expect_error(c.lopen(fid, C.L_O_RDONLY)) == errno.ELOOP
        try:
            _, qids = await c.walk(esc.root, [link, b"a", b"b"])
        except P9Error:
            pass
        else:
            assert len(qids) == 1
    esc.assert_contained()


async def test_attach_aname_through_symlink(esc: Esc, links: dict[str, str]) -> None:
    """Tattach aname = a symlink (or a path through one) never attaches outside."""
    c = esc.client
    for aname in (b"rel_outdir", b"rel_outdir/x", b"slash/etc", b"dotdot/outside", b"abs_outdir"):
        try:
            fid = await c.attach(uname=b"root", aname=aname, n_uname=0)
        except P9Error:
            continue
        # attached to the export root (aname selects nothing), or to the link itself
        # at most: it must not be usable as a directory
        r = await c.getattr(fid)
        if r.qid == (await c.getattr(esc.root)).qid:
            continue
        assert not stat.S_ISDIR(r.mode)
        with pytest.raises(P9Error):
            await c.lcreate(fid, PWN.encode(), C.L_O_RDWR | C.L_O_CREAT, 0o644)
        try:
            _, qids = await c.walk(fid, [b"x"])
        except P9Error:
            pass
        else:
            raise AssertionError(f"walk from aname {aname!r} went on: {qids}")
    esc.assert_contained()


# -------------------------------------------- a directory swapped between walk and use


async def test_dir_swapped_for_symlink_after_walk(esc: Esc) -> None:
    """Walk d/victim and d; the host then swaps d for a symlink to outside/dir.  Operations on
    the old fids act on the old (inside) objects, or fail; never on outside/dir."""
    c = esc.client
    ex = esc.export
    (ex / "d").mkdir()
    (ex / "d" / "victim").write_bytes(b"inside victim")
    (ex / "d" / "x").write_bytes(b"inside x")
    fv, _ = await c.walk(esc.root, [b"d", b"victim"])
    fx, _ = await c.walk(esc.root, [b"d", b"x"])
    fd_, _ = await c.walk(esc.root, [b"d"])
    os.rename(ex / "d", ex / "d_old")
    os.symlink(str(esc.world.outdir), ex / "d")

    try:
        await c.lopen(fx, C.L_O_RDWR)
    except P9Error:
        pass
    else:
        assert await c.read(fx, 0, 100) == b"inside x"
        await c.write(fx, 0, b"INSIDE")
    try:
        await c.setattr(fx, C.SETATTR_MODE | C.SETATTR_SIZE, mode=0o777, size=1)
    except P9Error:
        pass
    try:
        await c.remove(fv)
    except P9Error:
        pass
    for coro in (
        c.lcreate(fd_, PWN.encode(), C.L_O_RDWR | C.L_O_CREAT, 0o644),
        c.unlinkat(fd_, b"x", 0),
        c.renameat(fd_, b"victim", fd_, b"victim2"),
        c.mkdir(fd_, PWN.encode() + b"-dir"),
    ):
        try:
            await coro
        except P9Error:
            pass
    try:
        await c.setxattr(fd_, b"user.pwn", b"x")
    except P9Error:
        pass
    esc.assert_contained()


async def test_dotdot_of_dir_moved_out_by_host(esc: Esc) -> None:
    """The host (not the client) moves export/d out to outside/d while the client holds a fid
    of d.  Walking ".." from that fid must not hand out the *outside* directory.

    Hardening: this needs host cooperation, but any host-side reorganisation (a backup job,
    an admin's mv) would otherwise give the sandbox the whole host tree."""
    c = esc.client
    ex = esc.export
    (ex / "d").mkdir()
    fid, _ = await c.walk(esc.root, [b"d"])
    # move d out (our own move: refreeze the world with d outside)
    os.rename(ex / "d", esc.world.outside / "d")
    esc.world.age_and_freeze()
    try:
        up, qids = await c.walk(fid, [b".."])
    except P9Error:
        pass
    else:
        outside_ino = os.stat(esc.world.outside).st_ino
        assert qids[0].path & ((1 << 56) - 1) != outside_ino, (
            "walk '..' from a moved-out directory reached the outside directory"
        )
        try:
            await c.lopen(up, C.L_O_RDONLY | C.L_O_DIRECTORY)
            await c.readdir_all(up)
        except P9Error:
            pass
        try:
            sfid, _ = await c.walk(up, [b"secret"])
            await c.lopen(sfid, C.L_O_RDONLY)
            await c.read(sfid, 0, 100)
        except P9Error:
            pass
    esc.assert_contained()
