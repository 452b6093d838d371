"""Races: the host swaps a directory (or a file) for a symlink to the outside while the client
walks, opens, creates, renames and sets attributes through it.

The swapper is a separate process (true parallelism with the in-process server on another CPU)
that exchanges two names atomically with ``renameat2(RENAME_EXCHANGE)`` in a tight loop, so at
every instant the name is either the real inside object or a symlink to the outside one.  The
client runs several tasks of mixed operations for ~2 s; afterwards nothing outside may have
changed or been read, and no reply may carry outside data.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C

from .conftest import PWN, Esc

RACE_SECONDS = 2.0
"""How long the clients race at least."""
RACE_MAX_SECONDS = 40.0
"""How long they race at most waiting for the test's premise (see :func:`_run_clients`);
the swapper outlives it (Swapper.finish stops it)."""
MAX_CYCLES = 200_000

SWAPPER = r"""
import ctypes, os, signal, sys, time
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))  # Swapper.finish: the client is done
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
a, b, seconds, limit = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3]), int(sys.argv[4])
sys.stdout.write("ready\n"); sys.stdout.flush()
end = time.monotonic() + seconds
n = errors = 0
while n < limit and not stop and (n & 255 or time.monotonic() < end):
    if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
        errors += 1
        if errors > 1000:
            break
    n += 1
if n % 2:  # leave the names as they started
    libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
    n += 1
