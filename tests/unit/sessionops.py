"""Helpers shared by the attach unit tests: one call per Session operation, errno checks."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from gofer9p.attach import Session
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Qid, Tclunk, Tlopen, Twalk, Twrite

ROOT = 0


def err(code: int, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == code, (errno.errorcode.get(ei.value.errno or 0), errno.errorcode[code])


def walk(s: Session, newfid: int, *names: bytes, fid: int = ROOT) -> list[Qid]:
    return s.walk(Twalk(1, fid, newfid, list(names))).wqids


def lopen(s: Session, fid: int, flags: int = C.L_O_RDONLY) -> None:
    s.lopen(Tlopen(1, fid, flags))


def read(s: Session, fid: int, offset: int = 0, count: int = 4096) -> bytes:
    buf = bytearray(count)
    n = s.read_into(fid, offset, memoryview(buf))
    return bytes(buf[:n])


def write(s: Session, fid: int, data: bytes, offset: int = 0) -> int:
    return s.write(Twrite(1, fid, offset, data)).count


def clunk(s: Session, fid: int) -> None:
    s.clunk(Tclunk(1, fid))
