"""Attributes of a fid's file: getattr, setattr (owner, mode, size, times), statfs, readlink,
and the set-id bits a write or truncate by an unprivileged uid clears.

Everything acts on the fid's own fd (``AT_EMPTY_PATH``, ``fchmodat2``) where the
kernel allows, else on an fd re-opened for it, else on its verified name.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._common import (
    _DIR,
    _FIFO,
    _LNK,
    _MASK64,
    _REG,
    _close,
    _err,
    _fstat,
    _gid,
)
from gofer9p.attach._fids import _Fid
from gofer9p.attach._locks import Locks
from gofer9p.attach._stat import rgetattr
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import RGETATTR

_BASIC: Final = C.GETATTR_BASIC

# Whether utimensat/fchmodat2 accept AT_EMPTY_PATH on this kernel; learnt on first use.
_empty_path_ok = {"utimensat": True, "fchmodat2": True}
_CHMOD_FALLBACK: Final = (errno.ENOSYS, errno.EINVAL)
_UTIMES_FALLBACK: Final = (errno.ENOENT, errno.EINVAL)


def _own_fd_first(call: str, do: Callable[[], object], fallback: tuple[int, ...]) -> bool:
    """Do ``call`` on the fid's own fd (``AT_EMPTY_PATH``) if this kernel may take it:
    True when done; False when the caller must use its fallback (not tried, or it
    failed with an errno in ``fallback``), after which a fallback that works marks
    ``call`` as unsupported in ``_empty_path_ok``."""
    if not _empty_path_ok[call]:
        return False
    try:
        do()
    except OSError as e:
        if e.errno not in fallback:
            raise
        return False
    return True


class Attrs(Locks):
    """Tgetattr, Tsetattr, Tstatfs and Treadlink on fids."""

    def getattr_frame(self, tag: int, fid: int, request_mask: int) -> bytes:
        """fstat of the fid's own fd, as the whole Rgetattr frame (``codec.RGETATTR``).
        ``valid`` = request_mask & BASIC (as gVisor; btime/gen/data_version are not
        available and never reported valid).

        Packed from the stat in one call (``_stat.rgetattr``: C in a compiled build, no
        ``stat_result``), and the server's Tgetattr answers with this frame as it is.
        A tuple of the fields (what ``getattr`` returns) cost a compiled build some
        4,000 instructions more per request, the ``stat_result`` another 5,000."""
        f = self._ref(fid)
        try:  # not ``with``: a hot entry (see FidTable._ref)
            qid = f.qid
            return rgetattr(f.fd, tag, request_mask & _BASIC, qid.type, qid.version, qid.path)
        finally:
            self._put(f)

    def getattr(self, fid: int, request_mask: int) -> tuple[int, ...]:
        """``getattr_frame``'s fields after the tag, flat and in wire order (qid as
        type, version, path)."""
        v: tuple[int, ...] = RGETATTR.unpack(self.getattr_frame(0, fid, request_mask))
        return v[3:]

    def setattr(
        self, fid: int, valid: int, mode: int, uid: int, gid: int, size: int,
        atime: tuple[int, int], mtime: tuple[int, int],
    ) -> None:
        """Apply every valid bit (Tsetattr's ``valid``), in the order owner, mode, size, times.

        Owner first so that a chown does not clear a set-uid bit the same
        request sets; times last because truncation changes mtime.  CTIME alone
        is a no-op (ctime changes with any change).  ``atime``/``mtime`` are
        (sec, nsec), used with ATIME_SET/MTIME_SET (else: now).
        """
        with self._ref(fid) as f:
            if f.fd < 0:
                raise _err(errno.EBADF)
            if valid & (C.SETATTR_UID | C.SETATTR_GID):
                _sys.fchown_empty(
                    f.fd, _gid(uid) if valid & C.SETATTR_UID else -1,
                    _gid(gid) if valid & C.SETATTR_GID else -1)
            if valid & C.SETATTR_MODE:
                self._chmod(f, mode & 0o7777)
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    self._rearm_killpriv(f)
            if valid & C.SETATTR_SIZE:
                self._truncate(f, size)
                if f.uid != 0 and f.fmt == _REG and not valid & C.SETATTR_MODE:
                    # A truncate by an unprivileged uid clears set-id bits, as
                    # truncate(2) does locally; with MODE in the same request the
                    # client chose the mode itself (the Linux client sends the
                    # cleared mode with the size when its inode shows the bits).
                    self._kill_privs(f)
            if valid & (C.SETATTR_ATIME | C.SETATTR_MTIME):
                self._utimes(f, valid, atime, mtime)

    def _kill_privs(self, f: _Fid) -> None:
        """Clear the set-id bits that a write or truncate by ``f``'s unprivileged uid
        clears locally (the kernel's ``should_remove_suid``/``file_remove_privs``):
        S_ISUID always, S_ISGID only with S_IXGRP (without it, S_ISGID marks
        mandatory locking, which a writer keeps), regular files only.

        Needed because the server writes as root with CAP_FSETID, for which the host
        keeps the bits.  Uid 0 counts as privileged (holding CAP_FSETID, as root does
        by default); every other uid as not: its capabilities are unknown here.  A
        6.2+ kernel also clears S_ISGID without S_IXGRP when the writer is not in the
        file's group; the fid's groups are unknown, so that bit is kept (6.1
        semantics, those of a writer in the group).  The security.capability xattr
        the host itself removes on our write or truncate, whatever the writer.
        """
        st = _fstat(f.ofd if f.ofd >= 0 else f.fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            return
        kill = mode & stat.S_ISUID
        if mode & stat.S_ISGID and mode & stat.S_IXGRP:
            kill |= stat.S_ISGID
        if kill:
            if f.ofd >= 0:
                os.fchmod(f.ofd, stat.S_IMODE(mode) & ~kill)
            else:
                self._chmod(f, stat.S_IMODE(mode) & ~kill)

    def _rearm_killpriv(self, f: _Fid) -> None:
        """After a chmod that set set-id bits: every fid of this session open for
        writing by an unprivileged uid on the same file checks again at its next
        write.  A chmod by another client or on the host is not seen (known limit:
        noticing it would take a stat per write)."""
        dev, ino = f.dev, f.ino
        with self._lock:
            for g in self._fids.values():
                if (g.ino == ino and g.dev == dev and g.ofd >= 0 and g.uid != 0
                        and g.oacc in (C.L_O_WRONLY, C.L_O_RDWR)):
                    g.killpriv = True

    def _write_kill(self, f: _Fid) -> None:
        """First write through a fid armed by open or chmod: disarm, clear the bits.

        Disarmed before the fstat, so that a set-id chmod re-arming it meanwhile (a
        Tsetattr in a worker thread) is not lost; armed again if the check fails, as
        the write then fails too.
        """
        f.killpriv = False
        try:
            self._kill_privs(f)
        except BaseException:
            f.killpriv = True
            raise

    def _chmod(self, f: _Fid, mode: int) -> None:
        if f.fmt == _LNK:
            return  # Linux symlinks have no mode of their own
        # ENOSYS: kernel < 6.6; EINVAL: may be AT_EMPTY_PATH unsupported,
        # known for sure only if the fallback below then succeeds.
        if _own_fd_first("fchmodat2", lambda: _sys.fchmod_empty(f.fd, mode), _CHMOD_FALLBACK):
            return
        if f.ofd >= 0:
            os.fchmod(f.ofd, mode)
        elif f.fmt not in (_DIR, _REG, _FIFO):
            # Without fchmodat2 a socket or device node can only be chmod-ed by a
            # name lookup that follows symlinks: not on behalf of a sandbox.
            raise _err(errno.EOPNOTSUPP)
        else:
            fd = self._reopen(f, os.O_RDONLY)
            try:
                os.fchmod(fd, mode)
            finally:
                _close(fd)
        _empty_path_ok["fchmodat2"] = False  # the fallback worked where fchmodat2 did not

    def _truncate(self, f: _Fid, size: int) -> None:
        try:
            if f.ofd >= 0 and f.oacc in (C.L_O_WRONLY, C.L_O_RDWR):
                os.ftruncate(f.ofd, size)
                return
            if f.fmt == _DIR:
                raise _err(errno.EISDIR)
            fd = self._reopen(f, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
            finally:
                _close(fd)
        except OverflowError:
            raise _err(errno.EINVAL) from None

    def _utimes(
        self, f: _Fid, valid: int, atime: tuple[int, int], mtime: tuple[int, int]
    ) -> None:
        omit = (0, _sys.UTIME_OMIT)
        now = (0, _sys.UTIME_NOW)
        if valid & C.SETATTR_ATIME:
            at = atime if valid & C.SETATTR_ATIME_SET else now
        else:
            at = omit
        if valid & C.SETATTR_MTIME:
            mt = mtime if valid & C.SETATTR_MTIME_SET else now
        else:
            mt = omit
        # Kernels without AT_EMPTY_PATH support answer ENOENT or EINVAL;
        # EINVAL may also be a bad time: decided by the fallback's result.
        if _own_fd_first("utimensat", lambda: _sys.utimensat(
                f.fd, b"", at, mt, _sys.AT_EMPTY_PATH | _sys.AT_SYMLINK_NOFOLLOW),
                _UTIMES_FALLBACK):
            return
        if f.ofd >= 0:
            _sys.futimens(f.ofd, at, mt)
        elif f.fmt == _DIR:
            fd = self._reopen(f, os.O_RDONLY)
            try:
                _sys.futimens(fd, at, mt)
            finally:
                _close(fd)
        else:
            pfd, name, owned = self._locate(f, mutating=True, inode=True)
            try:
                _sys.utimensat(pfd, name, at, mt, _sys.AT_SYMLINK_NOFOLLOW)
            finally:
                if owned:
                    _close(pfd)
        _empty_path_ok["utimensat"] = False  # the fallback worked where AT_EMPTY_PATH did not

    def statfs(self, fid: int) -> tuple[int, ...]:
        """fstatvfs of the fid's fd: Rstatfs's fields after the tag.  ``type`` is
        V9FS_MAGIC, not the host's magic: the client is looking at a 9P file system
        and must not apply host file-system-specific assumptions (or learn what the
        host runs)."""
        with self._ref(fid) as f:
            if f.fd < 0:  # an xattr-read fid has no file behind it
                raise _err(errno.EBADF)
            s = os.statvfs(f.fd)
        return (
            _sys.V9FS_MAGIC, s.f_frsize or s.f_bsize, s.f_blocks, s.f_bfree, s.f_bavail,
            s.f_files, s.f_ffree, s.f_fsid & _MASK64, s.f_namemax,
        )

    def readlink(self, fid: int) -> bytes:
        """The target of the fid's symlink (EINVAL for anything else)."""
        with self._ref(fid) as f:
            if f.fmt != _LNK or f.fd < 0:
                raise _err(errno.EINVAL)
            return os.readlink(b"", dir_fd=f.fd)
