"""``gofer9p gofer --record-fd N``: the confined daemon (chroot, caps, seccomp in kill mode)
records its connections to an inherited fd, and opens nothing to do it."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gofer9p.record import read_frames, read_pcap

from .conftest import REPO, gofer_env, make_bundle, run_daemon
from .ninep import O_RDONLY, NineP


def _spawn(bundle: Path, rec_fd: int, io_fd: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gofer9p.daemon", "--bundle", str(bundle),
         f"--io-fds={io_fd}", f"--record-fd={rec_fd}", "--seccomp=kill", *extra],
        pass_fds=(io_fd, rec_fd),
        env=gofer_env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize("headers_only", [False, True])
def test_confined_gofer_records_to_an_inherited_fd(tmp_path: Path, headers_only: bool) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "rootfs" / "secret-name.txt").write_bytes(b"secret-content\n")
    path = tmp_path / "rec.pcap"
    rec_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ours, theirs = socket.socketpair()
    extra = ("--record-headers-only",) if headers_only else ()
    proc = _spawn(bundle, rec_fd, theirs.fileno(), *extra)
    os.close(rec_fd)
    theirs.close()
    c = NineP(ours)
    assert c.version() == (65536, b"9P2000.L")
    c.attach(1)
    assert c.read_file(1, b"hello.txt") == b"hello from root\n"
    assert c.read_file(1, b"secret-name.txt") == b"secret-content\n"
    c.write_file(1, (), b"new.txt", b"written through the gofer\n")
    ours.close()  # every connection ended: the gofer exits 0, the recording is complete
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()  # not killed by SIGSYS (-31)
    blob = path.read_bytes()
    frames = read_frames(read_pcap(blob))
    kinds = [(f.from_client, f.data[4]) for f in frames]
    # Tversion .. Tclunk of the new file, every reply, in order (one request at a time)
    assert kinds[:4] == [(True, 100), (False, 101), (True, 104), (False, 105)]
    assert len(frames) == 2 * sum(1 for f in frames if f.from_client)
    assert kinds[-2:] == [(True, 120), (False, 121)]
    walks = [f for f in frames if f.data[4] == 110]
    assert struct.unpack_from("<II", walks[0].data, 7) == (1, 900)  # fid, newfid
    if headers_only:
        assert b"secret" not in blob and b"hello from root" not in blob
    else:
        assert b"secret-name.txt" in blob and b"secret-content" in blob
        assert b"written through the gofer" in blob
    if shutil.which("tshark"):
        out = subprocess.run(
            ["tshark", "-r", str(path), "-Y", "9p", "-T", "fields", "-e", "9p.msgtype",
             "-e", "9p.tag"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        assert [tuple(map(int, line.split("\t"))) for line in out.splitlines()] == [
            (f.data[4], struct.unpack_from("<H", f.data, 5)[0]) for f in frames
        ]


def test_record_fd_must_be_open_for_writing(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (tmp_path / "ro").write_bytes(b"")
    ro = os.open(tmp_path / "ro", os.O_RDONLY)
    ours, theirs = socket.socketpair()
    try:
        r = run_daemon(
            ["--bundle", str(bundle), f"--io-fds={theirs.fileno()}", f"--record-fd={ro}"],
            pass_fds=(theirs.fileno(), ro),
        )
        assert r.returncode == 2
        assert (
            r.stderr.strip()
            == f"gofer9p gofer: error: --record-fd: fd {ro} is not open for writing"
        )
        r = run_daemon(
            ["--bundle", str(bundle), f"--io-fds={theirs.fileno()}", "--record-fd=77"],
            pass_fds=(theirs.fileno(),),
        )
        assert r.returncode == 2 and "--record-fd: fd 77: Bad file descriptor" in r.stderr
        r = run_daemon(
            ["--bundle", str(bundle), f"--io-fds={theirs.fileno()}", "--record-headers-only"],
            pass_fds=(theirs.fileno(),),
        )
        assert r.returncode == 2 and "--record-headers-only needs --record-fd" in r.stderr
    finally:
        os.close(ro)
        ours.close()
        theirs.close()


def test_reading_under_kill_mode_uses_only_write(tmp_path: Path) -> None:
    """A read of a file larger than the recording's flush threshold: the writer thread
    writes several chunks from inside the sandbox."""
    bundle = make_bundle(tmp_path)
    (bundle / "rootfs" / "big").write_bytes(os.urandom(1 << 20))
    path = tmp_path / "rec.pcap"
    rec_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ours, theirs = socket.socketpair()
    proc = _spawn(bundle, rec_fd, theirs.fileno())
    os.close(rec_fd)
    theirs.close()
    c = NineP(ours)
    c.version()
    c.attach(1)
    c.walk(1, 2, b"big")
    c.lopen(2, O_RDONLY)
    got = b"".join(c.read(2, off, 60000) for off in range(0, 1 << 20, 60000))
    assert got == (bundle / "rootfs" / "big").read_bytes()
    ours.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    frames = read_frames(read_pcap(path.read_bytes()))
    data = b"".join(f.data[11:] for f in frames if f.data[4] == 117)
    assert data == got
