"""Trename, Trenameat, Tlink."""

from __future__ import annotations

import errno
import os

import pytest

from gofer9p.client import P9Error

from .conftest import ConnectFn, Served
from .helpers import host_tree, open_path, qid_path_of, raises_errno, read_path

# ----------------------------------------------------------------- rename


async def test_rename_within_dir_fid_keeps_working(server: Served) -> None:
    e = server.export
    (e / "old").write_bytes(b"content")
    c = server.client
    fid = await c.walk_to(server.root, "old")
    ino = os.stat(e / "old").st_ino
    await c.rename(fid, server.root, b"new")
    assert not (e / "old").exists()
    assert os.stat(e / "new").st_ino == ino
    # fid follows the file
    assert (await c.getattr(fid)).size == 7
    await c.lopen(fid, 0)
    assert await c.read(fid, 0, 100) == b"content"


async def test_rename_dir_across_dirs_children_follow(server: Served) -> None:
    e = server.export
    (e / "a" / "sub").mkdir(parents=True)
    (e / "a" / "sub" / "f").write_bytes(b"child")
    (e / "b").mkdir()
    c = server.client
    sub = await c.walk_to(server.root, "a/sub")
    b = await c.walk_to(server.root, "b")
    await c.rename(sub, b, b"moved")
    assert (e / "b" / "moved" / "f").read_bytes() == b"child"
    assert not (e / "a" / "sub").exists()
    # walking from the renamed fid works
    f = await c.walk_to(sub, "f")
    assert (await c.getattr(f)).size == 5
    # its .. is the new parent
    _, qids = await c.walk(sub, [b".."])
    assert qids[0].path == await qid_path_of(server, "b")


async def test_rename_over_existing_file_replaces(server: Served) -> None:
    e = server.export
    (e / "src").write_bytes(b"new")
    (e / "dst").write_bytes(b"old")
    c = server.client
    fid = await c.walk_to(server.root, "src")
    await c.rename(fid, server.root, b"dst")
    assert (e / "dst").read_bytes() == b"new"
    assert not (e / "src").exists()


async def test_rename_to_bad_name_is_einval(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"")
    (e / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "f")
    for name in (b"d/x", b"..", b".", b""):
        before = host_tree(e)
        with raises_errno(errno.EINVAL, errno.ENOENT):
            await c.rename(fid, server.root, name)
        assert host_tree(e) == before, name


async def test_rename_dfid_not_a_dir_is_enotdir(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"")
    (e / "g").write_bytes(b"")
    c = server.client
    f = await c.walk_to(server.root, "f")
    g = await c.walk_to(server.root, "g")
    with raises_errno(errno.ENOTDIR):
        await c.rename(f, g, b"x")


async def test_rename_dir_into_itself_is_einval(server: Served) -> None:
    (server.export / "d" / "sub").mkdir(parents=True)
    c = server.client
    d = await c.walk_to(server.root, "d")
    sub = await c.walk_to(server.root, "d/sub")
    with raises_errno(errno.EINVAL):
        await c.rename(d, sub, b"loop")
    assert (server.export / "d" / "sub").is_dir()


