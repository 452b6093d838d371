"""``start_gofer(stats_socket=..., record_fd=...)`` (and ``ForkServer.start_gofer``): the
statistics endpoint and the pcap recording of a confined gofer (seccomp in kill mode) whose
manager lent it the socket / the fd, spawned, from a fork-server's pool, or forked on request
(the ``stats`` and ``record`` roles).  The manager's own fds stay open and its own."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.launch import LaunchError, start_gofer
from gofer9p.record import read_frames, read_pcap
from gofer9p.top import fetch

from .conftest import Gofer, make_bundle
from .ninep import NineP

TVERSION, RVERSION, TATTACH, RATTACH = 100, 101, 104, 105


@pytest.fixture(params=["spawn", "pool", "fork"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "stats.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(4)
        yield s, path


def test_stats_socket_answers_with_the_attach_counted(
    tmp_path: Path, bundle: Path, via: str, listener: tuple[socket.socket, Path]
) -> None:
    sock, path = listener
    # a socket object, or (forked on request) its bare fd: both are accepted
    lent: socket.socket | int = sock.fileno() if via == "fork" else sock
    g = Gofer(tmp_path, bundle, via=via, stats_socket=lent, seccomp="kill")
    try:
        g.wait_log(r"seccomp kill")
        os.fstat(sock.fileno())  # still open: the manager's, not closed by start_gofer
        sock.close()  # the gofer's copy keeps answering
        c = NineP(g.sockets[0])
        c.version()
        c.attach(1)
        assert c.read_file(1, b"hello.txt") == b"hello from root\n"
        ops = fetch(f"unix:{path}")["ops"]
        assert ops["Tversion"]["count"] == 1 and ops["Tattach"]["count"] == 1, ops
        assert g.proc.poll() is None, g.log()  # not killed by seccomp for accepting
    finally:
        g.stop()


@pytest.mark.parametrize("headers_only", [False, True])
def test_record_fd_gets_the_pcap(
    tmp_path: Path, bundle: Path, via: str, headers_only: bool
) -> None:
    path = tmp_path / "rec.pcap"
    rec = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        g = Gofer(
            tmp_path, bundle, via=via, record_fd=rec, record_headers_only=headers_only,
            seccomp="kill",
        )  # fmt: skip
        os.fstat(rec)  # still open: the manager's
    finally:
        os.close(rec)  # the gofer writes through its own copy
    try:
        g.wait_log(r"seccomp kill")
        c = NineP(g.sockets[0])
        assert c.version() == (65536, b"9P2000.L")
        c.attach(1)
        assert c.read_file(1, b"hello.txt") == b"hello from root\n"
        g.sockets[0].close()  # every connection ended: the gofer exits, the pcap is complete
        assert g.wait(30) == 0, g.log()  # not killed by SIGSYS
    finally:
        g.stop()
    blob = path.read_bytes()
    frames = read_frames(read_pcap(blob))
    kinds = [(f.from_client, f.data[4]) for f in frames]
    assert kinds[:4] == [(True, TVERSION), (False, RVERSION), (True, TATTACH), (False, RATTACH)]
    assert (b"hello from root" in blob) is not headers_only


def test_fds_that_cannot_be_lent_are_launch_errors(bundle: Path) -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.close(fd)
    with pytest.raises(LaunchError, match=f"--stats-fd: fd {fd} is not open"):
        start_gofer(bundle, stats_socket=fd)
    with pytest.raises(LaunchError, match=f"--record-fd: fd {fd} is not open"):
        start_gofer(bundle, record_fd=fd)
    with pytest.raises(LaunchError, match="record_headers_only needs record_fd"):
        start_gofer(bundle, record_headers_only=True)
