"""Treaddir, Tunlinkat, Tremove."""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter

import pytest

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import DIRENT_FIXED, Dirent

from .conftest import ConnectFn, Served
from .helpers import (
    DOT_NAMES,
    assert_fid_unknown,
    clone,
    host_tree,
    list_dir,
    open_path,
    qid_path_of,
    raises_errno,
)

# ---------------------------------------------------------------- readdir


def _check_dot_entries(ents: list[Dirent]) -> None:
    """``.`` and ``..`` are optional, but come together and at most once each."""
    dots = Counter(e.name for e in ents if e.name in DOT_NAMES)
    assert all(n == 1 for n in dots.values()), dots
    assert len(dots) in (0, 2), dots


async def test_readdir_lists_every_entry_with_types(server: Served) -> None:
    e = server.export
    (e / "file").write_bytes(b"x")
    (e / "dir").mkdir()
    os.symlink("file", e / "lnk")
    os.mkfifo(e / "fifo")
    ents = await list_dir(server.client, server.root)
    _check_dot_entries(ents)
    rest = [x for x in ents if x.name not in DOT_NAMES]
    assert sorted(x.name for x in rest) == sorted(os.fsencode(n) for n in os.listdir(e))
    by_name = {x.name: x for x in rest}
    assert by_name[b"file"].type == C.DT_REG
    assert by_name[b"dir"].type == C.DT_DIR
    assert by_name[b"lnk"].type == C.DT_LNK
    assert by_name[b"fifo"].type == C.DT_FIFO
    assert by_name[b"dir"].qid.type == C.QidType.DIR
    assert by_name[b"lnk"].qid.type == C.QidType.SYMLINK
    for name, ent in by_name.items():
        assert ent.qid.path == await qid_path_of(server, name.decode()), name


async def test_readdir_dot_entries_point_at_dir_and_parent(server: Served) -> None:
    (server.export / "d").mkdir()
    ents = await list_dir(server.client, server.root, "d")
    by_name = {x.name: x for x in ents}
    if b"." not in by_name:
        pytest.skip("server does not return . and ..")
    assert by_name[b"."].qid.path == await qid_path_of(server, "d")
    assert by_name[b".."].qid.path == await qid_path_of(server, "")


async def test_readdir_empty_dir(server: Served) -> None:
    (server.export / "empty").mkdir()
    ents = await list_dir(server.client, server.root, "empty")
    _check_dot_entries(ents)
    assert [x for x in ents if x.name not in DOT_NAMES] == []


async def test_readdir_paging_with_small_counts(server: Served) -> None:
    names = {f"entry-{i:03d}".encode() for i in range(40)}
    for n in names:
        (server.export / n.decode()).write_bytes(b"")
    c = server.client
    for count in (DIRENT_FIXED + 10, 2 * (DIRENT_FIXED + 9) + 1):
        fid = await open_path(c, server.root, "")
        seen: list[bytes] = []
        offset = 0
        calls = 0
        while True:
            ents = await c.readdir(fid, offset, count)
            calls += 1
            assert calls < 500, "readdir never ended"
            if not ents:
                break
            assert sum(DIRENT_FIXED + len(x.name) for x in ents) <= count
            seen.extend(x.name for x in ents)
            offset = ents[-1].offset
        await c.clunk(fid)
        rest = [n for n in seen if n not in DOT_NAMES]
        assert Counter(rest) == Counter(names), count
        assert calls >= len(names) // 2


async def test_readdir_offset_zero_restarts(server: Served) -> None:
    for i in range(5):
        (server.export / f"f{i}").write_bytes(b"")
    c = server.client
    fid = await open_path(c, server.root, "")
    first = await c.readdir_all(fid)
    again = await c.readdir_all(fid)
    assert sorted(x.name for x in first) == sorted(x.name for x in again)
    assert len([x for x in first if x.name not in DOT_NAMES]) == 5


