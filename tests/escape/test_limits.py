"""Attach names, separate attach points, and exhausting the gofer's file descriptors.

The fd tests run a real ``gofer9p serve`` subprocess so that running it out of fds cannot take
pytest down with it, and so its fds can be counted in /proc.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio

from gofer9p.attach import AttachPoint
from gofer9p.client import Client, ConnectionClosed, P9Error, stream_from_socket
from gofer9p.protocol import constants as C

from .conftest import Esc, World, expect_error, open_scanned_client

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ aname


@pytest.mark.parametrize(
    "aname",
    [b"/", b"../../", b"..", b"/../..", b".", b"//", b"./..", b"sub/../..", b"../../../../..",
     b"/" * 300],
    ids=["slash", "dotdot-dotdot", "dotdot", "slash-dotdot", "dot", "slashslash", "dot-dotdot",
         "sub-up-up", "five-up", "300-slashes"],
)
async def test_attach_aname_is_the_export_root(esc: Esc, aname: bytes) -> None:
    c = esc.client
    (esc.export / "sub").mkdir(exist_ok=True)
    root_qid = (await c.getattr(esc.root)).qid
    fid = await c.attach(uname=b"root", aname=aname, n_uname=0)
    assert (await c.getattr(fid)).qid == root_qid
    _, qids = await c.walk(fid, [b".."])
    assert qids == [root_qid]
    esc.assert_contained()


async def _attach_root_or_error(esc: Esc, aname: bytes) -> None:
    """An aname naming nothing inside the export attaches the root (diod-style clients send
    the export's host path) or fails; it never attaches anything else."""
    c = esc.client
    root_qid = (await c.getattr(esc.root)).qid
    try:
        fid = await c.attach(uname=b"root", aname=aname, n_uname=0)
    except P9Error:
        return
    assert (await c.getattr(fid)).qid == root_qid, f"aname {aname!r} attached something else"
    _, qids = await c.walk(fid, [b".."])
    assert qids == [root_qid]


@pytest.mark.parametrize("aname", [b"../outside", b"/../outside/secret", b"/etc/passwd",
                                   b"../../etc", b"/tmp", b"../outside/dir"])
async def test_attach_aname_outside_gives_root_at_most(esc: Esc, aname: bytes) -> None:
    await _attach_root_or_error(esc, aname)
    esc.assert_contained()


async def test_attach_aname_with_absolute_host_path(esc: Esc) -> None:
    """The export's own host path, or an outside host path, as aname: the root at most."""
    for aname in (str(esc.export).encode(), str(esc.world.outside).encode(),
                  str(esc.world.secret).encode(), str(esc.world.outdir).encode()):
        await _attach_root_or_error(esc, aname)
    esc.assert_contained()


# -------------------------------------------------------------- two attach points


async def test_two_attach_points_do_not_share_fids_or_trees(
    world: World, nursery: trio.Nursery
) -> None:
    """The daemon serves "/" and each 9P mount on separate connections.  In-process model:
    connection R serves the export ("/"), connection M serves export/data (the mount, read-only).
    A fid number of one connection means nothing on the other; ".." from M's root stays there;
    M's read-only policy cannot be sidestepped with fid numbers that are valid on R."""
    from gofer9p.server import serve

    (world.export / "data").mkdir()
    (world.export / "data" / "m.txt").write_bytes(b"mount file")
    (world.export / "hello.txt").write_bytes(b"root file")
    world.age_and_freeze()

    @asynccontextmanager
    async def conn(path: Path, readonly: bool) -> AsyncIterator[tuple[Client, int]]:
        point = AttachPoint.open(str(path), readonly=readonly)
        a, b = socket.socketpair()
        done = trio.Event()

        async def run() -> None:
            try:
                await serve(a, point, None, name=path.name)
            finally:
                a.close()
                done.set()

        nursery.start_soon(run)
        async with open_scanned_client(stream_from_socket(b), msize=65536) as c:
            yield c, await c.attach(500, uname=b"root", n_uname=0)
        with trio.fail_after(10):
            await done.wait()
        point.close()

    async with conn(world.export, False) as (r, rroot), conn(
        world.export / "data", True
    ) as (m, mroot):
        m_qid = (await m.getattr(mroot)).qid
        # R's fids 600 (hello.txt) and 601 (data) are unknown on M
        await r.walk(rroot, [b"hello.txt"], 600)
        await r.walk(rroot, [b"data"], 601)
        for fid in (600, 601):
            assert await expect_error(m.getattr(fid)) == errno.EBADF
            assert await expect_error(m.walk(fid, [], 700)) == errno.EBADF
            assert await expect_error(m.lopen(fid, C.L_O_RDONLY)) == errno.EBADF
            assert await expect_error(m.lopen(fid, C.L_O_RDWR)) in (errno.EBADF, errno.EROFS)
        # M's root is the mount: ".." stays, the root's files are out of reach
        _, qids = await m.walk(mroot, [b".."])
        assert qids == [m_qid]
        _, qids = await m.walk(mroot, [b"..", b"hello.txt"])
        assert len(qids) == 1
        for aname in (b"../hello.txt", b"..", b"../data"):
            try:
                fid = await m.attach(uname=b"root", aname=aname, n_uname=0)
            except P9Error:
                continue
            assert (await m.getattr(fid)).qid == m_qid, aname
        # M is read-only, also for a fid number that R uses for a writable file
        await r.walk(rroot, [b"data", b"m.txt"], 602)
        await m.walk(mroot, [b"m.txt"], 602)
        assert await expect_error(m.lopen(602, C.L_O_RDWR)) == errno.EROFS
        assert await expect_error(m.setattr(602, C.SETATTR_SIZE, size=0)) == errno.EROFS
        assert (world.export / "data" / "m.txt").read_bytes() == b"mount file"
    world.assert_contained()


# ---------------------------------------------------------------- fd exhaustion


def _gofer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def serve_fd_process(export: Path) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """``gofer9p serve EXPORT --fd N`` on one end of a socketpair; yields (process, our end)."""
    a, b = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(export), "--fd", str(a.fileno()),
         "--log-level", "warning"],
        pass_fds=(a.fileno(),),
        env=_gofer_env(),
        stderr=subprocess.PIPE,
    )
    a.close()
    try:
        yield proc, b
    finally:
        b.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def _open_many(c: Client, root: int, n: int, first_fid: int) -> tuple[list[int], Counter[int]]:
    """Walk + Tlopen ``n`` times concurrently; returns the opened fids and the errnos seen."""
    opened: list[int] = []
    errors: Counter[int] = Counter()
    sem = trio.Semaphore(32)

    async def one(fid: int) -> None:
        async with sem:
            try:
                await c.walk(root, [b"f"], fid)
            except P9Error as e:
                errors[e.errno or 0] += 1
                return
            try:
                await c.lopen(fid, C.L_O_RDONLY)
            except P9Error as e:
                errors[e.errno or 0] += 1
                await c.clunk(fid)
                return
            opened.append(fid)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, first_fid + i)
    return opened, errors


