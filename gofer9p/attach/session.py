"""One 9P2000.L connection's view of an attach point: the fid table and a handler per message.

Security model.  The client is an untrusted sandbox.  Every fid holds an
``O_PATH|O_NOFOLLOW`` fd of its file, and every host operation is an ``*at``
call relative to a held fd with ``O_NOFOLLOW``/``AT_SYMLINK_NOFOLLOW`` (or
``AT_EMPTY_PATH`` on the fid's own fd); no host path string is ever built
from client input, and ``/proc/self/fd`` is never used (it is not mounted in the
gofer's chroot).  Names are single components: empty, ``.``, names with ``/``
or NUL are EINVAL, and ``..`` is only meaningful to Twalk, where it moves to
the parent through the kernel (``openat(fd, "..")``) unless the fid already is
the attach root, compared by (st_dev, st_ino).  That test uses the fd, not a
remembered path, so it stays right when directories are renamed under a fid.
Symlinks are never followed on the host: walking through one is ENOTDIR and
opening one is ELOOP; the client resolves them with Treadlink.  A walk that
crosses a mount into a kernel pseudo file system (proc, sysfs, debugfs, ...:
host kernel interfaces, not data) is EACCES, whatever put the mount there.

Permissions are not checked here.  Like gVisor's gofer and QEMU's passthrough
backend, the gofer runs with DAC_OVERRIDE/FOWNER and the client (the sandbox's
kernel, or the guest kernel with ``access=client``) enforces file permissions
from the attributes we report.  What the gofer enforces is *which* files can be
reached (the attach root) and the read-only policy.

Re-opening and names.  An O_PATH fd cannot do I/O, and without /proc it
cannot be re-opened directly: a file is re-opened (Tlopen, truncate, xattrs)
through a file handle of the fid's own fd where the kernel allows it (no
name involved), else by name.  Some operations need the name anyway (Tremove,
Tlink, Trename).  So a non-directory fid keeps an ``O_PATH`` fd of the
directory it was walked from plus its name; a directory fid keeps no parent
fd (it can always reach its parent with ``openat(fd, "..")``).  The
remembered name is a hint, verified by (st_dev, st_ino) before use; when it is
stale (renamed behind our back) the parent directory is scanned for the
inode.  Renames done through this session update the hints of every fid they
affect.  Device nodes are never opened.  Only ``user.`` xattrs are served.

File roots.  An attach point may be a regular file (an OCI file bind mount).
Its fids keep the attach point's directory and name, which lie outside the
served tree and are trusted configuration: they are used only to reach that
very inode again (checked, ESTALE otherwise), never scanned, and the root's
entry is never removed, renamed or linked (EBUSY).  No name leads anywhere
from it (ENOTDIR) and ``..`` stays at it, as at a directory root.

Concurrency.  The server calls most handlers inline in the trio thread and some
(large reads/writes, fsync) in worker threads.  Each operation takes a
reference on the fids it uses; Tclunk/Tremove take the fid out of the table at
once and the fds are closed by whichever operation drops the last reference, so
an fd is never closed (and its number reused) under an in-flight call.  The one
session lock guards the table and reference counts only; no system call other
than ``dup``/``close`` runs under it.  A second lock serializes Tlock/Tgetlock
(non-blocking fcntl calls) with the per-owner lock bookkeeping.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import stat
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from gofer9p.attach import _sys
from gofer9p.attach._dircache import MAX_LISTING, MAX_TOTAL, DirCache
from gofer9p.attach.point import AttachPoint
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import (
    Message,
    Qid,
    Rattach,
    Rauth,
    Rclunk,
    Rfsync,
    Rgetattr,
    Rgetlock,
    Rlcreate,
    Rlink,
    Rlock,
    Rlopen,
    Rmkdir,
    Rmknod,
    Rreaddir,
    Rreadlink,
    Rremove,
    Rrename,
    Rrenameat,
    Rsetattr,
    Rstatfs,
    Rsymlink,
    Runlinkat,
    Rwalk,
    Rwrite,
    Rxattrcreate,
    Rxattrwalk,
    Tattach,
    Tauth,
    Tclunk,
    Tfsync,
    Tgetattr,
    Tgetlock,
    Tlcreate,
    Tlink,
    Tlock,
    Tlopen,
    Tmkdir,
    Tmknod,
    Tread,
    Treaddir,
    Treadlink,
    Tremove,
    Trename,
    Trenameat,
    Tsetattr,
    Tstatfs,
    Tsymlink,
    Tunlinkat,
    Twalk,
    Twrite,
    Txattrcreate,
    Txattrwalk,
)

__all__ = ["BLOCKING_IO_THRESHOLD", "XATTR_MAX", "Session", "is_blocking", "session_memory_bound"]

XATTR_MAX = 64 * 1024
XATTR_SESSION_MAX = 8 << 20
"""Bytes of xattr values one session may hold in xattr fids at once (read
buffers of Txattrwalk, announced sizes of Txattrcreate).  Past it: ENOMEM.
Without it a client could pin XATTR_MAX bytes per fid times the fid limit."""
_NO_ACCT: list[int] = [0]  # placeholder cell for fids that never charge
"""Largest xattr value or name list we hold for a client (the kernel's own limit)."""

BLOCKING_IO_THRESHOLD = 64 * 1024
"""Reads/writes larger than this are worth a worker thread (see :func:`is_blocking`)."""

_XATTR_NS = b"user."
_XATTR_NS_STR = "user."
_DIRENT_BUFSIZE = 32 * 1024
_MASK64 = (1 << 64) - 1
_OFF_MAX = (1 << 63) - 1  # largest file offset (off_t); 9P offsets are u64
_NS = 1_000_000_000

_S_IFMT = 0o170000
_DIR = stat.S_IFDIR
_REG = stat.S_IFREG
_LNK = stat.S_IFLNK
_FIFO = stat.S_IFIFO
_CHR = stat.S_IFCHR
_BLK = stat.S_IFBLK

_XNONE = 0
_XREAD = 1  # Txattrwalk result: holds a value (or name list) for Tread
_XWRITE = 2  # after Txattrcreate: collects Twrites, commits on Tclunk

_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_REOPEN = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_CREATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# qid type by d_type (indexable by any byte value)
_DT_QTYPES = bytes(0x80 if t == C.DT_DIR else 0x02 if t == C.DT_LNK else 0 for t in range(256))
_INO_LIMIT = 1 << 56
_UP = tuple(b"/".join([b".."] * k) for k in range(1, 33))  # "..", "../..", ... (see _inside)
_FMT_DT = {
    _DIR: C.DT_DIR, _REG: C.DT_REG, _LNK: C.DT_LNK, _FIFO: C.DT_FIFO,
    _CHR: C.DT_CHR, _BLK: C.DT_BLK, stat.S_IFSOCK: C.DT_SOCK,
}

_fstat = os.fstat
_close = os.close
_preadv = os.preadv
_pwrite = os.pwrite
_splice = os.splice


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _check_name(name: bytes) -> None:
    """A name that creates or designates a directory entry: one real component."""
    # 0x2F in name: b"/" in name, without the buffer protocol (6x faster)
    if not name or name == b"." or name == b".." or 0x2F in name or 0 in name:
        raise _err(errno.EINVAL)


def _gid(gid: int) -> int:
    return -1 if gid == C.NONUNAME else gid


#: The mode bits a create asks the kernel for: permissions and sticky.  Set-id bits are set
#: after the chown to the client's ids (a chown strips them, even as root; and a new file of
#: root's with them must not exist, even for a moment).
_CREATE_BITS = 0o1777


def _exact_mode(fmt: int, mode: int, got: int) -> int:
    """The mode a new entry must end with: exactly the client's (``mode & 0o7777``), whatever
    the process umask (it is process-wide: a library user's ``serve()`` has its own), plus
    S_ISGID on a directory that inherited it from a set-gid parent, as a local mkdir(2) does
    (``got`` is the mode it was created with, which a umask only narrows: an extra bit can
    only be inherited).  QEMU's 9p passthrough backend sets modes the same way: create, chown,
    chmod.  A client's kernel applies its own umask and create rules before it sends a mode
    (Linux v9fs does: a set-gid file made by a non-member in a set-gid directory already comes
    without S_ISGID), so the server does what it is asked."""
    if fmt == _DIR:
        return mode | (got & stat.S_ISGID)
    return mode


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


# Whether re-opening by file handle may work (False once it failed for lack of privilege).
_handles_ok = {"reopen": True}
_HANDLE_UNSUPPORTED = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EOVERFLOW, errno.ESTALE, errno.EINVAL}
)

