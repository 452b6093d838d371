"""The fork-server (#18) itself: who may use it, what a bad request or a dying gofer does to it,
what it leaves behind, and what a forked gofer can reach.

The confinement checks of a forked gofer are test_gofer.py's own, run with ``via="fork"``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.launch import ForkServer, ForkServerLost, LaunchError, start_gofer

from .conftest import REPO, gofer_env, is_pool_child, make_bundle, wait_for_idle_child
from .ninep import NineP


@pytest.fixture
def fs() -> Iterator[ForkServer]:
    """A fork-server of this test's own, so its children and fds can be counted: it forks on
    request only (the pool of pre-forked children has its own tests; test_gofer.py's shared
    fork-server runs with the default pool)."""
    f = ForkServer.start(env=gofer_env(), prefork=0)
    yield f
    f.stop()


def _children(pid: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process whose parent is ``pid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            out.append((int(name), fields[0]))
    return out


def _serves(sock: socket.socket) -> bytes:
    c = NineP(sock)
    assert c.version() == (65536, b"9P2000.L")
    c.attach(1)
    return c.read_file(1, b"hello.txt")


def _wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        assert time.monotonic() < deadline, f"{pid} still running"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def _listen(sock_dir: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m gofer9p forkserver --socket unix:...``; returns once it said it is ready."""
    path = os.path.join(sock_dir, "fs.sock")
    p = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "forkserver", "--socket", f"unix:{path}", *extra],
        env=gofer_env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    line = p.stderr.readline()
    assert "ready on unix:" in line, line
    return p, path


