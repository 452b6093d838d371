"""Tattach, Tauth and the uid an attach stands for (``access=client``)."""

from __future__ import annotations

import errno
import os
import pwd

import pytest

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M

from .conftest import ConnectFn, Served
from .helpers import assert_fid_unknown, clone, create_file, raises_errno


async def test_attach_returns_root_dir_qid(connect_export: ConnectFn) -> None:
    async with connect_export(attach=False) as s:
        c = s.client
        fid = c.new_fid()
        r = await c.request(
            M.Tattach(tag=0, fid=fid, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0),
            M.Rattach,
        )
        assert r.qid.type == C.QidType.DIR
        attr = await c.getattr(fid)
        assert attr.qid == r.qid
        assert attr.mode == os.stat(s.export).st_mode
        assert attr.qid.path != 0


async def test_auth_is_refused(connect_export: ConnectFn) -> None:
    """No authentication: Tauth gets Rlerror, and the connection keeps working."""
    async with connect_export(attach=False) as s:
        c = s.client
        afid = c.new_fid()
        with pytest.raises(P9Error):
            await c.auth(afid, b"root", b"", 0)
        root = await c.attach(uname=b"root", n_uname=0)
        await c.getattr(root)
        # the refused afid was not registered
        await assert_fid_unknown(c, afid)


async def test_attach_on_fid_in_use_fails_and_keeps_fid(server: Served) -> None:
    c = server.client
    sub = server.export / "d"
    sub.mkdir()
    fid, _ = await c.walk(server.root, [b"d"])
    with pytest.raises(P9Error):
        await c.attach(fid, uname=b"root", n_uname=0)
    # fid still refers to d, not to the root
    _, qids = await c.walk(server.root, [b"d"])
    root_qid = (await c.getattr(server.root)).qid
    assert qids[0] != root_qid
    assert (await c.getattr(fid)).qid == qids[0]


async def test_second_attach_on_same_connection(server: Served) -> None:
    """Linux with access=client attaches once per uid on one connection."""
    c = server.client
    other = await c.attach(uname=b"u", n_uname=1234)
    assert (await c.getattr(other)).qid == (await c.getattr(server.root)).qid
    await c.clunk(other)
    # the first attach is not affected
    await c.getattr(server.root)


async def _created_owner(s: Served, root: int, name: str, gid: int) -> os.stat_result:
    pub = s.export / "pub"
    if not pub.exists():
        pub.mkdir()
        pub.chmod(0o777)
    d, _ = await s.client.walk(root, [b"pub"])
    await create_file(s.client, d, name, b"x", mode=0o640, gid=gid)
    await s.client.clunk(d)
    return os.lstat(pub / name)


async def test_n_uname_owns_created_files(server: Served) -> None:
    c = server.client
    u = await c.attach(uname=b"u", n_uname=1234)
    st = await _created_owner(server, u, "f", 5678)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    # root's attach still creates root-owned files
    st = await _created_owner(server, server.root, "g", 0)
    assert (st.st_uid, st.st_gid) == (0, 0)


async def test_n_uname_owns_mkdir_symlink_mknod(server: Served) -> None:
    c = server.client
    u = await c.attach(uname=b"u", n_uname=1234)
    await c.mkdir(u, b"dir", 0o750, 77)
    await c.symlink(u, b"lnk", b"target", 78)
    await c.mknod(u, b"fifo", 0o010640, 0, 0, 79)
    e = server.export
    assert (os.lstat(e / "dir").st_uid, os.lstat(e / "dir").st_gid) == (1234, 77)
    assert (os.lstat(e / "lnk").st_uid, os.lstat(e / "lnk").st_gid) == (1234, 78)
    assert (os.lstat(e / "fifo").st_uid, os.lstat(e / "fifo").st_gid) == (1234, 79)


async def test_nonuname_with_numeric_uname(server: Served) -> None:
    u = await server.client.attach(uname=b"1234", n_uname=C.NONUNAME)
    st = await _created_owner(server, u, "f", 42)
    assert (st.st_uid, st.st_gid) == (1234, 42)


async def test_nonuname_with_user_name(server: Served) -> None:
    try:
        pw = pwd.getpwnam("daemon")
    except KeyError:
        pytest.skip("no 'daemon' user in /etc/passwd")
    assert pw.pw_uid != 0
    u = await server.client.attach(uname=b"daemon", n_uname=C.NONUNAME)
    st = await _created_owner(server, u, "f", 42)
    assert (st.st_uid, st.st_gid) == (pw.pw_uid, 42)


async def test_fids_of_an_attach_keep_its_uid(server: Served) -> None:
    """A fid walked or cloned from a uid-1234 attach still creates as 1234."""
    c = server.client
    (server.export / "pub").mkdir()
    (server.export / "pub").chmod(0o777)
    u = await c.attach(uname=b"u", n_uname=1234)
    d, _ = await c.walk(u, [b"pub"])
    d2 = await clone(c, d)
    await c.mkdir(d2, b"sub", 0o755, 9)
    st = os.lstat(server.export / "pub" / "sub")
    assert (st.st_uid, st.st_gid) == (1234, 9)


async def test_attach_after_clunk_of_root(server: Served) -> None:
    c = server.client
    await c.clunk(server.root)
    with raises_errno(errno.EBADF):
        await c.walk(server.root, [])
    root = await c.attach(uname=b"root", n_uname=0)
    await c.getattr(root)


async def test_first_attach_of_connection_as_other_uid(connect_export: ConnectFn) -> None:
    """A connection whose only attach is uid 1234 creates 1234-owned files."""
    async with connect_export(attach=False) as s:
        u = await s.client.attach(uname=b"u", n_uname=1234)
        st = await _created_owner(s, u, "f", 1234)
        assert (st.st_uid, st.st_gid) == (1234, 1234)
        fid = await s.client.walk_to(u, "pub/f")
        attr = await s.client.getattr(fid)
        assert (attr.uid, attr.gid) == (1234, 1234)
