"""``python -m gofer9p.launch``: real bind mounts in its own mount namespace, a real gofer,
each attach point reachable on a printed unix socket path; the host never sees the mounts."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, gofer_env, make_bundle
from .ninep import NineP


def _read_lines(proc: subprocess.Popen[str], until: str, timeout: float = 20) -> list[str]:
    """Lines from the launcher's stdout up to ``until``; reads the raw fd (select + os.read) so
    no line can hide in a Python buffer while select waits."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            lines = buf.decode().splitlines()
            if until in lines:
                return lines
    raise AssertionError(f"no {until!r} line; got {buf!r}; rc={proc.poll()}")


def _connect(path: str) -> NineP:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    c = NineP(s)
    c.version()
    c.attach(1)
    return c


def test_launch_cli_end_to_end(tmp_path: Path) -> None:
    src_ro = tmp_path / "host-ro"
    src_rw = tmp_path / "host-rw"
    src_ro.mkdir()
    src_rw.mkdir()
    (src_ro / "data.txt").write_text("bind-mounted, read-only\n")
    bundle = make_bundle(
        tmp_path,
        mounts=[
            ("/srv/ro", str(src_ro), ["rbind", "ro", "nosuid", "nodev"]),
            ("/srv/rw", str(src_rw), ["rbind"]),
        ],
    )
    sockdir = tmp_path / "socks"
    sockdir.mkdir()
    argv = [sys.executable, "-m", "gofer9p.launch", "--bundle", str(bundle)]
    proc = subprocess.Popen(
        [*argv, "--socket-dir", str(sockdir)],
        cwd=REPO,
        env=gofer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _read_lines(proc, "ready")
        attach = dict(line.split()[1:3] for line in lines if line.startswith("attach "))
        assert list(attach) == ["/", "/srv/ro", "/srv/rw"]
        paths = {k: v.removeprefix("unix:") for k, v in attach.items()}
        root = _connect(paths["/"])
        ro = _connect(paths["/srv/ro"])
        rw = _connect(paths["/srv/rw"])
        assert ro.read_file(1, b"data.txt") == b"bind-mounted, read-only\n"
        assert root.read_file(1, b"srv", b"ro", b"data.txt") == b"bind-mounted, read-only\n"
        with pytest.raises(OSError) as ei:
            ro.write_file(1, (), b"nope", b"x")
        assert ei.value.errno == errno.EROFS
        rw.write_file(1, (), b"out.txt", b"through the bind mount")
        assert (src_rw / "out.txt").read_text() == "through the bind mount"
        # The host sees the mount points setup_fs created (directories are not namespaced) but
        # not the mounts: they live in the launcher's private mount namespace.
        assert list((bundle / "rootfs" / "srv" / "ro").iterdir()) == []
        with open("/proc/self/mountinfo") as mi:
            assert str(bundle) not in mi.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "gofer exited with status 0" in out
        assert not any(Path(p).exists() for p in paths.values())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (bundle / "rootfs" / "srv").exists()  # undo removed the mount points


Launched = tuple[subprocess.Popen[str], dict[str, str], Path]


@contextlib.contextmanager
def launch_rw(tmp_path: Path, *flags: str) -> Iterator[Launched]:
    """``gofer9p launch [flags]`` of a bundle with a rw mount: (process, dest -> socket path,
    source); SIGINT on the way out."""
    src = tmp_path / "host-rw"
    src.mkdir()
    (src / "data.txt").write_text("served\n")
    bundle = make_bundle(tmp_path, mounts=[("/srv/rw", str(src), ["rbind"])])
    sockdir = tmp_path / "socks"
    sockdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "launch", "--bundle", str(bundle),
         "--socket-dir", str(sockdir), *flags],
        cwd=REPO,
        env=gofer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _read_lines(proc, "ready")
        attach = dict(line.split()[1:3] for line in lines if line.startswith("attach "))
        yield proc, {k: v.removeprefix("unix:") for k, v in attach.items()}, src
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    with launch_rw(tmp_path) as x:
        yield x


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(path)
    return s


