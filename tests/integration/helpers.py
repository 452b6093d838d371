"""Common 9P sequences for the ``test_ops_*`` integration tests.

Every helper talks to the server through :class:`gofer9p.client.Client` only;
checks against the host filesystem are left to the tests themselves.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import Dirent

from .conftest import Served

DOT_NAMES = frozenset({b".", b".."})


@contextmanager
def raises_errno(*codes: int) -> Iterator[pytest.ExceptionInfo[P9Error]]:
    """Expect a :class:`P9Error` whose errno is one of ``codes``."""
    with pytest.raises(P9Error) as info:
        yield info
    got = info.value.errno
    assert got in codes, (
        f"expected {'/'.join(errno.errorcode[c] for c in codes)}, "
        f"got {errno.errorcode.get(got or 0, got)} ({info.value})"
    )


async def clone(c: Client, fid: int) -> int:
    """A new fid for the same file (nwname 0 walk)."""
    newfid, qids = await c.walk(fid, [])
    assert qids == []
    return newfid


async def open_path(c: Client, root: int, path: str, flags: int = C.L_O_RDONLY) -> int:
    """Walk ``path`` from ``root`` and lopen it; returns the open fid."""
    fid = await c.walk_to(root, path)
    await c.lopen(fid, flags)
    return fid


async def read_path(c: Client, root: int, path: str) -> bytes:
    """The whole content of ``path`` (walk, lopen O_RDONLY, read to EOF, clunk)."""
    fid = await open_path(c, root, path)
    try:
        return await c.read_all(fid)
    finally:
        await c.clunk(fid)


async def create_file(
    c: Client,
    dirfid: int,
    name: str,
    data: bytes = b"",
    *,
    mode: int = 0o640,
    gid: int = 0,
    keep_open: bool = False,
) -> int | None:
    """Tlcreate ``name`` in ``dirfid`` (cloned first) with ``data``.

    Returns the open (O_RDWR) fid when ``keep_open``; otherwise clunks it and
    returns None.
    """
    fid = await clone(c, dirfid)
    await c.lcreate(fid, name, C.L_O_RDWR, mode, gid)
    if data:
        await c.write_all(fid, data)
    if keep_open:
        return fid
    await c.clunk(fid)
    return None


async def write_path(c: Client, root: int, path: str, data: bytes, offset: int = 0) -> None:
    """Open ``path`` O_WRONLY, write ``data`` at ``offset``, clunk."""
    fid = await open_path(c, root, path, C.L_O_WRONLY)
    try:
        await c.write_all(fid, data, offset)
    finally:
        await c.clunk(fid)


async def list_dir(c: Client, root: int, path: str = "", count: int | None = None) -> list[Dirent]:
    """Every Rreaddir entry of directory ``path`` (walk, lopen, readdir to the end, clunk)."""
    fid = await open_path(c, root, path) if path else await clone(c, root)
    try:
        if not path:
            await c.lopen(fid, C.L_O_RDONLY)
        return await c.readdir_all(fid, count)
    finally:
        await c.clunk(fid)


async def qid_path_of(s: Served, path: str) -> int:
    """The qid path of ``path`` as seen by a walk."""
    names = [n for n in path.split("/") if n]
    fid, qids = await s.client.walk(s.root, names)
    await s.client.clunk(fid)
    assert len(qids) == len(names)
    return qids[-1].path if qids else (await s.client.getattr(s.root)).qid.path


async def assert_fid_unknown(c: Client, fid: int) -> None:
    """The server no longer knows ``fid``: a Tgetattr on it is EBADF."""
    with raises_errno(errno.EBADF):
        await c.getattr(fid, C.GETATTR_MODE)


def host_tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """A snapshot of ``root``: relative path -> (st_mode, content of regular files).

    Used to prove that a refused request changed nothing on the host.
    """
    out: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            out[str(p.relative_to(root))] = (st.st_mode, data)
    return out


def host_has_user_xattrs(path: Path) -> bool:
    """Whether the filesystem holding ``path`` accepts ``user.*`` xattrs."""
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True
