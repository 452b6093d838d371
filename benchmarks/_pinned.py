"""What the QD1 benchmarks share: a tmpfs export, a server pinned to CPU 1 on one end of
a socketpair with this process pinned to CPU 0, 9P strings, a blocking round trip, and a
process's CPU time from /proc (qd1.py, overtake.py, instructions.py, guest_workload.py)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

GOFER = next(
    (
        p
        for p in (
            os.path.join(os.path.dirname(sys.executable), "gofer9p"),  # a venv's own bin/
            os.path.join(os.path.dirname(os.path.realpath(sys.executable)), "gofer9p"),
        )
        if os.path.exists(p)
    ),
    "gofer9p",
)
"""The real console script next to this interpreter: the venv's (whose python is a link to
the base interpreter, which has no gofer9p), else the base's (not a pyenv shim: see README)."""


def s9(b: bytes) -> bytes:
    """A 9P string: u16 length, then the bytes."""
    return struct.pack("<H", len(b)) + b


def rpc(c: socket.socket, t: int, tag: int, body: bytes) -> bytes:
    """Send one request of type ``t`` on blocking socket ``c``, wait for its reply: the
    reply's body (OSError for an Rlerror).  One request in flight: the reply is ours."""
    c.sendall(struct.pack("<IBH", 7 + len(body), t, tag) + body)
    size, rt, _ = struct.unpack("<IBH", c.recv(7, socket.MSG_WAITALL))
    rest = c.recv(size - 7, socket.MSG_WAITALL) if size > 7 else b""
    if rt == 7:
        raise OSError(struct.unpack("<I", rest)[0], "Rlerror")
    return rest


def proc_cpu(pid: int) -> tuple[int, int, str]:
    """Process ``pid``'s user and system CPU time in clock ticks (``SC_CLK_TCK``), all its
    threads, and its state letter, from /proc/PID/stat (OSError once it was reaped)."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()  # (the name in parentheses may hold spaces)
    return int(f[11]), int(f[12]), f[0]


@contextmanager
def tmpfs_export() -> Iterator[str]:
    """A fresh export directory on tmpfs (/dev/shm when there is one), removed afterwards."""
    exp = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        yield exp
    finally:
        shutil.rmtree(exp, ignore_errors=True)


def spawn_pinned(
    argv_for_fd: Callable[[int], list[str]],
    stderr: int | IO[bytes] = subprocess.DEVNULL,
    server_cpu: int = 1,
) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """Start ``argv_for_fd(fd)`` on CPU ``server_cpu`` (1 by default; 0 shares this
    process's CPU, where every wait sleeps) with the server end of a socketpair at
    ``fd`` (its stderr to ``stderr``, discarded by default), pin this process to
    CPU 0; our end and the process."""
    c, s = socket.socketpair()
    p = subprocess.Popen(
        ["taskset", "-c", str(server_cpu), *argv_for_fd(s.fileno())],
        pass_fds=[s.fileno()],
        stderr=stderr,
    )
    s.close()
    os.sched_setaffinity(0, {0})
    return c, p