async def test_ten_thousand_opens_stay_inside_limits(world: World) -> None:
    """10k walk+open on one connection: every failure is a clean EMFILE/ENFILE, the gofer
    keeps serving, and clunking gives back every fd (count in /proc equals the start)."""
    (world.export / "f").write_bytes(b"data")
    world.age_and_freeze()
    with serve_fd_process(world.export) as (proc, sock):
        async with open_scanned_client(stream_from_socket(sock), msize=65536) as c:
            root = await c.attach(1, uname=b"root", n_uname=0)
            # warm up: the attach point caches one directory fd per file system
            warm, _ = await _open_many(c, root, 1, 900)
            await c.clunk(warm[0])
            base = fd_count(proc.pid)
            with trio.fail_after(300):  # a hang guard, not a timing check
                opened, errors = await _open_many(c, root, 10_000, 1000)
            peak = fd_count(proc.pid)
            assert set(errors) <= {errno.EMFILE, errno.ENFILE}, errors
            assert len(opened) + sum(errors.values()) == 10_000
            # still serving: metadata needs no new fd
            await c.getattr(root)
            for fid in opened:
                await c.clunk(fid)
            assert fd_count(proc.pid) == base, (base, peak, fd_count(proc.pid))
            # and usable again
            more, errors2 = await _open_many(c, root, 10, 50_000)
            assert len(more) == 10, errors2
        assert proc.wait(10) == 0
    print(f"10k opens: {len(opened)} opened, errors {dict(errors)}, fds base {base} peak {peak}")
    world.assert_contained()