async def test_readdir_cookies_survive_concurrent_changes(server: Served) -> None:
    """Resume from a cookie after creating and removing other entries.

    Every entry that existed the whole time is returned exactly once; no
    name is returned twice.
    """
    e = server.export
    stable = {f"s{i:03d}".encode() for i in range(400)}
    doomed = [f"v{i:03d}" for i in range(100)]
    for name in stable:
        (e / name.decode()).write_bytes(b"")
    for doomed_name in doomed:
        (e / doomed_name).write_bytes(b"")
    c = server.client
    fid = await open_path(c, server.root, "")
    seen: list[bytes] = []
    offset = 0
    count = 600
    while len(seen) < 150:
        ents = await c.readdir(fid, offset, count)
        assert ents
        seen.extend(x.name for x in ents)
        offset = ents[-1].offset
    # change the directory between two pages, from the host and through 9P
    for doomed_name in doomed[:50]:
        (e / doomed_name).unlink()
    for doomed_name in doomed[50:60]:
        await c.unlinkat(server.root, doomed_name.encode())
    for i in range(50):
        (e / f"n{i:03d}").write_bytes(b"")
    while True:
        ents = await c.readdir(fid, offset, count)
        if not ents:
            break
        seen.extend(x.name for x in ents)
        offset = ents[-1].offset
    counts = Counter(seen)
    assert [n for n, k in counts.items() if k > 1] == []
    assert stable <= set(counts), sorted(stable - set(counts))[:5]


