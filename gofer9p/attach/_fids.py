"""The fid table: what each fid holds, references to it, and the host fds it charges.

A fid is a ``_Fid`` in the table of one connection's backend.  Every operation
takes a reference (``with self._ref(fid) as f:``) for as long as it uses the
fid's fds; Tclunk/Tremove and ``reset`` take the fid out of the table at once,
and its fds are closed by whichever operation drops the last reference, so an
fd is never closed (and its number reused) under an in-flight call from
another thread (virtiofsd's ``inode_store`` with RAII references).  The table
lock guards the table, the reference counts and the fd charge only; no
system call other than ``dup``/``close`` runs under it.

Also here, because a fid going away releases them: the lock descriptions its
lock owners hold (their fds are charged to the same share) and the xattr
bytes it buffers (``XATTR_SESSION_MAX``).
"""

from __future__ import annotations

import errno
import os
import threading
from types import TracebackType

from gofer9p.attach import _sys
from gofer9p.attach._common import _close, _err
from gofer9p.attach.point import AttachPoint
from gofer9p.protocol.messages import Qid

FDS_PER_FID = 3
"""Host fds one fid may hold at once: its O_PATH fd, its parent's O_PATH fd, its open fd
(after Txattrcreate the open fd is retired, not added; after Tlcreate one fd is both)."""
FID_BYTES = 8 * 1024
"""Python memory of one fid, bounded for paths up to ~256 levels deep: its
_Fid (~500 bytes), its path hint (a tuple of the names from the attach root:
a walk adds up to 16 names of up to 255 bytes, ~5 KB; the rest of the tuple is
shared references, 8 bytes a level) and its table entry.  Measured: 760 bytes
for a fid walked two levels down with short names."""
XATTR_SESSION_MAX = 8 << 20
"""Bytes of xattr values one session may hold in xattr fids at once (read
buffers of Txattrwalk, announced sizes of Txattrcreate).  Past it: ENOMEM.
Without it a client could pin XATTR_MAX bytes per fid times the fid limit."""

_NO_ACCT: list[int] = [0]  # placeholder cell for fids that never charge

_XNONE = 0
_XREAD = 1  # Txattrwalk result: holds a value (or name list) for Tread
_XWRITE = 2  # after Txattrcreate: collects Twrites, commits on Tclunk


class _LockOwner:
    """The open file description one lock owner's locks of one fid are held on."""

    __slots__ = ("fd", "held", "own")

    def __init__(self, fd: int, own: bool) -> None:
        self.fd = fd
        self.own = own  # a description of its own (else the fid's open fd, not ours to close)
        self.held: list[tuple[int, int]] = []  # sorted, disjoint [start, end) ranges


class _Fid:
    """What a fid stands for.  Plain slots: it is created on every walk.

    ``fd`` is an O_PATH fd of the file (-1 for an xattr-read fid), ``parent``
    an O_PATH fd of the directory it was reached from (non-directories only,
    else -1), ``path`` the names from the attach root (a hint, see
    ``backend.py``), ``ofd`` the open fd after Tlopen/Tlcreate.  After Tlcreate
    ``fd`` and ``ofd`` are the same fd (the created file's open fd also
    serves as its handle: fstat, file-handle re-open and *at calls with an
    empty path accept any fd); ``close`` and xattrcreate's retiring of
    ``ofd`` close it once.  ``pident`` is
    ``(fd, st_dev, st_ino)`` of a parent fd whose identity is known (an fd's
    inode never changes), or None; it is only believed while its fd number
    still is ``parent`` (see ``Paths._inside``).

    A fid returned by :meth:`FidTable._ref` or :meth:`FidTable._take` is a
    reference: ``with`` it, and leaving the block drops the reference.
    """

    __slots__ = (
        "dbuf",
        "dead",
        "dev",
        "dirlock",
        "fd",
        "fmt",
        "ino",
        "killpriv",
        "lockers",
        "oacc",
        "ofd",
        "parent",
        "path",
        "pident",
        "qid",
        "refs",
        "retired",
        "table",
        "uid",
        "xacct",
        "xbuf",
        "xcharge",
        "xflags",
        "xlen",
        "xmode",
        "xname",
        "xsize",
    )

    def __init__(
        self, table: FidTable, fd: int, parent: int, path: tuple[bytes, ...], uid: int,
        dev: int, ino: int, fmt: int, qid: Qid,
        pident: tuple[int, int, int] | None = None,
    ) -> None:
        self.table = table
        self.fd = fd
        self.parent = parent
        self.pident = pident
        self.path = path
        self.uid = uid
        self.dev = dev
        self.ino = ino
        self.fmt = fmt
        self.qid = qid
        self.ofd = -1
        self.oacc = 0
        # Open for writing by an unprivileged uid: the next write checks (one fstat) for
        # set-id bits it must clear, as the kernel does for such a writer (see _kill_privs).
        self.killpriv = False
        self.refs = 0
        self.dead = False
        self.retired: list[int] = []
        self.dirlock: threading.Lock | None = None
        self.dbuf: _sys.DirentBuffer | None = None
        # POSIX lock owners (proc_id, client_id) holding locks through this fid
        self.lockers: dict[tuple[int, bytes], _LockOwner] | None = None
        self.xmode = _XNONE
        self.xname = b""
        self.xbuf: bytes | bytearray = b""
        self.xcharge = 0  # bytes of xbuf charged to the session's xattr budget
        self.xacct: list[int] = _NO_ACCT
        self.xsize = 0
        self.xlen = 0
        self.xflags = 0

    def __enter__(self) -> _Fid:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.table._put(self)

    def close(self) -> None:
        if self.xcharge:
            self.xacct[0] -= self.xcharge
            self.xcharge = 0
            self.xbuf = b""
        ofd = self.ofd if self.ofd != self.fd else -1  # lcreate: one fd is both
        fds = (self.fd, self.parent, ofd, *self.retired) if self.retired else (
            self.fd, self.parent, ofd)
        self.fd = self.parent = self.ofd = -1
        self.retired = []
        for fd in fds:
            if fd >= 0:
                try:
                    _close(fd)
                except OSError:
                    pass


