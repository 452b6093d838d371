"""The real confined gofer process, end to end over its inherited sockets.

Bundle: rw root with ``hello.txt``; ``/ro`` (read-only 9P mount) and ``/rw`` (read-write) whose
trees live in the rootfs, so the gofer is tested alone (launch's bind mounts: test_launch_cli.py).
A secret file sits next to the rootfs, on the host, where no walk may reach.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p import _quietwait
from gofer9p.confine import KEEP_CAPS_MASK

from .conftest import Gofer, client_beside, make_bundle, proc_status
from .ninep import O_RDONLY, O_RDWR, NineP

SERVING = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z gofer9p INFO serving bundle "


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    b = make_bundle(
        tmp_path,
        mounts=[("/ro", "unused-ro", ["rbind", "ro"]), ("/rw", "unused-rw", ["rbind"])],
    )
    root = b / "rootfs"
    (root / "ro").mkdir()
    (root / "ro" / "ro.txt").write_text("read only tree\n")
    (root / "rw").mkdir()
    (root / "rw" / "rw.txt").write_text("read write tree\n")
    (b / "secret.txt").write_text("host secret\n")
    (root / "abs-escape").symlink_to(b / "secret.txt")
    (root / "rel-escape").symlink_to("../secret.txt")
    (root / "dir-escape").symlink_to(b)
    return b


@pytest.fixture(params=["spawn", "pool", "fork"])
def via(request: pytest.FixtureRequest) -> str:
    """Every check runs on a spawned gofer and on one the fork-server (#18) started: from its
    pool of pre-forked children, and forked on request."""
    return str(request.param)


@pytest.fixture
def gofer(tmp_path: Path, bundle: Path, via: str) -> Iterator[Gofer]:
    g = Gofer(tmp_path, bundle, via=via)
    yield g
    g.stop()


def _clients(g: Gofer) -> list[NineP]:
    """Version + attach fid 1 on every connection; the root qid is kept as ``c.root_qid``."""
    cs = [NineP(s) for s in g.sockets]
    for c in cs:
        assert c.version() == (65536, b"9P2000.L")
        c.root_qid = c.attach(1)
    return cs


def test_each_fd_serves_its_own_tree(gofer: Gofer, bundle: Path) -> None:
    root, ro, rw = _clients(gofer)
    assert root.read_file(1, b"hello.txt") == b"hello from root\n"
    assert ro.read_file(1, b"ro.txt") == b"read only tree\n"
    assert rw.read_file(1, b"rw.txt") == b"read write tree\n"
    for c, absent in ((ro, b"hello.txt"), (rw, b"ro.txt"), (root, b"rw.txt")):
        with pytest.raises(OSError) as ei:
            c.walk(1, 2, absent)
        assert ei.value.errno == errno.ENOENT
    # The root tree includes the mounts' directories, as the sandbox's root would.
    assert root.read_file(1, b"ro", b"ro.txt") == b"read only tree\n"
    # The process is chrooted into the rootfs.
    assert os.readlink(f"/proc/{gofer.pid}/root") == str(bundle / "rootfs")
    gofer.wait_log(SERVING)


def _unreachable(c: NineP, *names: bytes) -> None:
    """A walk that must not reach its end: Rlerror on the first name, or fewer qids (9P's
    partial walk, after which newfid does not exist)."""
    try:
        qids = c.walk(1, 77, *names)
    except OSError:
        return
    assert len(qids) < len(names), names


def test_host_files_outside_rootfs_unreachable(gofer: Gofer) -> None:
    root, ro, _ = _clients(gofer)
    for c in (root, ro):
        # ".." at the attach root stays there.
        assert c.walk(1, 5, b"..") == [c.root_qid]
        assert c.walk(1, 6, b"..", b"..", b"..") == [c.root_qid] * 3
        c.clunk(5)
        c.clunk(6)
        _unreachable(c, b"..", b"..", b"secret.txt")
        _unreachable(c, b"..", b"bundle", b"secret.txt")
    _unreachable(ro, b"..", b"hello.txt")  # the root's tree is above /ro's attach root
    for link in (b"abs-escape", b"rel-escape"):
        root.walk(1, 10, link)
        target = root.readlink(10)
        assert target == b"../secret.txt" or target.endswith(b"/secret.txt")
        with pytest.raises(OSError):
            root.lopen(10, O_RDONLY)  # symlinks are never followed on the host
        root.clunk(10)
    _unreachable(root, b"dir-escape", b"secret.txt")
    assert "host secret" not in gofer.log()


def test_ro_mount_is_erofs_rw_mount_writes(gofer: Gofer, bundle: Path) -> None:
    root, ro, rw = _clients(gofer)
    with pytest.raises(OSError) as ei:
        ro.write_file(1, (), b"new.txt", b"x")
    assert ei.value.errno == errno.EROFS
    with pytest.raises(OSError) as ei:
        ro.mkdir(1, b"newdir")
    assert ei.value.errno == errno.EROFS
    ro.walk(1, 3, b"ro.txt")
    with pytest.raises(OSError) as ei:
        ro.lopen(3, O_RDWR)
    assert ei.value.errno == errno.EROFS
    rw.write_file(1, (), b"new.txt", b"written via 9P")
    assert (bundle / "rootfs" / "rw" / "new.txt").read_text() == "written via 9P"
    root.write_file(1, (), b"top.txt", b"root is rw")
    assert (bundle / "rootfs" / "top.txt").read_text() == "root is rw"
    assert not (bundle / "rootfs" / "ro" / "new.txt").exists()
    assert gofer.proc.poll() is None


def test_every_thread_confined(gofer: Gofer) -> None:
    root, _, rw = _clients(gofer)
    # O_TRUNC creates and fsync run in trio worker threads: make sure some exist.
    for i in range(4):
        rw.write_file(1, (), f"t{i}".encode(), b"x" * 100)
    rw.walk(1, 4, b"t0")
    rw.lopen(4, O_RDWR)
    rw.fsync(4)
    tasks = proc_status(gofer.pid)
    assert len(tasks) >= 2, "no worker thread was started"
    for tid, st in tasks.items():
        for k in ("CapEff", "CapPrm", "CapBnd"):
            assert int(st[k], 16) == KEEP_CAPS_MASK == 0x4001F, (tid, k, st[k])
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0, tid
        assert st["NoNewPrivs"] == "1", tid
        assert st["Seccomp"] == "2", tid
    assert root.read_file(1, b"hello.txt") == b"hello from root\n"


def test_apply_caps_false_keeps_caps(tmp_path: Path, bundle: Path, via: str) -> None:
    g = Gofer(tmp_path, bundle, via=via, apply_caps=False, seccomp="off")
    try:
        g.wait_log(SERVING + r".*caps kept, seccomp off")
        st = proc_status(g.pid)[g.pid]
        assert int(st["CapEff"], 16) != KEEP_CAPS_MASK
        assert st["Seccomp"] == "0" and st["NoNewPrivs"] == "1"
    finally:
        g.stop()


def test_exit_0_when_every_connection_ends(gofer: Gofer) -> None:
    root, ro, rw = _clients(gofer)
    root.sock.close()
    ro.sock.close()
    time.sleep(0.2)
    assert gofer.proc.poll() is None  # one connection still open
    assert rw.read_file(1, b"rw.txt") == b"read write tree\n"
    rw.sock.close()
    assert gofer.wait() == 0
    assert re.search(r"gofer9p INFO exiting with status 0$", gofer.log(), re.M)


def test_half_closed_connection_is_closed_alone(gofer: Gofer) -> None:
    """A client that shuts down its sending side sees its connection closed by the gofer
    (EOF) while the other attach points keep serving: the gofer closes each socket as
    its connection ends, not when the last one does."""
    root, ro, rw = _clients(gofer)
    ro.sock.shutdown(socket.SHUT_WR)
    ro.sock.settimeout(10)
    assert ro.sock.recv(1) == b""
    assert gofer.proc.poll() is None
    assert root.read_file(1, b"hello.txt") == b"hello from root\n"
    assert rw.read_file(1, b"rw.txt") == b"read write tree\n"


@pytest.mark.parametrize("poll_us", [20000, 0])
def test_poll_window_under_seccomp(tmp_path: Path, bundle: Path, poll_us: int, via: str) -> None:
    """``--poll-us`` reaches every connection; polling works inside the confined process.

    With three connections the waiting loop polls its socket and the idle connections' sockets
    (poll(2), not a blocking recv): the syscall path a multi-mount gofer takes.  The gofer and
    this client are pinned to different CPUs: on a CPU it shares with its client (where the
    scheduler often wakes an unpinned client) the window turns itself off (_quietwait.py).
    Beside it, the window would poll until a CPU trial finds that it costs more than it
    saves (this client, a Python one, answers more slowly than a sleep and a wake-up cost),
    and on a loaded host (a CI run, a guest VM beside it) preempted turns rightly turn it
    off too: how many waits it catches would be the host's load. So the gofer runs with
    ``GOFER9P_TEST_STEADY_POLL`` (gofer9p.testing.gofer_with_hooks): it still measures
    (getrusage, the thread's CPU clock: under seccomp), but reads no preemption and no
    cost, and the window stays on but for misses (a 20 ms window: the client answers
    well within it): at least ``_CHECK_EVERY`` of the 300 waits are caught.
    """
    g = Gofer(
        tmp_path, bundle, via=via, extra_args=["--poll-us", str(poll_us)],
        module="gofer9p.testing.gofer_with_hooks", env={"GOFER9P_TEST_STEADY_POLL": "1"},
    )
    try:
        with client_beside(g.pid) if poll_us else contextlib.nullcontext():
            cs = _clients(g)
            for _ in range(300):
                assert cs[2].getattr(1)["mode"]
            assert cs[2].read_file(1, b"rw.txt") == b"read write tree\n"
            for c in cs:
                c.sock.close()
            assert g.wait() == 0
    finally:
        g.stop()
    ends = re.findall(r"connection end \(EOF\) frames=\d+ polled=(\d+)", g.log())
    polled = [int(n) for n in ends]
    assert len(polled) == 3, g.log()
    if poll_us:
        assert max(polled) >= _quietwait._CHECK_EVERY, polled
    else:
        assert polled == [0, 0, 0]


def test_sigterm_exits_0(gofer: Gofer) -> None:
    _clients(gofer)
    gofer.proc.send_signal(signal.SIGTERM)
    assert gofer.wait() == 0
    assert "SIGTERM received" in gofer.log()


def test_sigint_exits_0(gofer: Gofer) -> None:
    gofer.wait_log(SERVING)
    gofer.proc.send_signal(signal.SIGINT)
    assert gofer.wait() == 0
    assert "SIGINT received" in gofer.log()


def test_panic_on_write(tmp_path: Path, bundle: Path, via: str) -> None:
    g = Gofer(tmp_path, bundle, via=via, panic_on_write=True)
    try:
        root, ro, rw = _clients(g)
        rw.write_file(1, (), b"fine.txt", b"rw writes still work")  # rw: unaffected
        assert (bundle / "rootfs" / "rw" / "fine.txt").exists()
        assert g.proc.poll() is None
        with pytest.raises((EOFError, ConnectionError)):
            ro.mkdir(1, b"boom")
        rc = g.wait()
        assert rc not in (0, None) and rc == 70, g.log()
        assert "CRITICAL" in g.log()
        for other in (root.sock, rw.sock):
            other.settimeout(5)
            assert other.recv(10) == b""  # EOF: the whole gofer is gone
        assert not (bundle / "rootfs" / "ro" / "boom").exists()
    finally:
        g.stop()


@pytest.mark.parametrize("call", ["socket", "fork", "ioctl", "setuid"])
def test_forbidden_syscall_kills_with_sigsys(
    tmp_path: Path, bundle: Path, call: str, via: str
) -> None:
    g = Gofer(
        tmp_path,
        bundle,
        via=via,
        module="gofer9p.testing.gofer_with_hooks",
        env={"GOFER9P_TEST_FORBIDDEN_SYSCALL": call},
    )
    try:
        root, _, _ = _clients(g)
        g.wait_log(SERVING)
        g.proc.send_signal(signal.SIGUSR1)
        assert g.wait() == -signal.SIGSYS, g.log()
        root.sock.settimeout(5)
        assert root.sock.recv(10) == b""
    finally:
        g.stop()


def test_clone3_answers_enosys(tmp_path: Path, bundle: Path, via: str) -> None:
    g = Gofer(
        tmp_path,
        bundle,
        via=via,
        module="gofer9p.testing.gofer_with_hooks",
        env={"GOFER9P_TEST_FORBIDDEN_SYSCALL": "clone3"},
    )
    try:
        g.wait_log(SERVING)
        g.proc.send_signal(signal.SIGUSR1)
        g.wait_log(r"^hook: clone3 survived -1 ENOSYS$")
        assert g.proc.poll() is None
    finally:
        g.stop()


def test_log_mode_lets_forbidden_syscall_through(tmp_path: Path, bundle: Path, via: str) -> None:
    g = Gofer(
        tmp_path,
        bundle,
        via=via,
        module="gofer9p.testing.gofer_with_hooks",
        seccomp="log",
        env={"GOFER9P_TEST_FORBIDDEN_SYSCALL": "socket"},
    )
    try:
        g.wait_log(SERVING + r".*seccomp log")
        g.proc.send_signal(signal.SIGUSR1)
        g.wait_log(r"^hook: socket survived ok$")
        assert g.proc.poll() is None
    finally:
        g.stop()


def test_release_entry_point_has_no_hook(tmp_path: Path, bundle: Path, via: str) -> None:
    """The env var means nothing to ``python -m gofer9p.daemon``: SIGUSR1 keeps its default."""
    g = Gofer(tmp_path, bundle, via=via, env={"GOFER9P_TEST_FORBIDDEN_SYSCALL": "socket"})
    try:
        g.wait_log(SERVING)
        g.proc.send_signal(signal.SIGUSR1)
        assert g.wait() == -signal.SIGUSR1
        assert "hook:" not in g.log()
    finally:
        g.stop()


def test_user_namespace_gofer(tmp_path: Path, via: str) -> None:
    b = make_bundle(
        tmp_path,
        extra={
            "linux": {
                "uidMappings": [{"containerID": 0, "hostID": 0, "size": 1}],
                "gidMappings": [{"containerID": 0, "hostID": 0, "size": 1}],
            }
        },
    )
    g = Gofer(tmp_path, b, via=via)
    try:
        (c,) = _clients(g)
        assert c.read_file(1, b"hello.txt") == b"hello from root\n"
        assert os.readlink(f"/proc/{g.pid}/ns/user") != os.readlink("/proc/self/ns/user")
        st = proc_status(g.pid)[g.pid]
        assert int(st["CapEff"], 16) == KEEP_CAPS_MASK and st["Seccomp"] == "2"
        # the namespace began with a whole bounding set (a pooled child's drops made before
        # its request do not count there)
        assert int(st["CapBnd"], 16) == KEEP_CAPS_MASK
    finally:
        g.stop()


def test_attach_by_user_name_uses_the_roots_passwd_not_its_nss(tmp_path: Path, via: str) -> None:
    """Tattach with a user name: the chroot's /etc/passwd answers, the sandbox's nsswitch.conf is
    ignored (glibc NSS is pinned before the chroot), and nscd/userdb socket attempts fail softly
    instead of tripping seccomp."""
    b = make_bundle(tmp_path)
    etc = b / "rootfs" / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\nbob:x:1234:1234::/home/bob:/bin/sh\n")
    (etc / "nsswitch.conf").write_text("passwd: evil\ngroup: evil\n")
    g = Gofer(tmp_path, b, via=via)
    try:
        (c,) = [NineP(s) for s in g.sockets]
        c.version()
        for fid, uname, fname in ((1, b"bob", b"by-bob"), (2, b"nobody-here", b"by-unknown")):
            c.attach(fid, uname=uname, n_uname=0xFFFFFFFF)
            c.write_file(fid, (), fname, b"x", fid=10 + fid)
        assert (b / "rootfs" / "by-bob").stat().st_uid == 1234  # from the root's passwd
        assert (b / "rootfs" / "by-unknown").stat().st_uid != 1234
        assert g.proc.poll() is None
    finally:
        g.stop()


def test_private_nodev_nosymfollow_mounts(gofer: Gofer, bundle: Path) -> None:
    """The gofer serves from its own mount namespace, where the root is nodev,nosuid,nosymfollow
    (so a device node renamed into a served tree can never be opened) and the host sees none
    of it."""
    gofer.wait_log(SERVING)
    assert os.readlink(f"/proc/{gofer.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    with open(f"/proc/{gofer.pid}/mountinfo") as f:
        # From the gofer's chroot the root mount is "/" (the field after the mount id pair).
        roots = [line.split() for line in f if line.split()[4] == "/"]
    opts = set(roots[-1][5].split(","))
    assert {"nodev", "nosuid", "nosymfollow"} <= opts, opts
    with open("/proc/self/mountinfo") as f:
        assert str(bundle) not in f.read()


def test_log_file_format(tmp_path: Path, bundle: Path, via: str) -> None:
    logf = tmp_path / "gofer.log"
    g = Gofer(tmp_path, bundle, via=via, extra_args=["--log-file", str(logf)])
    try:
        (root, _, _) = _clients(g)
        root.read_file(1, b"hello.txt")
        g.proc.send_signal(signal.SIGTERM)
        assert g.wait() == 0
    finally:
        g.stop()
    lines = logf.read_text().splitlines()
    assert lines and g.log() == ""  # everything went to the file, nothing to stderr
    stamp = (
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z gofer9p (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S"
    )
    for line in lines:
        assert re.match(stamp, line), line
    assert re.match(SERVING, lines[0])
    assert lines[-1].endswith("gofer9p INFO exiting with status 0")
