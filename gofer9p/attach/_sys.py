"""System calls the ``os`` module does not expose the way the attach layer needs them.

Why ctypes: the gofer must operate on ``O_PATH`` fds and never on path strings,
and several calls only work on an ``O_PATH`` fd through ``AT_EMPTY_PATH``
(``fchownat``, ``utimensat``, ``fchmodat2``), which ``os`` cannot pass.
``utimensat`` is also the only way to leave one timestamp untouched
(``UTIME_OMIT``) or to set "now" (``UTIME_NOW``) without reading the clock in
user space.  ``getdents64`` gives the kernel's own ``d_off`` cookies, which are
the only directory offsets that stay valid while entries are created or removed
between two Treaddir calls (``os.scandir`` hides them).  ``fs_magic`` tells the
pseudo file systems a walk may not step onto (``_fids.open_child``).

ctypes foreign calls release the GIL, so these are as safe as ``os`` calls to
use from worker threads.  Every wrapper raises ``OSError(errno)`` on failure.
"""

from __future__ import annotations

import ctypes
import os
import struct

from gofer9p.protocol import constants as C

_libc = ctypes.CDLL(None, use_errno=True)

AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
SYS_FCHMODAT2 = 452  # same number on every architecture (generic syscall table, Linux 6.6)
V9FS_MAGIC = 0x01021997


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_Times = _Timespec * 2


def _raise() -> None:
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_utimensat.restype = ctypes.c_int

_futimens = _libc.futimens
_futimens.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]
_futimens.restype = ctypes.c_int

_fchownat = _libc.fchownat
_fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_fchownat.restype = ctypes.c_int

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_getdents64 = _libc.getdents64
_getdents64.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_getdents64.restype = ctypes.c_ssize_t


def utimensat(
    dirfd: int, name: bytes | None, atime: tuple[int, int], mtime: tuple[int, int], flags: int
) -> None:
    """utimensat(2); a time is ``(sec, nsec)`` where nsec may be UTIME_NOW/UTIME_OMIT."""
    times = _Times(_Timespec(atime[0], atime[1]), _Timespec(mtime[0], mtime[1]))
    if _utimensat(dirfd, name, times, flags) < 0:
        _raise()


MAX_HANDLE_SZ = 128
_HANDLE_HDR = struct.Struct("=Ii")
# The buffers' array types, made once: ``T()`` is a zeroed buffer, as
# ``create_string_buffer(n)`` gives, without its Python-level checks (every Tlopen of
# a file makes a handle buffer).
_HandleBuf = ctypes.c_char * (_HANDLE_HDR.size + MAX_HANDLE_SZ)
_Buf256 = ctypes.c_char * 256

_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
]
_name_to_handle_at.restype = ctypes.c_int

_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_open_by_handle_at.restype = ctypes.c_int


def file_handle(fd: int) -> tuple[ctypes.Array[ctypes.c_char], int]:
    """name_to_handle_at(fd, "", AT_EMPTY_PATH): the file handle of what ``fd``
    (an O_PATH fd will do) refers to, and the id of the mount it was reached by.

    Raises OSError (EOPNOTSUPP for file systems without handles, EPERM under
    the daemon's seccomp filter, ...).
    """
    buf = _HandleBuf()
    _HANDLE_HDR.pack_into(buf, 0, MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int(0)
    if _name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), AT_EMPTY_PATH) < 0:
        _raise()
    return buf, mount_id.value


def open_by_handle(mount_fd: int, handle: ctypes.Array[ctypes.c_char], flags: int) -> int:
    """open_by_handle_at(2): open the inode of ``handle`` with ``flags``.

    No name is looked up, so nothing can be swapped in between: the only way
    to re-open an O_PATH fd without /proc.  The new open file belongs to
    ``mount_fd``'s mount (a real, not O_PATH, fd), whose flags (ro, nodev,
    noexec) apply: the caller must pass an fd of the very mount the file was
    reached by.  Needs CAP_DAC_READ_SEARCH.
    """
    r = int(_open_by_handle_at(mount_fd, handle, flags))
    if r < 0:
        _raise()
    return r


# Kernel pseudo file systems: their files are host kernel interfaces and other
# processes (/proc/sys/kernel/core_pattern, /proc/<pid>/mem, /sys/kernel/...),
# never data a sandbox may be served, whatever got them into the export.
PSEUDO_FS_MAGICS = frozenset({
    0x9FA0,  # proc
    0x62656572,  # sysfs
    0x64626720,  # debugfs
    0x74726163,  # tracefs
    0x73636673,  # securityfs
    0x27E0EB,  # cgroup
    0x63677270,  # cgroup2
    0xCAFE4A11,  # bpf
    0x62656570,  # configfs
    0xDE5E81E4,  # efivarfs
    0x6165676C,  # pstore
    0xF97CFF8C,  # selinuxfs
    0x43415D53,  # smackfs
    0x65735543,  # fusectl
    0x42494E4D,  # binfmt_misc
    0x1CD1,  # devpts
    0x6E736673,  # nsfs
    0x19800202,  # mqueue
    0x50495045,  # pipefs
    0x534F434B,  # sockfs
})

_fstatfs = _libc.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
_fstatfs.restype = ctypes.c_int
_STATFS_TYPE = struct.Struct("@l")  # f_type is the first field of struct statfs


