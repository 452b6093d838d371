"""Hostile 9P clients against a real gofer process, and the memory bounds they must stay under.

Used by ``tests/faults/test_hostile.py`` (short variants, asserting) and
``benchmarks/hostile.py`` (long variants, printing figures).  Everything here is
synchronous: blocking sockets, threads for the parts that must run at once (a
probe client, an RSS sampler, a FIFO writer), so that the attacker can do what an
async client would not (stop reading, trickle bytes, pipeline thousands of frames).

Targets: ``python -m gofer9p serve DIR --listen unix:PATH`` (:class:`ListenGofer`)
and the confined daemon started by :func:`gofer9p.launch.start_gofer` on a bundle
whose rootfs is the export and which has one 9P mount, so that it serves two
connections: the attacker takes the root's, the probe the mount's
(:class:`DaemonGofer`).  Memory is VmRSS/VmHWM from ``/proc/PID/status``: a
sampler thread keeps the peak; a guard kills a target past :data:`KILL_KIB`
(a "before" run on unfixed code must not take the machine down with it).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ..protocol import constants as C
from ..protocol import messages as M
from ..protocol.codec import encode

HDR = struct.Struct("<IBH")
RLERROR = int(C.MsgType.RLERROR)
KILL_KIB = 3 << 20
"""A target whose VmRSS passes this (3 GiB) is killed by the sampler."""
PROBE_DEADLINE = 10.0
"""Seconds one probe round (walk, open, read, clunk; or connect, version, attach first)
may take before the test fails: a failure deadline, not a benchmark."""

# ------------------------------------------------------------------ stated bounds
# One place for the numbers the tests assert.  server.memory_bound (the written
# formula, docs/RESOURCES.md) is used when this tree has it; else the figures below.
CONN_FIXED_KIB = 2048
"""Per connection, beside its msize-sized buffers: the first receive buffer, the
session, the trio task, a worker thread's share, in-flight request objects."""
PROCESS_SLACK_KIB = 32 * 1024
"""Per process: allocator and interpreter jitter, worker thread stacks touched (trio's
40), the fd table as it grows."""
IDLE_CONN_KIB = 64
"""An idle connection (accepted, nothing or only Tversion received)."""
FID_KIB = 2
"""One fid (its _Fid object and table entry); fd-exhaustion attacks hold thousands."""


def per_connection_kib(msize: int, fids: int = 64) -> int:
    """The stated bound on what one connection holding at most ``fids`` fids may make the
    gofer hold (KiB): ``server.memory_bound`` with max_fids = ``fids`` (the attacks other
    than fd exhaustion hold a handful), plus CONN_FIXED_KIB for what tracemalloc does not
    see (a worker thread's stack, malloc's per-arena slack)."""
    from .. import server

    memory_bound = getattr(server, "memory_bound", None)
    if memory_bound is None:
        # receive buffer (msize + 64 KiB), a pooled read buffer, a held reply, and the
        # bytes of threaded requests in flight (msize): 4 x msize
        return 4 * msize // 1024 + CONN_FIXED_KIB
    config = server.ServerConfig(max_msize=max(msize, 4096), max_fids=fids)
    return int(memory_bound(config, 1)) // 1024 + CONN_FIXED_KIB


def bound_kib(msize: int, connections: int = 1, fids: int = 64) -> int:
    """Stated bound on a gofer's VmRSS growth under attack by ``connections`` clients."""
    return connections * per_connection_kib(msize, fids) + PROCESS_SLACK_KIB


# --------------------------------------------------------------------- /proc


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Samples a process's VmRSS every ``period`` s in a thread; kills it past ``kill_kib``."""

    def __init__(self, pid: int, period: float = 0.02, kill_kib: int = KILL_KIB) -> None:
        self.pid = pid
        self.base = proc_status_kib(pid, "VmRSS")
        self.peak = self.base
        self.killed = False
        self._stop = threading.Event()
        self._period = period
        self._kill = kill_kib
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                rss = proc_status_kib(self.pid, "VmRSS")
            except (OSError, RuntimeError):
                return
            self.peak = max(self.peak, rss)
            if rss > self._kill:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
                return

    def now(self) -> int:
        try:
            return proc_status_kib(self.pid, "VmRSS")
        except (OSError, RuntimeError):
            return -1

    def stop(self) -> int:
        """Stop sampling; the peak growth over the base (KiB)."""
        self._stop.set()
        self._t.join(5)
        return self.peak - self.base


