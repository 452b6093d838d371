"""Host-side agent: the export changes behind the server's back; nothing outside may be touched.

The sandbox's files are not only changed through 9P: another sandbox sharing the directory, or
the host, renames, replaces and re-links them while the gofer holds fids on them.  The classic
escape is a directory swapped for a symlink to somewhere outside between the server's check and
its use.  Each case here runs, for a few seconds:

* an **agent** thread (on the host, seeded) over a small pool of names in the export: create,
  rename over each other, replace a file or a directory by a symlink to a **canary** outside the
  export (absolute, relative ``../..``, and ``/fz-canary`` for the confined daemon, whose root
  is the bundle rootfs), replace a file by a new one, swap two directories, move the top of a
  70-level directory chain (``dz/z/z/...``) out of the export (``fz-out``, beside it) and back.  Before the
  clients start, it lays the names out (seeded): a link to a canary of each form, a
  directory, a file;
* two **clients** (9P connections of one server process).  Each first surveys the layout
  (walk, getattr, readlink, open and read of every name) and the agent starts only once both
  surveys are done, so every case reads through each link at least once, whatever the timing;
  each also walks to the bottom of the deep chain and keeps that fid; then random requests over
  the same names (and on the deep fid: getattr, readdir, mkdir, open and read, rename, and
  ``..`` walks, which make the server look for the attach root more than 32 levels up, and
  clamp the walk there when the chain was moved out): multi-name walks (``..`` too), open (read, write, truncate), read, write, readdir,
  getattr, setattr, create, mkdir, mknod, symlink, link, rename, renameat, unlinkat, readlink,
  xattrs, statfs, byte-range locks of two owners on one file.
  For the confined daemon the second client is its root connection walked down to ``export``
  (``Link.prefix``): the canary beside the export is then inside that attach point, but the
  clients never name it (no ``..``, no canary name), so any access to it is still the server
  following a link.

Oracles: every reply is a valid reply to its request (tag, type, errno); the server's log has no
error and the process is alive; its fd count comes back to what it was before the case once the
clients closed (a process serving many connections); and the canaries: an inotify watch on each canary directory and
file must see **no event at all** during the case (no open, read, write, attribute change,
create, delete or rename by anyone), and their contents, modes, owners and times are unchanged
afterwards.  ``stat`` by the checker does not generate inotify events; the checker reads the
canary's bytes only after the watch is closed.

A finding is saved as a case (``race-<bucket>.json``: seed and length) plus the transcript of the
first client; ``replay`` re-runs the case with the same oracles, and findings are minimized
(time-boxed) by halving the number of client requests while the case still fails.  Races are
timing-dependent: a replay runs the case up to five times before it calls it fixed.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gofer9p.protocol import messages as M

from .common import (
    STOP,
    Known,
    Report,
    budget_spent,
    liveness,
    run_deadline,
    save_failure,
    settle_fds,
    split_problem,
)
from .targets import Target, fd_count, fd_targets
from .wire import Closed, Failure, RawConn, Transcript, attach_requests

NAMES = [b"a", b"b", b"d1", b"d2", b"f"]
CANARY = "fz-canary"
DEEP, LEVEL, DEPTH = "dz", "z", 70
"""A chain ``export/dz/z/z/...`` of DEPTH directories, a file ``leaf`` at its bottom: deeper
than the server's containment check looks in one system call (32 levels), twice over."""
OUTSIDE = "fz-out"
"""Beside the export: where the agent moves the top of the chain, and back."""
DEEP_FID, DEEP_FID2 = 30, 31
SECRET = b"canary: nothing outside the export may be read, created or changed\n"

# ------------------------------------------------------------------- inotify
_IN_ALL = 0x00000FFF  # IN_ALL_EVENTS
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
_NAMES = {
    0x1: "ACCESS",
    0x2: "MODIFY",
    0x4: "ATTRIB",
    0x8: "CLOSE_WRITE",
    0x10: "CLOSE_NOWRITE",
    0x20: "OPEN",
    0x40: "MOVED_FROM",
    0x80: "MOVED_TO",
    0x100: "CREATE",
    0x200: "DELETE",
    0x400: "DELETE_SELF",
    0x800: "MOVE_SELF",
}