def _as_uid(path: str, uid: int, request: bytes | None) -> dict[str, str]:
    """Connect to ``path`` as ``uid`` (a forked child that setuid()s first); the first reply."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(10)
            s.connect(path)
            if request is not None:
                s.send(request)
            os.write(w, s.recv(65536))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out: dict[str, str] = json.loads(data)
    return out


def test_peer_with_another_uid_is_refused(tmp_path: Path) -> None:
    sock_dir = tempfile.mkdtemp(prefix="gofer9p-fs-")
    os.chmod(sock_dir, 0o755)  # let uid 65534 reach the socket: SO_PEERCRED must refuse it
    p, path = _listen(sock_dir)
    try:
        assert _as_uid(path, 65534, None) == {
            "error": "uid 65534 may not use this fork-server (allowed: 0)"
        }
        # It keeps serving the uid that started it.
        with ForkServer.connect(f"unix:{path}") as fs:
            gp = fs.start_gofer(make_bundle(tmp_path))
            assert _serves(gp.sockets[0]) == b"hello from root\n"
            assert gp.stop() == 0
    finally:
        p.terminate()
        _, err = p.communicate(timeout=15)
        os.unlink(path)
        os.rmdir(sock_dir)
    assert p.returncode == 0
    refused = [line for line in err.splitlines() if "refused" in line]
    assert refused == [
        "gofer9p forkserver: refused a connection: uid 65534 may not use this fork-server "
        "(allowed: 0)"
    ], err


def test_allow_uid_admits_that_uid() -> None:
    sock_dir = tempfile.mkdtemp(prefix="gofer9p-fs-")
    os.chmod(sock_dir, 0o755)
    p, path = _listen(sock_dir, "--allow-uid", "65534")
    try:
        # Past the credential check: the (malformed) request itself gets the answer.
        assert _as_uid(path, 65534, b'{"op": "stop"}') == {
            "error": 'request must be {"op": "start", "args": [...], "fds": [...]}'
        }
    finally:
        p.terminate()
        p.communicate(timeout=15)
        os.unlink(path)
        os.rmdir(sock_dir)


def test_bad_bundle_is_one_error_line_and_no_lingering_child(
    tmp_path: Path, fs: ForkServer
) -> None:
    assert fs.proc is not None
    log = tmp_path / "gofer.log"
    with open(log, "wb") as f, pytest.raises(LaunchError) as ei:
        fs.start_gofer(tmp_path / "nope", stderr=f)
    line = f"gofer9p gofer: error: bundle {str(tmp_path / 'nope')!r} is not a directory"
    assert str(ei.value) == line
    assert log.read_text().splitlines() == [line]  # the gofer's stderr: that one line
    assert _children(fs.proc.pid) == []  # exited and reaped before start_gofer raised
    assert fs.proc.poll() is None
    gp = fs.start_gofer(make_bundle(tmp_path))  # the server is fine
    assert _serves(gp.sockets[0]) == b"hello from root\n"
    gp.stop()


def test_malformed_requests_fork_nothing(fs: ForkServer) -> None:
    assert fs.proc is not None
    a, b = socket.socketpair()
    with a, b:
        for req, fds, want in (
            (b"not json", [], "request is not a JSON object"),
            (b'{"op": "start", "args": [], "fds": ["io"]}', [], '"fds" names 1 fds but 0'),
            (b'{"op": "start", "args": [1], "fds": []}', [], '"args" must be a list of strings'),
            (b'{"op": "start", "args": [], "fds": ["bogus"]}', [b.fileno()], "unknown fd role"),
            (
                b'{"op": "start", "args": ["--spec-fd", "3"], "fds": ["io"]}',
                [b.fileno()],
                'pass --spec-fd\'s fd as a "spec" fd',
            ),
            (
                b'{"op": "start", "args": ["--stats-fd", "3"], "fds": ["io"]}',
                [b.fileno()],
                'pass --stats-fd\'s fd as a "stats" fd',
            ),
            (
                b'{"op": "start", "args": ["--record-fd=3"], "fds": ["io"]}',
                [b.fileno()],
                'pass --record-fd\'s fd as a "record" fd',
            ),
            (
                b'{"op": "start", "args": [], "fds": ["io", "stats", "stats"]}',
                [b.fileno(), b.fileno(), b.fileno()],
                "fd role 'stats' given twice",
            ),
            (
                b'{"op": "start", "args": [], "fds": ["io", "record", "record"]}',
                [b.fileno(), b.fileno(), b.fileno()],
                "fd role 'record' given twice",
            ),
            (
                b'{"op": "start", "args": ["--io-fds", "3"], "fds": ["io"]}',
                [b.fileno()],
                "pass the io sockets as",
            ),
        ):
            socket.send_fds(fs.sock, [req], fds)
            rec = json.loads(fs.sock.recv(65536))
            assert list(rec) == ["error"] and want in rec["error"], rec
    assert _children(fs.proc.pid) == []
    assert fs.proc.poll() is None


def test_userns_rejected_mapping_is_a_clean_error(tmp_path: Path, fs: ForkServer) -> None:
    """The manager writes a forked gofer's id maps (the fork-server never reads the spec);
    one the kernel refuses is a clean LaunchError, and the child does not linger."""
    assert fs.proc is not None
    b = make_bundle(
        tmp_path,
        extra={
            "linux": {
                "uidMappings": [
                    {"containerID": 0, "hostID": 0, "size": 10},
                    {"containerID": 5, "hostID": 1000, "size": 10},
                ],
                "gidMappings": [{"containerID": 0, "hostID": 0, "size": 1}],
            }
        },
    )
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LaunchError, match="writing the gofer's uid_map"):
        fs.start_gofer(b)
    assert set(os.listdir("/proc/self/fd")) <= before  # no fd leaked
    assert _children(fs.proc.pid) == []
    with pytest.raises(LaunchError, match="uidMappings"):
        fs.start_gofer(make_bundle(tmp_path / "plain"), userns=True)


def test_dying_gofers_leave_the_server_and_siblings_alone(tmp_path: Path, fs: ForkServer) -> None:
    assert fs.proc is not None
    rw = make_bundle(tmp_path / "rw")
    ro = make_bundle(tmp_path / "ro", root_readonly=True)
    killed, crashed, bystander = (fs.start_gofer(rw) for _ in range(3))
    panicky = fs.start_gofer(ro, panic_on_write=True)
    try:
        for g in (killed, crashed, bystander, panicky):
            assert _serves(g.sockets[0]) == b"hello from root\n"
        killed.proc.kill()
        crashed.proc.send_signal(signal.SIGSEGV)
        with pytest.raises((EOFError, ConnectionError)):
            NineP(panicky.sockets[0]).mkdir(1, b"boom")
        # Each status as a direct child's would be, reported by the server that reaped it.
        assert killed.proc.wait(15) == -signal.SIGKILL
        assert crashed.proc.wait(15) == -signal.SIGSEGV
        assert panicky.proc.wait(15) == 70
        assert fs.proc.poll() is None
        assert NineP(bystander.sockets[0]).read_file(1, b"hello.txt") == b"hello from root\n"
        late = fs.start_gofer(rw)
        assert _serves(late.sockets[0]) == b"hello from root\n"
        assert late.stop() == 0
        assert [pid for pid, _ in _children(fs.proc.pid)] == [bystander.pid]
    finally:
        for g in (killed, crashed, bystander, panicky):
            g.stop()


def test_server_killed_while_gofers_serve(tmp_path: Path) -> None:
    fs = ForkServer.start(env=gofer_env())
    assert fs.proc is not None
    b = make_bundle(tmp_path)
    gs = [fs.start_gofer(b) for _ in range(2)]
    clients = [NineP(g.sockets[0]) for g in gs]
    for c in clients:
        c.version()
    fs.proc.kill()
    fs.proc.wait()
    try:
        for g, c in zip(gs, clients, strict=True):
            c.attach(1)
            assert c.read_file(1, b"hello.txt") == b"hello from root\n"
            assert _state(g.pid) in ("S", "R")
        # Nobody can report a status now; wait() says so once the gofer is gone.
        gs[0].sockets[0].close()
        with pytest.raises(ForkServerLost):
            gs[0].proc.wait(15)
        _wait_gone(gs[0].pid)
        assert NineP(gs[1].sockets[0]).read_file(1, b"hello.txt") == b"hello from root\n"
        with pytest.raises(ForkServerLost):
            fs.start_gofer(b)
        assert gs[1].proc.poll() is None  # alive: poll says so even without the server
        with pytest.raises(ForkServerLost):
            gs[1].stop()  # SIGTERM through the pidfd; the status is lost, the ends closed
        assert all(s.fileno() == -1 for s in gs[1].sockets)
        _wait_gone(gs[1].pid)
    finally:
        for g in gs:
            for s in g.sockets:
                s.close()
        for g in gs:
            _wait_gone(g.pid)
        fs.stop()


def _fds(pid: int) -> dict[int, str]:
    out = {}
    for n in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out[int(n)] = os.readlink(f"/proc/{pid}/fd/{n}")
    return out


def _idle(server: int) -> list[int]:
    """The server's pre-forked children: alive, not chrooted (a gofer is)."""
    out = []
    for pid, state in _children(server):
        if state != "Z" and is_pool_child(server, pid):
            out.append(pid)
    return out


