"""Hostile clients against the real gofer processes (issue 21's table), short variants.

Each test runs one attack class against ``python -m gofer9p serve DIR --listen`` and
(root only) the confined daemon started with ``launch.start_gofer``, and asserts:

* the gofer's VmRSS growth (sampled every 20 ms from /proc) stays under the stated
  bound, :func:`gofer9p.testing.hostile.bound_kib` (the written formula when the tree
  has ``server.memory_bound``, else the figures stated in that module);
* another client of the same gofer (a second connection to ``serve``, the daemon's
  other attach point) is answered all along, each round (walk, open, read, clunk)
  within :data:`~gofer9p.testing.hostile.PROBE_DEADLINE` seconds: a failure
  deadline, not a benchmark;
* the gofer is still running.

The long variants (a million flushes, a thousand slow connections) are in
``benchmarks/hostile.py``.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.testing import hostile as H
from gofer9p.testing.hostile import Conn, Gofer, Probe, RssSampler

KINDS = [
    "serve",
    pytest.param(
        "daemon",
        marks=pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root"),
    ),
]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def _start(kind: str, tmp: Path, *extra: str, msize: int = 0) -> Gofer:
    """``serve`` with ``--msize`` (its --listen default is 1 MiB); the daemon grants 4 MiB."""
    if kind == "serve":
        return H.ListenGofer(tmp, *extra, *(["--msize", str(msize)] if msize else []))
    return H.DaemonGofer(tmp, *extra)


@pytest.fixture
def gofers(tmp: Path) -> Iterator[list[Gofer]]:
    made: list[Gofer] = []
    yield made
    for g in made:
        g.stop()


def _check(g: Gofer, rss: RssSampler, probe: Probe, bound_kib: int, what: str) -> int:
    growth = rss.stop()
    lat = probe.stop()
    assert not rss.killed, f"{what}: VmRSS passed {H.KILL_KIB >> 10} MiB; killed"
    assert g.alive(), f"{what}: the gofer died:\n{g.log()[-3000:]}"
    assert not probe.errors, f"{what}: the other client failed: {probe.errors}"
    assert lat["n"] >= 1, f"{what}: the other client got no round done"
    assert growth <= bound_kib, (
        f"{what}: VmRSS grew {growth} KiB, bound {bound_kib} KiB (probe {lat})"
    )
    assert "Traceback" not in g.log(), g.log()[-3000:]
    return growth


def _attacker(g: Gofer, msize: int) -> tuple[Conn, int]:
    c = Conn(g.attacker())
    got = c.version(msize)
    c.attach(1)
    return c, got


# ---------------------------------------------------------------- Tread of nothing


def test_pipelined_failing_reads(kind: str, tmp: Path, gofers: list[Gofer]) -> None:
    """200 Treads of count ~msize on an unknown fid, an unopened fid and at EOF: memory
    is committed only for reads that can succeed (main: +msize per frame)."""
    g = _start(kind, tmp, msize=4 << 20)
    gofers.append(g)
    probe = Probe(g)
    rss = RssSampler(g.pid)
    c, msize = _attacker(g, 4 << 20)
    seen = H.attack_reads(c, 200, msize)
    time.sleep(0.3)
    assert sum(seen.values()) == 200, seen
    assert set(seen) <= {-errno.EBADF, int(H.C.MsgType.RREAD)}, seen
    _check(g, rss, probe, H.bound_kib(msize), "pipelined failing Treads")


# ----------------------------------------------------------- Tflush of a stuck one


def test_flush_flood_of_a_stuck_request(kind: str, tmp: Path, gofers: list[Gofer]) -> None:
    """Replies stuck (the client stops reading), then 100,000 Tflush of one stuck tag:
    at most one waiter per old tag, counted in the in-flight limit (main: a task each)."""
    g = _start(kind, tmp)
    gofers.append(g)
    probe = Probe(g)
    rss = RssSampler(g.pid)
    c, msize = _attacker(g, 1 << 20)
    oldtag, stop_writer = H.stuck_replies(g, c, msize)
    try:
        H.attack_flush(c, oldtag, 100_000)
        time.sleep(0.5)
        _check(g, rss, probe, H.bound_kib(msize), "Tflush flood")
    finally:
        stop_writer()


# ------------------------------------------------------ threaded Twrites, stuck replies


def test_threaded_fifo_writes_with_stuck_replies(
    kind: str, tmp: Path, gofers: list[Gofer]
) -> None:
    """36 Twrites of ~4 MiB to a FIFO (worker threads) behind stuck replies: payloads are
    dropped once used and bytes in flight are bounded (main: a copy each until sent)."""
    g = _start(kind, tmp, msize=4 << 20)
    gofers.append(g)
    probe = Probe(g)
    rss = RssSampler(g.pid)
    c, msize = _attacker(g, 4 << 20)
    reader = H.open_fifo_for_writes(g, c)
    _oldtag, stop_writer = H.stuck_replies(g, c, msize)
    try:
        H.attack_fifo_writes(c, 36, msize)
        _check(g, rss, probe, H.bound_kib(msize), "threaded FIFO Twrites")
    finally:
        stop_writer()
        os.close(reader)


# ------------------------------------------------------------------ fd exhaustion


def test_fd_exhaustion_leaves_others_served(kind: str, tmp: Path, gofers: list[Gofer]) -> None:
    """Hostile connections lock, walk and open until refused; each gets a clean EMFILE /
    ENOLCK at its fd share, and then a client that was not there yet (serve: a new
    connection; the daemon: its other attach point) attaches, walks, opens and reads
    (main: each connection may take half the fd table, locks and the splice pipe beyond
    it, so the table fills)."""
    hostile = 3 if kind == "serve" else 2
    g = _start(kind, tmp, *(["--max-connections", str(hostile + 1)] if kind == "serve" else []))
    gofers.append(g)
    rss = RssSampler(g.pid)
    results = []
    conns = []
    for _ in range(hostile):
        c, _msize = _attacker(g, 65536)
        conns.append(c)
        results.append(H.attack_fds(g, c))
    for r in results:
        assert r["refused"] or r["locks"] < 1024, f"never refused: {results}"
    # the other client arrives only now, on a full share everywhere else
    probe = Probe(g, fresh=True)
    time.sleep(0.3)
    per = max(r["fids"] for r in results) + 2
    _check(g, rss, probe, H.bound_kib(65536, hostile, fids=per), "fd exhaustion")
    for c in conns:
        c.close()
    print(f"fd exhaustion ({kind}): {results}")


# ----------------------------------------------------- slow, idle, many connections


def test_trickled_frame_headers(kind: str, tmp: Path, gofers: list[Gofer]) -> None:
    """Connections announcing 4 MiB frames before Tversion, then trickling a byte per
    50 ms: no buffer grows to what a header claims (main: +4 MiB each)."""
    n = 200 if kind == "serve" else 1
    extra = ["--max-connections", "256"] if kind == "serve" else []
    g = _start(kind, tmp, *extra)
    gofers.append(g)
    probe = Probe(g)
    rss = RssSampler(g.pid)
    out = H.attack_trickle(g, n, seconds=2.0)
    _check(g, rss, probe, n * H.IDLE_CONN_KIB + H.bound_kib(0), "trickled headers")
    print(f"trickle ({kind}): {out}")


def test_idle_connections(tmp: Path, gofers: list[Gofer]) -> None:
    """250 connections that send nothing (let in: --max-connections 251) cost
    IDLE_CONN_KIB each at most (main: 256 KiB each, a receive buffer).  (1,000 need an
    fd limit above 65k at FD_SHARE_MIN fds each: benchmarks/hostile.py.)"""
    n = 250
    g = H.ListenGofer(tmp, "--max-connections", str(n + 1), "--handshake-timeout", "60")
    gofers.append(g)
    probe = Probe(g)
    rss = RssSampler(g.pid)
    socks = [g.connect() for _ in range(n)]
    # every one accepted and served (the gofer logs a start line per connection)
    deadline = time.monotonic() + 30
    while g.log().count("connection start") < n + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert g.log().count("connection start") == n + 1, g.log()[-2000:]
    time.sleep(0.5)
    _check(g, rss, probe, n * H.IDLE_CONN_KIB + 16 * 1024, f"{n} idle connections")
    for s in socks:
        s.close()


def test_connection_limit_and_handshake_timeout(tmp: Path, gofers: list[Gofer]) -> None:
    """--max-connections 8: more connections are closed at once, with one log line for
    the episode; --handshake-timeout 1: the 8 that never sent Tversion are closed with a
    log line each; then a new client is served."""
    g = H.ListenGofer(tmp, "--max-connections", "8", "--handshake-timeout", "1")
    gofers.append(g)
    held = [g.connect() for _ in range(8)]
    time.sleep(0.3)
    extra = [g.connect() for _ in range(20)]
    for s in extra:
        s.settimeout(5)
        try:
            assert s.recv(1) == b"", "a connection beyond the limit was served"
        except ConnectionResetError:
            pass
        s.close()
    log = g.log()
    assert len(re.findall(r"connection limit \(8\) reached", log)) == 1, log
    # the held ones are closed by the handshake timeout
    for s in held:
        s.settimeout(5)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        s.close()
    assert g.log().count("no Tversion within 1 s") == 8, g.log()
    assert "below the connection limit again: 20 connection(s) were refused" in g.log()
    probe = Probe(g, fresh=True)
    time.sleep(0.3)
    lat = probe.stop()
    assert not probe.errors and lat["n"] >= 1, (probe.errors, lat)


def test_connections_are_served_again_after_the_limit(tmp: Path, gofers: list[Gofer]) -> None:
    """Versioned clients are not closed by the handshake timeout, and a slot freed by a
    closing client is given to the next one."""
    g = H.ListenGofer(tmp, "--max-connections", "2", "--handshake-timeout", "0.5")
    gofers.append(g)
    a, b = Conn(g.connect()), Conn(g.connect())
    a.version()
    b.version()
    time.sleep(1.0)
    a.attach(1)  # still served after the handshake timeout
    b.close()
    time.sleep(0.2)
    c = Conn(g.connect())
    c.version()
    c.attach(1)
    c.walk(1, 2, b"f")
    a.close()
    c.close()


# ---------------------------------------------------------------------- uname


def test_attach_with_huge_numeric_uname(kind: str, tmp: Path, gofers: list[Gofer]) -> None:
    """A 5,000-digit numeric uname: a clean Rlerror (or the nobody user), never EIO with a
    traceback."""
    g = _start(kind, tmp)
    gofers.append(g)
    probe = Probe(g)
    rss = RssSampler(g.pid)
    c = Conn(g.attacker())
    c.version()
    got = H.attack_uname(c)
    assert got != "Rlerror EIO", got
    assert "internal error" not in g.log(), g.log()[-2000:]
    _check(g, rss, probe, H.bound_kib(65536), "5000-digit uname")

