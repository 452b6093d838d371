"""Resource fuzzer: hostile byte streams judged by the server process's memory, fds and latency.

A compromised sandbox does not need a parser bug to take the gofer down: a few KB of pipelined
requests that each make the server hold memory, a task or an fd are enough.  Each *case* here is
one such attack with random parameters, sent on one or more connections of the same server
process while a **probe** connection (another client of the same process) keeps doing small
round trips:

* ``treads``: pipelined Treads asking for ~msize bytes that fail or hit EOF (unknown fid,
  unopened fid, offset past the end), or reads of a real file in the spliced size range (the
  data waits in the connection's pipe), the client not reading its replies;
* ``flushes``: large Treads of a real file fill the reply path (the client stops reading), then
  a stream of Tflush for them and for unknown tags;
* ``headers``: several connections announce msize-sized frames before Tversion and trickle the
  body one byte at a time;
* ``idle``: many connections that connect and say nothing (or only Tversion);
* ``fifo``: pipelined msize Twrites to a FIFO nobody reads (threaded requests whose replies wait);
* ``fids``: two connections walk and open as many fids as they are allowed;
* ``mix``: a random pipelined mix of well-formed requests from the frame fuzzer's templates;
* ``contend``: msize Twrites to a FIFO (each goes to a worker thread, and together they are
  more bytes than the server lets into flight: it stops reading until some are done), then
  msize Treads whose replies fill the socket of a client that does not read, then Tfsyncs
  (worker threads too) and a Tflush of each: the threads' replies wait for the send lock
  the read replies hold;
* ``bigdir``: a directory of thousands of entries (made on the host, old enough for the
  server's listing cache; or one whose listing, over 1 MiB, is too big for it) read in random-sized Treaddirs, twice, then with cookies it never
  returned, while the host adds and removes entries: the first pass must list exactly what
  the host holds.

The oracles, measured on the TARGET process (``/proc/PID``; in-process: this process):

* **memory**: the peak VmRSS growth during the case must stay under :func:`memory_bound_kb`, a
  formula of msize, the in-flight limit and the connection count (see there).  The case stops
  sending as soon as the bound is crossed, so a finding never takes the host down; the report
  says how many bytes were on the wire and the server memory per byte sent;
* **fds**: after the case's connections are closed the server's fd count settles back to the
  baseline; during it, the probe can still attach and open a file (a client that took "its
  share" must not starve a new one);
* **latency**: every probe round trip must finish within ``--latency`` seconds (default 10,
  generous: this is a failure deadline, not a benchmark);
* **alive / log**: the server process is still running, its log has no ERROR/traceback, and a
  confined daemon did not die of SIGSYS.

A finding is saved as a *case file* (``pressure-<bucket>.json``: scenario and parameters) plus the
``.bin`` transcript of the bytes of its first connection (for ``show``).  ``replay`` on the .json
re-runs the case with the same oracles.  Memory findings are minimized (time-boxed) by halving the
number of frames while the case still breaks the bound on a restarted server.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode

from .common import (
    STOP,
    Known,
    Report,
    budget_spent,
    run_deadline,
    save_failure,
    settle_fds,
    split_problem,
)
from .targets import InprocTarget, Link, Target, fd_count, rss_kb
from .wire import Closed, Failure, RawConn, Transcript, attach_requests

SCENARIOS = ("treads", "flushes", "headers", "idle", "fifo", "fids", "mix", "bigdir", "contend")
FIRST = ("treads", "contend", "flushes", "bigdir", "fifo", "headers", "bigdir", "idle", "fids",
         "mix")
"""The first cases of every run, in this order (a short or loaded run still reaches each
scenario): ``bigdir`` twice, ``pz-big`` (a listing the cache keeps) then ``pz-huge`` (too big
for it), each at least a second after the run made them (the cache takes a directory once it
has been unchanged for a second)."""

# ----------------------------------------------------------------- the bound
SLACK_KB = 48 * 1024
"""Per process: allocator noise, lazily imported modules, trio's thread cache."""
PRE_VERSION_KB = 256
"""Per connection that has not finished Tversion: its state and a small receive buffer."""
MAX_INFLIGHT = 64
"""Requests in flight per connection the bound allows for (ServerConfig.max_inflight)."""