def _settled(server: int, prefork: int, claimed: int = 0) -> dict[int, str]:
    """The server's fds once its pool is full again (and only pool children remain, beside
    ``claimed`` ones: handed to a requester for its next start, the server holds no fd of
    theirs)."""
    deadline = time.monotonic() + 15
    while True:
        fds = _fds(server)
        kids = _children(server)
        if len(_idle(server)) == prefork + claimed == len(kids) and fds == _fds(server):
            return fds
        assert time.monotonic() < deadline, (prefork, kids)
        time.sleep(0.02)


def _sequential_starts(tmp_path: Path, n: int, prefork: int) -> None:
    fs = ForkServer.start(env=gofer_env(), prefork=prefork)
    assert fs.proc is not None
    try:
        b = make_bundle(tmp_path)
        fs.start_gofer(b).stop()  # warm: the first request may still be importing
        claimed = 1 if prefork else 0  # the connection's claim; none without a pool
        before = _settled(fs.proc.pid, prefork, claimed)
        for _ in range(n):
            gp = fs.start_gofer(b, extra_args=["--log-level", "warning"])
            assert NineP(gp.sockets[0]).version() == (65536, b"9P2000.L")
            assert gp.stop() == 0  # the server reported it: reaped
        # Same fds (the pool's own pidfd and socket may be a new pair: same count, kinds).
        after = _settled(fs.proc.pid, prefork, claimed)
        assert sorted(after) == sorted(before)
        kinds = [v.split(":")[0] for v in after.values()]
        assert sorted(kinds) == sorted(v.split(":")[0] for v in before.values())
        assert all(state != "Z" for _, state in _children(fs.proc.pid))
    finally:
        fs.stop()


@pytest.mark.parametrize("prefork", [0, 1])
def test_100_sequential_starts_leave_no_fd_or_zombie(tmp_path: Path, prefork: int) -> None:
    _sequential_starts(tmp_path, 100, prefork)