async def test_fd_exhaustion_does_not_kill_a_listening_gofer(world: World) -> None:
    """``gofer9p serve --listen``: connection 1 uses up every fd of the gofer; connection 2
    then arrives (accept(2) fails with EMFILE).  The gofer must keep running and keep serving
    connection 1, and accept again once fds are free."""
    (world.export / "f").write_bytes(b"data")
    world.age_and_freeze()
    sockdir = tempfile.mkdtemp(prefix="g9esc-")  # not beside the export: that is "outside"
    path = os.path.join(sockdir, "g.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(world.export), "--listen", f"unix:{path}",
         "--log-level", "warning"],
        env=_gofer_env(),
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(200):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        s1 = socket.socket(socket.AF_UNIX)
        s1.connect(path)
        async with open_scanned_client(stream_from_socket(s1), msize=65536) as c1:
            root = await c1.attach(1, uname=b"root", n_uname=0)
            with trio.fail_after(300):  # a hang guard, not a timing check
                opened, errors = await _open_many(c1, root, 10_000, 1000)
            assert errors, "10k opens did not exhaust the gofer's fds; raise the count"
            s2 = socket.socket(socket.AF_UNIX)
            s2.connect(path)  # queued in the backlog; the gofer's accept() hits EMFILE
            await trio.sleep(0.5)
            assert proc.poll() is None, "the gofer exited when accept() failed with EMFILE"
            try:
                await c1.getattr(root)
            except ConnectionClosed:
                raise AssertionError("connection 1 was dropped when accept() hit EMFILE") from None
            for fid in opened:
                await c1.clunk(fid)
            # with fds free again, the queued connection 2 is served
            async with open_scanned_client(stream_from_socket(s2), msize=65536) as c2:
                with trio.fail_after(10):
                    r2 = await c2.attach(1, uname=b"root", n_uname=0)
                    await c2.getattr(r2)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if "Traceback" in err:
            print(err[-3000:])
        shutil.rmtree(sockdir, ignore_errors=True)
    world.assert_contained()


async def test_one_connection_cannot_starve_the_others_of_fds(world: World) -> None:
    """The confined gofer serves the root and every 9P mount from one process, so one
    connection that holds every fd it can get (10k opened fids, ~3 fds each) would leave the
    others unable to walk or open anything.  Each connection needs its own fd budget: the
    hoarder gets EMFILE, a second connection can still walk and open files."""
    (world.export / "f").write_bytes(b"data")
    world.age_and_freeze()
    sockdir = tempfile.mkdtemp(prefix="g9esc-")
    path = os.path.join(sockdir, "g.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(world.export), "--listen", f"unix:{path}",
         "--log-level", "warning"],
        env=_gofer_env(),
    )
    try:
        for _ in range(200):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        s1, s2 = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        s1.connect(path)
        s2.connect(path)
        async with open_scanned_client(stream_from_socket(s1), msize=65536) as hog, \
                open_scanned_client(stream_from_socket(s2), msize=65536) as other:
            r1 = await hog.attach(1, uname=b"root", n_uname=0)
            r2 = await other.attach(1, uname=b"root", n_uname=0)
            with trio.fail_after(300):  # a hang guard, not a timing check
                opened, errors = await _open_many(hog, r1, 10_000, 1000)
            got, errors2 = await _open_many(other, r2, 5, 50_000)
            assert len(got) == 5, (
                f"after one connection opened {len(opened)} fids (errors {dict(errors)}), "
                f"another could not open a file: {dict(errors2)}"
            )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)
    world.assert_contained()
