"""The fid table: what each fid holds, references to it, the host fds it charges and their reclaim.

A fid is a ``_Fid`` in the table of one connection's backend.  Every operation
takes a reference (``with self._ref(fid) as f:``) for as long as it uses the
fid's fds; Tclunk/Tremove and ``reset`` take the fid out of the table at once,
and its fds are closed by whichever operation drops the last reference, so an
fd is never closed (and its number reused) under an in-flight call from
another thread (virtiofsd's ``inode_store`` with RAII references).  The table
lock guards the table, the reference counts and the fd charge only; no
system call other than ``dup``/``close`` runs under it.

Host fds.  A fid charges the fds it holds (``nfds``) to the connection's
share of the process's fd budget (``_budget.FdBudget``).  A table at its
share reclaims the fds of its idle fids (no reference, not open, no lock, no
xattr state), least recently used first (a CLOCK: every reference sets the
fid's ``used`` bit, a sweep over the fids holding fds gives a used fid a
second chance), keeping their identity (path from the attach root, st_dev,
st_ino); the next reference reopens such a fid by walking its path from the
attach root, one ``openat(O_PATH|O_NOFOLLOW)`` per name relative to the
directory before (``open_child``, Twalk's own step), and accepts it only
if the file found has the fid's (st_dev, st_ino): a file replaced, renamed or
unlinked on the host meanwhile is ESTALE, never another file.  What cannot be
reclaimed counts against the share too; past it a walk, open or create is
EMFILE (a lock ENOLCK), on that connection only.

Directory fds are shared.  A directory's ``O_PATH`` fd is a ``_DirFd``, a
reference-counted holder: a directory fid holds the one of its own fd, a
non-directory fid the one of the directory it was walked from (for ``*at``
calls on its name).  A clone of a directory fid, and every file walked from
it (or from its clones), holds that same holder, so 10,000 files walked from
one directory hold 10,001 host fds, not 20,000.  Sharing follows the fd the
walk came from, never an identity looked up by (st_dev, st_ino): the same
inode reached through another (bind) mount is another fd with that mount's
flags.  A holder is charged once, while it is open; its fd is closed when
the last fid holding it lets go (clunk, reclaim, a rename through this
session that moves the fid to another directory's holder).  A reclaimed fid
being reopened shares the holder of its directory too when one is open: the
table knows each holder by the path it was reached by (``_dirfds``, a hint
like a fid's path), and the reopen accepts it only if the fid's name in it
is still the fid's file (st_dev, st_ino, birth time), else it walks from the
attach root.  What that trusts is what a fid that was never reclaimed
trusts: the directory fd it holds.

Also here, because a fid going away releases them: the lock descriptions its
lock owners hold (their fds are charged to the same share) and the xattr
bytes it buffers (``XATTR_SESSION_MAX``).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._budget import FdBudget
from gofer9p.attach._common import _DIR, _close, _err
from gofer9p.attach._stat import open_at
from gofer9p.attach.point import AttachPoint
from gofer9p.protocol.messages import Qid


def open_child(dirfd: int, name: bytes, dev: int) -> tuple[int, int, int, int]:
    """``openat(dirfd, name, O_PATH|O_NOFOLLOW)`` and its fstat: one step of a walk
    (Twalk's, and a reclaimed fid's reopen); ``(fd, st_dev, st_ino, st_mode)``.

    ``name`` is one checked component (or ``..``); a symlink is opened as itself,
    never followed.  ``dev`` is the st_dev of ``dirfd``: a step onto another device
    that is a kernel pseudo file system (a mount crossed into proc, sysfs, ...) is
    EACCES, whatever put the mount there.  (``_stat.open_at``: C in a compiled build,
    without a ``stat_result``.)
    """
    nfd, ndev, ino, mode = open_at(dirfd, name)
    if ndev != dev:
        try:
            if _sys.fs_magic(nfd) in _sys.PSEUDO_FS_MAGICS:
                raise _err(errno.EACCES)
        except BaseException:
            _close(nfd)
            raise
    return nfd, ndev, ino, mode


FDS_PER_FID: Final = 3
"""Most host fds one fid holds at once: its O_PATH fd, its parent's O_PATH fd, its open fd
(after Txattrcreate the open fd is retired, not added; after Tlcreate one fd is both).
The parent's fd is shared by every file walked from that directory fid and its clones,
and a directory fid's own fd by its clones (``_DirFd``), so an unopened file fid adds one
fd, an unopened clone of a directory none; a reclaimed fid holds none."""
FID_BYTES: Final = 8 * 1024
"""Python memory of one fid, bounded for paths up to ~256 levels deep: its
_Fid (~500 bytes), its path hint (a tuple of the names from the attach root:
a walk adds up to 16 names of up to 255 bytes, ~5 KB; the rest of the tuple is
shared references, 8 bytes a level) and its table entry.  Measured: 760 bytes
for a fid walked two levels down with short names."""
XATTR_SESSION_MAX: Final = 8 << 20
"""Bytes of xattr values one session may hold in xattr fids at once (read
buffers of Txattrwalk, announced sizes of Txattrcreate).  Past it: ENOMEM.
Without it a client could pin XATTR_MAX bytes per fid times the fid limit."""

_XNONE: Final = 0
_XREAD: Final = 1  # Txattrwalk result: holds a value (or name list) for Tread
_XWRITE: Final = 2  # after Txattrcreate: collects Twrites, commits on Tclunk


class _LockOwner:
    """The open file description one lock owner's locks of one fid are held on."""

    __slots__ = ("fd", "held", "own")

    def __init__(self, fd: int, own: bool) -> None:
        self.fd = fd
        self.own = own  # a description of its own (else the fid's open fd, not ours to close)
        self.held: list[tuple[int, int]] = []  # sorted, disjoint [start, end) ranges


