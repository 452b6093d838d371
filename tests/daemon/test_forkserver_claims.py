"""Claims (#18): a requester holds a pre-forked child's socket and sends its start request
straight to it.  What the server hands out and to whom, what a claimed child does with a bad
request, an unused claim, a requester that dies, and a server that dies or predates claims.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.forkproto import record
from gofer9p.launch import ForkServer, LaunchError

from .conftest import gofer_env, is_pool_child, make_bundle, wait_for_idle_child
from .test_forkserver import _children, _fds, _listen, _serves, _state, _wait_gone


@pytest.fixture
def listening() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``gofer9p forkserver --socket unix:PATH`` (pool of one), reachable by uid 65534 too."""
    sock_dir = tempfile.mkdtemp(prefix="gofer9p-fs-")
    os.chmod(sock_dir, 0o755)
    p, path = _listen(sock_dir, "--allow-uid", "65534")
    yield p, path
    p.terminate()
    p.communicate(timeout=15)
    os.unlink(path)
    os.rmdir(sock_dir)


def _records(sock: socket.socket, n: int) -> list[tuple[dict[str, object], list[int]]]:
    """The next ``n`` records on a raw control connection, with their fds."""
    out = []
    for _ in range(n):
        data, fds, _flags, _ = socket.recv_fds(sock, 65536, 4)
        assert data, "the fork-server closed the connection"
        out.append((json.loads(data), fds))
    return out


def _claim(sock: socket.socket) -> tuple[int, int, socket.socket]:
    """Claim a child on a raw connection (waiting for the pool if it says "later"): its pid,
    pidfd and socket."""
    sock.send(record({"op": "claim"}))
    ((rec, fds),) = _records(sock, 1)
    if rec == {"claim": None, "later": True}:
        ((rec, fds),) = _records(sock, 1)
    pid = rec["claim"]
    assert isinstance(pid, int) and len(fds) == 2, (rec, fds)
    return pid, fds[0], socket.socket(fileno=fds[1])


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(30)
    s.connect(path)
    return s


def test_a_claimed_start_needs_no_server(tmp_path: Path) -> None:
    """Once a child is claimed, a start goes to it alone: it serves with the server stopped
    (SIGSTOP), which a start through the server could not; the server, continued, reports
    its exit as for any child."""
    fs = ForkServer.start(env=gofer_env(), prefork=1)
    assert fs.proc is not None
    b = make_bundle(tmp_path)
    try:
        fs.start_gofer(b).stop()  # claims the next child
        wait_for_idle_child(fs)
        deadline = time.monotonic() + 15
        while len([p for p, st in _children(fs.proc.pid) if is_pool_child(fs.proc.pid, p)]) < 2:
            assert time.monotonic() < deadline, "no claimed child and pool beside it"
            time.sleep(0.02)
        os.kill(fs.proc.pid, signal.SIGSTOP)
        try:
            gp = fs.start_gofer(b, timeout=10)
            assert _serves(gp.sockets[0]) == b"hello from root\n"
        finally:
            os.kill(fs.proc.pid, signal.SIGCONT)
        assert gp.stop() == 0  # reported by the server
    finally:
        fs.stop()


