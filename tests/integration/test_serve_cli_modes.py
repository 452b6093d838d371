"""Created modes over the real ``gofer9p serve`` process, whatever its umask (issue 19).

A 9P client sends the mode it wants: its own kernel already applied its umask (Linux v9fs
does) and its mkdir/create rules.  So the host must show exactly that mode, set-id and sticky
bits included, and the serve process's own umask (022 and 077 here, as a person's shell gives
it) must change nothing.  Every create path is checked: Tlcreate, Tmkdir, Tmknod, Tsymlink,
and the paths that touch an existing file (Tlink, Txattrcreate) must leave its mode alone.

Set-id bits with a gid that is not the creator's own: the server creates as root and gives
the entry to the request's (uid, gid), and a chown strips S_ISUID (and S_ISGID with group
execute) even as root, so the mode is set after the chown.  What the host then shows is what
a local create by a process with that uid and gid (its fsgid: a member of its own group)
shows; ``_local_create`` makes that file with the kernel's own rules to compare.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from gofer9p.attach import _attrs as session_mod
from gofer9p.client import Client, open_client, stream_from_socket
from gofer9p.protocol import constants as C

from .conftest import Served

REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0
#: The local creates run as another uid, which may not be able to run our interpreter (pyenv
#: under /root): the system's does the same system calls.
LOCAL_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
needs_root = pytest.mark.skipif(not ROOT, reason="gives entries to other uids (root only)")

UMASKS = pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])

#: Modes a 022 or 077 umask would change, and set-id/sticky bits a chown would strip.
FILE_MODES = [0o620, 0o666, 0o4777, 0o2775, 0o6755, 0o1755, 0o7777, 0o2745]
DIR_MODES = [0o777, 0o1777, 0o2775, 0o3777, 0o750]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@asynccontextmanager
async def served(export: Path, umask: int, log: Path) -> AsyncIterator[Client]:
    """``python -m gofer9p serve --fd N EXPORT`` started with ``umask``; a connected client."""
    a, b = socket.socketpair()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gofer9p", "serve", str(export), "--fd", str(a.fileno())],
            pass_fds=(a.fileno(),),
            env=_env(),
            cwd=REPO,
            umask=umask,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    a.close()
    try:
        async with open_client(stream_from_socket(b)) as c:
            yield c
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _ids(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid


_LOCAL = r"""
import os, stat, sys, socket
kind, path, mode = sys.argv[1], sys.argv[2], int(sys.argv[3], 8)
if kind == "file":
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
elif kind == "dir":
    os.mkdir(path, mode)
elif kind == "fifo":
    os.mknod(path, stat.S_IFIFO | mode)
elif kind == "sock":
    os.mknod(path, stat.S_IFSOCK | mode)
elif kind == "symlink":
    os.symlink("target", path)