class _Xattr:
    """What an xattr fid holds (``_Fid.xattr``), made by Txattrwalk/Txattrcreate only, so
    that the fids every walk makes carry one field for it, not seven.

    ``buf`` the value read (Txattrwalk) or being written; for a write ``name``,
    ``size`` (announced), ``end`` (bytes written up to) and ``flags`` (setxattr's);
    ``charge`` the bytes charged to the session's xattr budget
    (``FidTable._charge_xattr``), given back when the fid goes away.
    """

    __slots__ = ("buf", "charge", "end", "flags", "name", "size")

    def __init__(self, buf: bytes | bytearray, name: bytes = b"", size: int = 0, flags: int = 0) -> None:
        self.buf = buf
        self.name = name
        self.size = size
        self.end = 0
        self.flags = flags
        self.charge = 0


class _DirFd:
    """An O_PATH fd of a directory, shared by the fids that hold it (see the module docstring).

    ``dev``/``ino`` are the directory's identity (``ino`` -1: unknown; an fd's
    inode never changes); ``refs`` counts the fids holding it (and fids that
    retired it while a request was using them); ``charged`` says its fd is
    counted in the table's ``_fd_used`` (a walk makes holders before the new fid
    is installed, and ``_install`` charges them); ``key`` the path it is known
    by in the table's ``_dirfds`` (None: not there).  ``refs``, ``charged`` and
    ``key`` are guarded by the table lock; the fd is closed by
    :meth:`FidTable._unshare` when ``refs`` reaches 0.
    """

    __slots__ = ("charged", "dev", "fd", "ino", "key", "refs")

    def __init__(self, fd: int, dev: int, ino: int) -> None:
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.refs = 1
        self.charged = False
        self.key: tuple[bytes, ...] | None = None


