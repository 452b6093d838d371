"""File bind mounts (``/etc/hosts``, ``/etc/resolv.conf``) served by the real gofer.

Real container managers bind-mount single files besides directories; each is a 9P mount with
its own fd whose attach root is the file itself.  Bundle: rw root; ``/etc/hosts`` read-only and
``/etc/resolv.conf`` read-write.  The gofer alone (files placed in the rootfs at their
destinations) and then end to end through ``gofer9p launch`` (real bind mounts of host files).
"""

from __future__ import annotations

import errno
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, Gofer, gofer_env, make_bundle
from .ninep import O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, NineP
from .test_launch_cli import _connect, _read_lines

HOSTS = b"127.0.0.1 localhost sandbox\n"
RESOLV = b"nameserver 10.0.0.1\n"
QTFILE, QTDIR = 0, 0x80
MOUNTS = [
    ("/etc/hosts", "host-hosts", ["rbind", "ro"]),
    ("/etc/resolv.conf", "host-resolv", ["rbind", "rw"]),
]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The mounts' files sit in the rootfs at their destinations (no launcher here)."""
    b = make_bundle(tmp_path, mounts=MOUNTS)
    etc = b / "rootfs" / "etc"
    etc.mkdir()
    (etc / "hosts").write_bytes(HOSTS)
    (etc / "resolv.conf").write_bytes(RESOLV)
    return b


@pytest.fixture(params=["spawn", "pool", "fork"])
def via(request: pytest.FixtureRequest) -> str:
    """Spawned, or started by the fork-server (pre-forked, or forked on request)."""
    return str(request.param)


@pytest.fixture
def gofer(tmp_path: Path, bundle: Path, via: str) -> Iterator[Gofer]:
    g = Gofer(tmp_path, bundle, via=via)
    yield g
    g.stop()


def _clients(g: Gofer) -> list[NineP]:
    cs = [NineP(s) for s in g.sockets]
    for c in cs:
        c.version()
        c.root_qid = c.attach(1)
    return cs


def _read_root(c: NineP, fid: int = 50) -> bytes:
    """Clone the attach fid (a file root has no names to walk), open it, read it all."""
    return c.read_file(1, fid=fid)


def test_each_fd_serves_its_file(gofer: Gofer, bundle: Path) -> None:
    assert len(gofer.sockets) == 3  # root + both file mounts, in spec order
    root, hosts, resolv = _clients(gofer)
    gofer.wait_log(r"INFO serving bundle .*: 3 attach points on fds 3,4,5")
    assert root.root_qid[0] == QTDIR
    assert hosts.root_qid[0] == QTFILE and resolv.root_qid[0] == QTFILE
    assert _read_root(hosts) == HOSTS
    assert _read_root(resolv) == RESOLV
    assert hosts.getattr(1)["size"] == len(HOSTS)
    # ".." stays at the file, any name is ENOTDIR, nothing around the file is reachable
    assert hosts.walk(1, 2, b"..") == [hosts.root_qid]
    hosts.clunk(2)
    for name in (b"resolv.conf", b"passwd", b"..."):
        with pytest.raises(OSError) as ei:
            hosts.walk(1, 2, name)
        assert ei.value.errno == errno.ENOTDIR
    assert hosts.walk(1, 2, b"..", b"resolv.conf") == [hosts.root_qid]  # partial: no newfid
    with pytest.raises(OSError) as ei:
        hosts.getattr(2)
    assert ei.value.errno == errno.EBADF
    with pytest.raises(OSError) as ei:
        hosts.mkdir(1, b"sub")
    assert ei.value.errno == errno.EROFS  # read-only policy first
    with pytest.raises(OSError) as ei:
        resolv.lcreate(1, b"new")
    assert ei.value.errno == errno.ENOTDIR
    # the root connection sees the same files through its tree
    assert root.read_file(1, b"etc", b"hosts") == HOSTS


def test_ro_file_refuses_writes_rw_file_takes_them(gofer: Gofer, bundle: Path) -> None:
    _, hosts, resolv = _clients(gofer)
    for flags in (O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC):
        hosts.walk(1, 2)
        with pytest.raises(OSError) as ei:
            hosts.lopen(2, flags)
        assert ei.value.errno == errno.EROFS == 30
        hosts.clunk(2)
    hosts.walk(1, 2)
    hosts.lopen(2, O_RDONLY)
    with pytest.raises(OSError) as ei:
        hosts.write(2, 0, b"evil")
    assert ei.value.errno == errno.EROFS
    assert (bundle / "rootfs" / "etc" / "hosts").read_bytes() == HOSTS

    resolv.walk(1, 2)
    resolv.lopen(2, O_RDWR)
    assert resolv.write(2, len(RESOLV), b"search example\n") == 15
    resolv.fsync(2)
    assert (bundle / "rootfs" / "etc" / "resolv.conf").read_bytes() == RESOLV + b"search example\n"
    # Tremove of the root: EBUSY (as for a mount point); the host file stays
    with pytest.raises(OSError) as ei:
        resolv.rpc(122, struct.pack("<I", 2))
    assert ei.value.errno == errno.EBUSY
    assert (bundle / "rootfs" / "etc" / "resolv.conf").exists()
    assert gofer.proc.poll() is None


