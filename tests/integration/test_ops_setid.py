"""Set-id bits after a write, truncate or chown on behalf of a fid's uid.

The server writes as root with CAP_FSETID, for which the host keeps S_ISUID and
S_ISGID; a fid attached as an unprivileged uid must see them cleared exactly as a
local write(2)/truncate(2)/open(O_TRUNC) by that uid clears them.  Every expected
mode is what the host kernel does for a real process of that uid (fork, setuid).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from gofer9p.attach import AttachPoint
from gofer9p.attach.session import Session
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M

from .conftest import Served

UID = GID = 1234
MODES = (0o4755, 0o2755, 0o6755, 0o2745)


def _as_user(cwd: Path, fn: Callable[[], None]) -> None:
    """Run ``fn`` in a child process whose uid and gid are UID/GID, no groups, in
    ``cwd`` (entered as root: pytest's tmp ancestors are 0700)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(GID)
            os.setuid(UID)
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _file(p: Path, mode: int) -> None:
    p.write_bytes(b"0123456789")
    os.chown(p, UID, GID)
    os.chmod(p, mode)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _local_write(p: Path) -> None:
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)


def _reference(export: Path, mode: int, op: Callable[[Path], None]) -> int:
    """The mode a local ``op`` by UID leaves on a file of ``mode`` owned by UID."""
    ref = export / "ref"
    _file(ref, mode)
    _as_user(export, lambda: op(Path(ref.name)))
    got = _mode(ref)
    ref.unlink()
    return got


async def _user_fid(s: Served, name: str, uid: int = UID) -> int:
    c = s.client
    u = await c.attach(uname=str(uid).encode(), n_uname=uid)
    return await c.walk_to(u, name)


@pytest.mark.parametrize("mode", MODES, ids=oct)
async def test_write_by_user_clears_like_local_write(server: Served, mode: int) -> None:
    want = _reference(server.export, mode, _local_write)
    if mode != 0o2745:  # S_ISGID without S_IXGRP stays (a writer in the group)
        assert want != mode
    p = server.export / "f"
    _file(p, mode)
    c = server.client
    fid = await _user_fid(server, "f")
    await c.lopen(fid, C.L_O_WRONLY)
    assert _mode(p) == mode  # opening does not clear them, writing does
    assert await c.write(fid, 0, b"x") == 1  # the server's fast path (write_regular)
    assert _mode(p) == want
    assert p.read_bytes() == b"x123456789"


def test_write_general_path_clears(export: Path) -> None:
    """Session.write (the path for messages the server decodes) clears too."""
    p = export / "f"
    _file(p, 0o6755)
    point = AttachPoint.open(str(export))
    sess = Session(point)
    try:
        sess.attach(M.Tattach(tag=0, fid=1, afid=C.NOFID, uname=b"u", aname=b"", n_uname=UID))
        sess.walk(M.Twalk(tag=0, fid=1, newfid=2, wnames=[b"f"]))
        sess.lopen(M.Tlopen(tag=0, fid=2, flags=C.L_O_RDWR))
        assert _mode(p) == 0o6755
        assert sess.write(M.Twrite(tag=0, fid=2, offset=0, data=b"y")).count == 1
        assert _mode(p) == 0o0755
    finally:
        sess.reset()
        point.close()


async def test_zero_length_write_keeps(server: Served) -> None:
    p = server.export / "f"
    _file(p, 0o4755)
    fid = await _user_fid(server, "f")
    await server.client.lopen(fid, C.L_O_WRONLY)
    assert await server.client.write(fid, 0, b"") == 0
    assert _mode(p) == 0o4755


@pytest.mark.parametrize("mode", MODES, ids=oct)
async def test_write_by_root_keeps(server: Served, mode: int) -> None:
    p = server.export / "f"
    _file(p, mode)
    c = server.client
    fid = await c.walk_to(server.root, "f")
    await c.lopen(fid, C.L_O_WRONLY)
    assert await c.write(fid, 0, b"x") == 1
    assert _mode(p) == mode
    _local_write(p)  # this process: root, as the fid
    assert _mode(p) == mode