def memory_bound_kb(*, msize: int, versioned: int, unversioned: int = 0) -> int:
    """The most server memory (KiB) a client may make the server hold, per the written bound.

    If the server exports its own bound (``gofer9p.server.memory_bound(config, connections)``,
    docs/RESOURCES.md: Python memory per connection as a formula of msize, the in-flight limits
    and max_fids), that is used, with the server's max msize, plus SLACK for what RSS counts
    and tracemalloc does not (the interpreter, thread stacks, allocator slack).  Otherwise the bound stated here, from design.md §4's rule
    "no byte stream grows memory beyond a formula of msize, in-flight limit and connections":

        SLACK + versioned * (2*msize receive buffer + msize read buffer + 256 KiB reply queue
                             + MAX_INFLIGHT * 16 KiB request state)
              + unversioned * PRE_VERSION_KB

    With msize 1 MiB that is ~4.3 MiB per connection: a server that keeps an msize buffer per
    request in flight (64 MiB per connection) breaks it within a few dozen requests, one that
    honours back-pressure and allocates by what a read returned never comes near it.
    """
    try:
        from gofer9p import server

        fn = getattr(server, "memory_bound", None)
        if fn is not None:
            # (the server's formula is for connections past Tversion; before it a connection
            # holds an 8 KiB buffer and its state: PRE_VERSION_KB)
            total = int(fn(server.ServerConfig(max_msize=msize), connections=versioned))
            return SLACK_KB + total // 1024 + unversioned * PRE_VERSION_KB
    except (TypeError, ValueError):
        pass
    per = (2 * msize + msize + 256 * 1024 + MAX_INFLIGHT * 16 * 1024) // 1024
    return SLACK_KB + versioned * per + unversioned * PRE_VERSION_KB


# ------------------------------------------------------------------ sampling
class Sampler:
    """Polls the target process's VmRSS and fd count every few ms; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.base_rss = rss_kb(pid) or 0
        self.base_fds = fd_count(pid) or 0
        self.peak_rss = self.base_rss
        self.peak_fds = self.base_fds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        r = rss_kb(self.pid)
        if r is not None and r > self.peak_rss:
            self.peak_rss = r
        n = fd_count(self.pid)
        if n is not None and n > self.peak_fds:
            self.peak_fds = n

    @property
    def growth_kb(self) -> int:
        return self.peak_rss - self.base_rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sample()


# ------------------------------------------------------------------- probing
class Probe:
    """Another client of the same server: small round trips, each timed against a deadline."""

    def __init__(self, link: Link, deadline: float) -> None:
        self.link = link
        self.deadline = deadline
        self.worst = 0.0
        self.rounds = 0
        self.problem: str | None = None
        self._stop = threading.Event()
        self.t = Transcript()
        self.c = RawConn(link.sock, self.t, deadline)
        self._thread: threading.Thread | None = None

    def setup(self) -> None:
        self.c.handshake(8192)
        self.c.rpc(M.Tattach(tag=0, fid=1, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0))

    def round(self) -> None:
        t0 = time.monotonic()
        self.c.rpc(M.Twalk(tag=0, fid=1, newfid=2, wnames=[]), outcome=1)
        self.c.rpc(M.Tgetattr(tag=0, fid=2, request_mask=0x7FF), outcome=1)
        self.c.rpc(M.Tlopen(tag=0, fid=2, flags=0), outcome=1)  # a new fd on the host
        self.c.rpc(M.Tclunk(tag=0, fid=2), outcome=1)
        took = time.monotonic() - t0
        self.worst = max(self.worst, took)
        self.rounds += 1
        if took > self.deadline:
            raise Failure("hang", f"the probe connection's round trip took {took:.1f}s")

    def start(self) -> None:
        def loop() -> None:
            try:
                while not self._stop.wait(0.05):
                    self.round()
            except Failure as f:
                self.problem = f"{f.kind}: another connection of the same server: {f.message}"
            except OSError as e:
                self.problem = f"hang: another connection of the same server failed: {e}"

        self._thread = threading.Thread(target=loop, name="fuzz-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.deadline + 5)

    def close(self) -> None:
        try:
            self.link.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------- cases
@dataclass
class Case:
    """One attack: a scenario and its parameters (everything ``replay`` needs)."""

    scenario: str
    n: int
    """Frames (or connections, for headers/idle) to send."""
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "n": self.n, "seed": self.seed, "params": self.params}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Case:
        return cls(d["scenario"], int(d["n"]), int(d["seed"]), dict(d.get("params", {})))


def random_case(rng: random.Random, scenario: str | None = None) -> Case:
    sc = scenario or rng.choice(SCENARIOS)
    seed = rng.randrange(1 << 31)
    if sc == "treads":
        return Case(
            sc,
            rng.choice((64, 256, 1000, 4000)),
            seed,
            {"how": rng.choice(("unknown", "unopened", "eof", "spliced"))},
        )
    if sc == "flushes":
        return Case(sc, rng.choice((1000, 10000, 100000)), seed, {"reads": rng.choice((1, 8, 32))})
    if sc == "headers":
        return Case(sc, rng.choice((20, 100, 200)), seed, {"trickle": rng.choice((4, 64))})
    if sc == "idle":
        return Case(sc, rng.choice((50, 200, 500)), seed, {"version": rng.random() < 0.5})
    if sc == "fifo":
        return Case(sc, rng.choice((8, 36, 100)), seed, {})
    if sc == "fids":
        return Case(sc, rng.choice((500, 2000, 8000)), seed, {"conns": 2})
    if sc == "contend":
        return Case(sc, rng.choice((8, 16, 40)), seed, {"reads": rng.choice((12, 40))})
    if sc == "bigdir":
        return Case(sc, rng.choice((2, 4)), seed, {"count": rng.choice((200, 1000, 8192, 65000)),
                                                   "dir": rng.choice(("pz-big", "pz-huge"))})
    return Case("mix", rng.choice((200, 2000, 10000)), seed, {})


@dataclass
class Outcome:
    """What one case measured and the problems the oracles found."""

    problems: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    frames: int = 0
    conns: int = 0
    growth_kb: int = 0
    bound_kb: int = 0
    fd_peak_growth: int = 0
    probe_worst_s: float = 0.0
    transcript: Transcript = field(default_factory=Transcript)


_U32 = struct.Struct("<I")
BIGDIR = 3000
HUGEDIR = 4500
"""Entries of ``pz-huge``, names of 246 bytes: a listing of more than 1 MiB, which the
server's listing cache does not keep (it reads such a directory from the host every time)."""


