"""What qd1.py and overtake.py share: a tmpfs export, a server pinned to CPU 1
on one end of a socketpair with this process pinned to CPU 0, and 9P strings."""

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
