"""Directories of fids: Treaddir, answered from the kernel's getdents64 with its own
cookies, or from a cached encoded listing while the directory is unchanged
(``_dircache``).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._common import _BLK, _CHR, _DIR, _FIFO, _LNK, _REG, _S_IFMT, _err
from gofer9p.attach._dircache import DirCache
from gofer9p.attach._fids import FidTable, _Fid
from gofer9p.protocol import constants as C

_DIRENT_BUFSIZE: Final = 32 * 1024
# qid type by d_type (indexable by any byte value)
_DT_QTYPES: Final = bytes(0x80 if t == C.DT_DIR else 0x02 if t == C.DT_LNK else 0 for t in range(256))
_INO_LIMIT: Final = 1 << 56
_FMT_DT: Final = {
    _DIR: C.DT_DIR, _REG: C.DT_REG, _LNK: C.DT_LNK, _FIFO: C.DT_FIFO,
    _CHR: C.DT_CHR, _BLK: C.DT_BLK, stat.S_IFSOCK: C.DT_SOCK,
}


class Dirs(FidTable):
    """Treaddir on fids."""

    _dirs: DirCache  # this session's cached listings (set by the backend)
    _iomax: int  # msize - IOHDRSZ: the most a Treaddir may return

    def readdir(self, fid: int, offset: int, count: int) -> bytes | bytearray | memoryview:
        """Whole entries (9P dirents) from cookie ``offset`` up to ``count`` bytes
        (clamped to msize-24).

        Cookies are the kernel's own ``d_off`` values (getdents64 + lseek),
        which stay valid while entries are added or removed between calls.
        "." and ".." are included (Linux passes them on); ".." of the attach
        root reports the root itself.  A count too small for the next entry is
        EINVAL (as getdents64 does), so a small buffer is never mistaken for
        the end of the directory.
        """
        f = self._ref(fid)
        try:  # not ``with``: a hot entry (see FidTable._ref)
            if f.fmt != _DIR:
                raise _err(errno.ENOTDIR)
            lock = f.dirlock
            if f.ofd < 0 or lock is None:
                raise _err(errno.EBADF)
            if count > self._iomax:
                count = self._iomax
            with lock:
                # Unchanged directories are answered from a cached encoded listing
                # (see _dircache.py); self._readdir is the uncached path.
                return self._dirs.read(
                    f.ofd, offset, count, lambda o, c: self._readdir(f, o, c))
        finally:
            self._put(f)

    def _readdir(self, f: _Fid, offset: int, count: int) -> bytearray:
        ofd = f.ofd
        buf = f.dbuf
        if buf is None:
            buf = f.dbuf = _sys.DirentBuffer(_DIRENT_BUFSIZE)
        try:
            os.lseek(ofd, offset, os.SEEK_SET)
        except OverflowError:
            raise _err(errno.EINVAL) from None
        point = self.point
        dev = f.dev
        qbase = point.qid_base(dev)
        at_root = self._is_root(f)
        data = buf.data
        unpack = _sys.DIRENT64.unpack_from
        pack = _sys.P9_DIRENT.pack
        qtypes = _DT_QTYPES
        out = bytearray()
        used = 0
        full = False
        while not full:
            n = buf.fill(ofd)
            if n == 0:
                break
            pos = 0
            while pos < n:
                d_ino, d_off, reclen, dtype = unpack(data, pos)
                # d_name is NUL-terminated (the padding after it is not zeroed).
                name = data[pos + 19:data.index(0, pos + 19, pos + reclen)]
                pos += reclen
                ln = len(name)
                used += 24 + ln
                if used > count:
                    full = True
                    break
                if name[0] == 46 and ln <= 2 and (ln == 1 or (name[1] == 46 and at_root)):
                    q = f.qid if ln == 1 else point.root_qid
                    out += pack(q.type, 0, q.path, d_off, dtype, ln)
                else:
                    if dtype == C.DT_UNKNOWN:
                        try:
                            st = os.stat(bytes(name), dir_fd=ofd, follow_symlinks=False)
                            dtype = _FMT_DT.get(st.st_mode & _S_IFMT, C.DT_UNKNOWN)
                        except OSError:
                            pass
                    if qbase >= 0 and d_ino < _INO_LIMIT:
                        qp = qbase | d_ino
                    else:
                        qp = point.qid_path(dev, d_ino)
                    out += pack(qtypes[dtype], 0, qp, d_off, dtype, ln)
                out += name
        if full and not out:
            raise _err(errno.EINVAL)
        return out

