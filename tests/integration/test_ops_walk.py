"""Twalk: clone, partial walks, ``..`` at the root, symlinks, qid paths."""

from __future__ import annotations

import errno
import os

import pytest

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C

from .conftest import ConnectFn, Served
from .helpers import assert_fid_unknown, qid_path_of, raises_errno


def _tree(s: Served) -> None:
    e = s.export
    (e / "a" / "b").mkdir(parents=True)
    (e / "a" / "b" / "f").write_bytes(b"deep")
    (e / "file").write_bytes(b"hello")
    (e / "a" / "x").write_bytes(b"x")


async def test_walk_zero_names_clones(server: Served) -> None:
    c = server.client
    newfid, qids = await c.walk(server.root, [])
    assert qids == []
    assert newfid != server.root
    assert (await c.getattr(newfid)).qid == (await c.getattr(server.root)).qid
    # the clone is independent: clunking it leaves the original usable
    await c.clunk(newfid)
    await c.getattr(server.root)
    await assert_fid_unknown(c, newfid)


async def test_walk_returns_one_qid_per_name(server: Served) -> None:
    _tree(server)
    c = server.client
    fid, qids = await c.walk(server.root, [b"a", b"b", b"f"])
    e = server.export
    assert [q.path for q in qids] == [
        await qid_path_of(server, "a"),
        await qid_path_of(server, "a/b"),
        await qid_path_of(server, "a/b/f"),
    ]
    assert [q.type for q in qids] == [C.QidType.DIR, C.QidType.DIR, C.QidType.FILE]
    attr = await c.getattr(fid)
    assert attr.size == os.stat(e / "a" / "b" / "f").st_size == 4


async def test_walk_newfid_equal_to_fid(server: Served) -> None:
    _tree(server)
    c = server.client
    fid, _ = await c.walk(server.root, [b"a"])
    same, qids = await c.walk(fid, [b"b"], newfid=fid)
    assert same == fid
    assert len(qids) == 1
    assert (await c.getattr(fid)).qid == qids[0]
    assert qids[0].type == C.QidType.DIR


async def test_walk_first_name_missing_is_enoent(server: Served) -> None:
    c = server.client
    newfid = c.new_fid()
    with raises_errno(errno.ENOENT):
        await c.walk(server.root, [b"nope", b"x"], newfid=newfid)
    await assert_fid_unknown(c, newfid)


async def test_walk_later_name_missing_is_partial(server: Served) -> None:
    _tree(server)
    c = server.client
    newfid = c.new_fid()
    got, qids = await c.walk(server.root, [b"a", b"b", b"nope", b"f"], newfid=newfid)
    assert got == newfid
    assert len(qids) == 2
    assert qids[1].path == await qid_path_of(server, "a/b")
    await assert_fid_unknown(c, newfid)


async def test_walk_partial_with_newfid_equal_fid_leaves_fid_unchanged(server: Served) -> None:
    _tree(server)
    c = server.client
    fid, qids_a = await c.walk(server.root, [b"a"])
    _, qids = await c.walk(fid, [b"b", b"nope"], newfid=fid)
    assert len(qids) == 1
    # fid still stands for "a"
    assert (await c.getattr(fid)).qid == qids_a[0]


async def test_walk_to_existing_newfid_fails(server: Served) -> None:
    """newfid already in use (and != fid) must be refused, the old fid unchanged."""
    _tree(server)
    c = server.client
    a, qa = await c.walk(server.root, [b"a"])
    other, _ = await c.walk(server.root, [b"file"])
    with pytest.raises(P9Error):
        await c.walk(a, [b"b"], newfid=other)
    assert (await c.getattr(other)).qid.type == C.QidType.FILE
    assert (await c.getattr(a)).qid == qa[0]


async def test_walk_unknown_fid_is_ebadf(server: Served) -> None:
    with raises_errno(errno.EBADF):
        await server.client.walk(9999, [b"a"])


async def test_walk_more_than_maxwelem_fails(server: Served) -> None:
    d = server.export
    for _ in range(17):
        d = d / "d"
    d.mkdir(parents=True)
    c = server.client
    newfid = c.new_fid()
    with pytest.raises(P9Error):
        await c.walk(server.root, [b"d"] * 17, newfid=newfid)
    await assert_fid_unknown(c, newfid)
    # 16 is fine
    _, qids = await c.walk(server.root, [b"d"] * 16)
    assert len(qids) == 16


async def test_walk_dotdot_at_root_stays_at_root(server: Served) -> None:
    c = server.client
    root_qid = (await c.getattr(server.root)).qid
    fid, qids = await c.walk(server.root, [b"..", b".."])
    assert [q.path for q in qids] == [root_qid.path, root_qid.path]
    assert (await c.getattr(fid)).qid == root_qid