def test_sandbox_swapping_the_entry_does_not_redirect(gofer: Gofer, bundle: Path) -> None:
    """Without the launcher's mount the file's entry is the root tree's: the sandbox renames
    it away and plants a symlink to another file in its place.  The file mount must then
    refuse re-opens (ESTALE), never open or truncate the symlink's target."""
    root, _, resolv = _clients(gofer)
    root.walk(1, 10, b"etc")
    # Trenameat etc/resolv.conf -> etc/moved; Tsymlink etc/resolv.conf -> /hello.txt
    root.rpc(74, struct.pack("<I", 10) + NineP.s(b"resolv.conf")
             + struct.pack("<I", 10) + NineP.s(b"moved"))
    root.rpc(16, struct.pack("<I", 10) + NineP.s(b"resolv.conf") + NineP.s(b"/hello.txt")
             + struct.pack("<I", 0))
    for flags in (O_RDONLY, O_WRONLY | O_TRUNC):
        resolv.walk(1, 2)
        with pytest.raises(OSError) as ei:
            resolv.lopen(2, flags)
        assert ei.value.errno == errno.ESTALE
        resolv.clunk(2)
    assert (bundle / "rootfs" / "hello.txt").read_text() == "hello from root\n"
    assert (bundle / "rootfs" / "etc" / "moved").read_bytes() == RESOLV
    assert gofer.proc.poll() is None


def test_panic_on_write_to_ro_file(tmp_path: Path, bundle: Path, via: str) -> None:
    g = Gofer(tmp_path, bundle, via=via, panic_on_write=True)
    try:
        root, hosts, resolv = _clients(g)
        resolv.walk(1, 2)
        resolv.lopen(2, O_WRONLY)
        assert resolv.write(2, 0, b"n") == 1  # rw mount: unaffected
        assert _read_root(hosts) == HOSTS  # reading never panics
        hosts.walk(1, 2)
        with pytest.raises((EOFError, ConnectionError)):
            hosts.lopen(2, O_RDWR)
        rc = g.wait()
        assert rc == 70, g.log()
        assert "CRITICAL" in g.log() and "/etc/hosts" in g.log()
        for other in (root.sock, resolv.sock):
            other.settimeout(5)
            assert other.recv(10) == b""  # the whole gofer is gone
        assert (bundle / "rootfs" / "etc" / "hosts").read_bytes() == HOSTS
    finally:
        g.stop()


def test_launch_binds_host_files(tmp_path: Path) -> None:
    """End to end: ``gofer9p launch`` bind-mounts host files into the rootfs (creating the
    mount points), the gofer serves each on its own socket, writes land in the host file."""
    bundle = make_bundle(tmp_path, mounts=MOUNTS)
    (bundle / "host-hosts").write_bytes(HOSTS)
    (bundle / "host-resolv").write_bytes(RESOLV)
    sockdir = tmp_path / "socks"
    sockdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p.launch", "--bundle", str(bundle),
         "--socket-dir", str(sockdir)],
        cwd=REPO,
        env=gofer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _read_lines(proc, "ready")
        attach = dict(line.split()[1:3] for line in lines if line.startswith("attach "))
        assert list(attach) == ["/", "/etc/hosts", "/etc/resolv.conf"]
        paths = {k: v.removeprefix("unix:") for k, v in attach.items()}
        root = _connect(paths["/"])
        hosts = _connect(paths["/etc/hosts"])
        resolv = _connect(paths["/etc/resolv.conf"])
        assert _read_root(hosts) == HOSTS
        assert root.read_file(1, b"etc", b"resolv.conf") == RESOLV
        hosts.walk(1, 2)
        with pytest.raises(OSError) as ei:
            hosts.lopen(2, O_WRONLY)
        assert ei.value.errno == errno.EROFS
        resolv.walk(1, 2)
        resolv.lopen(2, O_WRONLY | O_TRUNC)
        assert resolv.write(2, 0, b"nameserver 10.9.9.9\n") == 20
        resolv.clunk(2)
        assert (bundle / "host-resolv").read_bytes() == b"nameserver 10.9.9.9\n"
        assert (bundle / "host-hosts").read_bytes() == HOSTS
        # The mount points setup_fs created are empty files on the host (mounts are private).
        assert (bundle / "rootfs" / "etc" / "hosts").read_bytes() == b""
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "gofer exited with status 0" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (bundle / "rootfs" / "etc").exists()  # undo removed what it created