class _Sender:
    """A connection that writes without reading (the client that stopped reading)."""

    def __init__(
        self, link: Link, t: Transcript, out: Outcome, watch: Sampler | None, bound_kb: int
    ) -> None:
        self.link = link
        self.sock = link.sock
        self.t = t
        self.out = out
        self.watch = watch
        self.bound_kb = bound_kb
        self.stalled = False
        self.sock.setblocking(True)
        t.add(b"N")

    def over(self) -> bool:
        return self.watch is not None and self.watch.growth_kb > self.bound_kb

    def rpc(self, msg: M.Message, tag: int = 0) -> bytes:
        """A synchronous request during set-up (the reply is read).

        The server closing the connection is a finding, but on a connection with injected
        faults (``Link.faults``) it is a valid end (an injected EPIPE or ECONNRESET on the
        server's socket): :class:`Closed`, and the case ends there."""
        data = encode(msg)
        self.t.add(b"S", data)
        self.sock.settimeout(10)
        try:
            self.sock.sendall(data)
            hdr = self._recvn(4)
            (size,) = _U32.unpack(hdr)
            return hdr + self._recvn(size - 4)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # (a reset: the server closed with bytes of ours unread, a close all the same)
        except TimeoutError:
            raise Failure("hang", "no reply within 10s during the case's set-up") from None
        what = "server closed during the case's set-up"
        if self.link.faults:
            raise Closed(what)
        raise Failure("invariant", what)

    def _recvn(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError  # (see rpc)
            buf += chunk
        return buf

    def push(self, data: bytes, frames: int = 1, stall: float = 2.0) -> bool:
        """Send without reading replies; False once the server stopped taking bytes
        (back-pressure: the right answer to a client that does not read) or died."""
        self.t.add(b"S", data)
        self.sock.settimeout(stall)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.stalled = True
            return False
        except OSError:
            return False
        self.out.bytes_sent += len(data)
        self.out.frames += frames
        return True


def _host_setup(target: Target) -> None:
    """Files the cases use, made on the host side of the export."""
    if target.export is None:
        return
    data = target.export / "pz-data"
    if not data.exists():
        data.write_bytes(os.urandom(4 << 20))
    fifo = target.export / "pz-fifo"
    if not fifo.exists():
        os.mkfifo(fifo, 0o666)
    big = target.export / "pz-big"
    if not big.exists():
        big.mkdir()
        for i in range(BIGDIR):
            (big / f"entry-{i:05d}-{'x' * (i % 40)}").touch()
    huge = target.export / "pz-huge"
    if not huge.exists():
        huge.mkdir()
        for i in range(HUGEDIR):
            (huge / f"{i:05d}-{'h' * 240}").touch()


def _attach(s: _Sender, msize: int, prefix: tuple[bytes, ...] | None = ()) -> int:
    """Tversion, then fid 0 at the export (``Link.prefix``); the msize the server chose."""
    r = s.rpc(M.Tversion(tag=C.NOTAG, msize=msize, version=C.VERSION_9P2000L))
    got = _U32.unpack_from(r, 7)[0]
    for req in attach_requests(prefix):
        s.rpc(req)
    return int(got)


def _paced(s: _Sender, frames: list[bytes], chunk: int = 16) -> None:
    """Push frames in small chunks, checking the memory oracle between them."""
    for i in range(0, len(frames), chunk):
        if STOP.is_set() or s.over():
            return
        part = frames[i : i + chunk]
        if not s.push(b"".join(part), len(part)):
            return
        time.sleep(0.002)


def run_case(target: Target, case: Case, *, latency: float = 10.0, msize: int = 1 << 20) -> Outcome:
    """Run one case against ``target``; judge it with every oracle (see module doc)."""
    out = Outcome()
    rng = random.Random(case.seed)
    _host_setup(target)
    main_link, probe_link = target.open_pair()
    pid = main_link.pid() or target.pid()
    probe = Probe(probe_link, latency)
    links: list[Link] = [main_link]
    try:
        probe.setup()  # a served request: the process is up and past its imports
        probe.round()
    except Failure as f:
        out.problems.append(f"{f.kind}: the probe could not set up before the case: {f.message}")
    watch = Sampler(pid) if pid is not None else None
    versioned, unversioned = 2, 0  # the case's connection and the probe
    out.bound_kb = memory_bound_kb(msize=msize, versioned=2)
    s = _Sender(main_link, out.transcript, out, watch, out.bound_kb)
    try:
        probe.start()
        sc = case.scenario
        if sc in ("treads", "flushes", "fifo", "fids", "mix", "contend"):
            m = _attach(s, msize)
        if sc == "treads":
            how = case.params.get("how", "unknown")
            fid = 0xDEAD
            offset = 0
            if how in ("unopened", "eof", "spliced"):
                s.rpc(M.Twalk(tag=0, fid=0, newfid=1, wnames=[b"pz-data"]))
                fid = 1
                if how != "unopened":
                    s.rpc(M.Tlopen(tag=0, fid=1, flags=0))
                    offset = 1 << 40 if how == "eof" else 0
            if how == "spliced":
                # reads of a real file in the spliced size range (32 KiB up to the pipe): the
                # data waits in the connection's pipe while the socket is full
                frames = [
                    encode(
                        M.Tread(
                            tag=1 + i % 60000,
                            fid=fid,
                            offset=rng.randrange(4 << 20),
                            count=min(m - 11, rng.choice((32768, 65536, 200000))),
                        )
                    )
                    for i in range(case.n)
                ]
            else:
                frames = [
                    encode(M.Tread(tag=1 + i % 60000, fid=fid, offset=offset, count=m - 11))
                    for i in range(case.n)
                ]
            _paced(s, frames)
        elif sc == "flushes":
            # Replies stuck behind a client that stopped reading: large Treads of a file fill
            # the socket, then Treads of a FIFO (threaded: they stay in flight until their
            # reply is sent), then a stream of Tflush naming them (and unknown tags)
            s.rpc(M.Twalk(tag=0, fid=0, newfid=1, wnames=[b"pz-data"]))
            s.rpc(M.Tlopen(tag=0, fid=1, flags=0))
            s.rpc(M.Twalk(tag=0, fid=0, newfid=2, wnames=[b"pz-fifo"]))
            s.rpc(M.Tlopen(tag=0, fid=2, flags=os.O_RDWR))
            fill = [encode(M.Tread(tag=50 + i, fid=1, offset=0, count=m - 11)) for i in range(12)]
            _paced(s, fill, chunk=1)
            reads = int(case.params.get("reads", 8))
            stuck = [encode(M.Tread(tag=100 + i, fid=2, offset=0, count=64)) for i in range(reads)]
            _paced(s, stuck)
            frames = [
                encode(M.Tflush(tag=1000 + i % 50000, oldtag=100 + rng.randrange(reads + 5)))
                for i in range(case.n)
            ]
            _paced(s, frames, chunk=256)
        elif sc == "contend":
            s.rpc(M.Twalk(tag=0, fid=0, newfid=1, wnames=[b"pz-data"]))
            s.rpc(M.Tlopen(tag=0, fid=1, flags=0))
            s.rpc(M.Twalk(tag=0, fid=0, newfid=2, wnames=[b"pz-fifo"]))
            s.rpc(M.Tlopen(tag=0, fid=2, flags=os.O_RDWR))
            payload = b"c" * (m - 23)
            n = case.n
            writes = [encode(M.Twrite(tag=1 + i, fid=2, offset=0, data=payload)) for i in range(n)]
            fills = [encode(M.Tread(tag=5000 + i, fid=1, offset=0, count=m - 11))
                     for i in range(int(case.params.get("reads", 12)))]
            syncs = [encode(M.Tfsync(tag=7000 + i, fid=1, datasync=i & 1)) for i in range(n)]
            flushes = [encode(M.Tflush(tag=9000 + i, oldtag=7000 + i)) for i in range(n)]
            _paced(s, writes + fills + syncs + flushes, chunk=8)
        elif sc == "fifo":
            s.rpc(M.Twalk(tag=0, fid=0, newfid=1, wnames=[b"pz-fifo"]))
            s.rpc(M.Tlopen(tag=0, fid=1, flags=os.O_RDWR))
            payload = b"w" * (m - 23)
            frames = [
                encode(M.Twrite(tag=1 + i, fid=1, offset=0, data=payload)) for i in range(case.n)
            ]
            _paced(s, frames, chunk=2)
        elif sc == "fids":
            conns = int(case.params.get("conns", 2))
            senders = [s]
            for link in target.open_more(conns - 1):
                links.append(link)
                extra = _Sender(link, out.transcript, out, watch, out.bound_kb)
                _attach(extra, msize, link.prefix)
                senders.append(extra)
            versioned = len(senders) + 1
            drains: list[threading.Thread] = []
            for snd, link in zip(senders, links, strict=True):
                # (a connection that cannot reach the export opens its attach root instead)
                wnames = [b"pz-data"] if link.prefix is not None else []
                frames = []
                for i in range(case.n):
                    fid = 10 + i
                    frames.append(encode(M.Twalk(tag=1, fid=0, newfid=fid, wnames=wnames)))
                    frames.append(encode(M.Tlopen(tag=2, fid=fid, flags=0)))
                snd.sock.settimeout(10)
                # these replies are read (a real client that opens files), in bulk, and
                # awaited: every open was served before the case closes the connection
                drain = threading.Thread(
                    target=_drain, args=(snd.sock, len(frames)), daemon=True
                )
                drain.start()
                drains.append(drain)
                _paced(snd, frames, chunk=64)
            for drain in drains:
                drain.join(10)
        elif sc == "headers" or sc == "idle":
            versioned, unversioned = 1, case.n  # the probe; the case's connections
            out.bound_kb = memory_bound_kb(msize=msize, versioned=2, unversioned=case.n)
            s.bound_kb = out.bound_kb
            senders = [s]
            for _ in range(case.n - 1):
                if STOP.is_set() or s.over():
                    break
                more = target.open_more(1)
                if not more:
                    if not target.per_connection_process:
                        out.problems.append(
                            f"hang: the server stopped accepting connections after {len(links)}"
                        )
                    break  # (a daemon: its spare attach points are used up)
                links += more
                senders.append(_Sender(more[0], Transcript(), out, watch, out.bound_kb))
            out.conns = len(senders)
            if sc == "idle" and case.params.get("version"):
                for snd in senders:
                    snd.push(encode(M.Tversion(tag=C.NOTAG, msize=msize, version=b"9P2000.L")))
            elif sc == "headers":
                trickle = int(case.params.get("trickle", 4))
                for snd in senders:
                    snd.push(_U32.pack(msize) + bytes([C.MsgType.TVERSION]))
                for _ in range(trickle):
                    if s.over():
                        break
                    for snd in senders:
                        snd.push(b"\0")
                    time.sleep(0.05)
            time.sleep(0.3)  # let the server take what it will for them
        elif sc == "bigdir":
            try:
                out.problems += _bigdir(target, main_link, case, rng, out)
            except Closed:
                pass  # a connection with injected faults may end (RawConn.faults)
        else:  # mix
            from .frames import templates

            tmpl = templates(rng)
            frames = []
            for i in range(case.n):
                msg = rng.choice(tmpl)
                msg.tag = 1 + i % 60000  # type: ignore[misc]
                frames.append(encode(msg))
            _paced(s, frames, chunk=32)
        time.sleep(0.2)
        if watch is not None:
            watch.sample()
    except Closed:
        pass  # a set-up request's connection ended by an injected fault (_Sender.rpc)
    except Failure as f:
        out.problems.append(f"{f.kind}: {f.message}")
    finally:
        probe.stop()
        if watch is not None:
            watch.stop()
            out.growth_kb = watch.growth_kb
            out.fd_peak_growth = watch.peak_fds - watch.base_fds
        out.conns = max(out.conns, len(links))
        out.probe_worst_s = round(probe.worst, 3)
        if probe.problem:
            out.problems.append(probe.problem)
        probe.close()
        for link in links:
            try:
                link.sock.close()
            except OSError:
                pass
        for link in links:
            for p in link.finish(15.0):
                if not p.startswith("hang: gofer9p serve --fd did not exit"):
                    out.problems.append(p)
    if watch is not None and out.growth_kb > out.bound_kb:
        per = out.growth_kb * 1024 / max(1, out.bytes_sent)
        out.problems.insert(
            0,
            f"leak: server memory grew {out.growth_kb} KiB during a {case.scenario} case "
            f"(bound {out.bound_kb} KiB for {versioned} connections + {unversioned} before "
            f"Tversion, msize {msize}) after {out.bytes_sent} bytes in {out.frames} frames: "
            f"{per:.0f} bytes of server memory per byte sent",
        )
    out.problems += target.problems()
    if not target.per_connection_process and not target.alive():
        out.problems.append("crash: server process is gone")
    return out


def _bigdir(target: Target, link: Link, case: Case, rng: random.Random, out: Outcome) -> list[str]:
    """Read a big directory in pieces: the listing must be what the host holds (see doc)."""
    from gofer9p.protocol.codec import decode_dirents

    c = RawConn(link.sock, out.transcript, 10.0, faults=link.faults)
    c.handshake(1 << 20)
    c.rpc(M.Tattach(tag=0, fid=0, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0), outcome=1)
    dirname = str(case.params.get("dir", "pz-big"))
    c.rpc(M.Twalk(tag=0, fid=0, newfid=1, wnames=[dirname.encode()]), outcome=1)
    c.rpc(M.Tlopen(tag=0, fid=1, flags=0o200000), outcome=1)
    # a Treaddir count must hold one entry (else EINVAL, as getdents): pz-huge's are 270 bytes
    low = 128 if dirname == "pz-big" else 300
    count = max(int(case.params.get("count", 8192)), 2 * low)
    big = target.export / dirname if target.export is not None else None
    problems: list[str] = []
    cookies: list[int] = []
    for n in range(case.n):
        names: list[bytes] = []
        offset = 0
        mutate = n > 0 and big is not None
        for _ in range(max(BIGDIR, HUGEDIR) * 2):
            r = c.rpc(M.Treaddir(tag=0, fid=1, offset=offset, count=rng.randrange(low, count)))
            if not isinstance(r, M.Rreaddir):
                if c.faults:
                    return problems  # an injected fault: a valid error, the case ends here
                problems.append(f"invariant: Treaddir of a big directory answered {r!r}"[:300])
                return problems
            ents = decode_dirents(r.data)
            if not ents:
                break
            names += [e.name for e in ents]
            offset = ents[-1].offset
            cookies.append(offset)
            out.frames += 1
            if mutate and rng.random() < 0.05:
                assert big is not None
                victim = big / f"host-{rng.randrange(50)}"
                if victim.exists():
                    victim.unlink()
                else:
                    victim.touch()
        if n == 0 and big is not None:
            want = {os.fsencode(x) for x in os.listdir(big)} | {b".", b".."}
            got = set(names)
            if got != want or len(names) != len(got):
                problems.append(
                    f"invariant: a {len(want)}-entry directory listed {len(names)} names "
                    f"({len(got)} distinct); missing {sorted(want - got)[:3]}, "
                    f"extra {sorted(got - want)[:3]}"
                )
    for _ in range(20):  # cookies we never returned, and old ones after changes
        off = rng.choice([rng.randrange(1 << 63), *cookies[:50], 1, 2, (1 << 63) - 1])
        c.rpc(M.Treaddir(tag=0, fid=1, offset=off, count=rng.randrange(1, count)))
    c.rpc(M.Tclunk(tag=0, fid=1))
    return problems


def _drain(sock: socket.socket, replies: int) -> None:
    """Read and drop ``replies`` reply frames (or until EOF, an error or the socket's timeout)."""
    buf = b""
    try:
        while replies > 0:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 4 and len(buf) >= _U32.unpack_from(buf)[0] >= 4:
                buf = buf[_U32.unpack_from(buf)[0] :]
                replies -= 1
    except OSError:
        pass


# ----------------------------------------------------------------- the fuzzer
def judge_case(
    target: Target, case: Case, *, latency: float = 10.0, msize: int = 1 << 20
) -> Outcome:
    """:func:`run_case`, then the fd oracle: once the case's connections are closed the
    server's fd count must settle back to what it was before the case (a long-lived server
    process; a per-connection process is judged by its exit instead).  What the run, the
    minimizer and ``replay`` all judge a case by."""
    pid = None if target.per_connection_process else target.pid()
    base = fd_count(pid) if pid is not None else None
    out = run_case(target, case, latency=latency, msize=msize)
    if not out.problems:
        p = settle_fds(target, base)
        if p:
            out.problems.append(p)
    return out


def minimize(
    target: Target,
    case: Case,
    out: Outcome,
    first: str,
    *,
    deadline: float,
    latency: float,
    msize: int,
) -> tuple[Case, Outcome]:
    """Halve ``case.n`` while the case still fails the same way on a restarted server.

    Time-boxed by ``deadline``; a per-connection target (daemon, serve-fd) starts a fresh
    process for every case anyway, an in-process target cannot be restarted (its memory is
    this process's) and is minimized on the same heap.
    """
    best, best_out = case, out
    while best.n > 1 and time.monotonic() < deadline and not STOP.is_set():
        smaller = Case(best.scenario, max(1, best.n // 2), best.seed, dict(best.params))
        _fresh(target)
        o = judge_case(target, smaller, latency=latency, msize=msize)
        robust = (
            o.growth_kb >= 1.5 * o.bound_kb if first.startswith("leak: server memory") else True
        )
        if robust and any(_same(p, first) for p in o.problems):
            # (a memory finding is kept only with a margin, so its replay is not a coin toss)
            best, best_out = smaller, o
        else:
            break
    _fresh(target)
    return best, best_out


def _fresh(target: Target) -> None:
    """Restart a target process and warm it up (imports, the handle-reopen fd) before use."""
    from .common import liveness

    if not isinstance(target, InprocTarget) or not target.alive():
        target.restart()
    if not target.per_connection_process:
        try:
            liveness(target, exercise=True)
        except Failure:
            pass
        target.problems()


def _same(a: str, b: str) -> bool:
    """Same finding: the same oracle and the same scenario wording (numbers ignored)."""
    import re

    def norm(s: str) -> str:
        return re.sub(r"\d+(\.\d+)?", "#", s.split("\n")[0])[:60]

    return norm(a) == norm(b)


def run(
    target: Target,
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_cases: int | None,
    crash_dir: Path | None,
    latency: float = 10.0,
    msize: int = 1 << 20,
    scenario: str | None = None,
    known: Known | None = None,
    shrink: bool = True,
    size: int | None = None,
) -> Report:
    """Run cases until the budget is spent (:data:`FIRST`, then random ones); a dead server is
    restarted and the run goes on.

    ``size`` fixes every case's ``n`` (frames or connections) instead of a random choice.
    """
    known = known or Known()
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = run_deadline(start, time_budget, max_cases)
    counts: dict[str, int] = {}
    worst: dict[str, int] = {}
    most_conns: dict[str, int] = {}
    _fresh(target)
    pid = target.pid()
    report.fd_baseline = fd_count(pid) if pid is not None else None
    report.rss_baseline_kb = rss_kb(pid) if pid is not None else None
    while not STOP.is_set():
        if budget_spent(deadline, report.examples_run, max_cases):
            break
        # every scenario first, in order (FIRST), then random ones
        i = report.examples_run
        order = FIRST[i] if i < len(FIRST) else None
        case = random_case(rng, scenario or order)
        if order == "bigdir" and scenario is None:
            case.params["dir"] = "pz-huge" if "bigdir" in FIRST[:i] else "pz-big"
        if size is not None:
            case.n = size
        out = judge_case(target, case, latency=latency, msize=msize)
        report.examples_run += 1
        report.frames_sent += out.frames
        report.connections += out.conns + 1
        counts[case.scenario] = counts.get(case.scenario, 0) + 1
        worst[case.scenario] = max(worst.get(case.scenario, 0), out.growth_kb)
        most_conns[case.scenario] = max(most_conns.get(case.scenario, 0), out.conns + 1)
        problems = [p for p in out.problems if not known.match(report, p)]
        if problems:
            first = problems[0]
            final, final_out = case, out
            if shrink:
                budget_end = deadline if deadline is not None else time.monotonic() + 120
                final, final_out = minimize(
                    target, case, out, first, deadline=budget_end, latency=latency, msize=msize
                )
                first = next((p for p in final_out.problems if _same(p, first)), first)
            save_case(
                report,
                target,
                final,
                first,
                final_out,
                crash_dir=crash_dir,
                original=case if final is not case else None,
                latency=latency,
            )
            report.notes.extend(problems[1:4])
        if not target.per_connection_process and (not target.alive() or problems):
            # unattended: a dead or wounded server is restarted and the run goes on
            report.details["restarts"] = report.details.get("restarts", 0) + 1
            _fresh(target)
    report.details["cases_by_scenario"] = counts
    report.details["peak_rss_growth_kb_by_scenario"] = worst
    report.details["most_connections_by_scenario"] = most_conns
    report.duration_s = round(time.monotonic() - start, 2)
    return report


def save_case(
    report: Report,
    target: Target,
    case: Case,
    problem: str,
    out: Outcome,
    *,
    crash_dir: Path | None,
    original: Case | None = None,
    latency: float = 10.0,
) -> Path | None:
    """Save a pressure finding: the case (for ``replay``) and its first connection's bytes.

    ``latency``: the run's deadline for the probe, kept so the replay judges by the same one."""
    kind, msg = split_problem(problem)
    extra = {
        "case": case.to_json(),
        "measured": {
            "bytes_sent": out.bytes_sent,
            "frames": out.frames,
            "growth_kb": out.growth_kb,
            "bound_kb": out.bound_kb,
            "fd_peak_growth": out.fd_peak_growth,
            "probe_worst_s": out.probe_worst_s,
        },
        "latency_s": latency,
        "replay": "python -m fuzz replay <this .json> --target " + target.name,
    }
    if original is not None:
        extra["original_case"] = original.to_json()
    return save_failure(
        report,
        "pressure",
        Failure(kind, msg),
        out.transcript,
        crash_dir=crash_dir,
        extra=extra,
        bucket_hint=case.scenario,
    )


def replay_case(path: Path, target: Target, *, latency: float | None = None) -> list[str]:
    """Re-run a saved pressure case with every oracle; [] means it passes now.

    ``latency``: the probe's deadline; by default the one of the run that found it."""
    meta = json.loads(path.read_text())
    if latency is None:
        latency = float(meta.get("latency_s", 10.0))
    case = Case.from_json(meta["case"])
    _fresh(target)  # a warmed-up server, as the run had: its first-use caches are no leak
    return judge_case(target, case, latency=latency).problems
