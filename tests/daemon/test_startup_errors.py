"""Every way the gofer refuses to start: exit 2 with exactly one clear line on stderr.

These run the real ``python -m gofer9p.daemon`` but never reach the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import make_bundle, run_daemon


def _one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gofer9p gofer: error: "), lines[0]
    assert needle in lines[0], lines[0]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_wrong_fd_count(tmp_path: Path, pair: tuple[socket.socket, socket.socket]) -> None:
    bundle = make_bundle(tmp_path, mounts=[("/data", "data", ["rbind"])])
    fd = pair[1].fileno()
    r = run_daemon(["--bundle", str(bundle), "--io-fds", str(fd)], pass_fds=[fd])
    _one_line_error(r, "got 1 --io-fds but the bundle has 2 attach points (root + 1 9P mounts)")


def test_too_many_fds(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        fds = [b.fileno(), d.fileno()]
        r = run_daemon(["--bundle", str(bundle), "--io-fds", f"{fds[0]},{fds[1]}"], pass_fds=fds)
    _one_line_error(r, "got 2 --io-fds but the bundle has 1 attach points")


def test_closed_fd(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    r = run_daemon(["--bundle", str(bundle), "--io-fds", "77"])
    _one_line_error(r, "fd 77 is not open")


def test_regular_file_fd(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    fd = os.open(bundle / "config.json", os.O_RDONLY)
    try:
        r = run_daemon(["--bundle", str(bundle), "--io-fds", str(fd)], pass_fds=[fd])
    finally:
        os.close(fd)
    _one_line_error(r, f"fd {fd} is not a socket (a regular file)")


def test_pipe_fd(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    rfd, wfd = os.pipe()
    try:
        r = run_daemon(["--bundle", str(bundle), "--io-fds", str(rfd)], pass_fds=[rfd])
    finally:
        os.close(rfd)
        os.close(wfd)
    _one_line_error(r, "is not a socket (a pipe)")


def test_datagram_socket_fd(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        r = run_daemon(
            ["--bundle", str(bundle), "--io-fds", str(b.fileno())], pass_fds=[b.fileno()]
        )
    _one_line_error(r, "is not a stream socket (SOCK_DGRAM)")


def test_inet_socket_fd(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        r = run_daemon(
            ["--bundle", str(bundle), "--io-fds", str(s.fileno())], pass_fds=[s.fileno()]
        )
    _one_line_error(r, "is not a unix socket (AF_INET)")


def test_unconnected_socket_fd(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        r = run_daemon(
            ["--bundle", str(bundle), "--io-fds", str(s.fileno())], pass_fds=[s.fileno()]
        )
    _one_line_error(r, "is not a connected socket")


def test_missing_bundle(tmp_path: Path, pair: tuple[socket.socket, socket.socket]) -> None:
    fd = pair[1].fileno()
    r = run_daemon(["--bundle", str(tmp_path / "nope"), "--io-fds", str(fd)], pass_fds=[fd])
    _one_line_error(r, "is not a directory")


def test_bad_json(tmp_path: Path, pair: tuple[socket.socket, socket.socket]) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "config.json").write_text('{"root": {"path": "rootfs",\n')
    fd = pair[1].fileno()
    r = run_daemon(["--bundle", str(bundle), "--io-fds", str(fd)], pass_fds=[fd])
    _one_line_error(r, "is not valid JSON")


def test_missing_root(tmp_path: Path, pair: tuple[socket.socket, socket.socket]) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "rootfs" / "hello.txt").unlink()
    (bundle / "rootfs").rmdir()
    fd = pair[1].fileno()
    r = run_daemon(["--bundle", str(bundle), "--io-fds", str(fd)], pass_fds=[fd])
    _one_line_error(r, "root.path")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "the following arguments are required: --bundle, --io-fds"),
        (["--bundle", "/x", "--io-fds", "three"], "'three' is not a file descriptor number"),
        (["--bundle", "/x", "--io-fds", "5", "--io-fds", "5"], "fd 5 given twice"),
        (["--bundle", "/x", "--io-fds", "-1"], "is negative"),
        (["--bundle", "/x", "--io-fds", "5", "--seccomp", "maybe"], "invalid choice: 'maybe'"),
        (["--bundle", "/x", "--io-fds", "5", "--apply-caps=perhaps"], "expected true or false"),
    ],
)
def test_bad_flags(args: list[str], needle: str) -> None:
    _one_line_error(run_daemon(args), needle)


def test_log_file_gets_the_error_too(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    logf = tmp_path / "gofer.log"
    r = run_daemon(["--bundle", str(bundle), "--io-fds", "77", "--log-file", str(logf)])
    _one_line_error(r, "fd 77 is not open")
    text = logf.read_text()
    assert " gofer9p ERROR --io-fds: fd 77 is not open" in text


def test_mount_destination_missing_in_root(tmp_path: Path) -> None:
    """Without the launcher's bind mount the destination does not exist in the chroot."""
    bundle = make_bundle(tmp_path, mounts=[("/data", "data", ["rbind"])])
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        fds = [b.fileno(), d.fileno()]
        r = run_daemon(["--bundle", str(bundle), "--io-fds", f"{fds[0]},{fds[1]}"], pass_fds=fds)
    _one_line_error(r, "attach point '/data': No such file or directory")


def test_mount_destination_is_a_fifo(tmp_path: Path) -> None:
    """A file mount is served (test_file_mounts.py); a FIFO (or device, socket) never is."""
    bundle = make_bundle(tmp_path, mounts=[("/pipe", "x", ["rbind"])])
    os.mkfifo(bundle / "rootfs" / "pipe")
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        fds = [b.fileno(), d.fileno()]
        r = run_daemon(["--bundle", str(bundle), "--io-fds", f"{fds[0]},{fds[1]}"], pass_fds=fds)
    _one_line_error(r, "attach point '/pipe': /pipe: a FIFO is never served as an attach point")
