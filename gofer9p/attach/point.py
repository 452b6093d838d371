"""An attach point: the host directory (or single file) one 9P connection serves, and its policy.

The attach point is shared by every session (connection) serving the same
tree, so it owns what must agree across them: the root fd, the
read-only / panic-on-write flags (which the connection core applies, see
``AttachPoint``), and the qid path map (a file must have the
same qid path whichever connection asks).

A root may be a regular file: OCI bundles bind-mount single files
(``/etc/hosts``, ``/etc/resolv.conf``) and each such mount is an attach point
of its own, as in gVisor.  Such a root also holds an ``O_PATH`` fd of the
directory containing it and its name there, because an ``O_PATH`` fd of a file
can only be re-opened (Tlopen, truncate, xattrs) through a name or a file
handle.  That parent is trusted configuration (the sandbox manager put the
file there), unlike every directory a session reaches from a root.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Final, NoReturn

from gofer9p.attach import _sys
from gofer9p.protocol.messages import Qid

log = logging.getLogger("gofer9p.attach")

_S_IFMT: Final = 0o170000
_S_IFDIR: Final = stat.S_IFDIR
_S_IFLNK: Final = stat.S_IFLNK
_S_IFREG: Final = stat.S_IFREG
_INO_BITS: Final = 56
_INO_LIMIT: Final = 1 << _INO_BITS
_OVERFLOW_DEV: Final = 0xFF  # device index reserved for (dev, ino) pairs that do not fit


def qid_type(mode: int) -> int:
    """The qid type bits of a file mode: DIR 0x80, SYMLINK 0x02, everything else FILE 0."""
    fmt = mode & _S_IFMT
    if fmt == _S_IFDIR:
        return 0x80
    if fmt == _S_IFLNK:
        return 0x02
    return 0


def _kind(fmt: int) -> str:
    """What a file of type ``fmt`` is, for one-line error messages."""
    return {
        stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
        stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", _S_IFLNK: "a symlink",
    }.get(fmt, "a file of an unknown type")


class AttachPoint:
    """A served host directory or regular file, held by an ``O_PATH`` fd.

    ``root_fmt`` is the root's ``S_IFMT`` bits (``S_IFDIR`` or ``S_IFREG``).  A
    file root also has ``parent_fd`` (an ``O_PATH`` fd of its directory) and
    ``name`` (its name there); a directory root has -1 and ``b""``.

    ``readonly`` makes every mutating request fail with EROFS; with
    ``panic_on_write`` such a request instead calls ``panic`` (a mutating
    request on a read-only mount is a bug in the sandbox's overlay, and the
    gofer must not keep serving a sandbox that is misbehaving that way).  Both
    are applied by the connection core (``gofer9p.connection``, from
    ``protocol.policy``) before any handler runs; the backend never reads them.

    Qid paths: ``ino | dev_index << 56``, where ``dev_index`` numbers the
    devices in the order they are first seen (the root's device is 0, so qid
    paths equal inode numbers on the common single-filesystem export).  An
    inode number that does not fit in 56 bits, or a 256th device, gets a
    sequential number in the reserved device index 0xFF instead, so paths are
    unique for every (st_dev, st_ino) and stable for the process's life.
    Qid version is always 0: Linux v9fs compares it when matching inodes, and a
    version that changed with every write would make it allocate new inodes for
    the same file.
    """

    def __init__(
        self,
        path: str,
        fd: int,
        *,
        readonly: bool,
        panic_on_write: bool,
        parent_fd: int = -1,
        name: bytes = b"",
    ) -> None:
        """Take ownership of ``fd`` (and ``parent_fd``; both closed by :meth:`close`,
        not on a raised error: :meth:`open` cleans up after a refused path)."""
        self.path = path
        self.fd = fd
        self.parent_fd = -1
        self.name = b""
        self.readonly = readonly
        self.panic_on_write = panic_on_write
        self.panic: Callable[[str], NoReturn] = self._panic
        """Log a reason as critical and end the process (:meth:`_panic`); an attribute,
        not a method, so that tests can replace it on an instance in the compiled build too
        (a native class's methods cannot be replaced)."""
        st = os.fstat(fd)
        fmt = st.st_mode & _S_IFMT
        if fmt == _S_IFREG:
            if parent_fd < 0 or not name:
                raise OSError(errno.EINVAL, f"{path}: a file root needs its directory and name")
            # The name must designate this very file now (not a symlink, not another inode).
            nst = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if nst.st_ino != st.st_ino or nst.st_dev != st.st_dev:
                raise OSError(errno.ESTALE, f"{path}: changed while being opened")
        elif fmt != _S_IFDIR:
            raise OSError(errno.EINVAL, f"{path}: {_kind(fmt)} is never served as an attach point")
        if _sys.fs_magic(fd) in _sys.PSEUDO_FS_MAGICS:
            raise OSError(errno.EACCES, f"{path}: a kernel pseudo file system is never served")
        self.root_fmt = fmt
        if fmt == _S_IFREG:
            self.parent_fd = parent_fd
            self.name = name
        self.root_dev = st.st_dev
        self.root_ino = st.st_ino
        self._lock = threading.Lock()
        self._devs: dict[int, int] = {}
        self._overflow: dict[tuple[int, int], int] = {}
        self._mount_fds: dict[int, int] = {}
        self.root_qid = Qid(qid_type(fmt), 0, self.qid_path(st.st_dev, st.st_ino))
        # Ownership of created files is set only when we may chown (root in our
        # user namespace); otherwise files simply belong to the gofer.
        self.can_chown = os.geteuid() == 0

    @classmethod
    def open(cls, path: str, *, readonly: bool = False, panic_on_write: bool = False) -> AttachPoint:
        """Open ``path``, a directory or a regular file.

        ``path`` is trusted configuration, so symlinks in it are followed (in
        the daemon's nosymfollow chroot that is ELOOP instead).  A file root's
        directory and name are those of the resolved path, checked to name
        the very file opened.  Anything else (device node, FIFO, socket) is
        refused with EINVAL: the gofer never opens such nodes for a client.
        """
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        pfd = -1
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                real = os.path.realpath(path)
                pfd = os.open(os.path.dirname(real), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                name = os.fsencode(os.path.basename(real))
                return cls(
                    path, fd, readonly=readonly, panic_on_write=panic_on_write,
                    parent_fd=pfd, name=name,
                )
            return cls(path, fd, readonly=readonly, panic_on_write=panic_on_write)
        except BaseException:
            os.close(fd)
            if pfd >= 0:
                os.close(pfd)
            raise

    def close(self) -> None:
        """Close the root fd (sessions using it must be finished)."""
        with self._lock:
            fds, self._mount_fds = list(self._mount_fds.values()), {}
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self.parent_fd >= 0:
            fd, self.parent_fd = self.parent_fd, -1
            os.close(fd)

    def mount_fd(self, mount_id: int, dirfd: int) -> int:
        """A readable directory fd on mount ``mount_id`` for open_by_handle_at, or -1.

        Keyed by mount, not by device: bind mounts of one file system share
        st_dev but not their flags, and a file re-opened through another
        mount's fd would get that mount's flags (a read-only bind mount must
        not become writable that way).  Cached for the attach point's life
        (the fd keeps the mount, and so its id, alive); on a miss it is the
        directory ``dirfd`` (an O_PATH fd) re-opened read-only, used only if
        it is on that very mount (a file that is itself a mount point is not
        on its parent's mount).
        """
        fd = self._mount_fds.get(mount_id)
        if fd is not None:
            return fd
        if dirfd < 0:
            return -1
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return -1
        try:
            same = _sys.file_handle(fd)[1] == mount_id
        except OSError:
            same = False
        if not same:
            os.close(fd)
            return -1
        with self._lock:
            cur = self._mount_fds.get(mount_id)
            if cur is None:
                self._mount_fds[mount_id] = fd
                return fd
        os.close(fd)
        return cur

    def _panic(self, reason: str) -> NoReturn:
        """Log ``reason`` as critical and end the process at once with status 70.

        ``os._exit``, not an exception: the point is to stop serving the
        sandbox immediately, whatever the server's error handling would do.
        """
        log.critical("panic on %s: %s", self.path, reason)
        logging.shutdown()
        os._exit(70)

    def qid_base(self, dev: int) -> int:
        """``dev_index << 56`` for device ``dev`` (OR it with an inode number below
        2**56 to get the qid path), or -1 when the device is in the overflow range."""
        idx = self._devs.get(dev)
        if idx is None:
            self.qid_path(dev, 0)
            idx = self._devs[dev]
        return (idx << _INO_BITS) if idx < _OVERFLOW_DEV else -1

    def qid_path(self, dev: int, ino: int) -> int:
        """The unique, stable qid path of the file (dev, ino)."""
        idx = self._devs.get(dev)
        if idx is None:
            with self._lock:
                idx = self._devs.get(dev)
                if idx is None:
                    idx = len(self._devs)
                    self._devs[dev] = idx
        if ino < _INO_LIMIT and idx < _OVERFLOW_DEV:
            return (idx << _INO_BITS) | ino
        key = (dev, ino)
        p = self._overflow.get(key)
        if p is None:
            with self._lock:
                p = self._overflow.get(key)
                if p is None:
                    p = (_OVERFLOW_DEV << _INO_BITS) | len(self._overflow)
                    self._overflow[key] = p
        return p

    def qid(self, st: os.stat_result) -> Qid:
        """The qid of a file from its (l)stat result."""
        return self.qid_of(st.st_mode, st.st_dev, st.st_ino)

    def qid_of(self, mode: int, dev: int, ino: int) -> Qid:
        """The qid of a file from its mode, st_dev and st_ino (a walk's step)."""
        return Qid(qid_type(mode), 0, self.qid_path(dev, ino))