def fs_magic(fd: int) -> int:
    """f_type of the file system ``fd`` (an O_PATH fd will do) is on (fstatfs)."""
    buf = _Buf256()  # > sizeof(struct statfs) (120 on 64-bit)
    if _fstatfs(fd, buf) < 0:
        _raise()
    return int(_STATFS_TYPE.unpack_from(buf, 0)[0]) & 0xFFFFFFFF


_statx = _libc.statx
_statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
_statx.restype = ctypes.c_int
_STATX_BTIME = 0x800
_STATX_HEAD = struct.Struct("@I")  # stx_mask
_STATX_BTIME_AT = struct.Struct("@qI")  # stx_btime (tv_sec, tv_nsec) at offset 80


def birth_time(fd: int) -> int:
    """The birth time (ns) of the inode ``fd`` (an O_PATH fd will do) refers to, from
    statx(AT_EMPTY_PATH, STATX_BTIME); 0 where the file system keeps none.

    With (st_dev, st_ino) it tells a file from a new one that reused its inode
    number after it was deleted (ext4, xfs, btrfs and tmpfs reuse them at once).
    """
    buf = _Buf256()  # sizeof(struct statx)
    if _statx(fd, b"", AT_EMPTY_PATH, _STATX_BTIME, buf) < 0:
        _raise()
    if not _STATX_HEAD.unpack_from(buf, 0)[0] & _STATX_BTIME:
        return 0
    sec, nsec = _STATX_BTIME_AT.unpack_from(buf, 80)
    return int(sec) * 1_000_000_000 + int(nsec) or 1


def futimens(fd: int, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """futimens(3) on an open (not O_PATH) fd; times as for :func:`utimensat`."""
    times = _Times(_Timespec(atime[0], atime[1]), _Timespec(mtime[0], mtime[1]))
    if _futimens(fd, times) < 0:
        _raise()


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """Change the owner of the file ``fd`` refers to (works on O_PATH fds and symlinks).

    ``uid``/``gid`` of -1 leave that id unchanged.
    """
    if _fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0:
        _raise()


def fchmod_empty(fd: int, mode: int) -> None:
    """fchmodat2(fd, "", mode, AT_EMPTY_PATH): chmod through an O_PATH fd (Linux >= 6.6).

    Raises OSError(ENOSYS) on older kernels; the caller then falls back to a re-open.
    """
    r = _syscall(
        ctypes.c_long(SYS_FCHMODAT2), ctypes.c_int(fd), ctypes.c_char_p(b""),
        ctypes.c_uint(mode), ctypes.c_int(AT_EMPTY_PATH),
    )
    if r < 0:
        _raise()


class DirentBuffer:
    """A reusable getdents64 buffer: a bytearray the kernel fills in place."""

    __slots__ = ("_cbuf", "data")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self._cbuf = (ctypes.c_char * size).from_buffer(self.data)

    def fill(self, fd: int) -> int:
        """Read the next directory records of open directory ``fd``; 0 at the end."""
        n = _getdents64(fd, ctypes.addressof(self._cbuf), len(self.data))
        if n < 0:
            _raise()
        return int(n)


# struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name[]
DIRENT64 = struct.Struct("=QqHB")
# A 9P readdir entry: qid (type b, version d, path q), offset q, type b, name s.
P9_DIRENT = struct.Struct("<BIQQBH")

# struct flock (Linux, 64-bit off_t): l_type h, l_whence h, l_start q, l_len q, l_pid i.
FLOCK = struct.Struct("@hhqqi4x")

# 9P (Linux x86-64 numbering) open flags -> host open flags.  The host may be
# another architecture where O_DIRECTORY & co. have other values, so map bit by bit.
# Not mapped, on purpose: O_CREAT/O_EXCL (lopen never creates; lcreate adds its own),
# O_NOCTTY (a gofer must never acquire a controlling tty), O_ASYNC (signals to the
# gofer make no sense), O_DIRECT (needs aligned buffers our zero-copy reads do not
# have; QEMU drops it too), O_CLOEXEC/O_NOFOLLOW (always added), O_LARGEFILE (implied).
_OPEN_FLAG_MAP: tuple[tuple[int, int], ...] = (
    (C.L_O_TRUNC, os.O_TRUNC),
    (C.L_O_APPEND, os.O_APPEND),
    (C.L_O_NONBLOCK, os.O_NONBLOCK),
    (C.L_O_DSYNC, os.O_DSYNC),
    (C.L_O_DIRECTORY, os.O_DIRECTORY),
    (C.L_O_NOATIME, os.O_NOATIME),
)
_ACCMODE = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR)
_flag_cache: dict[int, int] = {}


def host_open_flags(flags: int) -> int:
    """Translate 9P Tlopen/Tlcreate flags to host flags (without O_CLOEXEC/O_NOFOLLOW).

    Raises OSError(EINVAL) for the invalid access mode 3.
    """
    r = _flag_cache.get(flags)
    if r is not None:
        return r
    acc = flags & C.L_O_ACCMODE
    if acc == 3:
        raise OSError(22, "invalid access mode")
    h = _ACCMODE[acc]
    for lbit, hbit in _OPEN_FLAG_MAP:
        if flags & lbit:
            h |= hbit
    if flags & C.L_O_SYNC == C.L_O_SYNC:
        h |= os.O_SYNC
    if len(_flag_cache) < 512:
        _flag_cache[flags] = h
    return h
