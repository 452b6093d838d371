"""Re-opening a fid's file for I/O: by file handle where the kernel allows, else by name.

An O_PATH fd cannot do I/O and, without /proc, cannot be re-opened directly;
``_reopen`` opens exactly the fid's inode again (Tlopen, truncate, chmod
without fchmodat2, xattrs, lock descriptions) and never a device node.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._common import _BLK, _CHR, _DIR, _FIFO, _LNK, _REG, _close, _err
from gofer9p.attach._fids import _Fid
from gofer9p.attach._stat import fstat_ids
from gofer9p.attach._walk import Walk

_O_REOPEN: Final = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# Whether re-opening by file handle may work (False once it failed for lack of privilege).
_handles_ok = {"reopen": True}
_HANDLE_UNSUPPORTED: Final = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EOVERFLOW, errno.ESTALE, errno.EINVAL}
)


class Reopen(Walk):
    """``_reopen``: an fd for I/O on a fid's file (no operation of its own)."""

    def _reopen(self, f: _Fid, hflags: int) -> int:
        """Open ``f``'s file for I/O with host flags ``hflags`` (O_NOFOLLOW added).

        Directories re-open ``"."`` relative to their own fd.  Other files are
        re-opened through a file handle of the fid's own O_PATH fd, on the
        very mount the fid was reached by (so that mount's ro/nodev/noexec
        flags apply), which opens exactly that inode (a regular file or FIFO,
        as checked at walk time): no name is involved, so a device node swapped in under the
        file's name can never be opened.  Where file handles are unavailable
        (no CAP_DAC_READ_SEARCH, a file system without them, or the daemon's
        seccomp filter, which refuses them because a compromised gofer could
        open any inode with them) the file is
        opened by name in its directory, after and before checking it is the
        fid's inode (ESTALE if not); that leaves a window in which a node
        renamed over the name is opened (the daemon's mounts are nodev, where
        that open fails).  O_NONBLOCK always, so that a FIFO can never hang
        the gofer.  Device nodes are never opened (EPERM).
        """
        fmt = f.fmt
        if f.fd < 0:
            raise _err(errno.EBADF)
        if fmt == _DIR:
            return os.open(b".", hflags | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=f.fd)
        if fmt == _LNK:
            raise _err(errno.ELOOP)
        if fmt != _REG and fmt != _FIFO:
            raise _err(errno.EPERM if fmt == _CHR or fmt == _BLK else errno.ENXIO)
        hflags |= _O_REOPEN
        handle_err = 0
        if _handles_ok["reopen"]:
            try:
                handle, mount_id = _sys.file_handle(f.fd)
                mfd = self.point.mount_fd(mount_id, f.parent)
                if mfd >= 0:
                    return _sys.open_by_handle(mfd, handle, hflags)
            except OSError as e:
                if e.errno not in _HANDLE_UNSUPPORTED:
                    raise
                handle_err = e.errno
        pfd, name, owned = self._locate(f, inode=True)
        try:
            fd = os.open(name, hflags, dir_fd=pfd)
        finally:
            if owned:
                _close(pfd)
        try:
            sdev, sino, _, _, _ = fstat_ids(fd)  # (no stat_result: _stat.py)
        except BaseException:
            _close(fd)
            raise
        if sino != f.ino or sdev != f.dev:
            _close(fd)
            raise _err(errno.ESTALE)
        if handle_err == errno.EPERM:
            _handles_ok["reopen"] = False  # no CAP_DAC_READ_SEARCH: stop trying
        return fd

