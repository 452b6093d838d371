"""File I/O on a fid: open, read (into a buffer, or spliced into a pipe), write, fsync.

Reads and writes use the fid's open fd at the request's offset (``preadv``,
``pwrite``, ``splice``); a FIFO's fd is non-blocking and its I/O belongs in
a worker thread (``read_blocks``); an xattr fid reads and fills its buffer
(``_xattrs``).  The first write by an unprivileged uid to a file opened for
writing clears set-id bits (``_attrs``).
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._common import _DIR, _FIFO, _OFF_MAX, _REG, _close, _err, _fstat
from gofer9p.attach._fids import _XREAD, _XWRITE, _Fid
from gofer9p.attach._xattrs import Xattrs
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Qid

# Bound once: called on every read or write, through a module global.
_preadv = os.preadv
_pwrite = os.pwrite
_splice = os.splice

_DIR_REFUSED: Final = C.L_O_ACCMODE | C.L_O_TRUNC
"""Tlopen flags a directory refuses (EISDIR)."""

BLOCKS: Final = -2
"""What :meth:`FileIO.read` answers an ``inline`` read of a FIFO: read it in a worker thread."""


class FileIO(Xattrs):
    """Tlopen, Tread, Twrite and Tfsync on fids."""

    def open(self, fid: int, flags: int) -> Qid:
        """Open the fid's file for I/O (once per fid; a second Tlopen is EINVAL); its qid.

        ``flags`` (9P open flags) are mapped bit by bit to the host's (see
        ``_sys.host_open_flags``); O_CLOEXEC and O_NOFOLLOW are always added, so a
        symlink is ELOOP.
        """
        hflags = _sys.host_open_flags(flags)
        # A hot entry, as Tlcreate (_entries.lcreate): the reference and the fd charge are
        # taken in one lock section and the reference given back with the fid's update in
        # another, for a fid in the table that may be opened so and a share with room.
        # Every other case (an error, an idle fid to reopen, a full share to reclaim in)
        # takes the general path, _open_ref.
        pin = -1
        with self._lock:
            g = self._fids.get(fid)
            if (g is not None and not g.idle and not g.xmode and g.ofd < 0
                    and (g.fmt != _DIR or not flags & _DIR_REFUSED)):
                pin = self._charge_held(g, 1)
                if pin >= 0:
                    g.refs += 1
                    g.used = True
        if pin >= 0 and g is not None:
            f = g
        else:
            f, pin = self._open_ref(fid, flags)
        released = False
        try:
            try:
                ofd = self._reopen(f, hflags)
            except BaseException:
                self._uncharge_fid(f, 1, pin)
                raise
            fmt = f.fmt
            # open(O_TRUNC) by an unprivileged uid clears set-id bits locally: after the
            # update, still holding the reference
            kill = flags & C.L_O_TRUNC and fmt == _REG and f.uid != 0
            with self._lock:
                taken = f.ofd >= 0
                if not taken:
                    f.ofd = ofd
                    f.oacc = flags & C.L_O_ACCMODE
                    f.killpriv = fmt == _REG and f.uid != 0 and f.oacc in (
                        C.L_O_WRONLY, C.L_O_RDWR)
                    if fmt == _DIR:
                        f.dirlock = threading.Lock()
                    qid = f.qid
                    if not kill:
                        # FidTable._put's common case, as in lcreate; the rest is _put's
                        f.refs -= 1
                        released = f.refs > 0 or not (f.dead or f.retired)
                        if not released:
                            f.refs += 1
            if taken:
                _close(ofd)
                self._uncharge_fid(f, 1, pin)
                raise _err(errno.EINVAL)
            if kill:
                self._kill_privs(f)
            return qid
        finally:
            if not released:
                self._put(f)

    def _open_ref(self, fid: int, flags: int) -> tuple[_Fid, int]:
        """Tlopen's reference to ``fid`` and its fd charge, the general way (see
        :meth:`open`): EBADF for an unknown fid, an idle one reopened, EINVAL for an
        xattr or opened fid, EISDIR for a directory opened to write or truncate, EMFILE
        for a full share after reclaiming.  Returns the reference and the pin taken
        (``_charge_fid``)."""
        f = self._ref(fid)
        try:
            if f.xmode or f.ofd >= 0:
                raise _err(errno.EINVAL)
            if f.fmt == _DIR and flags & _DIR_REFUSED:
                raise _err(errno.EISDIR)
            return f, self._charge_fid(f, 1)  # EMFILE past the share: open fds are pinned
        except BaseException:
            self._put(f)
            raise

    def read_blocks(self, fid: int) -> bool:
        """Whether a Tread or Twrite of ``fid`` should go to a worker thread whatever its size.

        True for an open file that is neither a regular file nor a directory
        (a FIFO: its fd is non-blocking, but what it does is up to another
        process, so keep it off the event loop).  Unknown fids: False (the
        request fails at once with EBADF).  Lock-free: a stale answer only
        changes which thread runs the request.
        """
        f = self._fids.get(fid)
        return f is not None and f.ofd >= 0 and f.fmt != _REG and f.fmt != _DIR

    def read_size(self, fid: int, offset: int, count: int) -> int:
        """The most a Tread of ``count`` bytes at ``offset`` can return now, raising
        the error the read itself would raise (EBADF, EISDIR, EINVAL for an offset
        past 2**63 - 1): the server calls it before it takes a large reply buffer,
        so that memory is committed only for a read that can succeed, and no more
        than the file can give.  Regular files: up to their size (one ``fstat``;
        a file growing meanwhile makes a short read, which is legal); xattr fids:
        up to the value's length; FIFOs: ``count``.
        """
        with self._ref(fid) as f:
            ofd = f.ofd
            if ofd < 0:
                x = f.xattr
                if f.xmode == _XREAD and x is not None:
                    return max(0, min(count, len(x.buf) - offset))
                raise _err(errno.EBADF)
            fmt = f.fmt
            if fmt == _DIR:
                raise _err(errno.EISDIR)
            if fmt != _REG:
                return count
            if offset > _OFF_MAX:
                raise _err(errno.EINVAL)
            return max(0, min(count, _fstat(ofd).st_size - offset))

    def read(
        self, fid: int, offset: int, view: memoryview, pipe_w: int = -1, count: int = 0,
        inline: bool = False,
    ) -> int:
        """Tread of the fid at ``offset``: fill ``view`` (preadv, no copy); bytes read.

        ``inline`` (the server's event loop reading): an open file that is neither a
        regular file nor a directory (a FIFO, see :meth:`read_blocks`) is not read but
        answered with :data:`BLOCKS`, so that the server runs the read in a worker
        thread; the check costs the common Tread no call of its own.

        With a pipe (``pipe_w`` >= 0; ``view`` is not used), move up to ``count`` bytes of
        an open regular file into it instead (splice: page references, no copy;
        the server's large reads); bytes moved, 0 at EOF, -1 when that does not
        apply or splice refuses it (not a regular file, an xattr or unopened fid,
        a file system without splice): reading into a buffer then gives the
        answer, so errors are the same either way.
        An opened directory gives EISDIR (whatever the count), an unopened fid
        EBADF, an unknown fid EBADF.
        """
        f = self._ref(fid)
        try:  # not ``with``: a hot entry (see FidTable._ref)
            ofd = f.ofd
            if pipe_w >= 0:
                if ofd < 0 or f.fmt != _REG:
                    return -1
                try:
                    return _splice(ofd, pipe_w, count, offset)
                except (OSError, OverflowError):
                    return -1
            if ofd < 0:
                x = f.xattr
                if f.xmode == _XREAD and x is not None:
                    buf = x.buf
                    if offset >= len(buf):
                        return 0
                    n = min(len(view), len(buf) - offset)
                    view[:n] = memoryview(buf)[offset:offset + n]
                    return n
                raise _err(errno.EBADF)
            fmt = f.fmt
            if fmt == _REG:
                return _preadv(ofd, [view], offset)
            if fmt == _DIR:  # the kernel says EISDIR too, but not for a 0-byte read
                raise _err(errno.EISDIR)
            if inline:
                return BLOCKS
            if fmt == _FIFO:
                return os.readv(ofd, [view])
            return _preadv(ofd, [view], offset)
        except OverflowError:
            raise _err(errno.EINVAL) from None
        finally:
            self._put(f)

    def write(
        self, fid: int, offset: int, data: bytes | bytearray | memoryview, general: bool = False
    ) -> int:
        """Twrite: pwrite on the open fd at ``offset`` (appends anyway under O_APPEND),
        a FIFO's write, or an xattr fid filled; bytes written.

        Without ``general`` (the server's inline fast path, ``write_regular``) only
        an open regular file is written: -1 for every other case (xattr fid, FIFO,
        unopened fid), which the general Twrite path (``general=True``; a FIFO's in
        a worker thread, see :meth:`read_blocks`) then answers, so both give the
        same replies.  Unknown fids: EBADF either way.  (A read-only attach point
        never gets here: the connection core refuses its Twrites.)
        """
        f = self._ref(fid)
        try:  # not ``with``: a hot entry (see FidTable._ref)
            ofd = f.ofd
            if ofd < 0 or f.fmt != _REG:
                if not general:
                    return -1
                if ofd < 0:
                    if f.xmode == _XWRITE:
                        return self._xattr_write(f, offset, data)
                    raise _err(errno.EBADF)
                if f.fmt == _FIFO:
                    return os.write(ofd, data)
            if f.killpriv and data:  # one attribute test per write; see _kill_privs
                self._write_kill(f)
            return _pwrite(ofd, data, offset)
        except OverflowError:
            code = errno.EINVAL
        except OSError as e:
            code = e.errno or errno.EIO
        finally:
            self._put(f)
        # Raised without the payload: an error's traceback keeps this frame alive as
        # long as the error lives (in a worker thread's outcome, maybe until a garbage
        # collection), and the server drops a threaded Twrite's payload once answered.
        del data
        raise _err(code)

    def fsync(self, fid: int, datasync: int) -> None:
        with self._ref(fid) as f:
            if f.ofd < 0:
                raise _err(errno.EBADF)
            if datasync:
                os.fdatasync(f.ofd)
            else:
                os.fsync(f.ofd)