class Watch:
    """inotify on the canaries: any event is something touching what is outside the export."""

    def __init__(self, paths: list[Path]) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        fd = self.libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self.wds: dict[int, Path] = {}
        for p in paths:
            wd = self.libc.inotify_add_watch(fd, os.fsencode(p), _IN_ALL)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {p}")
            self.wds[wd] = p

    def events(self) -> list[str]:
        out: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _cookie, n = _EVENT.unpack_from(data, off)
                name = data[off + _EVENT.size : off + _EVENT.size + n].rstrip(b"\0")
                off += _EVENT.size + n
                what = "|".join(v for k, v in _NAMES.items() if mask & k) or hex(mask)
                where = self.wds.get(wd, Path("?")) / os.fsdecode(name)
                out.append(f"{what} {where}")

    def close(self) -> None:
        os.close(self.fd)


def _fingerprint(p: Path) -> list[tuple[str, int, int, int, int, int, int]]:
    """Names, modes, owners, sizes and change times under ``p`` (stat only: no inotify event)."""
    out = []
    for root, dirs, files in os.walk(p):
        for n in sorted(dirs + files):
            st = os.lstat(os.path.join(root, n))
            out.append(
                (
                    os.path.relpath(os.path.join(root, n), p),
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                )
            )
    return out


def make_canaries(target: Target) -> list[Path]:
    """Canary directories outside the export: beside it, and a host temp dir."""
    assert target.export is not None
    dirs = [target.export.parent / CANARY]
    for d in dirs:
        if d.exists():
            shutil.rmtree(d)
        (d / "sub").mkdir(parents=True)
        (d / "secret").write_bytes(SECRET)
        (d / "sub" / "inner").write_bytes(SECRET)
        os.chmod(d / "secret", 0o644)
    return dirs