# Whether utimensat/fchmodat2 accept AT_EMPTY_PATH on this kernel; learnt on first use.
_empty_path_ok = {"utimensat": True, "fchmodat2": True}


class _Fid:
    """What a fid stands for.  Plain slots: it is created on every walk.

    ``fd`` is an O_PATH fd of the file (-1 for an xattr-read fid), ``parent``
    an O_PATH fd of the directory it was reached from (non-directories only,
    else -1), ``path`` the names from the attach root (a hint, see the module
    docstring), ``ofd`` the open fd after Tlopen/Tlcreate.  After Tlcreate
    ``fd`` and ``ofd`` are the same fd (the created file's open fd also
    serves as its handle: fstat, file-handle re-open and *at calls with an
    empty path accept any fd); ``close`` and xattrcreate's retiring of
    ``ofd`` close it once.  ``pident`` is
    ``(fd, st_dev, st_ino)`` of a parent fd whose identity is known (an fd's
    inode never changes), or None; it is only believed while its fd number
    still is ``parent`` (see :meth:`Session._inside`).
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
        self, fd: int, parent: int, path: tuple[bytes, ...], uid: int,
        dev: int, ino: int, fmt: int, qid: Qid,
        pident: tuple[int, int, int] | None = None,
    ) -> None:
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


_ACC_HOST = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY)  # by 9P access mode
_NOBODY = 65534  # the kernel's overflow uid
_UNLOCK_ALL = _sys.FLOCK.pack(C.LOCK_TYPE_UNLCK, os.SEEK_SET, 0, 0, 0)  # the whole file
_LOCK_EOF = 1 << 64  # "to the end of the file" (length 0), beyond any real offset
_MAX_LOCK_FDS = 1024  # per session: extra descriptions for further owners of one fid
FDS_PER_FID = 3
"""Host fds one fid may hold at once: its O_PATH fd, its parent's O_PATH fd, its open fd
(after Txattrcreate the open fd is retired, not added; after Tlcreate one fd is both)."""
_MAX_LOCK_RANGES = 1024  # per owner and file
MAX_SESSION_LOCK_RANGES = 32768
"""Lock ranges tracked per session (all fids and owners): ~130 bytes each, so
about 4 MiB at most; past it Tlock is ENOLCK."""


class _LockOwner:
    """The open file description one lock owner's locks of one fid are held on."""

    __slots__ = ("fd", "held", "own")

    def __init__(self, fd: int, own: bool) -> None:
        self.fd = fd
        self.own = own  # a description of its own (else the fid's open fd, not ours to close)
        self.held: list[tuple[int, int]] = []  # sorted, disjoint [start, end) ranges