@pytest.mark.slow
@pytest.mark.parametrize("prefork", [0, 1])
def test_1000_sequential_starts_leave_no_fd_or_zombie(tmp_path: Path, prefork: int) -> None:
    _sequential_starts(tmp_path, 1000, prefork)


def test_prefork_pool(tmp_path: Path) -> None:
    """Pre-forked children hold nothing of the server's or of each other's, take requests,
    are replaced, and end with the server; the gofers they became keep serving."""
    fs = ForkServer.start(env=gofer_env(), prefork=2)
    assert fs.proc is not None
    server = fs.proc.pid
    gps = []
    try:
        _settled(server, 2)
        idle = _idle(server)
        server_fds = set(_fds(server).values())
        for pid in idle:
            deadline = time.monotonic() + 15
            # It waits inside its trio run (an epoll fd) once its warm-up is done and the run
            # has made its fds (the same table twice, 50 ms apart).
            while True:
                fds = _fds(pid)
                if "anon_inode:[eventpoll]" in fds.values():
                    time.sleep(0.05)
                    if _fds(pid) == fds:
                        break
                assert time.monotonic() < deadline, fds
                time.sleep(0.01)
            # stdio; 3 .. 130 held for the io sockets (/dev/null; its socket may sit among
            # them); above them its socket and the trio run's epoll and wake-up socketpairs.
            assert sorted(fds)[:3] == [0, 1, 2], fds
            held = [fds[fd] for fd in range(3, 131) if fd in fds]
            assert len(held) == 128 and held.count("/dev/null") >= 127, fds
            rest = [v for fd, v in sorted(fds.items()) if fd >= 131 or v.startswith("socket:")]
            kinds = [v.partition("[")[0] for v in rest]
            assert kinds.count("anon_inode:") == 1 and kinds.count("socket:") >= 3, fds
            assert set(kinds) == {"anon_inode:", "socket:"}, fds
            assert not {v for v in rest if v.startswith("socket:")} & server_fds, fds
            with open(f"/proc/{pid}/stat") as f:
                assert int(f.read().rpartition(")")[2].split()[3]) == pid  # own session
        b = make_bundle(tmp_path)
        gps = [fs.start_gofer(b) for _ in range(3)]  # two from the pool, one forked
        assert [g.pid for g in gps[:2]] == idle
        for g in gps:
            assert _serves(g.sockets[0]) == b"hello from root\n"
        deadline = time.monotonic() + 15
        while len(_idle(server)) < 2:  # refilled once the server is idle
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refill = _idle(server)
        fs.proc.kill()
        fs.proc.wait()
        for pid in refill:
            _wait_gone(pid)  # EOF on its socket: it exits
        for g in gps:
            assert NineP(g.sockets[0]).read_file(1, b"hello.txt") == b"hello from root\n"
    finally:
        for g in gps:
            for s in g.sockets:
                s.close()
        for g in gps:
            _wait_gone(g.pid)
        fs.stop()