def test_claims_go_only_to_allowed_peers(listening: tuple[subprocess.Popen[str], str]) -> None:
    """A claim is a request like a start: a peer of a uid not allowed gets the refusal and
    no child; an allowed one gets a child's pidfd and socket, and the exit of that child."""
    _p, path = listening
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # uid 65533: not allowed
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65533, 65533, 65533)
            os.setresuid(65533, 65533, 65533)
            s = _connect(path)
            data, fds, _flags, _ = socket.recv_fds(s, 65536, 4)  # answered before it asks
            try:
                s.send(record({"op": "claim"}))
                closed = s.recv(100) == b""
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            os.write(w, json.dumps([json.loads(data), len(fds), closed]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = json.loads(f.read())
    os.waitpid(pid, 0)
    assert got == [{"error": "uid 65533 may not use this fork-server (allowed: 0, 65534)"}, 0, True]
    s = _connect(path)  # root: allowed
    with s:
        child, pidfd, csock = _claim(s)
        assert _state(child) in ("S", "R")
        csock.close()  # an unused claim given back: its child exits 0, reported here
        ((rec, fds),) = _records(s, 1)
        assert (rec, fds) == ({"pid": child, "exit": 0}, [])
        os.close(pidfd)


def test_an_unused_claim_costs_nothing_and_ends_with_its_socket(
    tmp_path: Path, listening: tuple[subprocess.Popen[str], str]
) -> None:
    """A requester that claims a child and never uses it: the child waits without running;
    other requesters' gofers start and serve meanwhile (the pool refills); a second claim
    while one is pending is refused; once the socket closes the child exits and is reaped."""
    p, path = listening
    s = _connect(path)
    with s:
        child, pidfd, csock = _claim(s)
        _wait_waiting(child)
        cpu = _cpu(child)
        b = make_bundle(tmp_path)
        with ForkServer.connect(f"unix:{path}") as fs:
            for _ in range(3):
                gp = fs.start_gofer(b)
                assert gp.pid != child
                assert _serves(gp.sockets[0]) == b"hello from root\n"
                assert gp.stop() == 0
        time.sleep(0.2)
        assert _state(child) == "S" and _cpu(child) == cpu  # asleep: not one tick more
        assert is_pool_child(p.pid, child)
        # at most one pending claim per connection: a second one while it waits is refused
        pending = _connect(path)
        with pending:
            # empty the pool, so a claim has to wait, then ask twice
            taken = _claim(pending)
            pending.send(record({"op": "claim"}))
            pending.send(record({"op": "claim"}))
            got = [rec for rec, _ in _records(pending, 2)]
            assert got == [
                {"claim": None, "later": True},
                {"claim": None, "error": "a claim of this connection is pending"},
            ]
            taken[2].close()
            os.close(taken[1])
        csock.close()
        _wait_gone(child)
        deadline = time.monotonic() + 15
        while child in [c for c, _ in _children(p.pid)]:
            assert time.monotonic() < deadline, "not reaped"
            time.sleep(0.02)
        os.close(pidfd)


def _wait_waiting(pid: int) -> None:
    """Until the pre-forked child ``pid`` waits in its trio run (an epoll fd, asleep)."""
    deadline = time.monotonic() + 30
    while True:
        fds = list(_fds(pid).values())  # (skips a fd that closes while it is listed)
        if "anon_inode:[eventpoll]" in fds and _state(pid) == "S":
            return
        assert time.monotonic() < deadline, fds
        time.sleep(0.01)


def _cpu(pid: int) -> int:
    """Clock ticks (user + system) ``pid`` has run."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def test_a_claimed_child_whose_requester_dies(listening: tuple[subprocess.Popen[str], str]) -> None:
    """The requester process dies holding a claim (before its start): the child sees EOF and
    exits, the server reaps it and keeps handing out children."""
    p, path = listening
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            child, _pidfd, _sock = _claim(_connect(path))
            os.write(w, str(child).encode())
        finally:
            os._exit(0)  # with the claim still held
    os.close(w)
    with os.fdopen(r) as f:
        child = int(f.read())
    os.waitpid(pid, 0)
    _wait_gone(child)
    deadline = time.monotonic() + 15
    while child in [c for c, _ in _children(p.pid)]:
        assert time.monotonic() < deadline, "not reaped"
        time.sleep(0.02)
    with _connect(path) as s:
        other, pidfd, csock = _claim(s)
        assert other != child
        csock.close()
        os.close(pidfd)


def test_a_claimed_child_dies_with_the_server(listening: tuple[subprocess.Popen[str], str]) -> None:
    """Until its request arrives, a claimed child ends with the server (PR_SET_PDEATHSIG),
    though its socket is held by the requester; a gofer it became would keep serving
    (test_forkserver.py's test_server_killed_while_gofers_serve)."""
    p, path = listening
    with _connect(path) as s:
        child, pidfd, csock = _claim(s)
        _wait_waiting(child)  # past its warm-up: a server dying before then it notices itself
        p.kill()
        p.wait()
        _wait_gone(child)
        csock.close()
        os.close(pidfd)


def test_a_claimed_child_checks_its_request(tmp_path: Path) -> None:
    """A request sent straight to a claimed child is checked as the server checks one: the
    same error line (on the start pipe, so ``LaunchError``), exit 2, nothing served; a raw
    malformed record the same way."""
    fs = ForkServer.start(env=gofer_env(), prefork=1)
    assert fs.proc is not None
    b = make_bundle(tmp_path)
    try:
        fs.start_gofer(b).stop()  # the next start has a claimed child
        with pytest.raises(LaunchError) as ei:
            fs.start_gofer(b, extra_args=["--spec-fd", "3"])
        assert str(ei.value) == "fork-server: pass --spec-fd's fd as a \"spec\" fd, not as a flag"
        # the same line from the server itself (no claim: fork on request)
        with ForkServer.start(env=gofer_env(), prefork=0) as plain, pytest.raises(LaunchError) as e2:
            plain.start_gofer(b, extra_args=["--spec-fd", "3"])
        assert str(e2.value) == str(ei.value)
        gp = fs.start_gofer(b)  # the connection is fine
        assert _serves(gp.sockets[0]) == b"hello from root\n"
        assert gp.stop() == 0
    finally:
        fs.stop()


def test_a_raw_malformed_request_to_a_claimed_child(
    listening: tuple[subprocess.Popen[str], str],
) -> None:
    _p, path = listening
    with _connect(path) as s:
        child, pidfd, csock = _claim(s)
        status_r, status_w = os.pipe()
        socket.send_fds(csock, [b"not json"], [status_w])
        os.close(status_w)
        csock.close()
        with os.fdopen(status_r, "rb") as f:
            assert f.read() == b"fork-server: request is not a JSON object\n"
        ((rec, _),) = _records(s, 1)
        assert rec == {"pid": child, "exit": 2}
        os.close(pidfd)


def test_no_pool_no_claims_and_an_old_server(tmp_path: Path) -> None:
    """Without a pool the server answers a claim null, and every start goes through it; a
    server that predates claims answers one with its error line, which the requester takes
    for "no claims" (not for its start's reply), then starts through the server."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ops: list[str] = []

    def old_server() -> None:
        with b:
            while data := b.recv(65536):
                op = json.loads(data)["op"]
                ops.append(op)
                line = (
                    'request must be {"op": "start", "args": [...], "fds": [...]}'
                    if op == "claim"
                    else f"start {len(ops)}"
                )
                b.send(record({"error": line}))

    t = threading.Thread(target=old_server)
    t.start()
    fs = ForkServer(a)
    bundle = make_bundle(tmp_path)
    for n in (2, 3):
        with pytest.raises(LaunchError) as ei:
            fs.start_gofer(bundle)
        assert str(ei.value) == f"fork-server: start {n}"
    fs.stop()
    t.join(15)
    assert ops == ["claim", "start", "start"]
    with ForkServer.start(env=gofer_env(), prefork=0) as plain:
        assert plain.proc is not None
        for _ in range(2):
            gp = plain.start_gofer(bundle)
            assert _serves(gp.sockets[0]) == b"hello from root\n"
            assert gp.stop() == 0
        assert _children(plain.proc.pid) == []  # no child forked ahead, none claimed


def test_a_claimed_child_that_died_is_passed_over(tmp_path: Path) -> None:
    """The child a connection holds is killed before its start: the start goes through the
    server instead (its exit is reported as any child's), and serves."""
    fs = ForkServer.start(env=gofer_env(), prefork=1)
    assert fs.proc is not None
    server = fs.proc.pid
    b = make_bundle(tmp_path)
    try:
        fs.start_gofer(b).stop()  # the connection claims its next child
        deadline = time.monotonic() + 15
        while len(waiting := [p for p, _ in _children(server) if is_pool_child(server, p)]) < 2:
            assert time.monotonic() < deadline, "no claimed child and pool beside it"
            time.sleep(0.02)
        for pid in waiting:  # the claimed one and the pool's
            os.kill(pid, signal.SIGKILL)
        for pid in waiting:
            _wait_gone(pid)
        gp = fs.start_gofer(b)
        assert gp.pid not in waiting
        assert _serves(gp.sockets[0]) == b"hello from root\n"
        assert gp.stop() == 0
        # The dead claim's exit (reaped before the start: its record came first) is not
        # kept for a wait that never comes; nor is any other: every start was waited for.
        assert fs._exits == {} and fs._unwanted == set()
    finally:
        fs.stop()
