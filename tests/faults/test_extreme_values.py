"""Every client-controlled number and string at its extremes, in every T-message.

For each message type, each field in turn takes extreme values (0, the largest value of its
width, 2**31 and 2**63 boundaries, empty, huge and all-digit strings, name lists past the
walk limit) while the other fields stay sensible (real fids: an open file, an open directory,
an unopened directory), so that the value reaches the code that uses it.  Each must get a
clean reply (its R-message or Rlerror), never an internal error (a traceback logged at ERROR
and EIO): a range check at the protocol edge, or the host's own errno.  The connection stays
usable throughout.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode

from .rawpeer import raw_peer

FILE, DIR, OPEN_DIR, NEW = 2, 3, 4, 60
_OPEN_FILE_TYPES = {"Tread", "Twrite", "Tlock", "Tgetlock", "Tfsync", "Tsetattr", "Txattrwalk",
                    "Txattrcreate", "Tgetattr", "Tstatfs", "Treadlink", "Tclunk", "Tremove",
                    "Trename", "Tlink"}
_SETATTR_ALL = (C.SETATTR_MODE | C.SETATTR_UID | C.SETATTR_GID | C.SETATTR_SIZE
                | C.SETATTR_ATIME | C.SETATTR_MTIME | C.SETATTR_ATIME_SET
                | C.SETATTR_MTIME_SET)
_SANE: dict[str, Any] = {
    "dfid": DIR, "dirfid": DIR, "olddirfid": DIR, "newdirfid": DIR, "newfid": NEW,
    "afid": C.NOFID, "n_uname": C.NONUNAME, "uname": b"root", "aname": b"", "version": b"9P2000.L",
    "name": b"n", "oldname": b"n", "newname": b"m", "symtgt": b"t", "client_id": b"c",
    "wnames": [b"f"], "data": b"x", "msize": 65536, "count": 100, "mode": 0o644,
    "type": C.LOCK_TYPE_WRLCK, "valid": _SETATTR_ALL,
}
_INTS = {
    "b": [0, 0x7F, 0xFF],
    "w": [0, 0xFFFF],
    "d": [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF],
    "q": [0, (1 << 31), (1 << 63) - 1, 1 << 63, (1 << 64) - 1],
}
_STRINGS = [b"", b"9" * 5000, b"0" * 12, b"4294967296", b"x" * 256, b"y" * 60000, b"a/b",
            b"\0", b"..", b"."]
_NAME_LISTS = [[], [b"f"] * 16, [b"f"] * 17, [b"9" * 5000], [b".."] * 16, [b"d", b"..", b"f"]]
_DATA = [b"", b"z" * 60000]


def _message_classes() -> list[type[M.Message]]:
    out = []
    for name in dir(M):
        cls = getattr(M, name)
        if isinstance(cls, type) and issubclass(cls, M.Message) and name.startswith("T"):
            out.append(cls)
    return out


def _sane(cls: type[M.Message]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for spec in cls.FIELDS.split():
        name, _kind = spec.split(":")
        if name == "fid":
            if cls.__name__ == "Tattach":
                kw[name] = NEW
            elif cls.__name__ == "Treaddir":
                kw[name] = OPEN_DIR
            elif cls.__name__ in _OPEN_FILE_TYPES:
                kw[name] = FILE
            else:
                kw[name] = DIR
        else:
            kw[name] = _SANE.get(name, 0)
    return kw


def _variants() -> Iterator[tuple[str, M.Message]]:
    for cls in _message_classes():
        base = _sane(cls)
        yield f"{cls.__name__}-sane", cls(tag=7, **base)
        for spec in cls.FIELDS.split():
            name, kind = spec.split(":")
            values: list[Any]
            if kind in _INTS:
                values = _INTS[kind]
            elif kind == "s":
                values = _STRINGS
            elif kind == "S*":
                values = _NAME_LISTS
            elif kind == "D":
                values = _DATA
            else:
                raise AssertionError(f"field kind {kind} of {cls.__name__} not covered")
            for i, v in enumerate(values):
                yield f"{cls.__name__}-{name}-{i}", cls(tag=7, **{**base, name: v})


def _reset_export(export: Path) -> None:
    for p in export.iterdir():
        if not p.is_symlink() and p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    (export / "f").write_bytes(b"data")
    (export / "d").mkdir()
    (export / "d" / "f").write_bytes(b"inner")


def _prefix(msize: int) -> bytes:
    """Tversion (clunks every fid), attach fid 1, fid 2 = open file, 3 = directory clone,
    4 = open directory."""
    return b"".join(encode(m) for m in (
        M.Tversion(tag=C.NOTAG, msize=msize, version=C.VERSION_9P2000L),
        M.Tattach(tag=1, fid=1, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0),
        M.Twalk(tag=2, fid=1, newfid=FILE, wnames=[b"f"]),
        M.Tlopen(tag=3, fid=FILE, flags=C.L_O_RDWR),
        M.Twalk(tag=4, fid=1, newfid=DIR, wnames=[]),
        M.Twalk(tag=5, fid=1, newfid=OPEN_DIR, wnames=[]),
        M.Tlopen(tag=6, fid=OPEN_DIR, flags=C.L_O_RDONLY),
    ))


async def test_extreme_values_get_clean_replies(
    export: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gofer9p")
    msize = 1 << 20
    variants = list(_variants())
    assert len(variants) > 300
    async with raw_peer(nursery, export, msize=msize, version=False) as peer:
        for label, msg in variants:
            _reset_export(export)
            await peer.send(_prefix(msize) + encode(msg))
            got = await peer.replies({C.NOTAG, 1, 2, 3, 4, 5, 6, 7})
            setup = [m for m in got if m.tag != 7]
            assert not any(isinstance(m, M.Rlerror) for m in setup), (label, setup)
            (reply,) = [m for m in got if m.tag == 7]
            assert type(reply).TYPE in (type(msg).TYPE + 1, C.MsgType.RLERROR), (label, reply)
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert not errors, (label, errors)
        # still usable: a plain request on the last session
        r = await peer.rpc(M.Tgetattr(tag=8, fid=1, request_mask=C.GETATTR_BASIC))
        assert isinstance(r, M.Rgetattr), r