"""


def _local_create(kind: str, path: Path, mode: int, uid: int, gid: int) -> os.stat_result:
    """Create ``path`` as a local process with this uid and gid (umask 0) would; its stat."""
    subprocess.run(
        [LOCAL_PYTHON, "-c", _LOCAL, kind, str(path), f"{mode:o}"],
        user=uid,
        group=gid,
        extra_groups=[],
        umask=0,
        check=True,
        timeout=30,
    )
    return os.lstat(path)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    d.chmod(0o777)  # the local creates below run as other uids
    return d


@pytest.fixture
def local() -> Iterator[Path]:
    """A directory any uid can create in (pytest's tmp_path is under a 0700 directory)."""
    with tempfile.TemporaryDirectory(prefix="gofer9p-local-") as d:
        os.chmod(d, 0o777)
        yield Path(d)


Serve = Callable[[int], AbstractAsyncContextManager[Client]]


@pytest.fixture
def serve(export: Path, tmp_path: Path) -> Serve:
    count = iter(range(1000))
    return lambda umask: served(export, umask, tmp_path / f"serve-{next(count)}.log")


# ---------------------------------------------------------------- as the server's own user


@UMASKS
async def test_lcreate_modes(serve: Serve, export: Path, umask: int) -> None:
    async with serve(umask) as c:
        root = await c.attach(n_uname=os.geteuid())
        for mode in FILE_MODES:
            fid, _ = await c.walk(root, [])
            await c.lcreate(fid, f"f{mode:o}", C.L_O_WRONLY, mode, os.getegid())
            await c.clunk(fid)
    for mode in FILE_MODES:
        assert _mode(export / f"f{mode:o}") == mode, f"lcreate {mode:o}"


@UMASKS
async def test_mkdir_modes(serve: Serve, export: Path, umask: int) -> None:
    async with serve(umask) as c:
        root = await c.attach(n_uname=os.geteuid())
        for mode in DIR_MODES:
            await c.mkdir(root, f"d{mode:o}", mode, os.getegid())
    for mode in DIR_MODES:
        assert _mode(export / f"d{mode:o}") == mode, f"mkdir {mode:o}"


@UMASKS
async def test_mknod_modes(serve: Serve, export: Path, umask: int) -> None:
    kinds = [stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG]
    async with serve(umask) as c:
        root = await c.attach(n_uname=os.geteuid())
        for kind in kinds:
            for mode in FILE_MODES:
                await c.mknod(root, f"n{kind:o}-{mode:o}", kind | mode, gid=os.getegid())
        if ROOT:
            await c.mknod(root, b"null", stat.S_IFCHR | 0o666, 1, 3)
    for kind in kinds:
        for mode in FILE_MODES:
            st = os.lstat(export / f"n{kind:o}-{mode:o}")
            assert stat.S_IFMT(st.st_mode) == kind
            assert stat.S_IMODE(st.st_mode) == mode, f"mknod {kind:o} {mode:o}"
    if ROOT:
        assert os.lstat(export / "null").st_mode == stat.S_IFCHR | 0o666


@UMASKS
async def test_symlink_mode(serve: Serve, export: Path, umask: int) -> None:
    async with serve(umask) as c:
        root = await c.attach(n_uname=os.geteuid())
        await c.symlink(root, b"lnk", b"target", os.getegid())
    assert _mode(export / "lnk") == 0o777  # Linux symlinks are always 0777, umask or not
    assert os.readlink(export / "lnk") == "target"


@UMASKS
async def test_mkdir_in_setgid_parent_inherits(
    serve: Serve, export: Path, umask: int
) -> None:
    """A directory made in a set-gid directory is set-gid too (as a local mkdir), and a file
    made there keeps exactly its mode."""
    (export / "shared").mkdir()
    (export / "shared").chmod(0o2777)
    async with serve(umask) as c:
        root = await c.attach(n_uname=os.geteuid())
        shared = await c.walk_to(root, "shared")
        gid = os.lstat(export / "shared").st_gid
        await c.mkdir(shared, b"sub", 0o750, gid)
        fid, _ = await c.walk(shared, [])
        await c.lcreate(fid, b"f", C.L_O_WRONLY, 0o640, gid)
    assert _mode(export / "shared" / "sub") == 0o2750
    assert _mode(export / "shared" / "f") == 0o640


# ---------------------------------------------------------------- on behalf of other uids


UID, GID, OTHER_GID = 1234, 5678, 4321  # GID is not UID's group anywhere: ids only


@needs_root
@UMASKS
async def test_other_uid_modes_match_local_creates(
    serve: Serve, export: Path, local: Path, umask: int
) -> None:
    """Files, FIFOs, sockets, symlinks and directories made for (UID, GID) show the mode and
    owner a local create by a process with that uid and gid shows."""
    made: list[tuple[str, str, int]] = []
    async with serve(umask) as c:
        root = await c.attach(uname=b"u", n_uname=UID)
        for mode in FILE_MODES:
            name = f"f{mode:o}"
            fid, _ = await c.walk(root, [])
            await c.lcreate(fid, name, C.L_O_WRONLY, mode, GID)
            await c.clunk(fid)
            made.append(("file", name, mode))
            for kind, fmt in (("fifo", stat.S_IFIFO), ("sock", stat.S_IFSOCK)):
                name = f"{kind}{mode:o}"
                await c.mknod(root, name, fmt | mode, gid=GID)
                made.append((kind, name, mode))
        for mode in (0o777, 0o1777, 0o750):  # mkdir(2) keeps only these bits (and sticky)
            name = f"d{mode:o}"
            await c.mkdir(root, name, mode, GID)
            made.append(("dir", name, mode))
        await c.symlink(root, b"lnk", b"target", GID)
        made.append(("symlink", "lnk", 0o777))
    for kind, name, mode in made:
        want = _local_create(kind, local / name, mode, UID, GID)
        got = os.lstat(export / name)
        assert (got.st_mode, got.st_uid, got.st_gid) == (want.st_mode, want.st_uid, want.st_gid), (
            f"{kind} {name}: served {got.st_mode:o} {got.st_uid}:{got.st_gid}, "
            f"local {want.st_mode:o} {want.st_uid}:{want.st_gid}"
        )
        assert (got.st_uid, got.st_gid) == (UID, GID)


@needs_root
@UMASKS
async def test_other_uid_setid_exact(
    serve: Serve, export: Path, umask: int
) -> None:
    """Set-id bits survive the chown to another uid/gid on every create path."""
    async with serve(umask) as c:
        root = await c.attach(uname=b"u", n_uname=UID)
        fid, _ = await c.walk(root, [])
        await c.lcreate(fid, b"f", C.L_O_RDWR, 0o6755, GID)
        await c.clunk(fid)
        await c.mknod(root, b"fifo", stat.S_IFIFO | 0o6770, gid=GID)
        await c.mknod(root, b"reg", stat.S_IFREG | 0o4711, gid=GID)
        await c.mkdir(root, b"d", 0o6775, GID)  # exactly what was asked (see the module doc)
    assert _mode(export / "f") == 0o6755
    assert _mode(export / "fifo") == 0o6770
    assert _mode(export / "reg") == 0o4711
    assert _mode(export / "d") == 0o6775
    for n in ("f", "fifo", "reg", "d"):
        assert _ids(export / n) == (UID, GID), n


@needs_root
@UMASKS
async def test_link_and_xattrcreate_keep_setid(
    serve: Serve, export: Path, umask: int
) -> None:
    """Tlink and Txattrcreate on a set-id file owned by (UID, GID) change neither its mode nor
    its owner (as a local link(2) and setxattr(2) of a user. name would not)."""
    f = export / "setid"
    f.write_bytes(b"#!/bin/sh\n")
    os.chown(f, UID, OTHER_GID)
    f.chmod(0o6755)
    async with serve(umask) as c:
        root = await c.attach(uname=b"u", n_uname=UID)
        fid = await c.walk_to(root, "setid")
        await c.link(root, fid, b"hard")
        x = await c.walk_to(root, "setid")
        await c.xattrcreate(x, b"user.note", 3)
        await c.write(x, 0, b"abc")
        await c.clunk(x)
    for p in (f, export / "hard"):
        assert _mode(p) == 0o6755
        assert _ids(p) == (UID, OTHER_GID)
    assert os.lstat(f).st_nlink == 2
    assert os.getxattr(f, "user.note") == b"abc"


# ---------------------------------------------------------------- in-process serve()


@pytest.mark.parametrize("fchmodat2", [True, False], ids=["fchmodat2", "no-fchmodat2"])
async def test_in_process_serve_ignores_umask(
    server: Served, monkeypatch: pytest.MonkeyPatch, fchmodat2: bool
) -> None:
    """A library user's ``serve()`` runs under that program's umask (077 here): modes are
    still exact, also where chmod through an O_PATH fd is unavailable (kernels < 6.6: the
    new entry is re-opened instead)."""
    monkeypatch.setitem(session_mod._empty_path_ok, "fchmodat2", fchmodat2)
    c = server.client
    old = os.umask(0o077)
    try:
        fid, _ = await c.walk(server.root, [])
        await c.lcreate(fid, b"f", C.L_O_WRONLY, 0o2775, 0)
        await c.mkdir(server.root, b"d", 0o1777, 0)
        await c.mknod(server.root, b"fifo", stat.S_IFIFO | 0o4666, gid=0)
        await c.mknod(server.root, b"reg", stat.S_IFREG | 0o6755, gid=0)
    finally:
        os.umask(old)
    e = server.export
    assert [_mode(e / n) for n in ("f", "d", "fifo", "reg")] == [0o2775, 0o1777, 0o4666, 0o6755]