class _Fid:
    """What a fid stands for.  Plain slots: it is created on every walk.

    ``fd`` is an O_PATH fd of the file (-1 for an xattr-read fid), ``dirh``
    the directory holder it holds: for a directory fid the holder of ``fd``
    itself, for another fid the holder of the directory it was reached from
    (``parent``), None for an xattr-read fid.  ``path`` the names from the
    attach root (a hint, see ``backend.py``), ``ofd`` the open fd after
    Tlopen/Tlcreate.  After Tlcreate ``fd`` and ``ofd`` are the same fd (the
    created file's open fd also serves as its handle: fstat, file-handle
    re-open and *at calls with an empty path accept any fd), and the
    directory fid's holder, kept, becomes the file's parent; the fid's fds
    are closed once.  ``nfds`` is the number of host fds it holds alone and
    charges (``fd`` unless it is ``dirh``'s, a distinct ``ofd``, ``retired``
    fds; holders are charged by themselves); ``idle`` says its fds were
    reclaimed (``fd`` is -1 and ``dirh`` None until a reference reopens
    them); ``used`` is its CLOCK bit; ``pin`` the fds it counts against the
    table's ``pin_share`` since it was opened.

    The constructor takes over one reference of ``dirh`` from the caller.
    A fid returned by :meth:`FidTable._ref` or :meth:`FidTable._take` is a
    reference: ``with`` it, and leaving the block drops the reference.
    """

    __slots__ = (
        "birth",
        "dbuf",
        "dead",
        "dev",
        "dirh",
        "dirlock",
        "fd",
        "fmt",
        "idle",
        "ino",
        "killpriv",
        "lockers",
        "nfds",
        "oacc",
        "ofd",
        "path",
        "pin",
        "qid",
        "refs",
        "retired",
        "table",
        "uid",
        "used",
        "xattr",
        "xmode",
    )

    def __init__(
        self, table: FidTable, fd: int, dirh: _DirFd | None, path: tuple[bytes, ...], uid: int,
        dev: int, ino: int, fmt: int, qid: Qid,
    ) -> None:
        self.table = table
        self.fd = fd
        self.dirh = dirh
        self.path = path
        self.uid = uid
        self.dev = dev
        self.ino = ino
        self.fmt = fmt
        self.qid = qid
        self.ofd = -1
        self.oacc = 0
        self.nfds = 1 if fd >= 0 and (dirh is None or dirh.fd != fd) else 0
        self.pin = 0
        self.idle = False
        self.used = True
        self.birth = 0  # birth time (ns) taken when its fds were reclaimed; 0: unknown
        # Open for writing by an unprivileged uid: the next write checks (one fstat) for
        # set-id bits it must clear, as the kernel does for such a writer (see _kill_privs).
        self.killpriv = False
        self.refs = 0
        self.dead = False
        # fds it let go of while in use (closed at its last reference); a tuple, replaced
        # on the rare retire, so that a new fid allocates no list
        self.retired: tuple[int | _DirFd, ...] = ()
        self.dirlock: threading.Lock | None = None
        self.dbuf: _sys.DirentBuffer | None = None
        # POSIX lock owners (proc_id, client_id) holding locks through this fid
        self.lockers: dict[tuple[int, bytes], _LockOwner] | None = None
        self.xmode = _XNONE  # tested by every walk and open: a field of its own
        self.xattr: _Xattr | None = None  # the xattr state of an xattr fid

    @property
    def parent(self) -> int:
        """The O_PATH fd of the directory a non-directory fid was reached from, else -1."""
        h = self.dirh
        return -1 if h is None or h.fd == self.fd else h.fd

    def __enter__(self) -> _Fid:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.table._put(self)


