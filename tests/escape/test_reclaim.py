"""Escapes through the reopen of a reclaimed fid (#14): the host changes the tree between the
reclaim of a fid's fds and their reopen.

With a small fd budget (64: 31 fds for the connection) a client that walks more fids than
that gets its idle fids' fds reclaimed; each is reopened on its next use by walking its path
from the attach root.  Between the two the host swaps a directory on that path for a symlink
to the outside (absolute or relative), or replaces the fid's file with another of the same name
(a file carrying outside data, a symlink to the secret, a hard link of the secret).  Every use
of such a fid must be ESTALE (or another refusal), never the outside file, never a change
outside; the same runs against the confined daemon (``-p gofer9p.testing.daemon_plugin``
passes ``--fd-budget``).
"""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C
from gofer9p.server import ServerConfig, fd_budget

from .conftest import OUTSIDE_X, PWN, ConnectFn, World, expect_error

PUSH = 80  # fids of one fd each: with a share of 31, every fid idle before is reclaimed


def _config() -> ServerConfig:
    return ServerConfig(fd_budget=fd_budget(1, 64))


async def _push_out(c: Client, root: int) -> None:
    """Walk PUSH fids to a directory "push" (made first) and clunk them.  Each holds an fd
    of its own; clones of the root would not (they share the root's fd)."""
    with contextlib.suppress(P9Error):
        await c.mkdir(root, b"push")
    for i in range(PUSH):
        await c.walk(root, [b"push"], 60_000 + i)
        await c.getattr(60_000 + i)
    for i in range(PUSH):
        await c.clunk(60_000 + i)


async def _all_refused(c: Client, dfid: int, ffid: int) -> None:
    """Every operation on the directory fid ``dfid`` and the file fid ``ffid``: refused."""
    nf = 70_000
    for op in (
        lambda: c.getattr(dfid),
        lambda: c.getattr(ffid),
        lambda: c.walk(dfid, [b"x"], nf),
        lambda: c.walk(dfid, [], nf + 1),
        lambda: c.lopen(dfid, C.L_O_RDONLY),
        lambda: c.lopen(ffid, C.L_O_RDONLY),
        lambda: c.lopen(ffid, C.L_O_RDWR | C.L_O_TRUNC),
        lambda: c.lcreate(dfid, PWN.encode(), C.L_O_RDWR, 0o644),
        lambda: c.mkdir(dfid, PWN.encode(), 0o755),
        lambda: c.unlinkat(dfid, b"victim", 0),
        lambda: c.setattr(ffid, C.SETATTR_SIZE, size=0),
        lambda: c.setattr(ffid, C.SETATTR_MODE, mode=0o777),
        lambda: c.xattrwalk(ffid, b"", nf + 2),
        lambda: c.readlink(ffid),
        lambda: c.statfs(dfid),
    ):
        await expect_error(op())
    assert await expect_error(c.getattr(ffid)) == errno.ESTALE
    assert await expect_error(c.getattr(dfid)) == errno.ESTALE
    await expect_error(c.remove(ffid))  # removes nothing; the fid is gone either way


def _inside_dir(world: World) -> None:
    """export/d holds the names outside/dir holds (x, victim), with inside contents."""
    d = world.export / "d"
    d.mkdir()
    (d / "x").write_bytes(b"inside x")
    (d / "victim").write_bytes(b"inside victim")


@pytest.mark.parametrize("target", ["absolute", "relative"])
async def test_directory_swapped_for_a_symlink_while_reclaimed(
    world: World, connect: ConnectFn, target: str
) -> None:
    _inside_dir(world)
    async with connect(config=_config()) as esc:
        c = esc.client
        dfid, _ = await c.walk(esc.root, [b"d"])
        ffid, _ = await c.walk(esc.root, [b"d", b"x"])
        await c.getattr(dfid)
        await c.getattr(ffid)
        await _push_out(c, esc.root)
        os.rename(world.export / "d", world.export / "d.old")
        link = str(world.outdir) if target == "absolute" else "../outside/dir"
        os.symlink(link, world.export / "d")
        await _all_refused(c, dfid, ffid)
    esc.assert_contained()