def _ranges_sub(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if b <= start or a >= end:
            out.append((a, b))
            continue
        if a < start:
            out.append((a, start))
        if b > end:
            out.append((end, b))
    return out


def _ranges_add(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted([*ranges, (start, end)]):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


FID_BYTES = 8 * 1024
"""Python memory of one fid, bounded for paths up to ~256 levels deep: its
_Fid (~500 bytes), its path hint (a tuple of the names from the attach root:
a walk adds up to 16 names of up to 255 bytes, ~5 KB; the rest of the tuple is
shared references, 8 bytes a level) and its table entry.  Measured: 760 bytes
for a fid walked two levels down with short names."""
LOCK_RANGE_BYTES = 160
"""Python memory of one tracked lock range (a tuple of two ints in a list)."""


def session_memory_bound(max_fids: int) -> int:
    """Most Python memory (bytes) a Session holds for its client, whatever it sends:
    fids, uncommitted xattr values (their buffers may be over-allocated up to 2x),
    tracked lock ranges, the directory-listing cache and one listing being built
    (data, its copy and its index: 8 x MAX_LISTING).  See docs/RESOURCES.md."""
    return (
        max_fids * FID_BYTES
        + 2 * XATTR_SESSION_MAX
        + MAX_SESSION_LOCK_RANGES * LOCK_RANGE_BYTES
        + MAX_TOTAL
        + 8 * MAX_LISTING
    )


def is_blocking(m: Message) -> bool:
    """Whether a request may block long enough to deserve a worker thread.

    True for Tfsync, reads and writes above :data:`BLOCKING_IO_THRESHOLD`,
    truncation (Tsetattr with SIZE, Tlopen with O_TRUNC), which may
    free many blocks.  Tlock never blocks: locks are taken with the
    non-blocking F_OFD_SETLK and a conflict is answered BLOCKED (the Linux
    client sleeps and retries), so nothing here ever waits on another lock.
    """
    t = type(m)
    if t is Tread:
        return m.count > BLOCKING_IO_THRESHOLD  # type: ignore[attr-defined,no-any-return]
    if t is Twrite:
        return len(m.data) > BLOCKING_IO_THRESHOLD  # type: ignore[attr-defined]
    if t is Tfsync:
        return True
    if t is Tsetattr:
        return bool(m.valid & C.SETATTR_SIZE)  # type: ignore[attr-defined]
    if t is Tlopen:
        return bool(m.flags & C.L_O_TRUNC)  # type: ignore[attr-defined]
    # Tlcreate: always inline; it creates with O_EXCL, so O_TRUNC truncates an
    # empty new file (no blocks to free).
    return False


class Session:
    """The fid table of one connection and a handler per T-message.

    Handlers take the T-message and return the R-message (same tag) or raise
    ``OSError``; the server turns its errno into Rlerror.  ``handlers`` maps
    each T-message type to its handler, except Tversion, Tflush and Tread,
    which the server owns (Tread through :meth:`read_into`).
    """

    def __init__(
        self, point: AttachPoint, *, max_fids: int = 16384, msize: int = 4 << 20,
        fd_share: int = 1 << 62,
    ) -> None:
        self.point = point
        self.max_fids = max_fids
        self.fd_share = fd_share
        """Host fds this session may hold: FDS_PER_FID per fid (from the moment it enters
        the table until its fds are closed, which may be after a clunk when an in-flight
        request still uses it), one per extra lock description, and whatever the server
        charges (the splice pipe).  Past it: EMFILE (ENOLCK for a lock), on this
        connection only, so that no connection can take the fds the others need."""
        self._fd_used = 0  # charged against fd_share; guarded by _lock
        self._ro = point.readonly
        self._fids: dict[int, _Fid] = {}
        self._lock = threading.Lock()
        self._locks_lock = threading.Lock()
        self._lock_fds = 0
        self._lock_ranges = 0  # ranges in every owner's ``held`` (MAX_SESSION_LOCK_RANGES)
        self._dirs = DirCache()
        self._xacct = [0]  # bytes charged by xattr fids, see XATTR_SESSION_MAX
        self._iomax = msize - C.IOHDRSZ
        self.msize = msize
        self.set_msize(msize)
        T = C.MsgType
        self.handlers: dict[int, Callable[..., Message]] = {
            T.TATTACH: self.attach, T.TAUTH: self.auth, T.TWALK: self.walk,
            T.TLOPEN: self.lopen, T.TLCREATE: self.lcreate, T.TSYMLINK: self.symlink,
            T.TMKNOD: self.mknod, T.TRENAME: self.rename, T.TREADLINK: self.readlink,
            T.TGETATTR: self.getattr, T.TSETATTR: self.setattr,
            T.TXATTRWALK: self.xattrwalk, T.TXATTRCREATE: self.xattrcreate,
            T.TREADDIR: self.readdir, T.TFSYNC: self.fsync, T.TLOCK: self.lock,
            T.TGETLOCK: self.getlock, T.TLINK: self.link, T.TMKDIR: self.mkdir,
            T.TRENAMEAT: self.renameat, T.TUNLINKAT: self.unlinkat, T.TWRITE: self.write,
            T.TCLUNK: self.clunk, T.TREMOVE: self.remove, T.TSTATFS: self.statfs,
        }

    is_blocking = staticmethod(is_blocking)

    # ------------------------------------------------------------------ table

    def set_msize(self, msize: int) -> None:
        """Record the negotiated msize; Treaddir counts are clamped to msize - 24."""
        self.msize = msize
        self._iomax = max(msize - C.IOHDRSZ, 0)

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

    def _get(self, fid: int) -> _Fid:
        with self._lock:
            f = self._fids.get(fid)
            if f is None:
                raise _err(errno.EBADF)
            f.refs += 1
        return f

    def _put(self, f: _Fid) -> None:
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
        """Remove ``fid`` from the table, returning it referenced (the caller _puts it)."""
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
        a reference to it, so its fds are closed when that is dropped)."""
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
        if newfid != fid and newfid in self._fids:
            raise _err(errno.EBADF)

    def _deny(self, what: str) -> NoReturn:
        """The one place the read-only policy is applied to a mutating request."""
        p = self.point
        if p.panic_on_write:
            p.panic(f"mutating request {what} on read-only attach point {p.path!r}")
        raise _err(errno.EROFS)

    # ----------------------------------------------------------- host helpers

    def _is_root(self, f: _Fid) -> bool:
        return f.ino == self.point.root_ino and f.dev == self.point.root_dev

    def _inside(self, dfd: int, ident: tuple[int, int, int] | None = None) -> bool:
        """Whether directory ``dfd`` is the attach root or below it.

        Walks up the chain of parents until it meets the root (True) or the
        top of the file system (False).  Only needed where a directory was
        reached by going *up* or could have been moved by someone else: a
        sandbox alone cannot move anything out of its tree (renames are
        relative to fds inside it), but the host can, and a directory moved
        out must not become a way to list, walk or change what is outside.
        More than 4096 levels up without meeting the root counts as outside.

        The k-th parent is looked at with one ``fstatat(dfd, "../" * k)``
        (up to 32 levels, then the walk goes on from an fd of the 32nd
        parent): each ``..`` of that lookup is the kernel's same step as an
        ``openat(fd, "..")`` (mounts and the chroot included), and a lookup
        that ends at the root's inode has followed an actual chain of
        parents from ``dfd`` to the root at that moment, so the answer is as
        strong as walking up with an fd per level, for one system call per
        level instead of three (open, fstat, close).

        ``ident``: a fid's ``pident``, ``(fd, st_dev, st_ino)`` from an fstat
        of that fd or of the one it was dup'ed from; it spares the fstat of
        ``dfd`` when its fd is ``dfd``.  The caller holds a reference on the
        fid, so that fd number cannot have been closed and reused meanwhile
        (an fid's replaced fds are retired until the last reference goes),
        and every assignment to ``parent`` sets or clears ``pident``.
        """
        rdev, rino = self.point.root_dev, self.point.root_ino
        if ident is not None and ident[0] == dfd:
            _, dev, ino = ident
        else:
            st = _fstat(dfd)
            dev, ino = st.st_dev, st.st_ino
        if ino == rino and dev == rdev:
            return True
        cur, owned = dfd, False
        try:
            for _ in range(4096 // len(_UP)):
                for up in _UP:
                    st = os.stat(up, dir_fd=cur, follow_symlinks=False)
                    if st.st_ino == rino and st.st_dev == rdev:
                        return True
                    if st.st_ino == ino and st.st_dev == dev:
                        return False  # "/" (or the chroot's root) is its own parent
                    dev, ino = st.st_dev, st.st_ino
                # Neither within len(_UP) levels: go on from that directory's fd.
                nfd = os.open(_UP[-1], _O_PATH_DIR, dir_fd=cur)
                if owned:
                    _close(cur)
                cur, owned = nfd, True
                st = _fstat(nfd)
                dev, ino = st.st_dev, st.st_ino
                if ino == rino and dev == rdev:
                    return True
            return False
        finally:
            if owned:
                _close(cur)

    def _locate(
        self, f: _Fid, mutating: bool = False, inode: bool = False
    ) -> tuple[int, bytes, bool]:
        """The directory fd and name under which ``f``'s file is linked now.

        Returns ``(dirfd, name, owned)``; the caller closes ``dirfd`` when
        ``owned``.  EBUSY for the attach root (it has no name we may touch),
        ENOENT when the file has no name left in that directory, or when that
        directory is no longer inside the attach root (checked for
        directories, whose parent is found by going up; before scanning a
        directory; and when the caller is going to change the directory
        entry, ``mutating``).  Re-opening a verified name of a non-directory
        needs no such check: it is the very inode the fid already holds.

        ``inode``: the caller only acts on the file through the name (re-open,
        set times), never on the entry.  Then a *file* root is located too:
        in its directory, which is outside the tree and legitimate for the
        root fid only (trusted configuration: the sandbox manager put the
        file there, so no ``_inside`` check), by the attach point's name and
        no other (no scan of a host directory), verified to still be the
        root's inode: ESTALE if the host swapped the entry (a symlink, another
        file), so a mutation is never redirected.
        """
        if self._is_root(f):
            if not inode or f.parent < 0:
                raise _err(errno.EBUSY)
            name = self.point.name
            try:
                st = os.stat(name, dir_fd=f.parent, follow_symlinks=False)
            except OSError:
                raise _err(errno.ESTALE) from None
            if st.st_ino != f.ino or st.st_dev != f.dev:
                raise _err(errno.ESTALE)
            return f.parent, name, False
        ident = None
        if f.parent >= 0:
            pfd, owned, ident = f.parent, False, f.pident
        elif f.fmt == _DIR and f.fd >= 0:
            pfd, owned = os.open(b"..", _O_PATH_DIR, dir_fd=f.fd), True
        else:
            raise _err(errno.EBADF)
        try:
            checked = owned or mutating
            if checked and not self._inside(pfd, ident):
                raise _err(errno.ENOENT)
            name = f.path[-1] if f.path else b""
            if name:
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    if st.st_ino == f.ino and st.st_dev == f.dev:
                        return pfd, name, owned
                except OSError:
                    pass
            if not checked and not self._inside(pfd, ident):
                raise _err(errno.ENOENT)
            name = self._find_name(pfd, f)
            f.path = (*f.path[:-1], name)
            return pfd, name, owned
        except BaseException:
            if owned:
                _close(pfd)
            raise

    @staticmethod
    def _find_name(pfd: int, f: _Fid) -> bytes:
        """Scan directory ``pfd`` for a name linked to ``f``'s inode."""
        dfd = os.open(b".", _O_DIR_READ, dir_fd=pfd)
        try:
            with os.scandir(dfd) as it:
                for e in it:
                    if e.inode() == f.ino:
                        name = os.fsencode(e.name)
                        try:
                            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                        except OSError:
                            continue
                        if st.st_ino == f.ino and st.st_dev == f.dev:
                            return name
        finally:
            _close(dfd)
        raise _err(errno.ENOENT)

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
        st = _fstat(fd)
        if st.st_ino != f.ino or st.st_dev != f.dev:
            _close(fd)
            raise _err(errno.ESTALE)
        if handle_err == errno.EPERM:
            _handles_ok["reopen"] = False  # no CAP_DAC_READ_SEARCH: stop trying
        return fd

    def _new_entry(self, d: _Fid, name: bytes, uid: int, gid: int, mode: int) -> Qid:
        """After creating ``name`` in directory fid ``d``: give it to (uid, gid), give it
        exactly ``mode`` (see :func:`_exact_mode`), return its qid.

        Ownership is applied only when the gofer may chown; if anything fails the
        new entry is removed again, so a failed request leaves nothing behind.  The one
        mode that cannot be set is a socket's or device node's on a kernel without
        fchmodat2 (< 6.6; see :meth:`_chmod`): EOPNOTSUPP then, when the mode mknod made
        (under the process umask, after the chown) is not the one asked for.
        """
        dfd = d.fd
        nfd = os.open(name, _O_PATH, dir_fd=dfd)
        try:
            try:
                if self.point.can_chown:
                    _sys.fchown_empty(nfd, uid, gid)
                st = _fstat(nfd)
                fmt = st.st_mode & _S_IFMT
                if fmt != _LNK:  # Linux symlinks have no mode of their own
                    want = _exact_mode(fmt, mode, st.st_mode)
                    if stat.S_IMODE(st.st_mode) != want:
                        nf = _Fid(nfd, dfd if fmt != _DIR else -1, (*d.path, name), uid,
                                  st.st_dev, st.st_ino, fmt, self.point.qid(st))
                        self._chmod(nf, want)
            except OSError:
                try:
                    if stat.S_ISDIR(_fstat(nfd).st_mode):
                        os.rmdir(name, dir_fd=dfd)
                    else:
                        os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass
                raise
            return self.point.qid(st)
        finally:
            _close(nfd)

    def _renamed(
        self, old: tuple[bytes, ...], new: tuple[bytes, ...], dev: int, ino: int, newdir: int
    ) -> None:
        """Update the path hints (and non-directories' parent fds) after a rename."""
        n = len(old)
        stale: list[int] = []
        with self._lock:
            for g in self._fids.values():
                p = g.path
                if len(p) >= n and p[:n] == old:
                    g.path = new + p[n:]
                    if len(p) == n and g.parent >= 0 and g.ino == ino and g.dev == dev:
                        try:
                            nfd = os.dup(newdir)
                        except OSError:
                            continue
                        if g.refs:
                            g.retired.append(g.parent)
                        else:
                            stale.append(g.parent)
                        g.pident = None  # newdir's identity is not known here
                        g.parent = nfd
        for fd in stale:
            _close(fd)

    def _walk_names(
        self, f: _Fid, names: Sequence[bytes], partial: bool = True
    ) -> tuple[list[Qid], _Fid | None]:
        """Walk ``names`` from ``f`` one component at a time.

        Returns the qids of the components walked and the new fid for the last
        one, or ``None`` when a component after the first failed (Twalk's
        partial result).  A failure of the first component, or of any one
        when not ``partial``, raises.
        """
        point = self.point
        rdev, rino = point.root_dev, point.root_ino
        qids: list[Qid] = []
        cur, cur_owned = f.fd, False
        # A walk that never moves (only ".." at a file root) clones f, parent included.
        prev, prev_owned = f.parent, False
        # prev's identity (pino -1: unknown), as (dev, ino) is cur's
        pident = f.pident
        if pident is not None and pident[0] == prev:
            _, pdev, pino = pident
        else:
            pdev, pino = 0, -1
        dev, ino, fmt, qid = f.dev, f.ino, f.fmt, f.qid
        path = list(f.path)
        try:
            for i, name in enumerate(names):
                try:
                    if name == b"..":
                        if ino == rino and dev == rdev:
                            # The root, a directory or a file: ".." stays there.
                            path.clear()
                            qids.append(point.root_qid)
                            continue
                        if fmt != _DIR:
                            raise _err(errno.ENOTDIR)
                        nfd = os.open(b"..", _O_PATH_DIR, dir_fd=cur)
                        try:
                            inside = self._inside(nfd)
                        except BaseException:
                            _close(nfd)
                            raise
                        if not inside:
                            # Only if the host moved us out of the tree: clamp.
                            _close(nfd)
                            nfd = os.dup(point.fd)
                    else:
                        if fmt != _DIR:
                            raise _err(errno.ENOTDIR)
                        if not name or name == b"." or 0x2F in name or 0 in name:  # "/", NUL
                            raise _err(errno.EINVAL)
                        nfd = os.open(name, _O_PATH, dir_fd=cur)
                    try:
                        st = _fstat(nfd)
                        if st.st_dev != dev and _sys.fs_magic(nfd) in _sys.PSEUDO_FS_MAGICS:
                            # A mount crossed into a kernel pseudo file system.
                            raise _err(errno.EACCES)
                    except BaseException:
                        _close(nfd)
                        raise
                except OSError:
                    if i == 0 or not partial:
                        raise
                    return qids, None
                if prev_owned:
                    _close(prev)
                prev, prev_owned = cur, cur_owned
                pdev, pino = dev, ino
                cur, cur_owned = nfd, True
                dev, ino, fmt = st.st_dev, st.st_ino, st.st_mode & _S_IFMT
                if name != b"..":
                    path.append(name)
                elif ino == rino and dev == rdev:
                    path.clear()
                elif path:
                    path.pop()
                qid = point.qid(st)
                qids.append(qid)
            # Build the new fid; it takes over cur (and prev as parent of a non-directory).
            parent = -1
            if fmt != _DIR:
                # The last step was a name (".." always yields a directory): prev
                # is the directory holding it.
                if prev_owned:
                    parent, prev_owned = prev, False
                else:
                    parent = os.dup(prev)
            if not cur_owned:
                try:
                    cur = os.dup(cur)
                except BaseException:
                    if parent >= 0:
                        _close(parent)
                    raise
                cur_owned = True
            pident = (parent, pdev, pino) if parent >= 0 and pino >= 0 else None
            nf = _Fid(cur, parent, tuple(path), f.uid, dev, ino, fmt, qid, pident)
            cur_owned = False
            return qids, nf
        finally:
            if prev_owned:
                _close(prev)
            if cur_owned:
                _close(cur)

    # --------------------------------------------------------------- handlers

    def auth(self, m: Tauth) -> Rauth:
        """No authentication scheme: the connection itself is the credential.

        EOPNOTSUPP, as QEMU answers; Linux v9fs never sends Tauth and attaches
        with afid = NOFID.
        """
        raise _err(errno.EOPNOTSUPP)

    def attach(self, m: Tattach) -> Rattach:
        """Attach ``fid`` to the root of this connection's attach point.

        The attach point is fixed per connection (the served directory, or one
        9P mount of the bundle), so ``aname`` selects nothing: any aname
        attaches that root, as QEMU does.  diod-style clients (and p9bench)
        send the export's *host* path, which means nothing inside the sandbox,
        and a sandbox must not be able to pick a different starting point than
        the one its manager handed it.
        The uid (n_uname, else uname as a number, else a passwd name, else
        65534) becomes the owner of files created through this fid and fids
        walked from it.
        ``afid`` is ignored: there is no authentication to check.
        """
        uid = self._uid(m.n_uname, m.uname)
        point = self.point
        fmt = point.root_fmt
        # A file root's fid keeps its directory, as every non-directory fid does
        # (see _locate for why that directory, outside the tree, is trusted).
        fd, parent = _dup_with_parent(point.fd, point.parent_fd if fmt != _DIR else -1)
        root = _Fid(fd, parent, (), uid, point.root_dev, point.root_ino, fmt, point.root_qid)
        self._install(m.fid, root, None)
        return Rattach(m.tag, root.qid)

    @staticmethod
    def _uid(n_uname: int, uname: bytes) -> int:
        if n_uname != C.NONUNAME:
            return n_uname
        if uname.isdigit():
            # a uid is below 2**32 - 1: more than 10 digits is out of range
            # (and int() refuses over 4300 digits: never reach it)
            uid = int(uname) if len(uname) <= 10 else C.NONUNAME
            if uid < C.NONUNAME:
                return uid
            raise _err(errno.EINVAL)
        try:
            return pwd.getpwnam(uname.decode("utf-8", "surrogateescape")).pw_uid
        except (KeyError, ValueError, UnicodeError):
            # Linux v9fs's first attach of a mount sends n_uname = NONUNAME and
            # uname "nobody" (its default uname=), which a sandbox's passwd file
            # (the gofer's chroot) need not list: refusing it would make the
            # mount fail.  Such a fid owns nothing that matters (with
            # access=client the client attaches again per uid, with n_uname),
            # so it gets the overflow uid, as unmappable ids do in the kernel.
            return _NOBODY

    def walk(self, m: Twalk) -> Rwalk:
        """Walk (or clone, with no names) ``fid`` into ``newfid``.

        Walking from an opened fid is allowed (QEMU allows it, and Linux walks
        from open fids of unlinked files); the new fid is not opened.
        ``newfid`` in use by another fid: EBADF.
        """
        names = m.wnames
        if not names and m.newfid != m.fid:
            self.clone_fid(m.fid, m.newfid)
            return Rwalk(m.tag, [])
        if len(names) > C.MAXWELEM:
            raise _err(errno.E2BIG)
        f = self._get(m.fid)
        try:
            if f.xmode or f.fd < 0:
                raise _err(errno.EBADF)
            same = m.newfid == m.fid
            if not same and m.newfid in self._fids:
                raise _err(errno.EBADF)
            if not names:
                nf: _Fid | None = self._dup_fid(f)
                qids: list[Qid] = []
            else:
                qids, nf = self._walk_names(f, names)
            if nf is not None:
                self._install(m.newfid, nf, f if same else None)
            return Rwalk(m.tag, qids)
        finally:
            self._put(f)

    def clone_fid(self, fid: int, newfid: int) -> None:
        """Twalk with no names into another fid number (the Linux client's
        commonest walk; the server calls this directly, without message
        objects), in one pass under the session lock: the fid cannot
        lose its fds while it is in the table and the lock is held (only
        ``dup`` runs under it), so no reference is taken, and ``fd``,
        ``parent`` and the rest are read consistently."""
        fids = self._fids
        with self._lock:
            f = fids.get(fid)
            if f is None or f.xmode or f.fd < 0 or newfid in fids:
                raise _err(errno.EBADF)
            if len(fids) >= self.max_fids or self._fd_used + FDS_PER_FID > self.fd_share:
                raise _err(errno.EMFILE)
            fids[newfid] = self._dup_fid(f)
            self._fd_used += FDS_PER_FID

    @staticmethod
    def _dup_fid(f: _Fid) -> _Fid:
        """A new, unopened fid for the same file as ``f``, with its own dups of
        ``f``'s fd and parent fd (the parent's known identity carried over)."""
        fd, parent = _dup_with_parent(f.fd, f.parent)
        pident = _redup(f.pident, f.parent, parent) if parent >= 0 else None
        return _Fid(fd, parent, f.path, f.uid, f.dev, f.ino, f.fmt, f.qid, pident)

    def clunk(self, m: Tclunk) -> Rclunk:
        self.clunk_fid(m.fid)
        return Rclunk(m.tag)

    def clunk_fid(self, fid: int) -> None:
        """Free ``fid``; an xattrcreate fid commits here and reports the commit's
        error.  (The server calls this directly, without message objects.)"""
        f = self._take(fid)
        try:
            if f.xmode == _XWRITE:
                self._xattr_commit(f)
        finally:
            self._put(f)

    def remove(self, m: Tremove) -> Rremove:
        self.remove_fid(m.fid)
        return Rremove(m.tag)

    def remove_fid(self, fid: int) -> None:
        """Unlink (or rmdir) the fid's file; the fid is clunked in every case.
        (The server calls this directly, without message objects.)"""
        f = self._take(fid)
        try:
            if self._ro:
                self._deny("remove")
            if f.xmode == _XREAD:
                raise _err(errno.EBADF)
            pfd, name, owned = self._locate(f, mutating=True)
            try:
                if f.fmt == _DIR:
                    os.rmdir(name, dir_fd=pfd)
                else:
                    os.unlink(name, dir_fd=pfd)
            finally:
                if owned:
                    _close(pfd)
        finally:
            self._put(f)

    def getattr(self, m: Tgetattr) -> Rgetattr:
        """fstat of the fid's own fd.  ``valid`` = request_mask & BASIC (as gVisor;
        btime/gen/data_version are not available and never reported valid)."""
        v = self.getattr_fields(m.fid, m.request_mask)
        return Rgetattr(m.tag, v[0], Qid(v[1], v[2], v[3]), *v[4:])

    def getattr_fields(self, fid: int, request_mask: int) -> tuple[int, ...]:
        """Rgetattr's fields after the tag, flat and in wire order (qid as type,
        version, path): what :meth:`getattr` answers, for a caller that packs
        the reply itself (the server's Tgetattr fast path, no message objects)."""
        f = self._get(fid)
        try:
            st = _fstat(f.fd)
            qid = f.qid
        finally:
            self._put(f)
        a, an = divmod(st.st_atime_ns, _NS)  # floor: pre-1970 times keep nsec in [0, 1e9)
        m, mn = divmod(st.st_mtime_ns, _NS)
        c, cn = divmod(st.st_ctime_ns, _NS)
        return (
            request_mask & C.GETATTR_BASIC, qid.type, qid.version, qid.path,
            st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, st.st_size,
            st.st_blksize, st.st_blocks, a & _MASK64, an, m & _MASK64, mn, c & _MASK64, cn,
            0, 0, 0, 0,
        )

    def setattr(self, m: Tsetattr) -> Rsetattr:
        """Apply every valid bit, in the order owner, mode, size, times.

        Owner first so that a chown does not clear a set-uid bit the same
        request sets; times last because truncation changes mtime.  CTIME alone
        is a no-op (ctime changes with any change).
        """
        if self._ro:
            self._deny("setattr")
        valid = m.valid
        f = self._get(m.fid)
        try:
            if f.fd < 0:
                raise _err(errno.EBADF)
            if valid & (C.SETATTR_UID | C.SETATTR_GID):
                uid = m.uid if valid & C.SETATTR_UID else -1
                gid = m.gid if valid & C.SETATTR_GID else -1
                _sys.fchown_empty(f.fd, _gid(uid), _gid(gid))
            if valid & C.SETATTR_MODE:
                self._chmod(f, m.mode & 0o7777)
                if m.mode & (stat.S_ISUID | stat.S_ISGID):
                    self._rearm_killpriv(f)
            if valid & C.SETATTR_SIZE:
                self._truncate(f, m.size)
                if f.uid != 0 and f.fmt == _REG and not valid & C.SETATTR_MODE:
                    # A truncate by an unprivileged uid clears set-id bits, as
                    # truncate(2) does locally; with MODE in the same request the
                    # client chose the mode itself (the Linux client sends the
                    # cleared mode with the size when its inode shows the bits).
                    self._kill_privs(f)
            if valid & (C.SETATTR_ATIME | C.SETATTR_MTIME):
                self._utimes(f, m)
        finally:
            self._put(f)
        return Rsetattr(m.tag)

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
        unsupported = False
        if _empty_path_ok["fchmodat2"]:
            try:
                _sys.fchmod_empty(f.fd, mode)
                return
            except OSError as e:
                # ENOSYS: kernel < 6.6; EINVAL: may be AT_EMPTY_PATH unsupported,
                # known for sure only if the fallback below then succeeds.
                if e.errno not in (errno.ENOSYS, errno.EINVAL):
                    raise
                unsupported = True
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
        if unsupported:
            _empty_path_ok["fchmodat2"] = False

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

    def _utimes(self, f: _Fid, m: Tsetattr) -> None:
        valid = m.valid
        omit = (0, _sys.UTIME_OMIT)
        now = (0, _sys.UTIME_NOW)
        if valid & C.SETATTR_ATIME:
            at = (m.atime_sec, m.atime_nsec) if valid & C.SETATTR_ATIME_SET else now
        else:
            at = omit
        if valid & C.SETATTR_MTIME:
            mt = (m.mtime_sec, m.mtime_nsec) if valid & C.SETATTR_MTIME_SET else now
        else:
            mt = omit
        unsupported = False
        if _empty_path_ok["utimensat"]:
            try:
                _sys.utimensat(f.fd, b"", at, mt, _sys.AT_EMPTY_PATH | _sys.AT_SYMLINK_NOFOLLOW)
                return
            except OSError as e:
                # Kernels without AT_EMPTY_PATH support answer ENOENT or EINVAL;
                # EINVAL may also be a bad time: decided by the fallback's result.
                if e.errno not in (errno.ENOENT, errno.EINVAL):
                    raise
                unsupported = True
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
        if unsupported:
            _empty_path_ok["utimensat"] = False

    def lopen(self, m: Tlopen) -> Rlopen:
        """Open the fid's file for I/O (once per fid; a second Tlopen is EINVAL).

        Flags are mapped bit by bit to the host's (see ``_sys.host_open_flags``);
        O_CLOEXEC and O_NOFOLLOW are always added, so a symlink is ELOOP.
        """
        flags = m.flags
        if self._ro and flags & (C.L_O_ACCMODE | C.L_O_TRUNC):
            self._deny("lopen for writing")
        hflags = _sys.host_open_flags(flags)
        f = self._get(m.fid)
        try:
            if f.xmode or f.ofd >= 0:
                raise _err(errno.EINVAL)
            fmt = f.fmt
            if fmt == _DIR and flags & (C.L_O_ACCMODE | C.L_O_TRUNC):
                raise _err(errno.EISDIR)
            ofd = self._reopen(f, hflags)
            with self._lock:
                taken = f.ofd >= 0
                if not taken:
                    f.ofd = ofd
                    f.oacc = flags & C.L_O_ACCMODE
                    f.killpriv = fmt == _REG and f.uid != 0 and f.oacc in (
                        C.L_O_WRONLY, C.L_O_RDWR)
                    if fmt == _DIR:
                        f.dirlock = threading.Lock()
            if taken:
                _close(ofd)
                raise _err(errno.EINVAL)
            if flags & C.L_O_TRUNC and fmt == _REG and f.uid != 0:
                self._kill_privs(f)  # open(O_TRUNC) by that uid clears them locally
            return Rlopen(m.tag, f.qid, 0)
        finally:
            self._put(f)

    def lcreate(self, m: Tlcreate) -> Rlcreate:
        """Create and open a regular file in the fid's directory; the fid becomes it.

        O_CREAT|O_EXCL|O_NOFOLLOW are forced, the file is given to (fid uid, gid),
        then its mode is exactly ``mode & 0o7777`` whatever the process umask (see
        ``_exact_mode``).
        """
        if self._ro:
            self._deny("lcreate")
        name = m.name
        _check_name(name)
        hflags = (_sys.host_open_flags(m.flags) & ~os.O_DIRECTORY) | _O_CREATE
        f = self._get(m.fid)
        try:
            if f.xmode or f.ofd >= 0:
                raise _err(errno.EINVAL)
            if f.fmt != _DIR:
                raise _err(errno.ENOTDIR)
            dfd = f.fd
            ofd = os.open(name, hflags, m.mode & _CREATE_BITS, dir_fd=dfd)
            try:
                st = _fstat(ofd)
                if self.point.can_chown:
                    uid, gid = f.uid, _gid(m.gid)
                    # Skipped when the kernel already gave the file those ids: a
                    # chown to the same ids changes nothing but the ctime.
                    if st.st_uid != uid or (gid != -1 and st.st_gid != gid):
                        os.fchown(ofd, uid, gid)
                want = m.mode & 0o7777
                if stat.S_IMODE(st.st_mode) != want:  # set-id bits, or the umask narrowed it
                    os.fchmod(ofd, want)
            except BaseException:
                _close(ofd)
                try:
                    os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass
                raise
            qid = Qid(0, 0, self.point.qid_path(st.st_dev, st.st_ino))  # a new regular file
            with self._lock:
                ok = f.ofd < 0 and f.fmt == _DIR and f.fd == dfd
                if ok:
                    if f.parent >= 0:
                        f.retired.append(f.parent)
                    f.parent = dfd
                    f.pident = (dfd, f.dev, f.ino)  # dfd is this directory fid's own fd
                    f.fd = f.ofd = ofd  # one fd for both (see _Fid): no dup, no extra close
                    f.oacc = m.flags & C.L_O_ACCMODE
                    # a later write by this uid clears set-id bits the mode gives
                    f.killpriv = (
                        bool(want & (stat.S_ISUID | stat.S_ISGID)) and f.uid != 0
                        and f.oacc in (C.L_O_WRONLY, C.L_O_RDWR))
                    f.path = (*f.path, name)
                    f.dev, f.ino, f.fmt, f.qid = st.st_dev, st.st_ino, _REG, qid
            if not ok:  # the fid changed meanwhile (a concurrent request): undo the create
                _close(ofd)
                try:
                    os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass
                raise _err(errno.EINVAL)
            return Rlcreate(m.tag, qid, 0)
        finally:
            self._put(f)

    def mkdir(self, m: Tmkdir) -> Rmkdir:
        if self._ro:
            self._deny("mkdir")
        _check_name(m.name)
        d = self._get(m.dfid)
        try:
            os.mkdir(m.name, m.mode & _CREATE_BITS, dir_fd=d.fd)
            qid = self._new_entry(d, m.name, d.uid, _gid(m.gid), m.mode & 0o7777)
        finally:
            self._put(d)
        return Rmkdir(m.tag, qid)

    def mknod(self, m: Tmknod) -> Rmknod:
        """mknod as requested (regular, FIFO, socket, char, block); whether device
        nodes can be made is up to the gofer's capabilities (the daemon has no
        CAP_MKNOD), and they are never opened (see ``_reopen``)."""
        if self._ro:
            self._deny("mknod")
        _check_name(m.name)
        d = self._get(m.dfid)
        try:
            fmt = m.mode & _S_IFMT
            # Linux dev_t: 12-bit major, 20-bit minor (32-bit with the high parts);
            # larger numbers cannot name a device (makedev would overflow).
            if m.major > 0xFFFFFFF or m.minor > 0xFFFFFFF:
                raise _err(errno.EINVAL)
            os.mknod(m.name, fmt | (m.mode & _CREATE_BITS), os.makedev(m.major, m.minor),
                     dir_fd=d.fd)
            qid = self._new_entry(d, m.name, d.uid, _gid(m.gid), m.mode & 0o7777)
        finally:
            self._put(d)
        return Rmknod(m.tag, qid)

    def symlink(self, m: Tsymlink) -> Rsymlink:
        if self._ro:
            self._deny("symlink")
        _check_name(m.name)
        if b"\0" in m.symtgt:
            raise _err(errno.EINVAL)
        d = self._get(m.fid)
        try:
            os.symlink(m.symtgt, m.name, dir_fd=d.fd)
            qid = self._new_entry(d, m.name, d.uid, _gid(m.gid), 0)
        finally:
            self._put(d)
        return Rsymlink(m.tag, qid)

    def readlink(self, m: Treadlink) -> Rreadlink:
        f = self._get(m.fid)
        try:
            if f.fmt != _LNK or f.fd < 0:
                raise _err(errno.EINVAL)
            target = os.readlink(b"", dir_fd=f.fd)
        finally:
            self._put(f)
        return Rreadlink(m.tag, target)

    def link(self, m: Tlink) -> Rlink:
        """Hard-link fid's file into dfid as ``name`` (linkat without following)."""
        if self._ro:
            self._deny("link")
        _check_name(m.name)
        d = self._get(m.dfid)
        try:
            f = self._get(m.fid)
            try:
                if f.fmt == _DIR:
                    raise _err(errno.EPERM)
                pfd, oname, owned = self._locate(f, mutating=True)
                try:
                    os.link(oname, m.name, src_dir_fd=pfd, dst_dir_fd=d.fd, follow_symlinks=False)
                finally:
                    if owned:
                        _close(pfd)
            finally:
                self._put(f)
        finally:
            self._put(d)
        return Rlink(m.tag)

    def rename(self, m: Trename) -> Rrename:
        """Rename fid's file into dfid as ``name``; fids keep working (they hold fds)."""
        if self._ro:
            self._deny("rename")
        _check_name(m.name)
        d = self._get(m.dfid)
        try:
            f = self._get(m.fid)
            try:
                pfd, oname, owned = self._locate(f, mutating=True)
                try:
                    os.rename(oname, m.name, src_dir_fd=pfd, dst_dir_fd=d.fd)
                finally:
                    if owned:
                        _close(pfd)
                self._renamed(f.path, (*d.path, m.name), f.dev, f.ino, d.fd)
            finally:
                self._put(f)
        finally:
            self._put(d)
        return Rrename(m.tag)

    def renameat(self, m: Trenameat) -> Rrenameat:
        if self._ro:
            self._deny("renameat")
        _check_name(m.oldname)
        _check_name(m.newname)
        od = self._get(m.olddirfid)
        try:
            nd = self._get(m.newdirfid)
            try:
                os.rename(m.oldname, m.newname, src_dir_fd=od.fd, dst_dir_fd=nd.fd)
                try:
                    st = os.stat(m.newname, dir_fd=nd.fd, follow_symlinks=False)
                except OSError:
                    pass
                else:
                    self._renamed(
                        (*od.path, m.oldname), (*nd.path, m.newname), st.st_dev, st.st_ino, nd.fd
                    )
            finally:
                self._put(nd)
        finally:
            self._put(od)
        return Rrenameat(m.tag)

    def unlinkat(self, m: Tunlinkat) -> Runlinkat:
        """unlink, or rmdir with AT_REMOVEDIR (any other flag: EINVAL)."""
        if self._ro:
            self._deny("unlinkat")
        _check_name(m.name)
        if m.flags & ~C.AT_REMOVEDIR:
            raise _err(errno.EINVAL)
        d = self._get(m.dirfid)
        try:
            if m.flags & C.AT_REMOVEDIR:
                os.rmdir(m.name, dir_fd=d.fd)
            else:
                os.unlink(m.name, dir_fd=d.fd)
        finally:
            self._put(d)
        return Runlinkat(m.tag)

    def read_blocks(self, fid: int) -> bool:
        """Whether a Tread of ``fid`` should go to a worker thread whatever its size.

        True for an open file that is neither a regular file nor a directory
        (a FIFO: its fd is non-blocking, but what it does is up to another
        process, so keep it off the event loop).  Unknown fids: False (the
        read fails at once with EBADF).  Lock-free: a stale answer only
        changes which thread runs the read.
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
        f = self._get(fid)
        try:
            ofd = f.ofd
            if ofd < 0:
                if f.xmode == _XREAD:
                    return max(0, min(count, len(f.xbuf) - offset))
                raise _err(errno.EBADF)
            fmt = f.fmt
            if fmt == _DIR:
                raise _err(errno.EISDIR)
            if fmt != _REG:
                return count
            if offset > _OFF_MAX:
                raise _err(errno.EINVAL)
            return max(0, min(count, _fstat(ofd).st_size - offset))
        finally:
            self._put(f)

    def read_into(self, fid: int, offset: int, view: memoryview) -> int:
        """Tread: fill ``view`` from the fid at ``offset`` (preadv, no copy); bytes read.

        An opened directory gives EISDIR (whatever the count), an unopened fid EBADF.
        """
        f = self._get(fid)
        try:
            ofd = f.ofd
            if ofd < 0:
                if f.xmode == _XREAD:
                    buf = f.xbuf
                    if offset >= len(buf):
                        return 0
                    n = min(len(view), len(buf) - offset)
                    view[:n] = memoryview(buf)[offset:offset + n]
                    return n
                raise _err(errno.EBADF)
            fmt = f.fmt
            if fmt == _FIFO:
                return os.readv(ofd, [view])
            if fmt == _DIR:  # the kernel says EISDIR too, but not for a 0-byte read
                raise _err(errno.EISDIR)
            return _preadv(ofd, [view], offset)
        except OverflowError:
            raise _err(errno.EINVAL) from None
        finally:
            self._put(f)

    def write(self, m: Twrite) -> Rwrite:
        """pwrite on the open fd (appends anyway under O_APPEND), or fill an xattr fid."""
        if self._ro:
            self._deny("write")
        f = self._get(m.fid)
        try:
            ofd = f.ofd
            if ofd < 0:
                if f.xmode == _XWRITE:
                    return self._xattr_write(f, m)
                raise _err(errno.EBADF)
            if f.fmt == _FIFO:
                n = os.write(ofd, m.data)
            else:
                if f.killpriv and m.data:
                    self._write_kill(f)
                n = _pwrite(ofd, m.data, m.offset)
            return Rwrite(m.tag, n)
        except OverflowError:
            raise _err(errno.EINVAL) from None
        finally:
            self._put(f)

    def splice_read(self, fid: int, offset: int, count: int, pipe_w: int) -> int:
        """Tread of a regular file into the pipe ``pipe_w`` (page references, no
        copy; the server's spliced reads); bytes moved, 0 at EOF.  -1 when this
        is not that case or splice refuses it (not a regular file, an xattr or
        unopened fid, a file system without splice): :meth:`read_into` answers,
        so errors are the same either way.  Unknown fids: EBADF.
        """
        f = self._get(fid)
        try:
            ofd = f.ofd
            if ofd < 0 or f.fmt != _REG:
                return -1
            try:
                return _splice(ofd, pipe_w, count, offset)
            except (OSError, OverflowError):
                return -1
        finally:
            self._put(f)

    def write_regular(self, fid: int, offset: int, data: memoryview) -> int:
        """Twrite's common case without message objects (the server's fast path):
        ``pwrite`` to ``fid`` when it is a regular file opened on a read-write
        attach; bytes written.  -1 for every other case (read-only attach,
        xattr fid, FIFO or device, unopened fid), which :meth:`write` answers,
        so both give the same replies.  Unknown fids: EBADF, as in :meth:`write`.
        """
        if self._ro:
            return -1
        f = self._get(fid)
        try:
            ofd = f.ofd
            if ofd < 0 or f.fmt != _REG:
                return -1
            if f.killpriv and data:  # one attribute test per write; see _kill_privs
                self._write_kill(f)
            return _pwrite(ofd, data, offset)
        except OverflowError:
            raise _err(errno.EINVAL) from None
        finally:
            self._put(f)

    def readdir(self, m: Treaddir) -> Rreaddir:
        """Whole entries from cookie ``offset`` up to ``count`` bytes (clamped to msize-24).

        Cookies are the kernel's own ``d_off`` values (getdents64 + lseek),
        which stay valid while entries are added or removed between calls.
        "." and ".." are included (Linux passes them on); ".." of the attach
        root reports the root itself.  A count too small for the next entry is
        EINVAL (as getdents64 does), so a small buffer is never mistaken for
        the end of the directory.
        """
        f = self._get(m.fid)
        try:
            if f.fmt != _DIR:
                raise _err(errno.ENOTDIR)
            lock = f.dirlock
            if f.ofd < 0 or lock is None:
                raise _err(errno.EBADF)
            count = min(m.count, self._iomax)
            with lock:
                # Unchanged directories are answered from a cached encoded listing
                # (see _dircache.py); self._readdir is the uncached path.
                return Rreaddir(m.tag, self._dirs.read(
                    f.ofd, m.offset, count, lambda o, c: self._readdir(f, o, c)))
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

    def fsync(self, m: Tfsync) -> Rfsync:
        f = self._get(m.fid)
        try:
            if f.ofd < 0:
                raise _err(errno.EBADF)
            if m.datasync:
                os.fdatasync(f.ofd)
            else:
                os.fsync(f.ofd)
        finally:
            self._put(f)
        return Rfsync(m.tag)

    def statfs(self, m: Tstatfs) -> Rstatfs:
        """fstatvfs of the fid's fd.  ``type`` is V9FS_MAGIC, not the host's magic:
        the client is looking at a 9P file system and must not apply host
        file-system-specific assumptions (or learn what the host runs)."""
        f = self._get(m.fid)
        try:
            if f.fd < 0:  # an xattr-read fid has no file behind it
                raise _err(errno.EBADF)
            s = os.statvfs(f.fd)
        finally:
            self._put(f)
        return Rstatfs(
            m.tag, _sys.V9FS_MAGIC, s.f_frsize or s.f_bsize, s.f_blocks, s.f_bfree, s.f_bavail,
            s.f_files, s.f_ffree, s.f_fsid & _MASK64, s.f_namemax,
        )

    def lock(self, m: Tlock) -> Rlock:
        """POSIX byte-range lock, held on the host as an open-file-description lock.

        Locks are OFD locks (F_OFD_SETLK) on the fid's open file, so two fids
        (two opens in the client, or two clients, or a host process) really
        conflict, which process-owned fcntl locks would never do inside one
        gofer.  Within one fid the lock owner (proc_id, client_id) is kept
        apart too: the first owner uses the fid's open fd, every further owner
        (a forked child sharing the open file) gets a description of its own,
        so one owner's unlock never drops another's lock on the host.  (Two
        opens of one file by one process therefore conflict on the host where
        POSIX would merge them; a Linux client checks its own processes'
        conflicts locally first, so only that corner differs.)  The fid's open
        mode is checked as fcntl does (read lock: open for reading; write
        lock: for writing; else EBADF).  Never waits: a conflict is BLOCKED,
        and the Linux client retries when it asked for a blocking lock.
        length 0 means "to the end of the file".
        """
        ltype = m.type
        if ltype not in (C.LOCK_TYPE_RDLCK, C.LOCK_TYPE_WRLCK, C.LOCK_TYPE_UNLCK):
            raise _err(errno.EINVAL)
        req = self._flock(ltype, m.start, m.length)
        end = m.start + m.length if m.length else _LOCK_EOF
        f = self._get(m.fid)
        try:
            if f.ofd < 0:
                raise _err(errno.EBADF)
            if ltype == C.LOCK_TYPE_RDLCK and f.oacc == C.L_O_WRONLY:
                raise _err(errno.EBADF)
            if ltype == C.LOCK_TYPE_WRLCK and f.oacc == C.L_O_RDONLY:
                raise _err(errno.EBADF)
            key = (m.proc_id, bytes(m.client_id))
            with self._locks_lock:
                lockers = f.lockers
                if lockers is None:
                    lockers = f.lockers = {}
                owner = lockers.get(key)
                if ltype == C.LOCK_TYPE_UNLCK:
                    if owner is not None:
                        held = _ranges_sub(owner.held, m.start, end)
                        self._track_ranges(owner, held)  # (an unlock may split a range)
                        fcntl.fcntl(owner.fd, fcntl.F_OFD_SETLK, req)
                        self._lock_ranges += len(held) - len(owner.held)
                        owner.held = held
                        if not owner.held:
                            self._drop_owner(lockers, key)
                    return Rlock(m.tag, C.LOCK_SUCCESS)
                if owner is None:
                    if all(o.own for o in lockers.values()):
                        owner = _LockOwner(f.ofd, False)
                    else:
                        if self._lock_fds >= _MAX_LOCK_FDS or not self.charge_fds(1):
                            raise _err(errno.ENOLCK)
                        try:
                            owner = _LockOwner(self._reopen(f, _ACC_HOST[f.oacc]), True)
                        except BaseException:
                            self.release_fds(1)
                            raise
                        self._lock_fds += 1
                    lockers[key] = owner
                held = _ranges_add(owner.held, m.start, end)
                try:
                    # checked before the host lock is taken: no lock we do not track
                    self._track_ranges(owner, held)
                    fcntl.fcntl(owner.fd, fcntl.F_OFD_SETLK, req)
                except OSError as e:
                    if not owner.held:
                        self._drop_owner(lockers, key)
                    if e.errno in (errno.EAGAIN, errno.EACCES):
                        return Rlock(m.tag, C.LOCK_BLOCKED)
                    raise
                self._lock_ranges += len(held) - len(owner.held)
                owner.held = held
        finally:
            self._put(f)
        return Rlock(m.tag, C.LOCK_SUCCESS)

    def _track_ranges(self, owner: _LockOwner, held: list[tuple[int, int]]) -> None:
        """ENOLCK unless ``owner`` may track ``held`` instead of its ranges now:
        at most _MAX_LOCK_RANGES per owner and MAX_SESSION_LOCK_RANGES per session."""
        if len(held) > _MAX_LOCK_RANGES or (
            self._lock_ranges + len(held) - len(owner.held) > MAX_SESSION_LOCK_RANGES
        ):
            raise _err(errno.ENOLCK)

    def _drop_owner(self, lockers: dict[tuple[int, bytes], _LockOwner], key: tuple[int, bytes]) -> None:
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

    def getlock(self, m: Tgetlock) -> Rgetlock:
        """F_OFD_GETLK: the first lock that would conflict with this owner's, or UNLCK.

        The Linux client sends type UNLCK: its posix_test_lock() has already
        overwritten the caller's type when no local lock conflicted.  That is
        tested as a write lock, i.e. "is any other lock held on this range",
        which is what F_GETLK callers (lock files, pid files) ask nearly always.
        """
        ltype = m.type
        if ltype == C.LOCK_TYPE_UNLCK:
            ltype = C.LOCK_TYPE_WRLCK
        elif ltype not in (C.LOCK_TYPE_RDLCK, C.LOCK_TYPE_WRLCK):
            raise _err(errno.EINVAL)
        req = self._flock(ltype, m.start, m.length)
        f = self._get(m.fid)
        try:
            if f.ofd < 0:
                raise _err(errno.EBADF)
            with self._locks_lock:
                lockers = f.lockers
                owner = lockers.get((m.proc_id, bytes(m.client_id))) if lockers else None
                if owner is not None:
                    fd = owner.fd  # the owner's own locks never conflict with it
                elif lockers and not all(o.own for o in lockers.values()):
                    fd = -1  # the fid's fd holds another owner's locks: ask from a fresh one
                else:
                    fd = f.ofd
                if fd >= 0:
                    res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, req)
            if fd < 0:
                tmp = self._reopen(f, _ACC_HOST[f.oacc])
                try:
                    res = fcntl.fcntl(tmp, fcntl.F_OFD_GETLK, req)
                finally:
                    _close(tmp)
        finally:
            self._put(f)
        ltype, _, start, length, pid = _sys.FLOCK.unpack(res)
        if ltype == C.LOCK_TYPE_UNLCK:
            return Rgetlock(m.tag, C.LOCK_TYPE_UNLCK, m.start, m.length, m.proc_id, m.client_id)
        return Rgetlock(m.tag, ltype, start, length, pid if pid > 0 else 0, b"")

    @staticmethod
    def _flock(ltype: int, start: int, length: int) -> bytes:
        if start > 0x7FFFFFFFFFFFFFFF or length > 0x7FFFFFFFFFFFFFFF:
            raise _err(errno.EINVAL)
        return _sys.FLOCK.pack(ltype, os.SEEK_SET, start, length, 0)

    # ------------------------------------------------------------------ xattrs

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

    def xattrwalk(self, m: Txattrwalk) -> Rxattrwalk:
        """``newfid`` gets the value of xattr ``name`` (or, for "", the NUL-terminated
        list of names) for Tread; the reply says its size.

        Only the ``user.`` namespace is served (as gVisor's gofer does): the
        others hold host policy (``security.capability``, SELinux labels,
        ``trusted.overlay.*`` that steers host overlay mounts) that a sandbox
        must neither read nor set.  Other names are EOPNOTSUPP and are left
        out of listings.
        """
        name = m.name
        if b"\0" in name:
            raise _err(errno.EINVAL)
        if name and not name.startswith(_XATTR_NS):
            raise _err(errno.EOPNOTSUPP)
        f = self._get(m.fid)
        try:
            if f.xmode or f.fd < 0:
                raise _err(errno.EBADF)
            self._in_use(m.newfid, m.fid)
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
            nf = _Fid(-1, -1, f.path, f.uid, f.dev, f.ino, f.fmt, f.qid)
            nf.xmode = _XREAD
            self._charge_xattr(nf, len(data))
            nf.xbuf = data
            self._install(m.newfid, nf, f if m.newfid == m.fid else None)
            return Rxattrwalk(m.tag, len(data))
        finally:
            self._put(f)

    def xattrcreate(self, m: Txattrcreate) -> Rxattrcreate:
        """Turn ``fid`` into a write-only xattr fid; Twrites fill exactly
        ``attr_size`` bytes and Tclunk commits (size 0: remove the xattr, which is
        how Linux v9fs removes one).  ``user.`` names only (see :meth:`xattrwalk`)."""
        if self._ro:
            self._deny("xattrcreate")
        name = m.name
        if not name or b"\0" in name:
            raise _err(errno.EINVAL)
        if not name.startswith(_XATTR_NS):
            raise _err(errno.EOPNOTSUPP)
        if m.attr_size > XATTR_MAX:
            raise _err(errno.E2BIG)
        if m.flags & ~(C.XATTR_CREATE | C.XATTR_REPLACE) or m.flags == C.XATTR_CREATE | C.XATTR_REPLACE:
            raise _err(errno.EINVAL)
        f = self._get(m.fid)
        try:
            with self._lock:
                ok = not f.xmode and f.fd >= 0
                if ok:
                    if f.ofd >= 0:
                        # The fid is an xattr fid now: no more file I/O through it.
                        if f.ofd != f.fd:
                            f.retired.append(f.ofd)  # closed: its locks go with it
                        else:
                            # After Tlcreate that fd is also the fid's own fd and
                            # stays open: drop the locks taken through it instead.
                            try:
                                fcntl.fcntl(f.ofd, fcntl.F_OFD_SETLK, _UNLOCK_ALL)
                            except OSError:
                                pass
                        f.ofd = -1
                    self._charge_xattr(f, m.attr_size)
                    f.xmode = _XWRITE
                    f.xname = name
                    f.xsize = m.attr_size
                    f.xbuf = bytearray()  # grows with the writes: announcing costs nothing
                    f.xlen = 0
                    f.xflags = m.flags
            if not ok:
                raise _err(errno.EBADF)
            self._forget_locks(f)  # its open fd is retired: so are the locks held on it
        finally:
            self._put(f)
        return Rxattrcreate(m.tag)

    def _charge_xattr(self, f: _Fid, size: int) -> None:
        """Charge ``size`` bytes of xattr buffer held by ``f`` to the session (ENOMEM past the cap)."""
        acct = self._xacct
        if acct[0] + size > XATTR_SESSION_MAX:
            raise _err(errno.ENOMEM)
        acct[0] += size
        f.xcharge += size
        f.xacct = acct

    def _xattr_write(self, f: _Fid, m: Twrite) -> Rwrite:
        data = m.data
        n = len(data)
        end = m.offset + n
        if end > f.xsize:
            raise _err(errno.ERANGE)
        buf = f.xbuf
        assert isinstance(buf, bytearray)
        if m.offset > len(buf):
            buf.extend(bytes(m.offset - len(buf)))
        buf[m.offset:end] = data
        if end > f.xlen:
            f.xlen = end
        return Rwrite(m.tag, n)

    def _xattr_commit(self, f: _Fid) -> None:
        if f.xlen != f.xsize:
            raise _err(errno.EINVAL)
        fd, owned = self._xattr_fd(f)
        if fd < 0:
            raise _err(errno.EOPNOTSUPP)
        try:
            if f.xsize == 0:
                os.removexattr(fd, f.xname)
            else:
                os.setxattr(fd, f.xname, bytes(f.xbuf), f.xflags)
        finally:
            if owned:
                _close(fd)
