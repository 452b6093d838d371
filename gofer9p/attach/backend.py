"""The fid-level backend: one connection's fids and the host operations on them.

``Backend`` is the file system side of a connection (gVisor's ``p9.File``,
virtiofsd's ``FileSystem`` trait): its methods take fids and plain values and
return plain values (qids, stat fields, byte counts) or raise ``OSError``; it
knows no message.  It is put together from one module per concern:

- ``_fids``: the fid table, references (``with self._ref(fid) as f``), the fds
  and bytes fids charge, the reclaim of idle fids' fds and their reopening;
- ``_budget``: the process's host-fd budget, split between its connections;
- ``_paths``: attach-root containment and the names fids are linked under;
- ``_reopen``: an fd for I/O on a fid's file;
- ``_walk``: attach, walk and clone;
- ``_attrs``: getattr, setattr, statfs, readlink, set-id clearing;
- ``_entries``: create, link, rename, remove;
- ``_io``: open, read (buffer or splice), write, fsync;
- ``_dirs``: readdir (with ``_dircache``);
- ``_xattrs``: xattrwalk, xattrcreate and their fids;
- ``_locks``: POSIX byte-range locks.

``FileSystem`` is the interface the protocol side (``session.Session``) calls,
checked against ``Backend`` by mypy (``_implements``), as gVisor's
``var _ lisafs.ServerImpl = …``.

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

Permissions are not checked by the backend.  Like gVisor's gofer and QEMU's passthrough
backend, the gofer runs with DAC_OVERRIDE/FOWNER and the client (the sandbox's
kernel, or the guest kernel with ``access=client``) enforces file permissions
from the attributes we report.  What the backend enforces is *which* files can be
reached (the attach root).

Read-only attach points.  The backend assumes a read-write point: it has no
read-only check.  The read-only policy (EROFS, or ``AttachPoint.panic`` with
panic-on-write) is applied once, by the connection core
(``gofer9p.connection``), to every request ``protocol.policy`` marks as
mutating, before any handler runs, as virtiofsd puts read-only in a wrapper
around the read-write file system instead of a check in every method.  Anything
else that drives a ``Session`` or ``Backend`` of a read-only point directly
gets no refusal.

Re-opening and names.  An O_PATH fd cannot do I/O, and without /proc it
cannot be re-opened directly: a file is re-opened (Tlopen, truncate, xattrs)
through a file handle of the fid's own fd where the kernel allows it (no
name involved), else by name.  Some operations need the name anyway (Tremove,
Tlink, Trename).  So a non-directory fid keeps an ``O_PATH`` fd of the
directory it was walked from plus its name (that fd is shared by every fid
walked from the same directory fid, see ``_fids``); a directory fid keeps no
parent fd (it can always reach its parent with ``openat(fd, "..")``).  The
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
table lock guards the table and reference counts only; no system call other
than ``dup``/``close`` runs under it (``_fids.py``).  A second lock serializes
Tlock/Tgetlock (non-blocking fcntl calls) with the per-owner lock bookkeeping.

One class in layers.  Each module adds one concern to the class below it, in a
single chain: ``FidTable`` (``_fids``) <- ``Dirs`` <- ``Paths`` <- ``Walk`` <-
``Reopen`` <- ``Locks`` <- ``Attrs`` <- ``Entries`` <- ``Xattrs`` <- ``FileIO``
(``_io``) <- ``Backend``.  A chain, not mixins: mypyc compiles single-inheritance
classes natively (a method call is a C call, an attribute a struct field), and the
compiled build's attach layer is most of what a request costs in Python (#17).  A
layer uses only what the layers below it define.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Protocol

from gofer9p.attach._budget import FdBudget
from gofer9p.attach._common import _err
from gofer9p.attach._dircache import MAX_LISTING, MAX_TOTAL, DirCache
from gofer9p.attach._fids import _XWRITE, FDS_PER_FID, FID_BYTES, XATTR_SESSION_MAX
from gofer9p.attach._io import FileIO
from gofer9p.attach._locks import LOCK_RANGE_BYTES, MAX_SESSION_LOCK_RANGES
from gofer9p.attach._xattrs import XATTR_MAX
from gofer9p.attach.point import AttachPoint
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Qid

__all__ = [
    "FDS_PER_FID",
    "XATTR_MAX",
    "XATTR_SESSION_MAX",
    "Backend",
    "FileSystem",
    "session_memory_bound",
]


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


class FileSystem(Protocol):
    """What the protocol side asks of a connection's file system, by fid.

    Every method raises ``OSError`` (its errno is the Rlerror); fids are the
    client's numbers.  Mutating methods mutate whatever the attach point's flags:
    a read-only point's mutating requests are refused before they get here (the
    module docstring).
    """

    msize: int
    fd_budget: FdBudget

    def set_msize(self, msize: int) -> None: ...
    def close(self) -> None: ...
    def fid_count(self) -> int: ...
    def fds_charged(self) -> int: ...
    def charge_fds(self, n: int) -> bool: ...
    def release_fds(self, n: int) -> None: ...
    def reset(self) -> None: ...
    def attach(self, fid: int, n_uname: int, uname: bytes) -> Qid: ...
    def walk(self, fid: int, newfid: int, names: Sequence[bytes] = ()) -> list[Qid]: ...
    def clunk(self, fid: int) -> None: ...
    def remove(self, fid: int) -> None: ...
    def getattr(self, fid: int, request_mask: int) -> tuple[int, ...]: ...
    def getattr_frame(self, tag: int, fid: int, request_mask: int) -> bytes: ...
    def setattr(
        self, fid: int, valid: int, mode: int, uid: int, gid: int, size: int,
        atime: tuple[int, int], mtime: tuple[int, int],
    ) -> None: ...
    def statfs(self, fid: int) -> tuple[int, ...]: ...
    def readlink(self, fid: int) -> bytes: ...
    def open(self, fid: int, flags: int) -> Qid: ...
    def lcreate(self, fid: int, name: bytes, flags: int, mode: int, gid: int) -> Qid: ...
    def mkdir(self, dfid: int, name: bytes, mode: int, gid: int) -> Qid: ...
    def mknod(
        self, dfid: int, name: bytes, mode: int, major: int, minor: int, gid: int
    ) -> Qid: ...
    def symlink(self, fid: int, name: bytes, target: bytes, gid: int) -> Qid: ...
    def link(self, dfid: int, fid: int, name: bytes) -> None: ...
    def rename(self, fid: int, dfid: int, name: bytes) -> None: ...
    def renameat(
        self, olddirfid: int, oldname: bytes, newdirfid: int, newname: bytes
    ) -> None: ...
    def unlinkat(self, dirfid: int, name: bytes, flags: int) -> None: ...
    def read_blocks(self, fid: int) -> bool: ...
    def read_size(self, fid: int, offset: int, count: int) -> int: ...
    def read(
        self, fid: int, offset: int, view: memoryview, pipe_w: int = -1, count: int = 0,
        inline: bool = False,
    ) -> int: ...
    def write(
        self, fid: int, offset: int, data: bytes | bytearray | memoryview, general: bool = False
    ) -> int: ...
    def fsync(self, fid: int, datasync: int) -> None: ...
    def readdir(self, fid: int, offset: int, count: int) -> bytes | bytearray | memoryview: ...
    def xattrwalk(self, fid: int, newfid: int, name: bytes) -> int: ...
    def xattrcreate(self, fid: int, name: bytes, attr_size: int, flags: int) -> None: ...
    def lock(
        self, fid: int, ltype: int, start: int, length: int, proc_id: int, client_id: bytes
    ) -> int: ...
    def getlock(
        self, fid: int, ltype: int, start: int, length: int, proc_id: int, client_id: bytes
    ) -> tuple[int, int, int, int, bytes]: ...


class Backend(FileIO):
    """One connection's fids on an attach point (see the module docstring).

    Safe against concurrent use from trio's thread and worker threads: every
    operation holds a reference on the fids it uses, and a fid's fds are
    closed only when no in-flight operation still uses them (``_fids``).
    """

    def __init__(
        self, point: AttachPoint, *, max_fids: int = 16384, msize: int = 4 << 20,
        fd_share: int = 1 << 62, fd_budget: FdBudget | None = None,
    ) -> None:
        super().__init__(point, max_fids=max_fids, fd_share=fd_share, fd_budget=fd_budget)
        self._dirs = DirCache()
        self.msize = msize
        self._iomax = 0
        self.set_msize(msize)

    def set_msize(self, msize: int) -> None:
        """Record the negotiated msize; Treaddir counts are clamped to msize - 24."""
        self.msize = msize
        self._iomax = max(msize - C.IOHDRSZ, 0)

    def clunk(self, fid: int) -> None:
        """Free ``fid``; an xattrcreate fid commits here and reports the commit's
        error (the server calls this as ``clunk_fid``).

        A fid no request is using (the common case) is let go of in the lock section
        that takes it out of the table: what ``_take`` then ``_put`` would do, in one
        section.  One in use (its fds are closed by the last reference) or with an
        xattr to commit is taken by reference, as every other request takes it."""
        with self._lock:
            f = self._fids.pop(fid, None)
            if f is None:
                raise _err(errno.EBADF)
            f.dead = True
            if not f.refs and f.xmode != _XWRITE:
                self._holders.pop(f, None)
                fds = self._let_go(f)
            else:
                f.refs += 1
                fds = None
        if fds is not None:
            self._close_fid(f, fds)
            return
        try:  # not ``with``: a hot entry (see FidTable._ref)
            if f.xmode == _XWRITE:
                self._xattr_commit(f)
        finally:
            self._put(f)


def _implements(b: Backend) -> FileSystem:
    """Never called: mypy checks here that ``Backend`` is a ``FileSystem``."""
    return b
