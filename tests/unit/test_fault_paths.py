"""Error paths found by the fault-injecting fuzz target (``--target fault``), one test each.

Each test makes one host call fail the way the fault target did (a monkeypatched call of
the attach layer) and checks the server's answer and what it leaves behind: a clean errno,
no fd left open.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sessionops import ROOT, err, lopen, walk

from gofer9p.attach import AttachPoint, Session
from gofer9p.protocol.constants import NOFID
from gofer9p.protocol.messages import Tattach


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Session]:
    (tmp_path / "f").write_bytes(b"data")
    point = AttachPoint.open(str(tmp_path))
    sess = Session(point)
    sess.attach(Tattach(1, ROOT, NOFID, b"", b"", 0))
    yield sess
    sess.reset()
    point.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reopen_by_name_closes_the_fd_when_its_fstat_fails(
    s: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tlopen re-opens a file by name (no file handles), then fstats the new fd to check it
    is the fid's inode: that fstat failing must not leave the new fd open (it did)."""
    from gofer9p.attach import _reopen

    monkeypatch.setitem(_reopen._handles_ok, "reopen", False)
    real = _reopen._fstat
    opened: list[int] = []
    real_open = os.open

    def tracked_open(*a: Any, **kw: Any) -> int:
        fd = real_open(*a, **kw)
        opened.append(fd)
        return fd

    def failing_fstat(fd: int) -> os.stat_result:
        if fd in opened:
            raise OSError(errno.EIO, "injected")
        return real(fd)

    walk(s, 1, b"f")
    before = _fds()
    monkeypatch.setattr(_reopen.os, "open", tracked_open)
    monkeypatch.setattr(_reopen, "_fstat", failing_fstat)
    err(errno.EIO, lopen, s, 1)
    monkeypatch.undo()
    assert opened, "the re-open by name was not reached"
    assert _fds() == before, "the re-opened fd was left open"
    lopen(s, 1)  # and the fid can still be opened