print(n, errors)
"""


class Swapper:
    """The swapping process: started, then told to stop and waited for (bounded) once the
    client is done, so a run that needed longer under load is not cut short."""

    def __init__(self, a: Path, b: Path, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SWAPPER, str(a), str(b), str(seconds), "50000000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def finish(self) -> tuple[int, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        n, errors = map(int, out.split())
        return n, errors


async def _try(stats: Counter[str], what: str, coro: object) -> object:
    try:
        r = await coro  # type: ignore[misc]
    except P9Error as e:
        stats[f"{what}:{e.errno}"] += 1
        return None
    stats[f"{what}:ok"] += 1
    return r


async def _ok(stats: Counter[str], what: str, coro: object) -> bool:
    """Like :func:`_try`, for a condition: did the request succeed?  (Some succeed with None.)"""
    try:
        await coro  # type: ignore[misc]
    except P9Error as e:
        stats[f"{what}:{e.errno}"] += 1
        return False
    stats[f"{what}:ok"] += 1
    return True


async def _walk(c: Client, root: int, names: list[bytes]) -> tuple[int, object]:
    """A full walk or P9Error (a partial walk, e.g. stopped at a symlink, is ENOTDIR here)."""
    fid, qids = await c.walk(root, names)
    if len(qids) != len(names):
        raise P9Error(20, "partial walk")
    return fid, qids


async def _dir_cycle(c: Client, root: int, i: int, stats: Counter[str], helper: int) -> None:
    """One round of everything one can do to d, d/x and d/victim."""
    name = f"{PWN}-{i}".encode()
    r = await _try(stats, "walk-d-x", _walk(c, root, [b"d", b"x"]))
    if r is not None:
        fid = r[0]  # type: ignore[index]
        if await _ok(stats, "lopen-x", c.lopen(fid, C.L_O_RDWR)):
            await _try(stats, "read-x", c.read(fid, 0, 256))
            await _try(stats, "write-x", c.write(fid, 0, b"INSIDE"))
        await _try(stats, "setattr-x", c.setattr(fid, C.SETATTR_MODE, mode=0o777))
        await _try(stats, "truncate-x", c.setattr(fid, C.SETATTR_SIZE, size=6))
        await _try(stats, "xattr-x", c.setxattr(fid, b"user.pwn", b"1"))
        await _try(stats, "clunk", c.clunk(fid))
    r = await _try(stats, "walk-d", c.walk(root, [b"d"]))
    if r is None:
        return
    d = r[0]  # type: ignore[index]
    await _try(stats, "mkdir", c.mkdir(d, name + b"-dir"))
    await _try(stats, "symlink", c.symlink(d, name + b"-sl", b"x"))
    await _try(stats, "mknod", c.mknod(d, name + b"-fifo", stat.S_IFIFO | 0o644))
    await _try(stats, "link", c.link(d, helper, name + b"-hl"))
    await _try(stats, "unlink-victim", c.unlinkat(d, b"victim", 0))
    if await _ok(stats, "rename-x", c.renameat(d, b"x", d, b"x2")):
        await _try(stats, "rename-back", c.renameat(d, b"x2", d, b"x"))
    await _try(stats, "rename-in", c.renameat(root, b"inside-file", d, b"moved-in"))
    await _try(stats, "rename-out", c.renameat(d, b"moved-in", root, b"inside-file"))
    await _try(stats, "xattr-d", c.setxattr(d, b"user.pwn", b"1"))
    await _try(stats, "chmod-d", c.setattr(d, C.SETATTR_MODE, mode=0o777))
    await _try(stats, "walk-d-dotdot", _walk(c, d, [b"..", b"..", b"outside"]))
    if await _ok(stats, "lopen-d", c.lopen(d, C.L_O_RDONLY | C.L_O_DIRECTORY)):
        await _try(stats, "readdir-d", c.readdir(d))
    await _try(stats, "clunk", c.clunk(d))
    r = await _try(stats, "lcreate-dir", c.walk(root, [b"d"]))
    if r is not None:
        d2 = r[0]  # type: ignore[index]
        if await _ok(stats, "lcreate", c.lcreate(d2, name, C.L_O_RDWR | C.L_O_CREAT, 0o644)):
            await _try(stats, "write-new", c.write(d2, 0, b"new"))
        await _try(stats, "clunk", c.clunk(d2))


async def _run_clients(
    esc: Esc, cycle: object, premise: Callable[[Counter[str]], bool], tasks: int = 4
) -> Counter[str]:
    """``tasks`` clients run ``cycle`` for ``RACE_SECONDS``, and on until ``premise`` holds
    (the race reached both states: the test's own check of itself) or ``RACE_MAX_SECONDS``.

    How many cycles fit in a time is the machine's load: beside a CI run there were some
    five per client in the 2 s, and the swapper, when it is preempted, leaves one state in
    place for a whole time slice, so all of them could see the symlink (and the test failed
    on its premise, not on an escape)."""
    c = esc.client
    stats: Counter[str] = Counter()
    helper, _ = await c.walk(esc.root, [b"helper"])
    start = time.monotonic()

    async def worker(w: int) -> None:
        for i in range(MAX_CYCLES):
            now = time.monotonic()
            if now >= start + RACE_MAX_SECONDS or (now >= start + RACE_SECONDS and premise(stats)):
                return
            await cycle(c, esc.root, w * MAX_CYCLES + i, stats, helper)  # type: ignore[operator]

    async with trio.open_nursery() as n:
        for w in range(tasks):
            n.start_soon(worker, w)
    return stats


@pytest.mark.parametrize("target", ["absolute", "relative"])
async def test_dir_swapped_for_symlink_race(esc: Esc, target: str) -> None:
    """``d`` flips between a real directory and a symlink to outside/dir while 4 client tasks
    operate on d, d/x, d/victim for ~2 s."""
    ex = esc.export
    (ex / "d").mkdir()
    (ex / "d" / "x").write_bytes(b"INSIDE-X")
    (ex / "d" / "victim").write_bytes(b"inside victim")
    (ex / "helper").write_bytes(b"helper")
    (ex / "inside-file").write_bytes(b"inside")
    os.symlink(str(esc.world.outdir) if target == "absolute" else "../outside/dir", ex / "d_alt")
    sw = Swapper(ex / "d", ex / "d_alt", RACE_MAX_SECONDS + 5)
    try:
        stats = await _run_clients(esc, _dir_cycle, _both_dir_states)
    finally:
        swaps, swap_errors = sw.finish()
    assert swaps > 1000 and swap_errors == 0, (swaps, swap_errors)
    # both states were seen: some operations reached the inside directory
    assert _both_dir_states(stats), stats
    esc.assert_contained()


def _failed(stats: Counter[str], what: str) -> int:
    """How many ``what`` requests failed (any errno)."""
    return sum(n for k, n in stats.items() if k.startswith(f"{what}:") and k != f"{what}:ok")


def _both_dir_states(stats: Counter[str]) -> bool:
    """Some operations reached the inside directory (and some met the symlink)."""
    return stats["walk-d-x:ok"] > 0 and stats["mkdir:ok"] > 0 and _failed(stats, "walk-d-x") > 0


def _both_file_states(stats: Counter[str]) -> bool:
    """Some opens reached the inside file (and some met the symlink)."""
    return stats["walk-f:ok"] > 0 and stats["lopen-f:ok"] > 0 and _failed(stats, "lopen-f") > 0


async def _file_cycle(c: Client, root: int, i: int, stats: Counter[str], helper: int) -> None:
    r = await _try(stats, "walk-f", c.walk(root, [b"f"]))
    if r is None:
        return
    fid = r[0]  # type: ignore[index]
    await _try(stats, "getattr-f", c.getattr(fid))
    await _try(stats, "getxattr-f", c.getxattr(fid, b""))
    await _try(stats, "setxattr-f", c.setxattr(fid, b"user.pwn", b"1"))
    await _try(stats, "chmod-f", c.setattr(fid, C.SETATTR_MODE, mode=0o777))
    await _try(stats, "truncate-f", c.setattr(fid, C.SETATTR_SIZE, size=8))
    await _try(stats, "chown-f", c.setattr(fid, C.SETATTR_UID, uid=4321))
    await _try(stats, "link-f", c.link(root, fid, f"{PWN}-{i}".encode()))
    if await _ok(stats, "lopen-f", c.lopen(fid, C.L_O_RDWR)):
        await _try(stats, "read-f", c.read(fid, 0, 256))
        await _try(stats, "write-f", c.write(fid, 0, b"INSIDE-F"))
        await _try(stats, "fsync-f", c.fsync(fid))
    await _try(stats, "clunk", c.clunk(fid))


async def test_file_swapped_for_symlink_race(esc: Esc) -> None:
    """``f`` flips between a regular file and a symlink to outside/secret while 4 client
    tasks open, read, write, truncate, chmod, chown, link and set xattrs on it."""
    ex = esc.export
    (ex / "f").write_bytes(b"INSIDE-F")
    (ex / "helper").write_bytes(b"helper")
    os.symlink("../outside/secret", ex / "f_alt")
    sw = Swapper(ex / "f", ex / "f_alt", RACE_MAX_SECONDS + 5)
    try:
        stats = await _run_clients(esc, _file_cycle, _both_file_states)
    finally:
        swaps, swap_errors = sw.finish()
    assert swaps > 1000 and swap_errors == 0, (swaps, swap_errors)
    assert _both_file_states(stats), stats
    # every hard link the client made is of the inside file or of the symlink, never the secret
    for p in ex.iterdir():
        if p.name.startswith(PWN):
            st = os.lstat(p)
            assert stat.S_ISLNK(st.st_mode) or st.st_ino == os.lstat(ex / "f").st_ino or (
                st.st_ino == os.lstat(ex / "f_alt").st_ino
            ), p
    esc.assert_contained()