@pytest.mark.parametrize("replacement", ["outside_data", "symlink", "hardlink"])
async def test_file_replaced_by_another_of_the_same_name_while_reclaimed(
    world: World, connect: ConnectFn, replacement: str
) -> None:
    _inside_dir(world)
    async with connect(config=_config()) as esc:
        c = esc.client
        dfid, _ = await c.walk(esc.root, [b"d"])
        ffid, _ = await c.walk(esc.root, [b"d", b"x"])
        await c.getattr(ffid)
        await _push_out(c, esc.root)
        x = world.export / "d" / "x"
        os.unlink(x)
        if replacement == "outside_data":
            x.write_bytes(OUTSIDE_X)  # the marker: a reply carrying it is a leak
        elif replacement == "symlink":
            os.symlink(world.secret, x)
        else:
            os.link(world.secret, x)
            world.age_and_freeze()  # the host's own link is not the gofer's doing
        for op in (
            lambda: c.getattr(ffid),
            lambda: c.lopen(ffid, C.L_O_RDONLY),
            lambda: c.lopen(ffid, C.L_O_RDWR | C.L_O_TRUNC),
            lambda: c.setattr(ffid, C.SETATTR_SIZE, size=0),
            lambda: c.setattr(ffid, C.SETATTR_MODE, mode=0o777),
            lambda: c.xattrwalk(ffid, b"", 70_000),
        ):
            assert await expect_error(op()) == errno.ESTALE
        # the directory fid was reclaimed too, and is still that directory
        assert (await c.getattr(dfid)).qid.type & C.QidType.DIR
        await expect_error(c.remove(ffid))
        if replacement == "hardlink":
            os.unlink(x)
            world.age_and_freeze()
    esc.assert_contained()


@pytest.mark.parametrize("target", ["absolute", "relative"])
async def test_directory_swapped_while_its_fd_is_held_by_an_open_fid(
    world: World, connect: ConnectFn, target: str
) -> None:
    """The reclaimed directory and file fids are reopened through the directory fd an open
    fid of that directory still holds (no walk from the root: the holder known by the path
    "d").  The host swapped the name "d" for a symlink to the outside meanwhile: both fids are
    still the inside directory (now export/d.old) and its file, every operation through them
    stays inside, and a new walk through the name "d" is refused."""
    _inside_dir(world)
    async with connect(config=_config()) as esc:
        c = esc.client
        dfid, _ = await c.walk(esc.root, [b"d"])
        ffid, _ = await c.walk(dfid, [b"x"])
        vfid, _ = await c.walk(dfid, [b"victim"])
        await c.lopen(vfid, C.L_O_RDONLY)  # never reclaimed: it keeps d's fd open
        await c.getattr(ffid)
        await _push_out(c, esc.root)
        os.rename(world.export / "d", world.export / "d.old")
        link = str(world.outdir) if target == "absolute" else "../outside/dir"
        os.symlink(link, world.export / "d")
        assert (await c.getattr(dfid)).qid.type & C.QidType.DIR
        await c.lopen(ffid, C.L_O_RDONLY)
        assert await c.read(ffid, 0, 100) == b"inside x"
        xfid, _ = await c.walk(dfid, [b"x"])
        await c.lopen(xfid, C.L_O_RDONLY)
        assert await c.read(xfid, 0, 100) == b"inside x"
        _, qids = await c.walk(esc.root, [b"d", b"x"])  # the name "d" is the symlink now
        assert len(qids) == 1 and qids[0].type & C.QidType.SYMLINK
        await c.unlinkat(dfid, b"victim", 0)
        assert not (world.export / "d.old" / "victim").exists()
        await c.lcreate(dfid, PWN.encode(), C.L_O_RDWR, 0o644)
        assert (world.export / "d.old" / PWN).exists()
    esc.assert_contained()