async def test_readdir_on_unopened_fid_fails(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    with pytest.raises(P9Error):
        await c.readdir(fid, 0, 4096)


async def test_readdir_on_open_file_fails(server: Served) -> None:
    (server.export / "f").write_bytes(b"abc")
    c = server.client
    fid = await open_path(c, server.root, "f")
    with pytest.raises(P9Error):
        await c.readdir(fid, 0, 4096)


async def test_readdir_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.readdir(5555, 0, 4096)


async def test_readdir_names_are_bytes_not_decoded(server: Served) -> None:
    raw = b"caf\xe9-\xff"
    open(os.path.join(os.fsencode(server.export), raw), "wb").close()
    ents = await list_dir(server.client, server.root)
    assert raw in {x.name for x in ents}


# --------------------------------------------------------------- unlinkat


async def test_unlinkat_file(server: Served) -> None:
    (server.export / "f").write_bytes(b"x")
    os.link(server.export / "f", server.export / "g")
    await server.client.unlinkat(server.root, b"f")
    assert not (server.export / "f").exists()
    assert os.stat(server.export / "g").st_nlink == 1


async def test_unlinkat_symlink_not_target(server: Served) -> None:
    (server.export / "t").write_bytes(b"x")
    os.symlink("t", server.export / "l")
    await server.client.unlinkat(server.root, b"l")
    assert not os.path.lexists(server.export / "l")
    assert (server.export / "t").exists()


async def test_unlinkat_dir_with_removedir(server: Served) -> None:
    (server.export / "d").mkdir()
    await server.client.unlinkat(server.root, b"d", C.AT_REMOVEDIR)
    assert not (server.export / "d").exists()


async def test_unlinkat_nonempty_dir_is_enotempty(server: Served) -> None:
    (server.export / "d").mkdir()
    (server.export / "d" / "x").write_bytes(b"")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        await server.client.unlinkat(server.root, b"d", C.AT_REMOVEDIR)
    assert (server.export / "d" / "x").exists()


async def test_unlinkat_dir_without_flag_is_eisdir(server: Served) -> None:
    (server.export / "d").mkdir()
    with raises_errno(errno.EISDIR):
        await server.client.unlinkat(server.root, b"d", 0)
    assert (server.export / "d").is_dir()


async def test_unlinkat_file_with_flag_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    with raises_errno(errno.ENOTDIR):
        await server.client.unlinkat(server.root, b"f", C.AT_REMOVEDIR)
    assert (server.export / "f").exists()


async def test_unlinkat_missing_is_enoent(server: Served) -> None:
    with raises_errno(errno.ENOENT):
        await server.client.unlinkat(server.root, b"nope", 0)


async def test_unlinkat_in_file_fid_is_enotdir(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    with raises_errno(errno.ENOTDIR):
        await c.unlinkat(fid, b"x", 0)


async def test_unlinkat_in_subdir(server: Served) -> None:
    (server.export / "d").mkdir()
    (server.export / "d" / "f").write_bytes(b"")
    (server.export / "f").write_bytes(b"")
    c = server.client
    d = await c.walk_to(server.root, "d")
    await c.unlinkat(d, b"f", 0)
    assert not (server.export / "d" / "f").exists()
    assert (server.export / "f").exists()


@pytest.mark.parametrize("name", [b"a/f", b"..", b".", b""])
@pytest.mark.parametrize("flags", [0, C.AT_REMOVEDIR])
async def test_unlinkat_bad_names(server: Served, name: bytes, flags: int) -> None:
    """Slash names, dot names and the empty name fail and remove nothing."""
    (server.export / "a").mkdir()
    (server.export / "a" / "f").write_bytes(b"")
    c = server.client
    d = await c.walk_to(server.root, "a")
    before = host_tree(server.export.parent)
    with pytest.raises(P9Error):
        await c.unlinkat(d if name != b"a/f" else server.root, name, flags)
    assert host_tree(server.export.parent) == before


async def test_unlinkat_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.unlinkat(8888, b"x", 0)


# ----------------------------------------------------------------- remove


async def test_remove_file_clunks_fid(server: Served) -> None:
    (server.export / "f").write_bytes(b"x")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.remove(fid)
    assert not (server.export / "f").exists()
    await assert_fid_unknown(c, fid)


async def test_remove_open_file(server: Served) -> None:
    (server.export / "f").write_bytes(b"x")
    c = server.client
    fid = await open_path(c, server.root, "f")
    await c.remove(fid)
    assert not (server.export / "f").exists()
    await assert_fid_unknown(c, fid)


async def test_remove_empty_dir(server: Served) -> None:
    (server.export / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "d")
    await c.remove(fid)
    assert not (server.export / "d").exists()


async def test_remove_symlink_not_target(server: Served) -> None:
    (server.export / "t").write_bytes(b"x")
    os.symlink("t", server.export / "l")
    c = server.client
    fid = await c.walk_to(server.root, "l")
    await c.remove(fid)
    assert not os.path.lexists(server.export / "l")
    assert (server.export / "t").read_bytes() == b"x"


async def test_remove_failure_still_clunks(server: Served) -> None:
    (server.export / "d").mkdir()
    (server.export / "d" / "x").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "d")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        await c.remove(fid)
    assert (server.export / "d" / "x").exists()
    with raises_errno(errno.EBADF):
        await c.clunk(fid)


async def test_remove_of_attach_root_fails_and_keeps_export(server: Served) -> None:
    c = server.client
    fid = await clone(c, server.root)
    with pytest.raises(P9Error):
        await c.remove(fid)
    assert server.export.is_dir()
    await assert_fid_unknown(c, fid)
    await c.getattr(server.root)


async def test_remove_already_removed_is_enoent(server: Served) -> None:
    (server.export / "f").write_bytes(b"")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    (server.export / "f").unlink()
    with raises_errno(errno.ENOENT):
        await c.remove(fid)
    await assert_fid_unknown(c, fid)


async def test_remove_does_not_remove_replacement(server: Served) -> None:
    """The fid's file was renamed away and another file took its name: keep the newcomer."""
    e = server.export
    (e / "f").write_bytes(b"old")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    os.rename(e / "f", e / "moved")
    (e / "f").write_bytes(b"new")
    try:
        await c.remove(fid)
    except P9Error:
        pass
    assert (e / "f").read_bytes() == b"new"
    assert stat.S_ISREG(os.lstat(e / "f").st_mode)


async def test_remove_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.remove(7777)


async def test_readdir_count_clamped_by_msize(connect_export: ConnectFn) -> None:
    async with connect_export(msize=8192) as s:
        for i in range(600):
            (s.export / f"a-rather-long-file-name-{i:04d}").write_bytes(b"")
        c = s.client
        fid = await open_path(c, s.root, "")
        ents = await c.readdir(fid, 0, 10 << 20)
        assert ents
        assert sum(DIRENT_FIXED + len(x.name) for x in ents) <= 8192 - C.READDIRHDRSZ
        total = await c.readdir_all(fid)
        assert len([x for x in total if x.name not in DOT_NAMES]) == 600


async def test_readdir_count_too_small_for_an_entry_is_not_the_end(server: Served) -> None:
    """An empty reply means "end of directory"; a tiny count must not produce one early."""
    (server.export / "some-file").write_bytes(b"")
    c = server.client
    fid = await open_path(c, server.root, "")
    with raises_errno(errno.EINVAL):
        await c.readdir(fid, 0, 10)
    assert any(x.name == b"some-file" for x in await c.readdir_all(fid))