@pytest.mark.parametrize("mode", MODES, ids=oct)
async def test_setattr_size_by_user_clears(server: Served, mode: int) -> None:
    want = _reference(server.export, mode, lambda p: os.truncate(p, 3))
    p = server.export / "f"
    _file(p, mode)
    fid = await _user_fid(server, "f")
    await server.client.setattr(fid, C.SETATTR_SIZE, size=3)
    assert p.read_bytes() == b"012"
    assert _mode(p) == want


async def test_setattr_size_by_root_keeps(server: Served) -> None:
    p = server.export / "f"
    _file(p, 0o6755)
    fid = await server.client.walk_to(server.root, "f")
    await server.client.setattr(fid, C.SETATTR_SIZE, size=3)
    assert _mode(p) == 0o6755


@pytest.mark.parametrize("mode", MODES, ids=oct)
async def test_lopen_trunc_by_user_clears(server: Served, mode: int) -> None:
    def local(p: Path) -> None:
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))

    want = _reference(server.export, mode, local)
    p = server.export / "f"
    _file(p, mode)
    fid = await _user_fid(server, "f")
    await server.client.lopen(fid, C.L_O_WRONLY | C.L_O_TRUNC)
    assert p.read_bytes() == b""
    assert _mode(p) == want


async def test_lcreate_setid_then_write_by_user_clears(server: Served) -> None:
    d = server.export / "d"
    d.mkdir()
    os.chown(d, UID, GID)

    def local() -> None:
        old = os.umask(0)
        fd = os.open("ref", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o6755)
        os.umask(old)
        os.write(fd, b"x")
        os.close(fd)

    _as_user(d, local)
    want = _mode(d / "ref")
    assert want == 0o0755
    c = server.client
    fid = await _user_fid(server, "d")
    await c.lcreate(fid, "f", C.L_O_WRONLY, 0o6755, gid=GID)
    assert _mode(d / "f") == 0o6755
    assert await c.write(fid, 0, b"x") == 1
    assert _mode(d / "f") == want


async def test_chmod_in_session_rearms(server: Served) -> None:
    """A set-id chmod through any fid of the file re-arms an open writer's check."""
    p = server.export / "f"
    _file(p, 0o4755)
    c = server.client
    fid = await _user_fid(server, "f")
    await c.lopen(fid, C.L_O_WRONLY)
    await c.write(fid, 0, b"x")
    assert _mode(p) == 0o755
    other = await c.walk_to(server.root, "f")
    await c.setattr(other, C.SETATTR_MODE, mode=0o4755)
    assert _mode(p) == 0o4755
    await c.write(fid, 1, b"y")
    assert _mode(p) == 0o755


@pytest.mark.parametrize("mode", MODES, ids=oct)
async def test_chown_clears_like_local_chown(server: Served, mode: int) -> None:
    """Already done by the host's fchown (even by root): checked, not implemented here."""
    ref = server.export / "ref"
    _file(ref, mode)
    os.chown(ref, 4321, -1)
    want = _mode(ref)
    p = server.export / "f"
    _file(p, mode)
    fid = await server.client.walk_to(server.root, "f")
    await server.client.setattr(fid, C.SETATTR_UID, uid=4321)
    assert os.lstat(p).st_uid == 4321
    assert _mode(p) == want


async def test_directory_unaffected(server: Served) -> None:
    d = server.export / "d"
    d.mkdir()
    os.chown(d, UID, GID)
    os.chmod(d, 0o6775)
    c = server.client
    fid = await _user_fid(server, "d")
    new = await c.walk_to(fid, "")
    await c.lcreate(new, "f", C.L_O_WRONLY, 0o644, gid=GID)
    await c.write(new, 0, b"data")
    await c.setattr(fid, C.SETATTR_ATIME | C.SETATTR_MTIME)
    assert _mode(d) == 0o6775
    assert _mode(d / "f") == 0o644


@pytest.mark.parametrize("mode", (0o4777, 0o2777), ids=oct)
async def test_write_by_non_owner_clears(server: Served, mode: int) -> None:
    """pjdfstest chmod/12.t: a root-owned 04777/02777 file written by uid 65534."""
    p = server.export / "f"
    p.write_bytes(b"0")
    os.chmod(p, mode)
    c = server.client
    fid = await _user_fid(server, "f", uid=65534)
    await c.lopen(fid, C.L_O_RDWR)
    assert await c.write(fid, 0, b"x") == 1
    assert _mode(p) == 0o777
