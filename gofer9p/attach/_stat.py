"""The stat calls of the hot requests: C where it was built, else the same in Python.

``ident_at(dirfd, name) -> (st_dev, st_ino)`` is ``os.stat(name, dir_fd=dirfd,
follow_symlinks=False)`` for callers that only compare identities (``_paths``: is
this name still the fid's inode, is this parent the attach root).
``open_at(dirfd, name) -> (fd, st_dev, st_ino, st_mode)`` is ``os.open(name,
O_PATH | O_NOFOLLOW | O_CLOEXEC, dir_fd=dirfd)`` and the new fd's ``os.fstat`` (a
walk's step, ``_fids.open_child``; the fd is closed if the fstat fails).
``fstat_ids(fd) -> (st_dev, st_ino, st_mode, st_uid, st_gid)`` is ``os.fstat(fd)``'s
(a new file's, ``_entries.lcreate``; a file re-opened by name, ``_reopen``).
``rgetattr(fd, tag, valid, qtype, qversion, qpath) -> bytes`` is the whole Rgetattr
frame of ``os.fstat(fd)`` (``_attrs.getattr_frame``).

Why two implementations: a ``stat_result`` costs 4,600-5,000 instructions to build
(three float and three nanosecond fields among its twenty), one to three of them a
request, where these callers need two fields or one frame.  ``_cstat.c`` makes the
same system call and no ``stat_result``; setup.py builds it with the compiled core.
Where it is missing (the pure build, an editable install, no compiler) the Python
versions below run, and ``tests/unit/test_cstat.py`` holds both to the same answers.

Not compiled by mypyc (like ``_sys.py``): the modules that import these names bind
the C functions themselves, so a compiled caller makes a direct C call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from gofer9p.attach._common import _MASK64
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import RGETATTR

_NS: Final = 1_000_000_000
_RGETATTR_SIZE: Final = RGETATTR.size
_R_GETATTR: Final = int(C.MsgType.RGETATTR)


def ident_at_py(dirfd: int, name: bytes) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of ``name`` in ``dirfd``, not following a symlink."""
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    return st.st_dev, st.st_ino


_O_PATH: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_fstat = os.fstat  # (one name for the fstat of both twins: tests/faults make it fail)


def open_at_py(dirfd: int, name: bytes) -> tuple[int, int, int, int]:
    """``(fd, st_dev, st_ino, st_mode)`` of ``name`` in ``dirfd`` opened O_PATH, as itself."""
    fd = os.open(name, _O_PATH, dir_fd=dirfd)
    try:
        st = _fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_dev, st.st_ino, st.st_mode


def fstat_ids_py(fd: int) -> tuple[int, int, int, int, int]:
    """``(st_dev, st_ino, st_mode, st_uid, st_gid)`` of ``os.fstat(fd)``."""
    st = _fstat(fd)
    return st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid


def rgetattr_py(fd: int, tag: int, valid: int, qtype: int, qversion: int, qpath: int) -> bytes:
    """The Rgetattr frame of ``os.fstat(fd)``: times floored to (sec, nsec), so that
    nsec stays in [0, 1e9) before 1970 too, sec in two's complement; btime, gen and
    data_version 0 (not available)."""
    st = _fstat(fd)
    a, an = divmod(st.st_atime_ns, _NS)
    m, mn = divmod(st.st_mtime_ns, _NS)
    c, cn = divmod(st.st_ctime_ns, _NS)
    return RGETATTR.pack(
        _RGETATTR_SIZE, _R_GETATTR, tag, valid, qtype, qversion, qpath,
        st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, st.st_size,
        st.st_blksize, st.st_blocks, a & _MASK64, an, m & _MASK64, mn, c & _MASK64, cn,
        0, 0, 0, 0,
    )


ident_at: Callable[[int, bytes], tuple[int, int]]
open_at: Callable[[int, bytes], tuple[int, int, int, int]]
fstat_ids: Callable[[int], tuple[int, int, int, int, int]]
rgetattr: Callable[[int, int, int, int, int, int], bytes]
try:
    from gofer9p.attach import _cstat
except ImportError:  # the pure build
    ident_at, open_at, rgetattr, COMPILED = ident_at_py, open_at_py, rgetattr_py, False
    fstat_ids = fstat_ids_py
else:
    ident_at, open_at, rgetattr = _cstat.ident_at, _cstat.open_at, _cstat.rgetattr
    fstat_ids, COMPILED = _cstat.fstat_ids, True