async def test_rename_of_root_fails(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    d = await c.walk_to(server.root, "d")
    with pytest.raises(P9Error):
        await c.rename(server.root, d, b"x")
    assert server.export.is_dir()
    assert not (server.export / "d" / "x").exists()


async def test_rename_unknown_fids_are_ebadf(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    f = await c.walk_to(server.root, "f")
    with raises_errno(errno.EBADF):
        await c.rename(f, 9191, b"x")
    with raises_errno(errno.EBADF):
        await c.rename(9191, server.root, b"x")


async def test_rename_seen_by_other_connection(server: Served, connect_export: ConnectFn) -> None:
    (server.export / "f").write_bytes(b"data")
    c = server.client
    f = await c.walk_to(server.root, "f")
    await c.rename(f, server.root, b"g")
    async with connect_export() as s2:
        assert await read_path(s2.client, s2.root, "g") == b"data"
        with raises_errno(errno.ENOENT):
            await s2.client.walk_to(s2.root, "f")


# --------------------------------------------------------------- renameat


async def test_renameat_within_dir(server: Served) -> None:
    e = server.export
    (e / "a").write_bytes(b"A")
    ino = os.stat(e / "a").st_ino
    c = server.client
    fid = await c.walk_to(server.root, "a")  # a fid held across the rename
    await c.renameat(server.root, b"a", server.root, b"b")
    assert not (e / "a").exists()
    assert os.stat(e / "b").st_ino == ino
    assert (await c.getattr(fid)).qid.path == await qid_path_of(server, "b")


async def test_renameat_across_dirs(server: Served) -> None:
    e = server.export
    (e / "x").mkdir()
    (e / "y").mkdir()
    (e / "x" / "f").write_bytes(b"F")
    c = server.client
    x = await c.walk_to(server.root, "x")
    y = await c.walk_to(server.root, "y")
    await c.renameat(x, b"f", y, b"g")
    assert (e / "y" / "g").read_bytes() == b"F"
    assert os.listdir(e / "x") == []


async def test_renameat_over_existing_file(server: Served) -> None:
    e = server.export
    (e / "src").write_bytes(b"new")
    (e / "dst").write_bytes(b"old")
    c = server.client
    old = await open_path(c, server.root, "dst")
    await c.renameat(server.root, b"src", server.root, b"dst")
    assert (e / "dst").read_bytes() == b"new"
    assert not (e / "src").exists()
    # an fid open on the replaced file still reads the old data
    assert await c.read(old, 0, 10) == b"old"


async def test_renameat_missing_source_is_enoent(server: Served) -> None:
    with raises_errno(errno.ENOENT):
        await server.client.renameat(server.root, b"nope", server.root, b"x")
    assert not (server.export / "x").exists()


async def test_renameat_over_nonempty_dir_is_enotempty(server: Served) -> None:
    e = server.export
    (e / "src").mkdir()
    (e / "dst").mkdir()
    (e / "dst" / "x").write_bytes(b"")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        await server.client.renameat(server.root, b"src", server.root, b"dst")
    assert (e / "dst" / "x").exists()
    assert (e / "src").is_dir()


async def test_renameat_dir_over_empty_dir(server: Served) -> None:
    e = server.export
    (e / "src").mkdir()
    (e / "src" / "f").write_bytes(b"")
    (e / "dst").mkdir()
    await server.client.renameat(server.root, b"src", server.root, b"dst")
    assert (e / "dst" / "f").exists()
    assert not (e / "src").exists()


async def test_renameat_file_over_dir_is_eisdir(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"")
    (e / "d").mkdir()
    with raises_errno(errno.EISDIR):
        await server.client.renameat(server.root, b"f", server.root, b"d")


async def test_renameat_dir_over_file_is_enotdir(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"")
    (e / "d").mkdir()
    with raises_errno(errno.ENOTDIR):
        await server.client.renameat(server.root, b"d", server.root, b"f")


async def test_renameat_symlink_moves_link_not_target(server: Served) -> None:
    e = server.export
    (e / "t").write_bytes(b"T")
    os.symlink("t", e / "l")
    await server.client.renameat(server.root, b"l", server.root, b"l2")
    assert os.readlink(e / "l2") == "t"
    assert (e / "t").read_bytes() == b"T"


@pytest.mark.parametrize("which", ["old", "new"])
@pytest.mark.parametrize("name", [b"d/x", b"..", b".", b""])
async def test_renameat_bad_names(server: Served, which: str, name: bytes) -> None:
    e = server.export
    (e / "d").mkdir()
    (e / "d" / "x").write_bytes(b"")
    (e / "f").write_bytes(b"")
    before = host_tree(e.parent)
    c = server.client
    with raises_errno(errno.EINVAL, errno.ENOENT):
        if which == "old":
            await c.renameat(server.root, name, server.root, b"z")
        else:
            await c.renameat(server.root, b"f", server.root, name)
    assert host_tree(e.parent) == before


async def test_renameat_dirfid_is_file_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    f = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENOTDIR):
        await c.renameat(f, b"x", server.root, b"y")


# ------------------------------------------------------------------- link


async def test_link_makes_hard_link(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"shared")
    c = server.client
    f = await c.walk_to(server.root, "f")
    await c.link(server.root, f, b"g")
    assert os.stat(e / "f").st_nlink == 2
    assert os.stat(e / "g").st_ino == os.stat(e / "f").st_ino
    assert (await c.getattr(f)).nlink == 2
    assert await qid_path_of(server, "g") == await qid_path_of(server, "f")
    await c.unlinkat(server.root, b"f")
    assert (e / "g").read_bytes() == b"shared"
    assert os.stat(e / "g").st_nlink == 1


async def test_link_into_subdir(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"x")
    (e / "d").mkdir()
    c = server.client
    f = await c.walk_to(server.root, "f")
    d = await c.walk_to(server.root, "d")
    await c.link(d, f, b"h")
    assert os.stat(e / "d" / "h").st_ino == os.stat(e / "f").st_ino


async def test_link_existing_name_is_eexist(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"x")
    (e / "g").write_bytes(b"y")
    c = server.client
    f = await c.walk_to(server.root, "f")
    with raises_errno(errno.EEXIST):
        await c.link(server.root, f, b"g")
    assert (e / "g").read_bytes() == b"y"


async def test_link_to_directory_is_eperm(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    d = await c.walk_to(server.root, "d")
    with raises_errno(errno.EPERM):
        await c.link(server.root, d, b"d2")
    assert not (server.export / "d2").exists()


async def test_link_symlink_links_the_symlink(server: Served) -> None:
    e = server.export
    (e / "t").write_bytes(b"x")
    os.symlink("t", e / "l")
    c = server.client
    lnk = await c.walk_to(server.root, "l")
    await c.link(server.root, lnk, b"l2")
    assert os.path.islink(e / "l2")
    assert os.lstat(e / "l2").st_ino == os.lstat(e / "l").st_ino


async def test_link_of_unlinked_file_fails(server: Served) -> None:
    (server.export / "f").write_bytes(b"x")
    c = server.client
    f = await c.walk_to(server.root, "f")
    (server.export / "f").unlink()
    with raises_errno(errno.ENOENT):
        await c.link(server.root, f, b"g")
    assert not (server.export / "g").exists()


@pytest.mark.parametrize("name", [b"d/x", b"..", b".", b""])
async def test_link_bad_names(server: Served, name: bytes) -> None:
    e = server.export
    (e / "f").write_bytes(b"")
    (e / "d").mkdir()
    before = host_tree(e.parent)
    c = server.client
    f = await c.walk_to(server.root, "f")
    with raises_errno(errno.EINVAL, errno.ENOENT):
        await c.link(server.root, f, name)
    assert host_tree(e.parent) == before


async def test_link_dfid_not_dir_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    f = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENOTDIR):
        await c.link(f, f, b"x")


async def test_link_unknown_fids_are_ebadf(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    f = await c.walk_to(server.root, "f")
    with raises_errno(errno.EBADF):
        await c.link(server.root, 6060, b"x")
    with raises_errno(errno.EBADF):
        await c.link(6060, f, b"x")


async def test_renameat_onto_itself_is_noop(server: Served) -> None:
    (server.export / "f").write_bytes(b"same")
    await server.client.renameat(server.root, b"f", server.root, b"f")
    assert (server.export / "f").read_bytes() == b"same"


async def test_renameat_dir_into_its_own_subdir_is_einval(server: Served) -> None:
    (server.export / "d" / "sub").mkdir(parents=True)
    c = server.client
    sub = await c.walk_to(server.root, "d/sub")
    with raises_errno(errno.EINVAL):
        await c.renameat(server.root, b"d", sub, b"loop")
    assert (server.export / "d" / "sub").is_dir()


async def test_renameat_hard_links_of_same_file_is_noop(server: Served) -> None:
    """rename(2) between two names of one inode does nothing; both names stay."""
    e = server.export
    (e / "a").write_bytes(b"x")
    os.link(e / "a", e / "b")
    await server.client.renameat(server.root, b"a", server.root, b"b")
    assert (e / "a").exists()
    assert (e / "b").exists()