def test_launch_serves_successive_clients(
    launched: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    """Connect, disconnect, connect again, to every socket: each new client is answered by
    the same attach point, in a fresh 9P session (a manager's reconnect)."""
    proc, paths, src = launched
    assert list(paths) == ["/", "/srv/rw"]
    for round_ in range(3):
        for dest, path in paths.items():
            c = _connect(path)
            if dest == "/":
                assert c.read_file(1, b"hello.txt") == b"hello from root\n"
            else:
                assert c.read_file(1, b"data.txt") == b"served\n"
                c.write_file(1, (), f"r{round_}.txt".encode(), b"round")
            c.walk(1, 7)  # a fid left behind: the next session must not see it
            c.sock.close()
            # the next client's session starts with no fid at all
            c = _connect(path)
            with pytest.raises(OSError) as ei:
                c.getattr(7)
            assert ei.value.errno == errno.EBADF
            c.sock.close()
    assert sorted(p.name for p in src.iterdir()) == ["data.txt", "r0.txt", "r1.txt", "r2.txt"]
    assert proc.poll() is None


def test_launch_client_leaving_mid_frame_or_mid_request(
    launched: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    """Half a frame is never forwarded (the next session would read it as its start), and
    replies to a client that left never reach the next one."""
    _proc, paths, src = launched
    path = paths["/srv/rw"]
    c = _connect(path)
    c.walk(1, 2)
    c.lcreate(2, b"half.txt")
    # A Twrite announcing 100 bytes of data, cut after 10.
    body = struct.pack("<IQI", 2, 0, 100) + b"x" * 10
    c.sock.sendall(struct.pack("<IBH", 7 + 16 + 100, 118, 5) + body)
    c.sock.close()
    # Many requests in flight, then gone without reading a reply.
    s = _raw(path)
    n = NineP(s)
    n.version()
    n.attach(1)
    for tag in range(1, 50):
        s.sendall(struct.pack("<IBHIQ", 7 + 12, 24, tag, 1, 0x7FF))
    s.close()
    c = _connect(path)
    assert c.read_file(1, b"data.txt") == b"served\n"
    c.sock.close()
    assert (src / "half.txt").read_bytes() == b""


def test_launch_second_client_waits_for_the_first(
    launched: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    """One 9P session per attach point: a second client is answered once the first leaves,
    and launch says so."""
    proc, paths, _src = launched
    path = paths["/"]
    first = _connect(path)
    second = _raw(path)
    second.sendall(struct.pack("<IBHIH", 7 + 6 + 8, 100, 0xFFFF, 65536, 8) + b"9P2000.L")
    assert proc.stdout is not None
    lines = _read_lines(proc, "attach /: a client is connected: the new one waits until it "
                        "leaves (one 9P session per attach point)")
    assert lines
    assert first.read_file(1, b"hello.txt") == b"hello from root\n"  # still the first's
    first.sock.close()
    n = NineP(second)
    size, rtype, tag = struct.unpack("<IBH", n._recv_exact(7))
    assert (rtype, tag) == (101, 0xFFFF)
    n._recv_exact(size - 7)
    n.attach(1)
    assert n.read_file(1, b"hello.txt") == b"hello from root\n"
    second.close()


def test_launch_cli_bad_bundle(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gofer9p.launch", "--bundle", str(tmp_path / "nope")],
        cwd=REPO,
        env=gofer_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("gofer9p launch: error: bundle")


def test_launch_cli_spec_fd_mounts_fd_setup_root(tmp_path: Path) -> None:
    """``gofer9p launch --spec-fd --mounts-fd --setup-root --landlock=require``: the spec from
    a pipe (config.json names another root), the gofer binds the source itself, and the
    launcher copies the gofer's mounts report to its fd."""
    src = tmp_path / "host-src"
    src.mkdir()
    (src / "data.txt").write_text("bound by the gofer\n")
    bundle = make_bundle(tmp_path, extra={"root": {"path": "no-such-rootfs"}})
    mount = {"destination": "/srv/data", "type": "bind", "source": str(src), "options": ["ro"]}
    doc = {"root": {"path": "rootfs"}, "mounts": [mount]}
    spec_r, spec_w = os.pipe()
    os.write(spec_w, json.dumps(doc).encode())
    os.close(spec_w)
    mounts_r, mounts_w = os.pipe()
    argv = [sys.executable, "-m", "gofer9p.launch", "--bundle", str(bundle), "--setup-root"]
    argv += ["--spec-fd", str(spec_r), "--mounts-fd", str(mounts_w), "--landlock=require"]
    proc = subprocess.Popen(
        [*argv, "--socket-dir", str(tmp_path)],
        cwd=REPO,
        env=gofer_env(),
        pass_fds=[spec_r, mounts_w],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(spec_r)
    os.close(mounts_w)
    try:
        lines = _read_lines(proc, "ready")
        with os.fdopen(mounts_r, "rb") as f:
            report = json.loads(f.read())
        assert [(m["destination"], m["source"], m["readonly"]) for m in report] == [
            ("/", str(bundle / "rootfs"), False),
            ("/srv/data", str(src), True),
        ]
        attach = dict(line.split()[1:3] for line in lines if line.startswith("attach "))
        c = _connect(attach["/srv/data"].removeprefix("unix:"))
        assert c.read_file(1, b"data.txt") == b"bound by the gofer\n"
        assert not (bundle / "rootfs" / "srv" / "data" / "data.txt").exists()  # not on the host
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
