"""Fids whose files were renamed, replaced or moved on the host (or through 9P).

The attach layer keeps, for non-directory fids, the parent directory and the
name as a *hint* verified by inode (see ``attach/session.py``).  These tests
make the hint stale and check that operations still act on the fid's own
file, never on a newcomer that took its name, and never outside the export.
"""

from __future__ import annotations

import errno
import os

import pytest

from gofer9p.protocol import constants as C

from .conftest import Served
from .helpers import qid_path_of, raises_errno


async def _renamed_and_replaced(s: Served) -> int:
    """Walk to ``f``, then on the host move it to ``moved`` and put an impostor at ``f``."""
    e = s.export
    (e / "f").write_bytes(b"original")
    fid = await s.client.walk_to(s.root, "f")
    os.rename(e / "f", e / "moved")
    (e / "f").write_bytes(b"impostor")
    return fid


async def test_lopen_after_host_rename_opens_the_fids_file(server: Served) -> None:
    c = server.client
    fid = await _renamed_and_replaced(server)
    await c.lopen(fid, C.L_O_RDONLY)
    assert await c.read(fid, 0, 100) == b"original"


async def test_lopen_trunc_after_host_rename_truncates_the_fids_file(server: Served) -> None:
    c = server.client
    fid = await _renamed_and_replaced(server)
    await c.lopen(fid, C.L_O_WRONLY | C.L_O_TRUNC)
    assert (server.export / "moved").read_bytes() == b""
    assert (server.export / "f").read_bytes() == b"impostor"


async def test_setattr_size_after_host_rename(server: Served) -> None:
    c = server.client
    fid = await _renamed_and_replaced(server)
    await c.setattr(fid, C.SETATTR_SIZE, size=3)
    assert (server.export / "moved").read_bytes() == b"ori"
    assert (server.export / "f").read_bytes() == b"impostor"


async def test_getattr_after_host_rename(server: Served) -> None:
    c = server.client
    fid = await _renamed_and_replaced(server)
    attr = await c.getattr(fid)
    assert attr.size == len(b"original")
    assert attr.qid.path == await qid_path_of(server, "moved")


async def test_link_after_host_rename_links_the_fids_file(server: Served) -> None:
    c = server.client
    fid = await _renamed_and_replaced(server)
    await c.link(server.root, fid, b"hard")
    e = server.export
    assert os.stat(e / "hard").st_ino == os.stat(e / "moved").st_ino
    assert (e / "hard").read_bytes() == b"original"


async def test_rename_after_host_rename_moves_the_fids_file(server: Served) -> None:
    c = server.client
    fid = await _renamed_and_replaced(server)
    await c.rename(fid, server.root, b"final")
    e = server.export
    assert (e / "final").read_bytes() == b"original"
    assert (e / "f").read_bytes() == b"impostor"
    assert not (e / "moved").exists()


async def test_remove_after_host_rename_removes_the_fids_file(server: Served) -> None:
    c = server.client
    fid = await _renamed_and_replaced(server)
    await c.remove(fid)
    e = server.export
    assert (e / "f").read_bytes() == b"impostor"
    assert not (e / "moved").exists()


async def test_xattr_after_host_rename(server: Served) -> None:
    e = server.export
    (e / "f").write_bytes(b"original")
    try:
        os.setxattr(e / "f", "user.which", b"original")
    except OSError:
        pytest.skip("the export filesystem does not support user.* xattrs")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    os.rename(e / "f", e / "moved")
    (e / "f").write_bytes(b"impostor")
    os.setxattr(e / "f", "user.which", b"impostor")
    assert await c.getxattr(fid, b"user.which") == b"original"


async def test_fid_in_renamed_directory_keeps_working(server: Served) -> None:
    """A file fid walked before its directory was renamed through 9P."""
    e = server.export
    (e / "d").mkdir()
    (e / "d" / "f").write_bytes(b"abc")
    c = server.client
    fid = await c.walk_to(server.root, "d/f")
    await c.renameat(server.root, b"d", server.root, b"e")
    await c.lopen(fid, C.L_O_RDWR)
    await c.write(fid, 3, b"def")
    assert (e / "e" / "f").read_bytes() == b"abcdef"


async def test_remove_dir_fid_after_rename(server: Served) -> None:
    e = server.export
    (e / "d").mkdir()
    c = server.client
    fid = await c.walk_to(server.root, "d")
    await c.renameat(server.root, b"d", server.root, b"e")
    await c.remove(fid)
    assert not (e / "e").exists()


async def test_lopen_of_unlinked_file(server: Served) -> None:
    """The name is gone and no other name exists: the open fails cleanly (or works on the inode)."""
    e = server.export
    (e / "f").write_bytes(b"gone")
    (e / "other").write_bytes(b"other")
    c = server.client
    fid = await c.walk_to(server.root, "f")
    (e / "f").unlink()
    try:
        await c.lopen(fid, C.L_O_RDONLY)
    except OSError as err:
        assert err.errno in (errno.ENOENT, errno.ESTALE), err
        return
    assert await c.read(fid, 0, 10) == b"gone"


async def test_dotdot_of_directory_moved_out_of_export(server: Served) -> None:
    """A directory moved out of the export on the host must not become a way out."""
    e = server.export
    outside = e.parent
    (e / "d").mkdir()
    (outside / "secret").write_bytes(b"s")
    c = server.client
    dfid = await c.walk_to(server.root, "d")
    os.rename(e / "d", outside / "escaped")
    try:
        _, qids = await c.walk(dfid, [b"..", b"secret"])
    except OSError:
        return
    assert len(qids) < 2
    if qids:
        assert qids[0].path != os.stat(outside).st_ino


async def test_root_listing_dotdot_is_root(server: Served) -> None:
    c = server.client
    fid = await c.walk_to(server.root, "")
    await c.lopen(fid, C.L_O_RDONLY)
    ents = {x.name: x for x in await c.readdir_all(fid)}
    root_path = (await c.getattr(server.root)).qid.path
    if b".." not in ents:
        pytest.skip("server does not return . and ..")
    assert ents[b".."].qid.path == root_path
    assert ents[b"."].qid.path == root_path


async def test_walk_to_name_replaced_by_symlink_is_not_followed(server: Served) -> None:
    """Swap a directory for a symlink to outside between walks: still never followed."""
    e = server.export
    outside = e.parent / "out"
    outside.mkdir()
    (outside / "x").write_bytes(b"outside")
    (e / "d").mkdir()
    (e / "d" / "x").write_bytes(b"inside")
    c = server.client
    await c.walk_to(server.root, "d/x")
    (e / "d" / "x").unlink()
    (e / "d").rmdir()
    os.symlink(str(outside), e / "d")
    newfid = c.new_fid()
    _, qids = await c.walk(server.root, [b"d", b"x"], newfid=newfid)
    assert len(qids) == 1
    assert qids[0].type == C.QidType.SYMLINK
    with raises_errno(errno.EBADF):
        await c.getattr(newfid)