class FidTable:
    """One connection's fids, the references to them and the host fds they charge.

    The base of the backend (``backend.Backend``): every other backend module
    reaches fids through ``_ref``/``_take``/``_install``.  ``fd_budget`` is the
    process's budget this table takes its share of (a private one of
    ``fd_share`` fds when None); :meth:`close` gives the share back.
    """

    def __init__(
        self, point: AttachPoint, *, max_fids: int, fd_share: int = 1 << 62,
        fd_budget: FdBudget | None = None,
    ) -> None:
        self.point = point
        self.max_fids = max_fids
        self.fd_budget = fd_budget if fd_budget is not None else FdBudget(fd_share)
        self.fd_share = 0
        """Host fds this session may hold, set by the budget (its equal share): the
        ``nfds`` of its fids (from the moment one enters the table until its fds are
        closed, which may be after a clunk when an in-flight request still uses it),
        one per extra lock description, and whatever the server charges (the splice
        pipe).  At it, idle fids' fds are reclaimed."""
        self.pin_share = 0
        """Of those, the most that cannot be reclaimed (open fids' fds, lock
        descriptions, the splice pipe), set by the budget; past it: EMFILE (ENOLCK for
        a lock), on this connection only, so that no connection can pin the fds the
        others need."""
        self._fd_used = 0  # charged against fd_share; guarded by _lock
        self._pinned = 0  # charged against pin_share; guarded by _lock
        self._fids: dict[int, _Fid] = {}
        # Fids holding fds (not idle), oldest first: the CLOCK of _reclaim; guarded by _lock
        self._holders: dict[_Fid, None] = {}
        # Open directory holders by the path they were reached by (see _revive); guarded by _lock
        self._dirfds: dict[tuple[bytes, ...], _DirFd] = {}
        self._lock = threading.Lock()
        # _ref and _put (one pair per request) take it through these, bound once:
        # compiled, ``with self._lock`` looks __enter__ and __exit__ up on the lock's type
        # and calls __exit__ with three arguments, each time (about 700 instructions a
        # pair under callgrind, against some 250 this way)
        self._acquire: Callable[[], bool] = self._lock.acquire
        self._release: Callable[[], None] = self._lock.release
        self._locks_lock = threading.Lock()  # lock owners (``lockers``) and the two below
        self._lock_fds = 0
        self._lock_ranges = 0  # ranges in every owner's ``held`` (MAX_SESSION_LOCK_RANGES)
        self._xacct = [0]  # bytes charged by xattr fids, see XATTR_SESSION_MAX
        self.fd_budget.register(self)

    def fid_count(self) -> int:
        return len(self._fids)

    def fds_charged(self) -> int:
        """Host fds now charged against ``fd_share`` (see there)."""
        return self._fd_used

    def charge_fds(self, n: int) -> bool:
        """Take ``n`` pinned fds of the share for something the connection holds (the
        splice pipe, a lock description), reclaiming idle fids' fds if needed; False,
        taking nothing, if they do not fit."""
        return self._charge(n, None, n)

    def release_fds(self, n: int) -> None:
        """Give back what :meth:`charge_fds` took, once those fds are closed."""
        with self._lock:
            self._fd_used -= n
            self._pinned -= n

    def _charge(self, n: int, f: _Fid | None, pin: int = 0) -> bool:
        """Charge ``n`` fds (to ``f``'s ``nfds`` too, if given) of which ``pin`` more are
        pinned, reclaiming idle fids' fds when the share is full; False, charging
        nothing, if they still do not fit.  Called without the table lock (a reclaim
        takes it twice)."""
        for reclaimed in (False, True):
            with self._lock:
                if pin and self._pinned + pin > self.pin_share:
                    return False  # no reclaim makes room for more pinned fds
                if self._fd_used + n <= self.fd_share:
                    self._fd_used += n
                    self._pinned += pin
                    if f is not None:
                        f.nfds += n
                        f.pin += pin
                    return True
            if reclaimed:
                return False
            self._reclaim(n)
        return False  # not reached

    def _charge_fid(self, f: _Fid, n: int) -> int:
        """Charge ``n`` more fds to ``f``, which is being opened (the caller holds a
        reference): from now on all its fds are pinned, its directory holder's counted
        as if it were its own (it is shared, but an open fid keeps it open).  EMFILE if
        they do not fit even after reclaiming.  Returns the pin taken, for
        :meth:`_uncharge_fid`."""
        with self._lock:
            pin = self._charge_held(f, n)
        if pin >= 0:
            return pin
        pin = -1 - pin
        if not self._charge(n, f, pin):  # the share is full: reclaim idle fids' fds
            raise _err(errno.EMFILE)
        return pin

    def _charge_held(self, f: _Fid, n: int) -> int:
        """:meth:`_charge_fid`'s common case, the caller holding the lock (Tlcreate takes
        its reference in the same section): the pin taken, or ``-1 - pin`` when the share
        has no room without reclaiming (nothing taken; :meth:`_charge_fid` then reclaims,
        without the lock)."""
        pin = n if f.pin else n + f.nfds + (f.dirh is not None)
        if self._pinned + pin <= self.pin_share and self._fd_used + n <= self.fd_share:
            self._fd_used += n
            self._pinned += pin
            f.nfds += n
            f.pin += pin
            return pin
        return -1 - pin

    def _uncharge_fid(self, f: _Fid, n: int, pin: int) -> None:
        """Give back what :meth:`_charge_fid` charged when ``f`` did not keep it."""
        with self._lock:
            self._fd_used -= n
            self._pinned -= pin
            f.nfds -= n
            f.pin -= pin

    def trim(self) -> None:
        """Reclaim idle fds down to the share (the budget's call when shares shrink)."""
        self._reclaim(0)

    def close(self) -> None:
        """The connection ended: clunk every fid and give the share back to the budget."""
        self.reset()
        self.fd_budget.unregister(self)

    def reset(self) -> None:
        """Clunk every fid (Tversion, disconnect) and release every lock this session
        holds.  Pending xattr writes are dropped."""
        with self._lock:
            fids = list(self._fids.values())
            self._fids.clear()
            for f in fids:
                f.dead = True
            idle = [f for f in fids if f.refs == 0]
            holders = self._holders
            closing = []
            for f in idle:
                holders.pop(f, None)
                closing.append(self._let_go(f))
        for f, fds in zip(idle, closing, strict=True):
            self._close_fid(f, fds)

    @staticmethod
    def _reclaimable(f: _Fid) -> bool:
        """Nothing can be using ``f``'s fds: not open (which also rules out locks and
        unlinked-but-open files), no xattr state, nothing retired, in the table."""
        return f.ofd < 0 and not f.xmode and not f.retired and not f.dead

    def _reclaim(self, n: int) -> None:
        """Close idle fids' fds so that ``n`` more fit in the share, if they can be
        found (called without the table lock).

        Least recently used first: a CLOCK sweep over the holders clears the
        ``used`` bits it passes and moves those fids to the back; a second
        sweep takes the rest.  A reclaim frees at least a sixteenth of the
        share when it can, so that a client walking past its share reclaims
        once per many walks, not once per walk.  The victims are pinned (a
        reference each) while their birth times are read outside the lock
        (their identity with st_dev and st_ino: see :meth:`_revive`); a victim
        someone referenced meanwhile is kept."""
        with self._lock:
            need = self._fd_used + n - self.fd_share
            if need <= 0:
                return
            target = max(need, self.fd_share >> 4)
            holders = self._holders
            victims: list[_Fid] = []
            found = 0
            for _ in range(2):
                for f in list(holders):
                    if f.refs or not self._reclaimable(f):
                        continue
                    if f.used:
                        f.used = False
                        del holders[f]
                        holders[f] = None
                        continue
                    del holders[f]
                    f.refs += 1  # pinned: its fds stay open until the second pass
                    victims.append(f)
                    h = f.dirh
                    found += f.nfds + (h is not None and h.refs == 1)
                    if found >= target:
                        break
                if found >= need:
                    break
        if not victims:
            return
        births = []
        for f in victims:
            try:
                births.append(_sys.birth_time(f.fd))
            except OSError:
                births.append(-1)
        closing: list[tuple[_Fid, list[int]]] = []
        idled: list[int] = []
        count = 0
        with self._lock:
            for f, birth in zip(victims, births, strict=True):
                f.refs -= 1
                if f.refs or birth < 0 or not self._reclaimable(f):
                    if f.dead and not f.refs:  # clunked meanwhile: the last reference
                        closing.append((f, self._let_go(f)))
                    elif not f.dead:
                        self._holders[f] = None
                    continue
                idled += self._idle(f, birth)
                count += 1
        for f, fds in closing:
            self._close_fid(f, fds)
        for fd in idled:
            _close(fd)
        if count:
            self.fd_budget.count(count, 0)

    def _idle(self, f: _Fid, birth: int, charged: bool = True) -> list[int]:
        """Let go of ``f``'s fds, keeping its identity; the fds to close (the caller
        holds the lock and closes them after it).  ``charged``: see :meth:`_let_go`."""
        fds = self._let_go(f, charged)
        f.idle = True
        f.birth = birth
        return fds

    def _let_go(self, f: _Fid, charged: bool = True) -> list[int]:
        """Take ``f``'s fds from it and give back their charge (its own, the pin, its
        directory holder's if it was the last to hold it); the fds to close.  The
        caller holds the lock and closes them after it (``_close_fid``).
        ``charged`` False: ``f`` never went into the table, its own fds were never
        charged (its holder says for itself)."""
        h = f.dirh
        fd = f.fd
        fds = [fd] if fd >= 0 and (h is None or fd != h.fd) else []
        ofd = f.ofd
        if ofd >= 0 and ofd != fd:  # lcreate: one fd is both
            fds.append(ofd)
        if charged:
            self._fd_used -= f.nfds
            self._pinned -= f.pin
        f.nfds = f.pin = 0
        f.fd = f.ofd = -1
        f.dirh = None
        if h is not None:
            if h.refs > 1:  # _unshare's common case without its call: not the last holder
                h.refs -= 1
            else:
                self._unshare(h, fds)
        if f.retired:
            for r in f.retired:
                if isinstance(r, _DirFd):
                    self._unshare(r, fds)
                else:
                    fds.append(r)  # charged in nfds
            f.retired = ()
        return fds

    def _unshare(self, h: _DirFd, fds: list[int]) -> None:
        """Drop one reference to ``h`` (caller holds the lock); at the last, its fd
        joins ``fds`` to be closed and its charge is given back."""
        h.refs -= 1
        if not h.refs:
            fds.append(h.fd)
            if h.charged:
                self._fd_used -= 1
                h.charged = False
            key = h.key
            if key is not None and self._dirfds.get(key) is h:
                del self._dirfds[key]

    def _known(self, f: _Fid, h: _DirFd) -> None:
        """Make ``h``, the new holder of ``f`` (a directory's own, another file's
        parent), known by its path if no other is (caller holds the lock).  A file
        root's directory is outside the tree: never."""
        if f.fd == h.fd:
            key = f.path
        elif f.path:
            key = f.path[:-1]
        else:
            return
        if h.ino >= 0 and key not in self._dirfds:
            self._dirfds[key] = h
            h.key = key

    def _close_fid(self, f: _Fid, fds: list[int]) -> None:
        """After :meth:`_let_go` of a fid going away: its lock descriptions, its
        xattr bytes and ``fds`` (outside the lock)."""
        if f.lockers is not None:  # tested here: most fids never lock (a call spared)
            self._forget_locks(f)
        x = f.xattr
        if x is not None:
            f.xattr = None
            if x.charge:
                self._xacct[0] -= x.charge
                x.charge = 0
        for fd in fds:
            try:
                _close(fd)
            except OSError:
                pass

    def _revive(self, f: _Fid) -> None:
        """Reopen the fds of ``f``, an idle fid the caller holds a reference on.

        Walks ``f``'s path from the attach root, one name at a time with
        Twalk's own step (``openat(O_PATH|O_NOFOLLOW)`` relative to the
        directory before, no mount into a pseudo file system); the file
        found must have ``f``'s st_dev, st_ino and birth time, else ESTALE: a
        name that leads elsewhere now (renamed, replaced, swapped for a
        symlink on the host, deleted and its inode number reused) never gives
        another file.  EMFILE when the share has no room even after
        reclaiming other fids.  A concurrent revive of the same fid wins once;
        the other's fds are closed.

        First, when a holder of the fid's directory (a directory fid's own)
        is open, it is shared instead (:meth:`_from_known`): no walk from the
        root, no directory fd of its own.
        """
        n = 1 if f.fmt == _DIR else 2
        if not f.idle:
            return
        if not self._charge(n, None):
            raise _err(errno.EMFILE)
        try:
            found = self._from_known(f)
            shared = found is not None
            if found is not None:
                fd, h = found
            elif not f.path:  # the root (a file root keeps its directory)
                fd, h = self._root_fds(f.fmt)
            else:
                fd, h = self._walk_path(f)
        except BaseException:
            with self._lock:
                self._fd_used -= n
            raise
        fds: list[int] = []
        with self._lock:
            won = f.idle
            if won:
                f.fd, f.dirh = fd, h
                f.nfds = n - 1
                f.idle = False
                f.used = True
                if shared:
                    self._fd_used -= 1  # the holder is charged already
                else:
                    h.charged = True  # with the fid's own fd, if any: the n charged above
                    self._known(f, h)
                if not f.dead:
                    self._holders[f] = None
            else:
                self._fd_used -= n
                if fd != h.fd:
                    fds.append(fd)
                self._unshare(h, fds)
        if won:
            self.fd_budget.count(0, 1)
        for fd in fds:
            _close(fd)

    def _from_known(self, f: _Fid) -> tuple[int, _DirFd] | None:
        """``(fd, dirh)`` for the idle ``f`` from an open holder known by its path
        (``_dirfds``), with a reference to it taken, or None.  A directory fid: the
        holder of its path if it is its inode (st_dev, st_ino and birth time: the
        holder's inode is alive, but the fid's may have been deleted and its number
        reused); another file: its name opened in the holder of its directory's
        path (Twalk's step), accepted if it is its file (same three)."""
        if f.fmt == _DIR:
            key = f.path
        elif f.path:
            key = f.path[:-1]
        else:
            return None  # a file root's directory is not in the tree
        with self._lock:
            h = self._dirfds.get(key)
            if h is None:
                return None
            h.refs += 1
        nfd = -1
        try:
            if f.fmt == _DIR:
                if h.ino == f.ino and h.dev == f.dev and (
                        not f.birth or _sys.birth_time(h.fd) == f.birth):
                    return h.fd, h
            else:
                nfd, sdev, sino, _ = open_child(h.fd, f.path[-1], h.dev)
                if sino == f.ino and sdev == f.dev and (
                        not f.birth or _sys.birth_time(nfd) == f.birth):
                    return nfd, h
        except OSError:
            pass  # not there now: the walk from the root says what it is
        except BaseException:
            self._forget_known(h, nfd)
            raise
        self._forget_known(h, nfd)
        return None

    def _forget_known(self, h: _DirFd, nfd: int) -> None:
        """Undo :meth:`_from_known`'s reference to ``h`` and close ``nfd`` (-1: none)."""
        fds = [nfd] if nfd >= 0 else []
        with self._lock:
            self._unshare(h, fds)
        for fd in fds:
            _close(fd)

    def _root_fds(self, fmt: int) -> tuple[int, _DirFd]:
        """New fds of the attach root, as a fid of it holds them: ``(fd, dirh)``, a
        directory root's fd being its holder's, a file root's holder its directory's
        (identity unknown).  Uncharged."""
        point = self.point
        fd = os.dup(point.fd)
        if fmt == _DIR:
            return fd, _DirFd(fd, point.root_dev, point.root_ino)
        try:
            return fd, _DirFd(os.dup(point.parent_fd), 0, -1)
        except BaseException:
            _close(fd)
            raise

    def _walk_path(self, f: _Fid) -> tuple[int, _DirFd]:
        """``(fd, dirh)`` of ``f``'s file found again by its path (see
        :meth:`_revive`), as a fid holds them: a directory's holder is of ``fd``
        itself, another file's of the directory it was found in.  Uncharged.
        ESTALE if the path no longer leads to ``f``'s inode."""
        point = self.point
        cur, cur_owned = point.fd, False
        prev, prev_owned = -1, False
        dev, ino = point.root_dev, point.root_ino
        pdev = pino = 0
        try:
            for name in f.path:
                try:
                    nfd, ndev, nino, _ = open_child(cur, name, dev)
                except OSError as e:
                    raise _err(errno.EACCES if e.errno == errno.EACCES else errno.ESTALE) from None
                if prev_owned:
                    _close(prev)
                prev, prev_owned, pdev, pino = cur, cur_owned, dev, ino
                cur, cur_owned = nfd, True
                dev, ino = ndev, nino
            if ino != f.ino or dev != f.dev or (f.birth and _sys.birth_time(cur) != f.birth):
                raise _err(errno.ESTALE)
            if f.fmt == _DIR:
                fd, cur_owned = cur, False
                return fd, _DirFd(fd, dev, ino)
            if not prev_owned:
                prev, prev_owned = os.dup(prev), True
            fd, parent = cur, prev
            cur_owned = prev_owned = False
            return fd, _DirFd(parent, pdev, pino)
        finally:
            if prev_owned:
                _close(prev)
            if cur_owned:
                _close(cur)

    def _ref(self, fid: int) -> _Fid:
        """A reference to ``fid`` (EBADF if it is not in the table): ``with`` it.
        An idle fid is reopened first (ESTALE, EMFILE: see :meth:`_revive`).

        The hot entries (getattr, read, readdir, write, walk, clunk, lcreate, remove: one
        per request of a busy client) pair it with ``try: ... finally: self._put(f)`` instead,
        the same release without the ``with`` protocol's two extra calls (open and lcreate
        take theirs in a section of their own, see ``_io.open``)."""
        self._acquire()
        try:
            f = self._fids.get(fid)
            if f is None:
                raise _err(errno.EBADF)
            f.refs += 1
            f.used = True
        finally:
            self._release()
        if f.idle:
            try:
                self._revive(f)
            except BaseException:
                self._put(f)
                raise
        return f

    def _put(self, f: _Fid) -> None:
        """Drop a reference; the last one of a fid out of the table closes its fds,
        the last one of a live fid closes the fds it retired meanwhile."""
        self._acquire()
        try:
            f.refs -= 1
            if f.refs:
                return
            if not f.dead:
                if not f.retired:
                    return
                retired, f.retired = f.retired, ()
                fds: list[int] = []
                for r in retired:
                    if isinstance(r, _DirFd):
                        self._unshare(r, fds)
                    else:
                        fds.append(r)  # closed below
                        self._fd_used -= 1
                        f.nfds -= 1
            else:
                self._holders.pop(f, None)
                fds = self._let_go(f)
                retired = None
        finally:
            self._release()
        if retired is None:
            self._close_fid(f, fds)
        else:
            for fd in fds:
                _close(fd)

    def _take(self, fid: int) -> _Fid:
        """Remove ``fid`` from the table, returning a reference to it (``with`` it).
        An idle fid stays idle (a clunk needs no fd): reopen it with :meth:`_revive`
        if its fds are needed."""
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
        a reference to it, so its fds are closed when that is dropped).  When
        its fds do not fit in the share even after reclaiming idle fids, ``nf``
        goes in idle (its fds closed, reopened when used): a walk never fails for
        want of fds, an open does.  When it cannot go in (EBADF: the number is
        taken; EMFILE: the fid limit), ``nf``'s fds are closed.  A directory holder
        ``nf`` brings that is not charged yet (a walk's new one) is charged with it."""
        h = nf.dirh
        n = nf.nfds + (h is not None and not h.charged)
        birth = 0
        for full in (False, True):
            idled: list[int] | None = None
            with self._lock:
                cur = self._fids.get(fid)
                if cur is not None and cur is not replacing:
                    code = errno.EBADF
                elif cur is None and len(self._fids) >= self.max_fids:
                    code = errno.EMFILE
                elif birth < 0:
                    code = errno.EMFILE  # idle without an identity: no
                else:
                    code = 0
                    fits = self._fd_used + n <= self.fd_share
                    if fits or full:
                        # A fid replacing itself (walk to its own number) is not refused:
                        # the old one's fds are closed when this request ends.
                        self._fids[fid] = nf
                        if cur is not None:
                            cur.dead = True
                        if not fits:
                            idled = self._idle(nf, birth, charged=False)
                        else:
                            self._fd_used += n
                            if h is not None:
                                if not h.charged:
                                    h.charged = True
                                    self._known(nf, h)
                                self._holders[nf] = None
                            elif n:
                                self._holders[nf] = None
                            return
            if idled is not None:
                for fd in idled:
                    _close(fd)
                return
            if code:
                break
            self._reclaim(n)  # the share is full: make room, else go in idle
            try:
                birth = _sys.birth_time(nf.fd)
            except OSError:
                birth = -1
        with self._lock:
            fds = self._let_go(nf, charged=False)
        self._close_fid(nf, fds)
        raise _err(code)

    def _in_use(self, newfid: int, fid: int) -> None:
        """EBADF if ``newfid`` is another fid already in the table."""
        if newfid != fid and newfid in self._fids:
            raise _err(errno.EBADF)

    def _dup_fid(self, f: _Fid) -> _Fid:
        """A new, unopened fid for the same file as ``f`` (caller holds the lock):
        it shares ``f``'s directory holder, and has a dup of ``f``'s fd unless that
        is the holder's (a directory: a clone of it holds no fd of its own)."""
        h = f.dirh
        fd = f.fd
        if h is None or fd != h.fd:
            fd = os.dup(fd)
        if h is not None:
            h.refs += 1
        return _Fid(self, fd, h, f.path, f.uid, f.dev, f.ino, f.fmt, f.qid)

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

    def _charge_xattr(self, x: _Xattr, size: int) -> None:
        """Charge ``size`` bytes of xattr buffer held by ``x`` to the session (ENOMEM past
        the cap); ``_close_fid`` gives them back when its fid goes away."""
        acct = self._xacct
        if acct[0] + size > XATTR_SESSION_MAX:
            raise _err(errno.ENOMEM)
        acct[0] += size
        x.charge += size


__all__ = ["FDS_PER_FID", "FID_BYTES", "XATTR_SESSION_MAX", "FidTable"]
