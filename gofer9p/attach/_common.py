"""The backend's shared vocabulary: errors, file types, open flags, name checks.

Everything here is a constant or a one-line helper used by several backend
modules (``_fids``, ``_paths``, ``_walk``, ``_io``, ...); nothing here holds
state or makes a system call.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from gofer9p.protocol import constants as C

_MASK64: Final = (1 << 64) - 1
_OFF_MAX: Final = (1 << 63) - 1  # largest file offset (off_t); 9P offsets are u64

_S_IFMT: Final = 0o170000
_DIR: Final = stat.S_IFDIR
_REG: Final = stat.S_IFREG
_LNK: Final = stat.S_IFLNK
_FIFO: Final = stat.S_IFIFO
_CHR: Final = stat.S_IFCHR
_BLK: Final = stat.S_IFBLK

_O_PATH: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH_DIR: Final = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_DIR_READ: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# Bound once: the hot paths call these through a module global, not an attribute chain.
_fstat = os.fstat
_close = os.close

_ACC_HOST: Final = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY)  # by 9P access mode


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _check_name(name: bytes) -> None:
    """A name that creates or designates a directory entry: one real component."""
    # 0x2F in name: b"/" in name, without the buffer protocol (6x faster)
    if not name or name == b"." or name == b".." or 0x2F in name or 0 in name:
        raise _err(errno.EINVAL)


def _gid(gid: int) -> int:
    """A 9P uid/gid field as chown takes it: NONUNAME ("not given") is -1."""
    return -1 if gid == C.NONUNAME else gid
