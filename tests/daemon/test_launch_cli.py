"""``python -m gofer9p.launch``: real bind mounts in its own mount namespace, a real gofer,
each attach point reachable on a printed unix socket path; the host never sees the mounts."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
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
