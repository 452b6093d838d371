"""One 9P2000.L connection's view of an attach point: T-messages in, backend calls, R-messages out.

``Session`` is the protocol side of a connection (gVisor's ``handlers.go``):
each handler takes a T-message, calls the fid-level backend
(``backend.Backend``, through its ``FileSystem`` interface) with plain values,
and makes the R-message from what it returns.  The server calls the backend's
plain entries for its commonest requests directly (``getattr_frame``,
``clunk_fid``, ``clone_fid``, ``write_regular``, ``read_into``,
``splice_read``, ...): they are the backend's own methods, so each request
has one implementation.  Nothing under ``attach/`` but this module knows a
message; one reply's frame is packed by the backend itself (Rgetattr, with
``codec.RGETATTR``: ``Attrs.getattr_frame`` says why).

The security model (what the backend enforces, and how) is in ``backend.py``.

Id mapping (``_idmap``, ``--map-uid``/``--map-gid``/``--squash-ids``) is
applied here, at the edge: the ids in Tattach, Tsetattr and the create
requests are translated guest -> host before the backend sees them, and
Rgetattr's host -> guest after it answers; the backend only ever sees host
ids.  A session without a map takes the un-mapped paths, chosen once in
``__init__`` (``getattr_frame`` is then the backend's own method).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Final

from gofer9p.attach._budget import FdBudget
from gofer9p.attach._common import _err
from gofer9p.attach._idmap import UNMAPPED, IdMap
from gofer9p.attach._walk import Walk
from gofer9p.attach.backend import (
    FDS_PER_FID,
    XATTR_MAX,
    XATTR_SESSION_MAX,
    Backend,
    FileSystem,
    session_memory_bound,
)
from gofer9p.attach.point import AttachPoint
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import RGETATTR
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

__all__ = [
    "BLOCKING_IO_THRESHOLD",
    "FDS_PER_FID",
    "XATTR_MAX",
    "XATTR_SESSION_MAX",
    "Session",
    "is_blocking",
    "session_memory_bound",
]

BLOCKING_IO_THRESHOLD: Final = 64 * 1024
"""Reads/writes larger than this are worth a worker thread (see :func:`is_blocking`)."""

_NO_VIEW: Final = memoryview(b"")  # a spliced read fills no buffer


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
    """One connection: its backend and a handler per T-message.

    Handlers take the T-message and return the R-message (same tag) or raise
    ``OSError``; the server turns its errno into Rlerror.  ``handlers`` maps
    each T-message type to its handler, except Tversion, Tflush and Tread,
    which the server owns (Tread through :attr:`read_into`).

    The plain entries the server calls without message objects are the
    backend's own bound methods (no layer between): ``getattr_frame(tag, fid,
    mask)`` (the whole Rgetattr frame; with an id map, its owner translated by
    ``IdMap.getattr_mapper``), ``clunk_fid(fid)``,
    ``remove_fid(fid)``, ``clone_fid(fid, newfid)`` (Twalk with no names to
    another fid), ``walk_fid(fid, newfid, names)`` (any Twalk: the qids),
    ``open_fid(fid, flags)`` (Tlopen: the qid; one without O_TRUNC, inline),
    ``create_file(fid, name, flags, mode, gid)`` (Tlcreate: the qid; with an id map,
    the gid translated first), ``write_regular(fid, offset, data)`` (-1: not an open regular
    file on a read-write attach, see :meth:`write`), ``read_into(fid, offset, view)``
    (the backend's ``read``; the server passes ``inline``: ``BLOCKS`` for a FIFO),
    ``read_dir(fid, offset, count)`` (Treaddir: Rreaddir's data),
    ``read_size``, ``read_blocks``, ``charge_fds``, ``release_fds``,
    ``set_msize``, ``reset``, ``fid_count``, ``fds_charged``, ``close`` (the
    connection ended: its share of the fd budget goes back).
    ``backend`` is the ``FileSystem`` itself; ``fd_budget`` the process's host-fd
    budget it takes a share of (``fd_budget``, else a private one of ``fd_share``
    fds): ``limit``, ``in_use``, ``reclaims``, ``reopens``.

    ``idmap``: the export's id mapping (see the module docstring), None for none.
    """

    def __init__(
        self, point: AttachPoint, *, max_fids: int = 16384, msize: int = 4 << 20,
        fd_share: int = 1 << 62, fd_budget: FdBudget | None = None, idmap: IdMap | None = None,
    ) -> None:
        self.point = point
        b: FileSystem = Backend(
            point, max_fids=max_fids, msize=msize, fd_share=fd_share, fd_budget=fd_budget)
        self.backend = b
        self.idmap = idmap
        self.getattr_frame: Callable[[int, int, int], bytes] = (
            idmap.getattr_mapper(b.getattr_frame) if idmap is not None and idmap.maps_replies
            else b.getattr_frame)
        self.fd_budget: FdBudget = b.fd_budget
        self.clunk_fid: Callable[[int], None] = b.clunk
        self.remove_fid: Callable[[int], None] = b.remove
        self.clone_fid: Callable[[int, int], object] = b.walk
        self.walk_fid: Callable[[int, int, list[bytes]], list[Qid]] = b.walk
        self.open_fid: Callable[[int, int], Qid] = b.open
        self.create_file: Callable[[int, bytes, int, int, int], Qid] = (
            b.lcreate if idmap is None else self._create_mapped)
        self.write_regular: Callable[[int, int, memoryview], int] = b.write
        self.read_into = b.read  # (fid, offset, view, -1, 0, inline): FileSystem.read
        self.read_dir: Callable[[int, int, int], bytes | bytearray | memoryview] = b.readdir
        self.read_size: Callable[[int, int, int], int] = b.read_size
        self.read_blocks: Callable[[int], bool] = b.read_blocks
        self.charge_fds: Callable[[int], bool] = b.charge_fds
        self.release_fds: Callable[[int], None] = b.release_fds
        self.set_msize: Callable[[int], None] = b.set_msize
        self.reset: Callable[[], None] = b.reset
        self.fid_count: Callable[[], int] = b.fid_count
        self.fds_charged: Callable[[], int] = b.fds_charged
        self.close: Callable[[], None] = b.close
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

    @staticmethod
    def is_blocking(m: Message) -> bool:
        """:func:`is_blocking`, as the server's core asks its session (a method, not a
        class attribute bound to the function: the compiled class has no such attribute)."""
        return is_blocking(m)

    @property
    def msize(self) -> int:
        return self.backend.msize

    def splice_read(self, fid: int, offset: int, count: int, pipe_w: int) -> int:
        """Tread of a regular file into the pipe ``pipe_w`` (the server's spliced
        reads): the backend's read with a pipe; bytes moved, 0 at EOF, -1 when
        that does not apply (then :attr:`read_into` answers)."""
        return self.backend.read(fid, offset, _NO_VIEW, pipe_w, count)

    # --------------------------------------------------------------- handlers

    def auth(self, m: Tauth) -> Rauth:
        """No authentication scheme: the connection itself is the credential.

        EOPNOTSUPP, as QEMU answers; Linux v9fs never sends Tauth and attaches
        with afid = NOFID.
        """
        raise _err(errno.EOPNOTSUPP)

    def attach(self, m: Tattach) -> Rattach:
        """The backend's attach: ``aname`` selects nothing (the attach point is fixed
        per connection) and ``afid`` is ignored (there is no authentication to check).

        With an id map, the uid (``n_uname``, else ``uname``, resolved as the backend
        does) is the guest's and the fid gets its host uid.  A uid no range holds still
        attaches, as an owner of nothing (its creates are EPERM, see ``_entries``): Linux
        v9fs attaches every mount first with ``n_uname`` = NONUNAME as "nobody", which a
        map of the guest's real users need not cover, and refusing that attach would make
        the mount fail; the fid it makes serves the mount's root getattr only.
        """
        n_uname = m.n_uname
        ids = self.idmap
        if ids is not None:
            n_uname = ids.uid_to_host(Walk._uid(n_uname, m.uname))
        return Rattach(m.tag, self.backend.attach(m.fid, n_uname, m.uname))

    def walk(self, m: Twalk) -> Rwalk:
        return Rwalk(m.tag, self.backend.walk(m.fid, m.newfid, m.wnames))

    def clunk(self, m: Tclunk) -> Rclunk:
        self.backend.clunk(m.fid)
        return Rclunk(m.tag)

    def remove(self, m: Tremove) -> Rremove:
        self.backend.remove(m.fid)
        return Rremove(m.tag)

    def getattr(self, m: Tgetattr) -> Rgetattr:
        v = RGETATTR.unpack(self.getattr_frame(m.tag, m.fid, m.request_mask))
        return Rgetattr(m.tag, v[3], Qid(v[4], v[5], v[6]), *v[7:])

    def setattr(self, m: Tsetattr) -> Rsetattr:
        """The backend's setattr; with an id map, a chown's ids are the guest's
        (translated, EPERM for an id no range holds)."""
        uid, gid, valid = m.uid, m.gid, m.valid
        if self.idmap is not None:
            if valid & C.SETATTR_UID:
                uid = self._host_id(self.idmap.uid_to_host(uid))
            if valid & C.SETATTR_GID:
                gid = self._host_id(self.idmap.gid_to_host(gid))
        self.backend.setattr(
            m.fid, valid, m.mode, uid, gid, m.size,
            (m.atime_sec, m.atime_nsec), (m.mtime_sec, m.mtime_nsec),
        )
        return Rsetattr(m.tag)

    def statfs(self, m: Tstatfs) -> Rstatfs:
        return Rstatfs(m.tag, *self.backend.statfs(m.fid))

    def readlink(self, m: Treadlink) -> Rreadlink:
        return Rreadlink(m.tag, self.backend.readlink(m.fid))

    def lopen(self, m: Tlopen) -> Rlopen:
        return Rlopen(m.tag, self.backend.open(m.fid, m.flags), 0)

    @staticmethod
    def _host_id(host: int) -> int:
        """A translated id, or EPERM for a guest id no range holds (the kernel answers
        EOVERFLOW there; the client asked for an owner this export cannot record)."""
        if host == UNMAPPED:
            raise _err(errno.EPERM)
        return host

    def _host_gid(self, gid: int) -> int:
        """A create request's gid (with an id map) as the host gid the new entry gets."""
        assert self.idmap is not None
        return self._host_id(self.idmap.gid_to_host(gid))

    # Each create translates its gid only with a map: no call without one.
    def lcreate(self, m: Tlcreate) -> Rlcreate:
        return Rlcreate(m.tag, self.create_file(m.fid, m.name, m.flags, m.mode, m.gid), 0)

    def _create_mapped(self, fid: int, name: bytes, flags: int, mode: int, gid: int) -> Qid:
        """``create_file`` with an id map: the backend's lcreate with the host gid."""
        return self.backend.lcreate(fid, name, flags, mode, self._host_gid(gid))

    def mkdir(self, m: Tmkdir) -> Rmkdir:
        gid = m.gid if self.idmap is None else self._host_gid(m.gid)
        return Rmkdir(m.tag, self.backend.mkdir(m.dfid, m.name, m.mode, gid))

    def mknod(self, m: Tmknod) -> Rmknod:
        gid = m.gid if self.idmap is None else self._host_gid(m.gid)
        return Rmknod(m.tag, self.backend.mknod(m.dfid, m.name, m.mode, m.major, m.minor, gid))

    def symlink(self, m: Tsymlink) -> Rsymlink:
        gid = m.gid if self.idmap is None else self._host_gid(m.gid)
        return Rsymlink(m.tag, self.backend.symlink(m.fid, m.name, m.symtgt, gid))

    def link(self, m: Tlink) -> Rlink:
        self.backend.link(m.dfid, m.fid, m.name)
        return Rlink(m.tag)

    def rename(self, m: Trename) -> Rrename:
        self.backend.rename(m.fid, m.dfid, m.name)
        return Rrename(m.tag)

    def renameat(self, m: Trenameat) -> Rrenameat:
        self.backend.renameat(m.olddirfid, m.oldname, m.newdirfid, m.newname)
        return Rrenameat(m.tag)

    def unlinkat(self, m: Tunlinkat) -> Runlinkat:
        self.backend.unlinkat(m.dirfid, m.name, m.flags)
        return Runlinkat(m.tag)

    def write(self, m: Twrite) -> Rwrite:
        """Any Twrite: the backend's write with ``general`` (FIFOs, which the server
        runs in a worker thread, xattr fids, errors of the fast path's -1 cases)."""
        return Rwrite(m.tag, self.backend.write(m.fid, m.offset, m.data, True))

    def fsync(self, m: Tfsync) -> Rfsync:
        self.backend.fsync(m.fid, m.datasync)
        return Rfsync(m.tag)

    def readdir(self, m: Treaddir) -> Rreaddir:
        return Rreaddir(m.tag, self.backend.readdir(m.fid, m.offset, m.count))

    def xattrwalk(self, m: Txattrwalk) -> Rxattrwalk:
        return Rxattrwalk(m.tag, self.backend.xattrwalk(m.fid, m.newfid, m.name))

    def xattrcreate(self, m: Txattrcreate) -> Rxattrcreate:
        self.backend.xattrcreate(m.fid, m.name, m.attr_size, m.flags)
        return Rxattrcreate(m.tag)

    def lock(self, m: Tlock) -> Rlock:
        return Rlock(m.tag, self.backend.lock(
            m.fid, m.type, m.start, m.length, m.proc_id, m.client_id))

    def getlock(self, m: Tgetlock) -> Rgetlock:
        return Rgetlock(m.tag, *self.backend.getlock(
            m.fid, m.type, m.start, m.length, m.proc_id, m.client_id))