# ---------------------------------------------------------------------- agent
class Agent:
    """Mutates the export from the host while the clients run (see module doc)."""

    def __init__(self, export: Path, canaries: list[Path], rng: random.Random) -> None:
        self.export = export
        self.canaries = canaries
        self.rng = rng
        self.ops = 0
        self.moved = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-agent", daemon=True)

    def links(self) -> list[str]:
        c = self.canaries[0]
        depth = len(self.export.relative_to(c.parent).parts)
        rel = "/".join([".."] * depth) + "/" + CANARY
        return [
            str(c),
            str(c / "secret"),
            rel,
            rel + "/secret",
            "/" + CANARY,  # the daemon's root is the bundle rootfs: this is the canary there
            "/" + CANARY + "/secret",
            "/",
        ]

    def setup(self) -> None:
        """The seeded layout a case starts from, made before the clients start: one name a
        link to a canary by a host path, one by the confined daemon's root (``/fz-canary``),
        one by a relative path, one a directory, one a file.  So every case begins with the
        export already swapped (each client's survey then reads through every link once,
        whatever the timing of the agent's later changes)."""
        names = [os.fsdecode(n) for n in NAMES]
        self.rng.shuffle(names)
        links = self.links()
        out = self.export.parent / OUTSIDE
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        e = os.open(self.export, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _remove(e, DEEP)
            os.mkdir(DEEP, dir_fd=e)
            d = os.open(DEEP, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=e)
            for _ in range(DEPTH):
                os.mkdir(LEVEL, dir_fd=d)
                nd = os.open(LEVEL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=d)
                os.close(d)
                d = nd
            _write(d, "leaf", b"at the bottom\n")
            os.close(d)
        except OSError:
            pass  # (a full tmpfs of the fault target: the chain is shorter)
        # (a name that stays, a mount point of the fault target, keeps what it is)
        for n in names:
            _remove(e, n)
        free = [n for n in names if not _exists(e, n)]
        try:
            for n, make in zip(free, (0, 1, 2, 3, 4), strict=False):
                if make < 3:
                    kinds = (links[:2], links[4:6], links[2:4])[make]
                    os.symlink(self.rng.choice(kinds), n, dir_fd=e)
                elif make == 3:
                    os.mkdir(n, dir_fd=e)
                    with _dir(e, n) as d:
                        _write(d, "x", b"inside\n")
                else:
                    _write(e, n, b"host file\n")
        finally:
            os.close(e)

    def step(self) -> None:
        """One host-side change.  The agent itself must never follow a symlink (the clients
        make them too): everything below the export is done relative to directory fds
        opened with O_NOFOLLOW."""
        rng = self.rng
        a = os.fsdecode(rng.choice(NAMES))
        b = os.fsdecode(rng.choice(NAMES))
        op = rng.randrange(9)
        e = os.open(self.export, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if op == 0:
                _remove(e, a)
                os.mkdir(a, dir_fd=e)
                with _dir(e, a) as d:
                    _write(d, "x", b"inside\n")
            elif op == 1:
                _remove(e, a)
                _write(e, a, b"host file\n")
            elif op == 2:
                _remove(e, a)
                os.symlink(rng.choice(self.links()), a, dir_fd=e)
            elif op == 3:
                os.rename(a, b, src_dir_fd=e, dst_dir_fd=e)
            elif op == 4:
                _write(e, ".fz-new", b"replaced\n")
                os.rename(".fz-new", a, src_dir_fd=e, dst_dir_fd=e)
            elif op == 5:
                with _dir(e, a) as d:
                    _remove(d, "x")
                    os.symlink(rng.choice(self.links()), "x", dir_fd=d)
            elif op == 6:
                with _dir(e, "d2") as d:
                    os.rename(a, "moved", src_dir_fd=e, dst_dir_fd=d)
            elif op == 8:
                self._move_chain(e)
            else:
                os.rename(a, b, src_dir_fd=e, dst_dir_fd=e)
                os.symlink(rng.choice(self.links()), a, dir_fd=e)
        except OSError:
            pass
        finally:
            os.close(e)
        self.ops += 1

    def _move_chain(self, e: int) -> None:
        """Move the deep chain's top directory out of the export (``fz-out``, beside it), or
        back: the clients' fids below it are then outside the tree, 70 levels down."""
        out = os.open(self.export.parent / OUTSIDE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            with _dir(e, DEEP) as d:
                if self.moved:
                    os.rename(LEVEL, LEVEL, src_dir_fd=out, dst_dir_fd=d)
                else:
                    os.rename(LEVEL, LEVEL, src_dir_fd=d, dst_dir_fd=out)
                self.moved = not self.moved
        finally:
            os.close(out)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.random() * 0.004):
            self.step()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


class _dir:
    """``with _dir(parent_fd, name) as fd``: a subdirectory opened without following links."""

    def __init__(self, parent: int, name: str) -> None:
        self.fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _write(d: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=d)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _remove(d: int, name: str) -> None:
    """Remove ``name`` in directory fd ``d``, a whole tree if it is a real directory."""
    try:
        os.unlink(name, dir_fd=d)
        return
    except IsADirectoryError:
        pass
    except OSError:
        return
    try:
        with _dir(d, name) as sub:
            for n in os.listdir(sub):
                _remove(sub, n)
        os.rmdir(name, dir_fd=d)
    except OSError:
        pass


def _exists(d: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=d)
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------- client
def _survey(conn: RawConn) -> None:
    """Visit every name of the agent's layout once: walk, getattr, readlink, open and read.

    Run before the agent starts changing the export, so the first requests of every case
    read through each link the layout made (a server that follows one is caught on every
    case, not only when the random requests happen to meet a swapped name in time)."""
    fid = 1
    for name in NAMES:
        conn.rpc(M.Tclunk(tag=0, fid=fid))
        conn.rpc(M.Twalk(tag=0, fid=0, newfid=fid, wnames=[name]))
        conn.rpc(M.Tgetattr(tag=0, fid=fid, request_mask=0x3FFF))
        conn.rpc(M.Treadlink(tag=0, fid=fid))
        conn.rpc(M.Tlopen(tag=0, fid=fid, flags=0))
        conn.rpc(M.Tread(tag=0, fid=fid, offset=0, count=4096))
    conn.rpc(M.Tclunk(tag=0, fid=fid))
    # the deep chain: DEEP_FID at its bottom, kept for the whole case (see _deep)
    down = [DEEP.encode(), *[LEVEL.encode()] * DEPTH]
    conn.rpc(M.Twalk(tag=0, fid=0, newfid=DEEP_FID, wnames=down[:16]))
    for i in range(16, len(down), 16):
        conn.rpc(M.Twalk(tag=0, fid=DEEP_FID, newfid=DEEP_FID, wnames=down[i:i + 16]))
    conn.rpc(M.Twalk(tag=0, fid=DEEP_FID, newfid=DEEP_FID2, wnames=[b".."]))  # 70 levels up
    conn.rpc(M.Tclunk(tag=0, fid=DEEP_FID2))


def _deep(conn: RawConn, rng: random.Random, up: bool) -> None:
    """One request on the fid at the bottom of the deep chain (``up``: ".." may be walked:
    the server then looks for the attach root more than 32 levels up, and clamps the walk
    there if the agent moved the chain out)."""
    conn.rpc(M.Tclunk(tag=0, fid=DEEP_FID2))
    op = rng.randrange(6 if up else 5)
    if op == 0:
        conn.rpc(M.Tgetattr(tag=0, fid=DEEP_FID, request_mask=0x3FFF))
    elif op == 1:
        conn.rpc(M.Twalk(tag=0, fid=DEEP_FID, newfid=DEEP_FID2, wnames=[]))
        conn.rpc(M.Tlopen(tag=0, fid=DEEP_FID2, flags=0o200000))
        conn.rpc(M.Treaddir(tag=0, fid=DEEP_FID2, offset=0, count=4096))
    elif op == 2:
        conn.rpc(M.Tmkdir(tag=0, dfid=DEEP_FID, name=b"m", mode=0o755, gid=0))
        conn.rpc(M.Tunlinkat(tag=0, dirfid=DEEP_FID, name=b"m", flags=0x200))
    elif op == 3:
        conn.rpc(M.Twalk(tag=0, fid=DEEP_FID, newfid=DEEP_FID2, wnames=[b"leaf"]))
        conn.rpc(M.Tlopen(tag=0, fid=DEEP_FID2, flags=0))
        conn.rpc(M.Tread(tag=0, fid=DEEP_FID2, offset=0, count=64))
    elif op == 4:
        conn.rpc(M.Twalk(tag=0, fid=DEEP_FID, newfid=DEEP_FID2, wnames=[b"leaf"]))
        conn.rpc(M.Trename(tag=0, fid=DEEP_FID2, dfid=DEEP_FID, name=b"leaf2"))
        conn.rpc(M.Trenameat(tag=0, olddirfid=DEEP_FID, oldname=b"leaf2", newdirfid=DEEP_FID,
                             newname=b"leaf"))
    else:
        conn.rpc(M.Twalk(tag=0, fid=DEEP_FID, newfid=DEEP_FID2,
                         wnames=[b".."] * rng.choice((1, 2, 16))))
        conn.rpc(M.Tgetattr(tag=0, fid=DEEP_FID2, request_mask=0x3FFF))


def _client(
    conn: RawConn,
    rng: random.Random,
    ops: int,
    problems: list[str],
    prefix: tuple[bytes, ...] | None = (),
    surveyed: threading.Semaphore | None = None,
) -> None:
    """The survey, then random requests over the agent's names; every reply must be a valid
    reply.

    ``prefix``: the walk from the connection's attach root to the export (the daemon's second
    client is its root connection).  ``surveyed`` is released once the survey is done (or the
    client gave up before it): the agent starts changing the export after every client's.
    """
    try:
        try:
            conn.handshake(rng.choice((65536, 1 << 20)))  # 1 MiB: pooled big reads too
            uname = rng.choice((b"root", b"nobody", b""))
            n_uname = rng.choice((0, 0, 65534, 1000))
            for req in attach_requests(prefix, uname=uname, n_uname=n_uname):
                conn.rpc(req)
            _survey(conn)
        finally:
            if surveyed is not None:
                surveyed.release()
        # ".." too (clamped at the attach root, and found again after the agent moved a
        # directory), but not by a client attached above the export: it would leave it
        walk_names = NAMES if prefix else [*NAMES, b".."]
        for i in range(ops):
            if STOP.is_set():
                return
            fid = 1 + i % 8
            conn.rpc(M.Tclunk(tag=0, fid=fid))
            path = [rng.choice(walk_names) for _ in range(rng.randrange(0, 3))]
            conn.rpc(M.Twalk(tag=0, fid=0, newfid=fid, wnames=path))
            name = rng.choice(NAMES)
            op = rng.randrange(18)
            if op == 17:
                _deep(conn, rng, up=not prefix)
            elif op == 0:
                conn.rpc(M.Tlopen(tag=0, fid=fid, flags=rng.choice((0, 2, 0o1002, 0o200000))))
                # 32 KiB+: the splice path; 1 MiB (clamped to msize): a pooled reply buffer
                count = rng.choice((64, 4096, 40000, 65000, 1 << 20))
                conn.rpc(M.Tread(tag=0, fid=fid, offset=rng.choice((0, 100)), count=count))
            elif op == 1:
                conn.rpc(M.Tlopen(tag=0, fid=fid, flags=rng.choice((1, 2, 0o1001))))
                size = rng.choice((7, 7, 40000))
                conn.rpc(M.Twrite(tag=0, fid=fid, offset=0, data=b"c" * size))
            elif op == 2:
                conn.rpc(M.Tlopen(tag=0, fid=fid, flags=0o200000))
                conn.rpc(M.Treaddir(tag=0, fid=fid, offset=0, count=8192))
            elif op == 3:
                conn.rpc(M.Tgetattr(tag=0, fid=fid, request_mask=0x3FFF))
            elif op == 4:
                conn.rpc(
                    M.Tsetattr(
                        tag=0,
                        fid=fid,
                        valid=rng.choice((1, 2, 4, 8, 0x30, 0x180)),
                        mode=0o777,
                        uid=rng.choice((0, 1000, 65534)),
                        gid=rng.choice((0, 1000, 65534)),
                        size=0,
                        atime_sec=0,
                        atime_nsec=0,
                        mtime_sec=0,
                        mtime_nsec=0,
                    )
                )
            elif op == 5:
                conn.rpc(M.Tlcreate(tag=0, fid=fid, name=name, flags=0o102, mode=0o644, gid=0))
            elif op == 6:
                conn.rpc(M.Tmkdir(tag=0, dfid=fid, name=name, mode=0o755, gid=0))
            elif op == 7:
                conn.rpc(
                    M.Tsymlink(tag=0, fid=fid, name=name, symtgt=b"../" + CANARY.encode(), gid=0)
                )
            elif op == 8:
                conn.rpc(M.Tlink(tag=0, dfid=0, fid=fid, name=name))
            elif op == 9:
                conn.rpc(M.Trename(tag=0, fid=fid, dfid=0, name=name))
            elif op == 10:
                conn.rpc(
                    M.Trenameat(
                        tag=0, olddirfid=fid, oldname=name, newdirfid=0, newname=rng.choice(NAMES)
                    )
                )
            elif op == 11:
                conn.rpc(M.Tunlinkat(tag=0, dirfid=fid, name=name, flags=rng.choice((0, 0x200))))
            elif op == 12:
                conn.rpc(M.Treadlink(tag=0, fid=fid))
            elif op == 13:
                conn.rpc(M.Txattrwalk(tag=0, fid=fid, newfid=20, name=b"user.x"))
                conn.rpc(M.Tclunk(tag=0, fid=20))
            elif op == 14:
                conn.rpc(
                    M.Tmknod(
                        tag=0,
                        dfid=fid,
                        name=name,
                        mode=rng.choice((0o10644, 0o140644)),
                        major=0,
                        minor=0,
                        gid=0,
                    )
                )
            elif op == 15:
                conn.rpc(M.Tstatfs(tag=0, fid=fid))
            else:
                # byte-range locks of two owners on one open file (the second owner gets an
                # fd of its own), a test for a conflicting one, then both unlocked
                conn.rpc(M.Tlopen(tag=0, fid=fid, flags=2))
                for proc_id, ltype in ((1, 0), (2, rng.choice((0, 1))), (1, 2), (2, 2)):
                    conn.rpc(M.Tlock(tag=0, fid=fid, type=ltype, flags=0, start=0,
                                     length=rng.choice((0, 100)), proc_id=proc_id,
                                     client_id=b"race"))
                    if proc_id == 2 and ltype != 2:
                        conn.rpc(M.Tgetlock(tag=0, fid=fid, type=1, start=0, length=0,
                                            proc_id=3, client_id=b"race"))
    except Closed:
        pass  # a connection with injected faults may end (RawConn.faults)
    except Failure as f:
        problems.append(f"{f.kind}: client: {f.message}")
    except OSError as e:
        problems.append(f"hang: client connection failed: {e}")


# ---------------------------------------------------------------------- cases
@dataclass
class RaceOutcome:
    problems: list[str] = field(default_factory=list)
    agent_ops: int = 0
    frames: int = 0
    transcript: Transcript = field(default_factory=Transcript)


def run_case(target: Target, seed: int, ops: int, *, timeout: float = 5.0) -> RaceOutcome:
    """One case: the agent and two clients for ``ops`` requests each; then the canary checks."""
    assert target.export is not None
    out = RaceOutcome()
    if not target.per_connection_process:
        target.reset_export()
        try:  # the warm-up before the fd baseline (caches the server fills on first use)
            liveness(target, timeout=timeout, exercise=True)
        except Failure as f:
            out.problems.append(f"{f.kind}: {f.message}")
            return out
    canaries = make_canaries(target)
    before = {c: _fingerprint(c) for c in canaries}
    watch = Watch([c for c in canaries] + [c / "sub" for c in canaries])
    rng = random.Random(seed)
    agent = Agent(target.export, canaries, random.Random(rng.randrange(1 << 30)))
    agent.setup()
    pid = target.pid()
    fd_base = fd_count(pid) if pid is not None else None
    fd_before = fd_targets(pid) if pid is not None else None
    links = []
    threads = []
    try:
        try:
            links = list(target.open_pair())  # two clients of the export, one process
        except OSError as e:
            out.problems.append(f"crash: cannot connect to the server: {e}")
            links = []
        surveyed = threading.Semaphore(0)
        for i, link in enumerate(links):
            t = out.transcript if i == 0 else Transcript()
            conn = RawConn(link.sock, t, timeout, faults=link.faults)
            th = threading.Thread(
                target=_client,
                args=(
                    conn,
                    random.Random(rng.randrange(1 << 30)),
                    ops,
                    out.problems,
                    link.prefix,
                    surveyed,
                ),
                daemon=True,
            )
            th.start()
            threads.append((th, conn))
        # (each survey is a bounded number of requests, each bounded by ``timeout``)
        for _ in links:
            surveyed.acquire(timeout=timeout * 8 * len(NAMES))
        if links:
            agent.start()
        for th, _ in threads:
            th.join(timeout * ops + 30)
    finally:
        agent.stop()
        out.agent_ops = agent.ops
        for _, conn in threads:
            out.frames += conn.frames_sent
        for link in links:
            link.sock.close()
        for link in links:
            out.problems += link.finish(10.0)
        leak = settle_fds(target, fd_base, before=fd_before) if links and target.alive() else None
        if leak:
            out.problems.append(leak)
        time.sleep(0.05)
        events = watch.events()
        watch.close()
    if events:
        out.problems.insert(
            0,
            f"crash: outside the export was touched: canary inotify events {events[:8]}",
        )
    for c in canaries:
        after = _fingerprint(c)
        if after != before[c]:
            changed = sorted(set(map(str, after)) ^ set(map(str, before[c])))
            out.problems.insert(0, f"crash: canary {c} changed: {changed[:6]}")
        if (c / "secret").read_bytes() != SECRET:
            out.problems.insert(0, f"crash: canary {c / 'secret'} content changed")
    out.problems += target.problems()
    return out


def minimize(target: Target, seed: int, ops: int, first: str, deadline: float) -> int:
    """Halve the requests per client while the same canary/crash finding still shows."""
    kind = first.split(":", 1)[0]
    best = ops

    def fails(ops: int) -> bool:
        o = run_case(target, seed, ops)
        return any(p.split(":", 1)[0] == kind and p[:40] == first[:40] for p in o.problems)

    while best > 1 and time.monotonic() < deadline and not STOP.is_set():
        # a race: the smaller case is kept only if it fails three times in a row, so that its
        # replay reproduces it (a case that failed once by luck would replay as "fixed")
        if fails(best // 2) and fails(best // 2) and fails(best // 2):
            best //= 2
        else:
            break
    return best


def run(
    target: Target,
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_cases: int | None,
    crash_dir: Path | None,
    timeout: float = 5.0,
    known: Known | None = None,
    shrink: bool = True,
) -> Report:
    """Run race cases until the budget is spent; the run goes on after findings."""
    if target.export is None:
        raise SystemExit("the race fuzzer needs a target whose export it can see (not unix:PATH)")
    known = known or Known()
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = run_deadline(start, time_budget, max_cases)
    agent_ops = 0
    while not STOP.is_set():
        if budget_spent(deadline, report.examples_run, max_cases):
            break
        case_seed = rng.randrange(1 << 31)
        ops = rng.choice((50, 200, 500))
        out = run_case(target, case_seed, ops, timeout=timeout)
        report.examples_run += 1
        report.frames_sent += out.frames
        report.connections += 2
        agent_ops += out.agent_ops
        problems = [p for p in out.problems if not known.match(report, p)]
        if problems:
            first = problems[0]
            final = ops
            if shrink:
                budget_end = deadline if deadline is not None else time.monotonic() + 120
                final = minimize(target, case_seed, ops, first, budget_end)
            kind, msg = split_problem(first)
            save_failure(
                report,
                "race",
                Failure(kind, msg),
                out.transcript,
                crash_dir=crash_dir,
                extra={
                    "case": {"seed": case_seed, "ops": final, "original_ops": ops},
                    "replay": f"python -m fuzz replay <this .json> --target {target.name}",
                },
            )
            report.notes.extend(problems[1:4])
            if not target.alive():
                target.restart()
    report.details["agent_ops"] = agent_ops
    report.duration_s = round(time.monotonic() - start, 2)
    return report


def replay_case(path: Path, target: Target, *, timeout: float = 5.0, tries: int = 5) -> list[str]:
    """Re-run a saved race case (up to ``tries`` times: races are timing-dependent)."""
    meta = json.loads(path.read_text())
    case: dict[str, Any] = meta["case"]
    problems: list[str] = []
    for _ in range(tries):
        problems = run_case(target, int(case["seed"]), int(case["ops"]), timeout=timeout).problems
        if problems:
            return problems
    return problems


__all__ = ["Agent", "Watch", "replay_case", "run", "run_case"]