# -------------------------------------------------------------------- framing


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, timeout: float | None = PROBE_DEADLINE) -> tuple[int, int, bytes]:
    """One whole frame: (type, tag, body)."""
    sock.settimeout(timeout)
    size, mtype, tag = HDR.unpack(recv_exact(sock, 7))
    return mtype, tag, recv_exact(sock, size - 7)


class P9Failed(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(err, os.strerror(err))
        self.errno = err


class Conn:
    """A blocking 9P2000.L client on one socket, one request at a time unless told otherwise."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, *msgs: M.Message) -> None:
        self.sock.settimeout(PROBE_DEADLINE)
        self.sock.sendall(b"".join(encode(m) for m in msgs))

    def rpc(self, msg: M.Message, timeout: float = PROBE_DEADLINE) -> bytes:
        self.send(msg)
        mtype, tag, body = recv_frame(self.sock, timeout)
        if tag != msg.tag:
            raise AssertionError(f"reply tag {tag} to tag {msg.tag}")
        if mtype == RLERROR:
            raise P9Failed(struct.unpack_from("<I", body)[0])
        if mtype != type(msg).TYPE + 1:
            raise AssertionError(f"reply type {mtype} to {type(msg).__name__}")
        return body

    def version(self, msize: int = 65536) -> int:
        body = self.rpc(M.Tversion(tag=C.NOTAG, msize=msize, version=C.VERSION_9P2000L))
        return int(struct.unpack_from("<I", body)[0])

    def attach(self, fid: int = 1, uname: bytes = b"root", n_uname: int = 0) -> None:
        self.rpc(M.Tattach(tag=1, fid=fid, afid=C.NOFID, uname=uname, aname=b"", n_uname=n_uname))

    def walk(self, fid: int, newfid: int, *names: bytes) -> None:
        self.rpc(M.Twalk(tag=2, fid=fid, newfid=newfid, wnames=list(names)))

    def lopen(self, fid: int, flags: int = C.L_O_RDONLY) -> None:
        self.rpc(M.Tlopen(tag=3, fid=fid, flags=flags))

    def read(self, fid: int, count: int, offset: int = 0) -> bytes:
        body = self.rpc(M.Tread(tag=4, fid=fid, offset=offset, count=count))
        return body[4:]

    def clunk(self, fid: int) -> None:
        self.rpc(M.Tclunk(tag=5, fid=fid))

    def close(self) -> None:
        self.sock.close()


def pipeline(conn: Conn, msgs: list[M.Message], *, read: bool = True) -> dict[int, int]:
    """Send every message at once (a thread reads replies meanwhile, unless ``read`` is
    False); returns {reply type, or -errno: count}.  A closed connection ends it early."""
    seen: dict[int, int] = {}

    def reader() -> None:
        for _ in range(len(msgs)):
            try:
                mtype, _tag, body = recv_frame(conn.sock, 60)
            except (EOFError, OSError):
                seen[0] = seen.get(0, 0) + 1  # closed
                return
            key = -struct.unpack_from("<I", body)[0] if mtype == RLERROR else mtype
            seen[key] = seen.get(key, 0) + 1

    t = threading.Thread(target=reader, daemon=True)
    if read:
        t.start()
    data = b"".join(encode(m) for m in msgs)
    conn.sock.settimeout(60)
    try:
        conn.sock.sendall(data)
    except OSError:
        seen[0] = seen.get(0, 0) + 1
    if read:
        t.join(120)
    return seen


# -------------------------------------------------------------------- targets


def target_tree() -> str:
    """Whose code the gofer runs: this tree's, or ``GOFER9P_TARGET_TREE``'s (a checkout to
    measure "before" figures on, e.g. an unmodified main).  ``python -m`` puts its working
    directory first on sys.path, so the gofer is also started there."""
    return os.environ.get("GOFER9P_TARGET_TREE") or str(Path(__file__).resolve().parents[2])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    repo = target_tree()
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


def populate(root: Path) -> None:
    """The files the attacks use: ``f`` (4 KiB), ``big`` (1 MiB), FIFOs ``p`` and ``w``."""
    (root / "f").write_bytes(b"x" * 4096)
    (root / "big").write_bytes(b"b" * (1 << 20))
    for name in ("p", "w"):
        if not (root / name).exists():
            os.mkfifo(root / name)


class Gofer:
    """A running gofer: its pid, log, and connections to it."""

    pid: int
    kind: str

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log_path = tmp / f"{self.kind}-{time.monotonic_ns()}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # closed in stop()

    @property
    def export(self) -> Path:
        raise NotImplementedError

    def attacker(self) -> socket.socket:
        """A connection for the hostile client."""
        raise NotImplementedError

    def other(self) -> socket.socket:
        """A connection for the client that must keep being answered."""
        raise NotImplementedError

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class ListenGofer(Gofer):
    """``python -m gofer9p serve EXPORT --listen unix:PATH [extra]``."""

    kind = "serve"

    def __init__(self, tmp: Path, *extra: str, export: Path | None = None) -> None:
        super().__init__(tmp)
        self._export = export or tmp / "export"
        self._export.mkdir(exist_ok=True)
        populate(self._export)
        self.sockdir = tempfile.mkdtemp(prefix="g9hostile-")
        self.path = os.path.join(self.sockdir, "g.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gofer9p", "serve", str(self._export),
             "--listen", f"unix:{self.path}", "--log-level", "info", *extra],
            env=_env(), stdout=subprocess.DEVNULL, stderr=self._log, cwd=target_tree(),
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while "serving " not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start:\n{self.log()}")
            time.sleep(0.02)

    @property
    def export(self) -> Path:
        return self._export

    def connect(self) -> socket.socket:
        """A new connection; retried while the listen backlog is full (EAGAIN)."""
        deadline = time.monotonic() + PROBE_DEADLINE
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(PROBE_DEADLINE)
            try:
                s.connect(self.path)
                return s
            except BlockingIOError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    attacker = connect
    other = connect

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        from ..launch import reap

        if self.proc.poll() is None:
            self.proc.terminate()
        reap(self.proc, 10)
        self._log.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.rmdir(self.sockdir)


class DaemonGofer(Gofer):
    """The confined ``gofer9p gofer`` on a bundle with three attach points: the rootfs and
    mount ``/m`` (the attackers', in that order), mount ``/n`` (the other client's)."""

    kind = "daemon"

    def __init__(self, tmp: Path, *extra: str) -> None:
        super().__init__(tmp)
        from ..launch import start_gofer

        bundle = tmp / "bundle"
        rootfs = bundle / "rootfs"
        populate_dirs = [rootfs, rootfs / "m", rootfs / "n"]
        for d in populate_dirs:
            d.mkdir(parents=True, exist_ok=True)
            populate(d)
        doc = {
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": False},
            "mounts": [
                {"destination": f"/{m}", "type": "bind", "source": m, "options": ["rbind"]}
                for m in ("m", "n")
            ],
        }
        (bundle / "config.json").write_text(json.dumps(doc))
        self._export = rootfs
        python = tmp / "python-in-tree"  # runs the interpreter in the target tree (see target_tree)
        python.write_text(f'#!/bin/sh\ncd "{target_tree()}" && exec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
        self.gp = start_gofer(
            bundle, env=_env(), stderr=self._log, extra_args=["--log-level", "info", *extra],
            python=str(python),
        )
        self.pid = self.gp.pid
        self._socks = list(self.gp.sockets)
        self._next = 0
        deadline = time.monotonic() + 15
        while "serving bundle" not in self.log():
            if self.gp.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start:\n{self.log()}")
            time.sleep(0.02)

    @property
    def export(self) -> Path:
        return self._export

    def attacker(self) -> socket.socket:
        """The root's connection, then the mount ``/m``'s."""
        s = self._socks[min(self._next, 1)]
        self._next += 1
        return s

    def other(self) -> socket.socket:
        return self._socks[2]

    def alive(self) -> bool:
        return self.gp.proc.poll() is None

    def stop(self) -> None:
        self.gp.stop()
        self._log.close()


@contextmanager
def running(kind: str, tmp: Path, *extra: str) -> Iterator[Gofer]:
    g: Gofer = ListenGofer(tmp, *extra) if kind == "serve" else DaemonGofer(tmp, *extra)
    try:
        yield g
    finally:
        g.stop()


# ---------------------------------------------------------------------- probe


class Probe:
    """The other client: rounds of walk, open, read 4 KiB, clunk on its own connection,
    in a thread, each round timed; ``fresh=True`` also connects, versions and attaches
    anew every round (a new client of ``serve --listen``)."""

    def __init__(self, g: Gofer, *, fresh: bool = False, period: float = 0.05) -> None:
        self.g = g
        self.fresh = fresh and isinstance(g, ListenGofer)
        self.period = period
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.conn: Conn | None = None
        if not self.fresh:
            self.conn = Conn(g.other())
            self.conn.version(65536)
            self.conn.attach(1)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def round(self) -> float:
        t0 = time.monotonic()
        conn = self.conn
        if conn is None:
            conn = Conn(self.g.other())
            conn.version(65536)
            conn.attach(1)
        try:
            conn.walk(1, 2, b"f")
            conn.lopen(2)
            data = conn.read(2, 4096)
            conn.clunk(2)
            if data != b"x" * 4096:
                raise AssertionError(f"probe read {len(data)} unexpected bytes")
        finally:
            if self.conn is None:
                conn.close()
        return time.monotonic() - t0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(self.round())
            except (OSError, EOFError, P9Failed, AssertionError) as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                return
            self._stop.wait(self.period)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join(PROBE_DEADLINE + 5)
        if self._t.is_alive():
            self.errors.append(f"a probe round took more than {PROBE_DEADLINE + 5} s")
        if self.conn is not None:
            self.conn.close()
        lat = sorted(self.latencies)
        if not lat:
            return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
        return {
            "n": len(lat),
            "p50": lat[len(lat) // 2],
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max": lat[-1],
        }


# -------------------------------------------------------------------- attacks
# Each attack takes the gofer and a size, and returns a short description of what the
# server answered.  The caller measures memory and runs the probe around it.


def _fifo_writer(path: Path, total: int) -> Callable[[], None]:
    """Write ``total`` bytes into a FIFO from a thread (1 MiB pipe); returns a stopper."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # O_RDWR: never ENXIO, never blocks open
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass
    stop = threading.Event()

    def run() -> None:
        chunk = b"p" * (1 << 16)
        sent = 0
        while sent < total and not stop.is_set():
            try:
                sent += os.write(fd, chunk)
            except BlockingIOError:
                time.sleep(0.002)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def stopper() -> None:
        stop.set()
        t.join(5)
        os.close(fd)

    return stopper


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in our receive queue (FIONREAD)."""
    import fcntl
    import termios

    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("<i", buf)[0])


def stuck_replies(g: Gofer, conn: Conn, msize: int, most: int = 40) -> tuple[int, Callable[[], None]]:
    """Make the attacker's connection have requests whose replies cannot be sent: Treads
    of a FIFO (worker threads) fed with more data than the socket holds, never read by
    the client, sent 4 at a time until the replies waiting for us stop growing (the
    socket is full).  Returns the tag of the last Tread (its reply is stuck) and a
    cleanup."""
    stopper = _fifo_writer(g.export / "p", 64 << 20)
    conn.walk(1, 10, b"p")
    conn.lopen(10, C.L_O_RDONLY)
    tag = 100
    last = -1
    while tag < 100 + most:
        conn.send(*[M.Tread(tag=tag + i, fid=10, offset=0, count=msize - 24) for i in range(4)])
        tag += 4
        time.sleep(0.2)
        q = _unread(conn.sock)
        if q == last and q >= 1 << 20:
            break
        last = q
    return tag - 1, stopper


def attack_reads(conn: Conn, frames: int, msize: int) -> dict[int, int]:
    """Pipelined Treads of count ~msize that fail or hit EOF: an unknown fid, an unopened
    fid, and an opened file at its end, in turn."""
    conn.walk(1, 2, b"f")
    conn.walk(1, 3, b"f")
    conn.lopen(3)
    msgs: list[M.Message] = []
    for i in range(frames):
        fid, off = ((99, 0), (2, 0), (3, 4096))[i % 3]
        msgs.append(M.Tread(tag=i % 60000, fid=fid, offset=off, count=msize - 11))
    return pipeline(conn, msgs)


def attack_flush(conn: Conn, oldtag: int, flushes: int, stall: float = 2.0) -> int:
    """Tflush of one stuck request, ``flushes`` times, without reading a reply; stops when
    the gofer has not read for ``stall`` s (back-pressure).  Returns the flushes sent."""
    batch = 10_000
    conn.sock.settimeout(stall)
    for start in range(0, flushes, batch):
        n = min(batch, flushes - start)
        data = b"".join(
            encode(M.Tflush(tag=1000 + (start + i) % 50_000, oldtag=oldtag)) for i in range(n)
        )
        try:
            conn.sock.sendall(data)
        except (TimeoutError, OSError):
            return start  # the server stopped reading: back-pressure, which is the point
    return flushes


def open_fifo_for_writes(g: Gofer, conn: Conn) -> int:
    """Open FIFO ``w`` for writing as fid 11 (before replies get stuck); returns the host
    read end that lets the gofer open it (never read: close it when done)."""
    reader = os.open(g.export / "w", os.O_RDONLY | os.O_NONBLOCK)
    conn.walk(1, 11, b"w")
    conn.lopen(11, C.L_O_WRONLY)
    return reader


def attack_fifo_writes(conn: Conn, writes: int, msize: int) -> int:
    """Twrites of ~msize to FIFO fid 11 that nobody reads (worker threads), replies
    stuck behind the stuck Treads; the client never reads.  Returns how many were sent
    before the gofer stopped reading (back-pressure)."""
    payload = b"w" * (msize - 24)
    conn.sock.settimeout(2)
    sent = 0
    for i in range(writes):
        try:
            conn.sock.sendall(encode(M.Twrite(tag=2000 + i, fid=11, offset=0, data=payload)))
        except (TimeoutError, OSError):
            break  # back-pressure
        sent += 1
    time.sleep(1.0)
    return sent


def attack_fds(g: Gofer, conn: Conn, limit: int = 200_000) -> dict[str, int]:
    """Walk, open and lock ``f`` as many times as the gofer allows: clones of the root,
    opened files, and lock owners (each a host fd of its own); until refusals."""
    out = {"fids": 0, "opened": 0, "locks": 0, "refused": 0}
    conn.walk(1, 20, b"f")
    conn.lopen(20, C.L_O_RDWR)
    # lock owners on one fid: the first uses the fid's fd, each further one a new description
    for i in range(limit):
        try:
            conn.rpc(M.Tlock(tag=6, fid=20, type=C.LOCK_TYPE_RDLCK, flags=0, start=i, length=1,
                             proc_id=1000 + i, client_id=b"hostile"))
        except P9Failed as e:
            if e.errno not in (errno.ENOLCK, errno.EMFILE):
                raise
            break
        out["locks"] += 1
    batch = 512
    fid = 1000
    while fid < limit:
        msgs: list[M.Message] = []
        for i in range(batch):
            msgs.append(M.Twalk(tag=7, fid=1, newfid=fid + i, wnames=[b"f"]))
            msgs.append(M.Tlopen(tag=8, fid=fid + i, flags=C.L_O_RDONLY))
        seen = pipeline(conn, msgs)
        out["fids"] += seen.get(int(C.MsgType.RWALK), 0)
        out["opened"] += seen.get(int(C.MsgType.RLOPEN), 0)
        refused = seen.get(-errno.EMFILE, 0) + seen.get(-errno.ENFILE, 0)
        out["refused"] += refused
        if refused or seen.get(0):
            break
        fid += batch
    return out


def attack_trickle(g: Gofer, n: int, claim: int = 4 << 20, seconds: float = 2.0,
                   conns: list[socket.socket] | None = None) -> dict[str, int]:
    """``n`` connections each announcing a ``claim``-byte frame, then trickling one byte per
    50 ms for ``seconds``; returns how many the gofer had closed by then."""
    socks = conns if conns is not None else [g.attacker() for _ in range(n)]
    for s in socks:
        s.setblocking(False)
        try:
            s.send(HDR.pack(claim, int(C.MsgType.TVERSION), C.NOTAG))
        except OSError:
            pass
    closed: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(closed) < len(socks):
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                s.send(b"\0")
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.05)
    for s in socks:
        s.close()
    return {"connections": len(socks), "closed_by_gofer": len(closed)}


def attack_uname(conn: Conn, digits: int = 5000) -> str:
    """Tattach with an n_uname of NONUNAME and a ``digits``-digit numeric uname."""
    try:
        conn.rpc(M.Tattach(tag=9, fid=30, afid=C.NOFID, uname=b"9" * digits, aname=b"",
                           n_uname=C.NONUNAME))
    except P9Failed as e:
        return f"Rlerror {errno.errorcode.get(e.errno, e.errno)}"
    return "Rattach"


__all__ = [
    "Conn",
    "DaemonGofer",
    "Gofer",
    "ListenGofer",
    "Probe",
    "RssSampler",
    "attack_fds",
    "attack_fifo_writes",
    "attack_flush",
    "attack_reads",
    "attack_trickle",
    "attack_uname",
    "bound_kib",
    "fd_count",
    "open_fifo_for_writes",
    "per_connection_kib",
    "running",
    "stuck_replies",
]
