"""``gofer9p serve --listen unix:PATH`` as a manager or a script starts it: wait for the path
to appear, then connect."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from gofer9p import _quietwait
from gofer9p.protocol.codec import encode
from gofer9p.protocol.messages import Tversion

from .conftest import client_beside, gofer_env
from .ninep import NineP


def test_socket_path_appears_only_once_listening(tmp_path: Path) -> None:
    """The path is published (renamed into place) after listen(2): a client that connects
    the moment it sees the path is never refused (ECONNREFUSED), and a stale socket file at
    the path is replaced."""
    export = tmp_path / "export"
    export.mkdir()
    path = tmp_path / "g.sock"
    for attempt in range(12):
        if attempt % 2:
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(str(path))  # a socket file nobody listens on
            stale.close()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gofer9p", "serve", str(export), "--listen", f"unix:{path}",
             "--log-level", "warning"],
            env=gofer_env(),
        )
        try:
            deadline = time.monotonic() + 30
            s = socket.socket(socket.AF_UNIX)
            while True:
                assert time.monotonic() < deadline, "the socket never appeared"
                assert proc.poll() is None
                if attempt % 2 == 0 and not os.path.exists(path):
                    continue
                try:
                    s.connect(str(path))
                    break
                except ConnectionRefusedError:
                    # the stale file, before the gofer replaced it; never the gofer's own
                    assert attempt % 2, "connected the moment the path appeared: refused"
                except FileNotFoundError:
                    pass
            s.sendall(encode(Tversion(tag=0xFFFF, msize=65536, version=b"9P2000.L")))
            s.settimeout(10)
            assert s.recv(7)[4] == 101  # Rversion
            s.close()
        finally:
            proc.terminate()
            proc.wait(10)
            path.unlink(missing_ok=True)


STEADY_SERVE = (
    "import sys\n"
    "from gofer9p.testing.gofer_with_hooks import steady_poll\n"
    "steady_poll()\n"
    "from gofer9p.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
"""``python -c STEADY_SERVE serve ...``: ``gofer9p serve`` with the quiet wait's measuring
read as no preemption and no cost (gofer9p.testing.gofer_with_hooks.steady_poll)."""


def test_listen_connections_take_the_quiet_wait(tmp_path: Path) -> None:
    """A connection of ``serve --listen`` waits for its QD1 requests without a scheduler pass,
    although the accept loop waits for the listener through trio (``_quietwait.watching``):
    most of 300 back-to-back requests are waited for without trio (``trio=`` in the log counts
    the waits that went through it), and the poll window catches requests (``polled=``) until
    a CPU trial finds that it does not pay (at least its first block's), with the client on
    another CPU (``client_beside``).  The server's quiet wait measures but reads no
    preemption and no CPU cost (``steady_poll``, as test_gofer's test_poll_window_under_seccomp
    does): on a loaded host the window rightly turns itself off, and what it catches would be
    the host's load."""
    export = tmp_path / "export"
    export.mkdir()
    path = tmp_path / "g.sock"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", STEADY_SERVE, "serve", str(export), "--listen", f"unix:{path}",
         "--poll-us", "20000", "--log-file", str(log)],
        env=gofer_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "never listened"
            time.sleep(0.02)
        with client_beside(proc.pid):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            c = NineP(s)
            c.version()
            c.attach(1)
            for _ in range(300):
                assert c.getattr(1)["mode"]
            s.close()
        ends: list[tuple[str, str]] = []
        while not ends:
            assert time.monotonic() < deadline, log.read_text()
            ends = re.findall(r"connection end .* polled=(\d+) trio=(\d+)", log.read_text())
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(10)
    polled, through_trio = map(int, ends[0])
    assert through_trio < 150 and polled >= _quietwait._CHECK_EVERY, log.read_text()
