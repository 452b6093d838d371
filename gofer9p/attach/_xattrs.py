"""Extended attributes of a fid's file: Txattrwalk (a value or the name list, read
through a new fid) and Txattrcreate (Twrites fill a value, Tclunk commits it).

Only the ``user.`` namespace is served (as gVisor's gofer does): the others hold
host policy (``security.capability``, SELinux labels, ``trusted.overlay.*`` that
steers host overlay mounts) that a sandbox must neither read nor set.  The bytes
xattr fids hold are charged to the session (``XATTR_SESSION_MAX``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._common import _DIR, _FIFO, _REG, _close, _err
from gofer9p.attach._entries import Entries
from gofer9p.attach._fids import _XREAD, _XWRITE, _Fid, _Xattr
from gofer9p.protocol import constants as C

XATTR_MAX: Final = 64 * 1024
"""Largest xattr value or name list we hold for a client (the kernel's own limit)."""

_XATTR_NS: Final = b"user."
_XATTR_NS_STR: Final = "user."
_UNLOCK_ALL: Final = _sys.FLOCK.pack(C.LOCK_TYPE_UNLCK, os.SEEK_SET, 0, 0, 0)  # the whole file


class Xattrs(Entries):
    """Txattrwalk and Txattrcreate on fids, and the xattr fid's reads, writes and commit."""

    def _xattr_fd(self, f: _Fid) -> tuple[int, bool]:
        """An fd that the f*xattr calls accept for ``f``'s file, or (-1, False).

        O_PATH fds are refused by fgetxattr & co., so an unopened file is
        re-opened read-only.  Symlinks, sockets and device nodes cannot be
        re-opened safely: they are treated as having no xattrs.
        """
        if f.ofd >= 0:
            return f.ofd, False
        if f.fmt in (_DIR, _REG, _FIFO):
            return self._reopen(f, os.O_RDONLY), True
        return -1, False

    def xattrwalk(self, fid: int, newfid: int, name: bytes) -> int:
        """``newfid`` gets the value of xattr ``name`` (or, for "", the NUL-terminated
        list of names) for Tread; its size.  Names outside ``user.`` are EOPNOTSUPP
        and are left out of listings.
        """
        if b"\0" in name:
            raise _err(errno.EINVAL)
        if name and not name.startswith(_XATTR_NS):
            raise _err(errno.EOPNOTSUPP)
        with self._ref(fid) as f:
            if f.xmode or f.fd < 0:
                raise _err(errno.EBADF)
            self._in_use(newfid, fid)
            fd, owned = self._xattr_fd(f)
            try:
                if not name:
                    names = os.listxattr(fd) if fd >= 0 else []
                    data = b"".join(
                        os.fsencode(n) + b"\0" for n in names if n.startswith(_XATTR_NS_STR)
                    )
                elif fd < 0:
                    raise _err(errno.ENODATA)
                else:
                    data = os.getxattr(fd, name)
            finally:
                if owned:
                    _close(fd)
            if len(data) > XATTR_MAX:
                raise _err(errno.E2BIG)
            nf = _Fid(self, -1, None, f.path, f.uid, f.dev, f.ino, f.fmt, f.qid)
            nf.xmode = _XREAD
            x = nf.xattr = _Xattr(data)
            self._charge_xattr(x, len(data))
            self._install(newfid, nf, f if newfid == fid else None)
            return len(data)

    def xattrcreate(self, fid: int, name: bytes, attr_size: int, flags: int) -> None:
        """Turn ``fid`` into a write-only xattr fid; Twrites fill exactly
        ``attr_size`` bytes and Tclunk commits (size 0: remove the xattr, which is
        how Linux v9fs removes one).  ``user.`` names only (see :meth:`xattrwalk`)."""
        if not name or b"\0" in name:
            raise _err(errno.EINVAL)
        if not name.startswith(_XATTR_NS):
            raise _err(errno.EOPNOTSUPP)
        if attr_size > XATTR_MAX:
            raise _err(errno.E2BIG)
        if flags & ~(C.XATTR_CREATE | C.XATTR_REPLACE) or flags == C.XATTR_CREATE | C.XATTR_REPLACE:
            raise _err(errno.EINVAL)
        with self._ref(fid) as f:
            with self._lock:
                ok = not f.xmode and f.fd >= 0
                if ok:
                    if f.ofd >= 0:
                        # The fid is an xattr fid now: no more file I/O through it.
                        if f.ofd != f.fd:
                            f.retired = (*f.retired, f.ofd)  # closed: its locks go with it
                        else:
                            # After Tlcreate that fd is also the fid's own fd and
                            # stays open: drop the locks taken through it instead.
                            try:
                                fcntl.fcntl(f.ofd, fcntl.F_OFD_SETLK, _UNLOCK_ALL)
                            except OSError:
                                pass
                        f.ofd = -1
                    # the buffer grows with the writes: announcing costs nothing
                    x = _Xattr(bytearray(), name, attr_size, flags)
                    self._charge_xattr(x, attr_size)
                    f.xmode = _XWRITE
                    f.xattr = x
            if not ok:
                raise _err(errno.EBADF)
            self._forget_locks(f)  # its open fd is retired: so are the locks held on it

    def _xattr_write(self, f: _Fid, offset: int, data: bytes | bytearray | memoryview) -> int:
        """A Twrite to an xattrcreate fid: ``data`` into its buffer at ``offset``."""
        x = f.xattr
        assert x is not None  # xmode _XWRITE
        n = len(data)
        end = offset + n
        if end > x.size:
            raise _err(errno.ERANGE)
        buf = x.buf
        assert isinstance(buf, bytearray)
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset:end] = data
        if end > x.end:
            x.end = end
        return n

    def _xattr_commit(self, f: _Fid) -> None:
        x = f.xattr
        assert x is not None  # xmode _XWRITE
        if x.end != x.size:
            raise _err(errno.EINVAL)
        fd, owned = self._xattr_fd(f)
        if fd < 0:
            raise _err(errno.EOPNOTSUPP)
        try:
            if x.size == 0:
                os.removexattr(fd, x.name)
            else:
                os.setxattr(fd, x.name, bytes(x.buf), x.flags)
        finally:
            if owned:
                _close(fd)