async def test_walk_dotdot_from_subdir(server: Served) -> None:
    _tree(server)
    c = server.client
    root_qid = (await c.getattr(server.root)).qid
    _, qids = await c.walk(server.root, [b"a", b"b", b"..", b"..", b"..", b"a"])
    assert qids[2].path == qids[0].path
    assert qids[3].path == root_qid.path
    assert qids[4].path == root_qid.path
    assert qids[5].path == qids[0].path


async def test_walk_dotdot_cannot_escape_subdir_attach(server: Served) -> None:
    """``..`` never goes above the attach root, even if it is not ``/`` on the host."""
    # the fixture's export's parent holds "export"; walking .. then "export" must fail
    c = server.client
    _, qids = await c.walk(server.root, [b"..", b"export"])
    assert len(qids) == 1


async def test_walk_through_regular_file_is_enotdir(server: Served) -> None:
    _tree(server)
    c = server.client
    f, _ = await c.walk(server.root, [b"file"])
    with raises_errno(errno.ENOTDIR):
        await c.walk(f, [b"x"])
    # as a later element: partial walk, one qid
    newfid = c.new_fid()
    _, qids = await c.walk(server.root, [b"file", b"x"], newfid=newfid)
    assert len(qids) == 1
    await assert_fid_unknown(c, newfid)


async def test_walk_to_symlink_gives_symlink_qid(server: Served) -> None:
    _tree(server)
    os.symlink("a", server.export / "lnk")
    c = server.client
    fid, qids = await c.walk(server.root, [b"lnk"])
    assert qids[0].type == C.QidType.SYMLINK
    assert qids[0].path != await qid_path_of(server, "a")
    assert await c.readlink(fid) == b"a"


async def test_walk_does_not_follow_symlink(server: Served) -> None:
    _tree(server)
    os.symlink("a", server.export / "lnk")
    c = server.client
    lnk, _ = await c.walk(server.root, [b"lnk"])
    with raises_errno(errno.ENOTDIR, errno.ELOOP):
        await c.walk(lnk, [b"x"])
    newfid = c.new_fid()
    _, qids = await c.walk(server.root, [b"lnk", b"x"], newfid=newfid)
    assert len(qids) == 1
    await assert_fid_unknown(c, newfid)


async def test_walk_does_not_follow_symlink_out_of_export(server: Served) -> None:
    outside = server.export.parent / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    os.symlink(str(outside), server.export / "esc")
    c = server.client
    newfid = c.new_fid()
    _, qids = await c.walk(server.root, [b"esc", b"secret"], newfid=newfid)
    assert len(qids) == 1
    await assert_fid_unknown(c, newfid)


@pytest.mark.parametrize("name", [b"a/b", b"", b"."])
async def test_walk_bad_names_are_refused(server: Served, name: bytes) -> None:
    _tree(server)
    c = server.client
    newfid = c.new_fid()
    with raises_errno(errno.EINVAL, errno.ENOENT):
        await c.walk(server.root, [name], newfid=newfid)
    await assert_fid_unknown(c, newfid)


async def test_qid_path_stable_and_unique(server: Served) -> None:
    _tree(server)
    os.link(server.export / "file", server.export / "a" / "hard")
    p1 = await qid_path_of(server, "file")
    p2 = await qid_path_of(server, "file")
    hard = await qid_path_of(server, "a/hard")
    assert p1 == p2 == hard
    others = [await qid_path_of(server, p) for p in ("a", "a/b", "a/b/f", "a/x", "")]
    assert len({p1, *others}) == 6


async def test_qid_path_same_across_connections(server: Served, connect_export: ConnectFn) -> None:
    _tree(server)
    async with connect_export() as s2:
        assert await qid_path_of(s2, "a/b/f") == await qid_path_of(server, "a/b/f")


async def test_walk_from_clunked_fid_is_ebadf(server: Served) -> None:
    _tree(server)
    c = server.client
    fid, _ = await c.walk(server.root, [b"a"])
    await c.clunk(fid)
    with raises_errno(errno.EBADF):
        await c.walk(fid, [b"b"])


async def test_walk_from_open_fid_clone_fails(server: Served) -> None:
    """Linux clones only unopened fids, but a walk from an opened fid must not crash."""
    _tree(server)
    c = server.client
    fid, _ = await c.walk(server.root, [b"a"])
    await c.lopen(fid, C.L_O_RDONLY)
    try:
        newfid, qids = await c.walk(fid, [b"x"])
    except P9Error:
        return
    assert len(qids) == 1
    assert (await c.getattr(newfid)).size == 1


async def test_walk_zero_names_onto_itself_is_noop(server: Served) -> None:
    c = server.client
    qid = (await c.getattr(server.root)).qid
    same, qids = await c.walk(server.root, [], newfid=server.root)
    assert (same, qids) == (server.root, [])
    assert (await c.getattr(server.root)).qid == qid


async def test_walk_nul_in_name_is_einval(server: Served) -> None:
    (server.export / "a").mkdir()
    c = server.client
    with raises_errno(errno.EINVAL, errno.ENOENT):
        await c.walk(server.root, [b"a\0"])