def test_prefork_pool_under_a_low_fd_limit(tmp_path: Path) -> None:
    """With RLIMIT_NOFILE below the fds a pre-forked child holds for io sockets (3 .. 130),
    the child still waits in the pool (taking its request before it starts trio) and becomes
    the gofer: its io sockets at 3 and 4, no /dev/null it held left above stdin, trio's own
    fds opened after the request (above the io sockets).

    Nothing waits for the child's warm-up (under load it took longer than any fixed
    deadline): a request handed to a child that is still warming up waits in its socket.
    The long timeouts only end a hang."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
    try:
        fs = ForkServer.start(env=gofer_env(), prefork=1)  # inherits the limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert fs.proc is not None
    g = None
    try:
        wait_for_idle_child(fs, timeout=600)  # forked (its warm-up may still be running)
        idle = _idle(fs.proc.pid)
        b = make_bundle(tmp_path, mounts=[("/m", "m", ["rbind"])])
        (b / "rootfs" / "m").mkdir()
        g = fs.start_gofer(b, timeout=600)
        assert g.pid == idle[0]  # the pre-forked child, not a fork on request
        assert _serves(g.sockets[0]) == b"hello from root\n"
        mine = _fds(g.pid)
        assert mine[3].startswith("socket:") and mine[4].startswith("socket:"), mine
        assert not [fd for fd, v in mine.items() if fd > 2 and v == "/dev/null"], mine
        epoll = [fd for fd, v in mine.items() if v == "anon_inode:[eventpoll]"]
        assert epoll and min(epoll) > 4, mine
    finally:
        if g is not None:
            assert g.stop() == 0
        fs.stop()


def test_warm_up_serves_and_leaves_nothing_behind() -> None:
    """A pre-forked child's warm-up runs a throw-away gofer (it answers its Tversion, Tattach
    and Tclunk) and leaves the process as it found it: no fd (its attach point is the host's
    /, which must never reach a gofer), the same log setup, fd limit, mount namespace, root
    and umask."""
    code = textwrap.dedent(
        """
        import json, logging, os, resource
        from gofer9p import forkserver
        forkserver._preload()
        def state():
            log = logging.getLogger("gofer9p")
            umask = os.umask(0o22)
            os.umask(umask)
            return {
                "fds": {fd: os.readlink(f"/proc/self/fd/{fd}")
                        for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")},
                "log": [repr(log.handlers), log.level, log.propagate],
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
                "mnt": os.readlink("/proc/self/ns/mnt"),
                "root": os.readlink("/proc/self/root"),
                "umask": umask,
            }
        before = state()
        replies = forkserver._warm_up()
        print(json.dumps({"replies": replies, "before": before, "after": state()}))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=gofer_env(), cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["replies"] == [101, 105, 121]  # Rversion, Rattach, Rclunk
    assert out["after"] == out["before"]


@pytest.mark.parametrize("prefork", [0, 1])
def test_forked_gofer_holds_nothing_of_the_server(tmp_path: Path, prefork: int) -> None:
    """Own session; of sockets only its io ones and trio's wake-up pair: not the control
    connection, the listener, a pre-forked child's socket or its own former one."""
    fs = ForkServer.start(env=gofer_env(), prefork=prefork)
    assert fs.proc is not None
    b = make_bundle(tmp_path, mounts=[("/m", "m", ["rbind"])])
    (b / "rootfs" / "m").mkdir()
    if prefork:
        wait_for_idle_child(fs)
    g = fs.start_gofer(b)
    try:
        _serves(g.sockets[0])
        with open(f"/proc/{g.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ppid, pgrp, session = int(fields[1]), int(fields[2]), int(fields[3])
        assert ppid == fs.proc.pid
        assert pgrp == session == g.pid  # setsid: its own session and process group
        server_sockets = {v for v in _fds(fs.proc.pid).values() if v.startswith("socket:")}
        assert server_sockets  # the control connection at least
        mine = _fds(g.pid)
        assert not server_sockets & set(mine.values()), (server_sockets, mine)
        # As many sockets as a spawned gofer serving the same bundle the same way has.
        spawned = start_gofer(b, env=gofer_env())
        try:
            _serves(spawned.sockets[0])
            assert _kinds(_fds(g.pid)) == _kinds(_fds(spawned.pid))
        finally:
            spawned.stop()
    finally:
        assert g.stop() == 0
        fs.stop()


def _kinds(fds: dict[int, str]) -> list[str]:
    """What each fd is, without the inode numbers and paths: ``socket``, ``pipe``, ``/...``."""
    return sorted(v.split(":")[0] if ":" in v else "path" for v in fds.values())


def _open_mem_without_ptrace_cap(pid: int) -> str:
    """Open ``/proc/PID/mem`` from a root process that has dropped CAP_SYS_PTRACE (as every
    confined gofer has): "ok" or the errno name."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            from gofer9p import confine

            confine.drop_capabilities()
            try:
                os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
                res = "ok"
            except OSError as e:
                res = errno.errorcode[e.errno or 0]
            os.write(w, res.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        res = f.read()
    os.waitpid(child, 0)
    return res


def _sleeper(*, dumpable: bool) -> int:
    """A root process with a confined gofer's capabilities, dumpable or not, that waits."""
    pid = os.fork()
    if pid == 0:
        try:
            from gofer9p import confine

            confine.drop_capabilities()
            if not dumpable:
                confine.set_not_dumpable()
            time.sleep(60)
        finally:
            os._exit(0)
    return pid


def test_same_uid_cannot_read_gofer_or_server_memory(tmp_path: Path, fs: ForkServer) -> None:
    """A sibling gofer (uid 0, the same capabilities, no CAP_SYS_PTRACE) could read a dumpable
    gofer's memory; the forked gofer and the server are not dumpable."""
    assert fs.proc is not None
    g = fs.start_gofer(make_bundle(tmp_path))
    twins = [_sleeper(dumpable=True), _sleeper(dumpable=False)]
    try:
        time.sleep(0.2)  # let both drop their capabilities
        assert _open_mem_without_ptrace_cap(twins[0]) == "ok"  # the check can pass
        assert _open_mem_without_ptrace_cap(twins[1]) == "EACCES"
        assert _open_mem_without_ptrace_cap(g.pid) == "EACCES"
        assert _open_mem_without_ptrace_cap(fs.proc.pid) == "EACCES"
    finally:
        for pid in twins:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        g.stop()


def test_inherited_listening_socket_and_stdout_role(tmp_path: Path) -> None:
    """``--fd N`` may be a listening socket (a manager that binds it itself); a gofer's
    stdout and stderr go where the request's ``stdout``/``stderr`` fds point."""
    sock_dir = tempfile.mkdtemp(prefix="gofer9p-fs-")
    path = os.path.join(sock_dir, "fs.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(path)
    lsock.listen(8)
    p = subprocess.Popen(
        [sys.executable, "-m", "gofer9p.forkserver", "--fd", str(lsock.fileno())],
        pass_fds=[lsock.fileno()],
        env=gofer_env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    lsock.close()
    try:
        assert p.stderr is not None
        assert "(listening)" in p.stderr.readline()
        out, err = tmp_path / "out", tmp_path / "err"
        with ForkServer.connect(f"unix:{path}") as fs, open(out, "wb") as o, open(err, "wb") as e:
            gp = fs.start_gofer(make_bundle(tmp_path), stdout=o, stderr=e)
            assert _serves(gp.sockets[0]) == b"hello from root\n"
            assert os.readlink(f"/proc/{gp.pid}/fd/1") == str(out)
            assert os.readlink(f"/proc/{gp.pid}/fd/2") == str(err)
            assert os.readlink(f"/proc/{gp.pid}/fd/0") == os.devnull
            assert gp.stop() == 0
        assert "gofer9p INFO serving bundle" in err.read_text()
    finally:
        p.terminate()
        p.communicate(timeout=15)
        os.unlink(path)
        os.rmdir(sock_dir)
    assert p.returncode == 0


def test_wait_in_one_thread_start_in_another(tmp_path: Path, fs: ForkServer) -> None:
    """A manager thread blocked in ``proc.wait()`` does not keep another from starting gofers
    on the same connection, and both learn their statuses."""
    import threading

    b = make_bundle(tmp_path)
    first = fs.start_gofer(b)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(first.proc.wait(30)))
    waiter.start()
    try:
        others = [fs.start_gofer(b) for _ in range(3)]
        for g in others:
            assert _serves(g.sockets[0]) == b"hello from root\n"
        others[0].proc.kill()
        assert others[0].proc.wait(15) == -signal.SIGKILL
        for s in first.sockets:
            s.close()  # EOF on its only connection: exit 0
        waiter.join(30)
        assert got == [0]
        assert others[0].stop() == -signal.SIGKILL
        for g in others[1:]:
            assert g.stop() == 0
    finally:
        waiter.join(30)
        first.stop()


@pytest.mark.parametrize("prefork", [0, 1])
def test_a_stop_right_after_ok_is_a_clean_exit(tmp_path: Path, prefork: int) -> None:
    """A forked gofer says ok once confined, before its serving loop (and the loop's signal
    receiver) is set up: a SIGTERM sent the moment start_gofer returns waits, blocked, for
    that receiver, and the gofer exits 0 saying so; then a fresh start still serves."""
    fs = ForkServer.start(env=gofer_env(), prefork=prefork)
    log = tmp_path / "gofer.log"
    try:
        b = make_bundle(tmp_path)
        with open(log, "wb") as err:
            for _ in range(5):
                if prefork:
                    wait_for_idle_child(fs)
                gp = fs.start_gofer(b, stderr=err)
                gp.proc.send_signal(signal.SIGTERM)
                assert gp.proc.wait(15) == 0, log.read_text()
                for s in gp.sockets:
                    s.close()
            gp = fs.start_gofer(b, stderr=err)
            assert _serves(gp.sockets[0]) == b"hello from root\n"
            assert gp.stop() == 0
        assert log.read_text().count("SIGTERM received: closing all connections") == 6
    finally:
        fs.stop()