def _dup_with_parent(fd: int, parent: int) -> tuple[int, int]:
    """New fds for a fid: a dup of ``fd`` and one of ``parent`` (-1: none);
    nothing is left open if either dup fails."""
    nparent = os.dup(parent) if parent >= 0 else -1
    try:
        return os.dup(fd), nparent
    except BaseException:
        if nparent >= 0:
            _close(nparent)
        raise


def _redup(
    pident: tuple[int, int, int] | None, old: int, new: int
) -> tuple[int, int, int] | None:
    """The ``pident`` of a parent fd ``new`` dup'ed from ``old`` (same inode)."""
    if pident is not None and pident[0] == old:
        return (new, pident[1], pident[2])
    return None


class FidTable:
    """One connection's fids, the references to them and the host fds they charge.

    The base of the backend (``backend.Backend``): every other backend module
    reaches fids through ``_ref``/``_take``/``_install``.
    """

    def __init__(self, point: AttachPoint, *, max_fids: int, fd_share: int) -> None:
        self.point = point
        self.max_fids = max_fids
        self.fd_share = fd_share
        """Host fds this session may hold: FDS_PER_FID per fid (from the moment it enters
        the table until its fds are closed, which may be after a clunk when an in-flight
        request still uses it), one per extra lock description, and whatever the server
        charges (the splice pipe).  Past it: EMFILE (ENOLCK for a lock), on this
        connection only, so that no connection can take the fds the others need."""
        self._fd_used = 0  # charged against fd_share; guarded by _lock
        self._fids: dict[int, _Fid] = {}
        self._lock = threading.Lock()
        self._locks_lock = threading.Lock()  # lock owners (``lockers``) and the two below
        self._lock_fds = 0
        self._lock_ranges = 0  # ranges in every owner's ``held`` (MAX_SESSION_LOCK_RANGES)
        self._xacct = [0]  # bytes charged by xattr fids, see XATTR_SESSION_MAX

    def fid_count(self) -> int:
        return len(self._fids)

    def fds_charged(self) -> int:
        """Host fds now charged against ``fd_share`` (see there)."""
        return self._fd_used

    def charge_fds(self, n: int) -> bool:
        """Take ``n`` fds of the share for something the connection holds (the splice
        pipe, a lock description); False, taking nothing, if they do not fit."""
        with self._lock:
            if self._fd_used + n > self.fd_share:
                return False
            self._fd_used += n
            return True

    def release_fds(self, n: int) -> None:
        """Give back what :meth:`charge_fds` took, once those fds are closed."""
        with self._lock:
            self._fd_used -= n

    def reset(self) -> None:
        """Clunk every fid (Tversion, disconnect) and release every lock this session
        holds.  Pending xattr writes are dropped."""
        with self._lock:
            fids = list(self._fids.values())
            self._fids.clear()
            for f in fids:
                f.dead = True
            idle = [f for f in fids if f.refs == 0]
            self._fd_used -= FDS_PER_FID * len(idle)
        for f in idle:
            self._forget_locks(f)
            f.close()

    def _ref(self, fid: int) -> _Fid:
        """A reference to ``fid`` (EBADF if it is not in the table): ``with`` it.

        The hot entries (getattr, read, write, walk, clunk, lcreate, remove: one per
        request of a busy client) pair it with ``try: ... finally: self._put(f)`` instead, the same
        release without the ``with`` protocol's two extra calls."""
        with self._lock:
            f = self._fids.get(fid)
            if f is None:
                raise _err(errno.EBADF)
            f.refs += 1
        return f

    def _put(self, f: _Fid) -> None:
        """Drop a reference; the last one of a fid out of the table closes its fds,
        the last one of a live fid closes the fds it retired meanwhile."""
        with self._lock:
            f.refs -= 1
            if f.refs:
                return
            if not f.dead:
                if not f.retired:
                    return
                retired, f.retired = f.retired, []
            else:
                retired = None
                self._fd_used -= FDS_PER_FID  # closed below
        if retired is None:
            self._forget_locks(f)
            f.close()
        else:
            for fd in retired:
                _close(fd)

    def _take(self, fid: int) -> _Fid:
        """Remove ``fid`` from the table, returning a reference to it (``with`` it)."""
        with self._lock:
            f = self._fids.pop(fid, None)
            if f is None:
                raise _err(errno.EBADF)
            f.dead = True
            f.refs += 1
        return f

    def _install(self, fid: int, nf: _Fid, replacing: _Fid | None) -> None:
        """Put ``nf`` in the table as ``fid``; ``replacing`` is the fid's current
        object when a walk/xattrwalk reuses its own fid number (the caller holds
        a reference to it, so its fds are closed when that is dropped).  When it
        cannot (EBADF: the number is taken; EMFILE: the fid limit or fd share),
        ``nf``'s fds are closed."""
        with self._lock:
            cur = self._fids.get(fid)
            if cur is not None and cur is not replacing:
                code = errno.EBADF
            elif cur is None and (
                len(self._fids) >= self.max_fids
                or self._fd_used + FDS_PER_FID > self.fd_share
            ):
                code = errno.EMFILE
            else:
                # A fid replacing itself (walk to its own number) is not refused:
                # the old one's fds are closed when this request ends.
                self._fids[fid] = nf
                self._fd_used += FDS_PER_FID
                if cur is not None:
                    cur.dead = True
                return
        nf.close()
        raise _err(code)

    def _in_use(self, newfid: int, fid: int) -> None:
        """EBADF if ``newfid`` is another fid already in the table."""
        if newfid != fid and newfid in self._fids:
            raise _err(errno.EBADF)

    def _dup_fid(self, f: _Fid) -> _Fid:
        """A new, unopened fid for the same file as ``f``, with its own dups of
        ``f``'s fd and parent fd (the parent's known identity carried over)."""
        fd, parent = _dup_with_parent(f.fd, f.parent)
        pident = _redup(f.pident, f.parent, parent) if parent >= 0 else None
        return _Fid(self, fd, parent, f.path, f.uid, f.dev, f.ino, f.fmt, f.qid, pident)

    def _is_root(self, f: _Fid) -> bool:
        return f.ino == self.point.root_ino and f.dev == self.point.root_dev

    # ---------------------------------------------- what a fid going away releases

    def _drop_owner(
        self, lockers: dict[tuple[int, bytes], _LockOwner], key: tuple[int, bytes]
    ) -> None:
        """Forget an owner (caller holds _locks_lock); its host locks go with its
        description or were released."""
        owner = lockers.pop(key)
        self._lock_ranges -= len(owner.held)
        if owner.own:
            _close(owner.fd)
            self._lock_fds -= 1
            self.release_fds(1)

    def _forget_locks(self, f: _Fid) -> None:
        """Close the extra lock descriptions of a fid going away (its locks go with them)."""
        if f.lockers is None:
            return
        with self._locks_lock:
            lockers, f.lockers = f.lockers, None
            if lockers:
                for key in list(lockers):
                    self._drop_owner(lockers, key)

    def _charge_xattr(self, f: _Fid, size: int) -> None:
        """Charge ``size`` bytes of xattr buffer held by ``f`` to the session (ENOMEM past
        the cap); ``f.close`` gives them back."""
        acct = self._xacct
        if acct[0] + size > XATTR_SESSION_MAX:
            raise _err(errno.ENOMEM)
        acct[0] += size
        f.xcharge += size
        f.xacct = acct


__all__ = ["FDS_PER_FID", "FID_BYTES", "XATTR_SESSION_MAX", "FidTable"]
