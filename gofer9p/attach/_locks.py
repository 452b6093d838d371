"""POSIX byte-range locks of fids: Tlock and Tgetlock, held on the host as
open-file-description locks, with the per-owner range bookkeeping.

The lock owners of a fid and the fds of their descriptions are released with
the fid (``_fids``); here is what a lock request does and how many ranges may
be tracked (``MAX_SESSION_LOCK_RANGES``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._common import _ACC_HOST, _close, _err
from gofer9p.attach._fids import _LockOwner
from gofer9p.attach._reopen import Reopen
from gofer9p.protocol import constants as C

_LOCK_EOF: Final = 1 << 64  # "to the end of the file" (length 0), beyond any real offset
_MAX_LOCK_FDS: Final = 1024  # per session: extra descriptions for further owners of one fid
_MAX_LOCK_RANGES: Final = 1024  # per owner and file
MAX_SESSION_LOCK_RANGES = 32768
"""Lock ranges tracked per session (all fids and owners): ~130 bytes each, so
about 4 MiB at most; past it Tlock is ENOLCK."""
LOCK_RANGE_BYTES: Final = 160
"""Python memory of one tracked lock range (a tuple of two ints in a list)."""


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



class Locks(Reopen):
    """Tlock and Tgetlock on fids."""

    def lock(
        self, fid: int, ltype: int, start: int, length: int, proc_id: int, client_id: bytes
    ) -> int:
        """POSIX byte-range lock, held on the host as an open-file-description lock;
        LOCK_SUCCESS or LOCK_BLOCKED.

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
        if ltype not in (C.LOCK_TYPE_RDLCK, C.LOCK_TYPE_WRLCK, C.LOCK_TYPE_UNLCK):
            raise _err(errno.EINVAL)
        req = self._flock(ltype, start, length)
        end = start + length if length else _LOCK_EOF
        with self._ref(fid) as f:
            if f.ofd < 0:
                raise _err(errno.EBADF)
            if ltype == C.LOCK_TYPE_RDLCK and f.oacc == C.L_O_WRONLY:
                raise _err(errno.EBADF)
            if ltype == C.LOCK_TYPE_WRLCK and f.oacc == C.L_O_RDONLY:
                raise _err(errno.EBADF)
            key = (proc_id, bytes(client_id))
            with self._locks_lock:
                lockers = f.lockers
                if lockers is None:
                    lockers = f.lockers = {}
                owner = lockers.get(key)
                if ltype == C.LOCK_TYPE_UNLCK:
                    if owner is not None:
                        held = _ranges_sub(owner.held, start, end)
                        self._track_ranges(owner, held)  # (an unlock may split a range)
                        fcntl.fcntl(owner.fd, fcntl.F_OFD_SETLK, req)
                        self._lock_ranges += len(held) - len(owner.held)
                        owner.held = held
                        if not owner.held:
                            self._drop_owner(lockers, key)
                    return C.LOCK_SUCCESS
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
                held = _ranges_add(owner.held, start, end)
                try:
                    # checked before the host lock is taken: no lock we do not track
                    self._track_ranges(owner, held)
                    fcntl.fcntl(owner.fd, fcntl.F_OFD_SETLK, req)
                except OSError as e:
                    if not owner.held:
                        self._drop_owner(lockers, key)
                    if e.errno in (errno.EAGAIN, errno.EACCES):
                        return C.LOCK_BLOCKED
                    raise
                self._lock_ranges += len(held) - len(owner.held)
                owner.held = held
        return C.LOCK_SUCCESS

    def _track_ranges(self, owner: _LockOwner, held: list[tuple[int, int]]) -> None:
        """ENOLCK unless ``owner`` may track ``held`` instead of its ranges now:
        at most _MAX_LOCK_RANGES per owner and MAX_SESSION_LOCK_RANGES per session."""
        if len(held) > _MAX_LOCK_RANGES or (
            self._lock_ranges + len(held) - len(owner.held) > MAX_SESSION_LOCK_RANGES
        ):
            raise _err(errno.ENOLCK)

    def getlock(
        self, fid: int, ltype: int, start: int, length: int, proc_id: int, client_id: bytes
    ) -> tuple[int, int, int, int, bytes]:
        """F_OFD_GETLK: the first lock that would conflict with this owner's, as Rgetlock's
        (type, start, length, proc_id, client_id), or UNLCK with the request's range and owner.

        The Linux client sends type UNLCK: its posix_test_lock() has already
        overwritten the caller's type when no local lock conflicted.  That is
        tested as a write lock, i.e. "is any other lock held on this range",
        which is what F_GETLK callers (lock files, pid files) ask nearly always.
        """
        qtype = ltype
        if qtype == C.LOCK_TYPE_UNLCK:
            qtype = C.LOCK_TYPE_WRLCK
        elif qtype not in (C.LOCK_TYPE_RDLCK, C.LOCK_TYPE_WRLCK):
            raise _err(errno.EINVAL)
        req = self._flock(qtype, start, length)
        with self._ref(fid) as f:
            if f.ofd < 0:
                raise _err(errno.EBADF)
            with self._locks_lock:
                lockers = f.lockers
                owner = lockers.get((proc_id, bytes(client_id))) if lockers else None
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
        rtype, _, rstart, rlength, pid = _sys.FLOCK.unpack(res)
        if rtype == C.LOCK_TYPE_UNLCK:
            return C.LOCK_TYPE_UNLCK, start, length, proc_id, client_id
        return rtype, rstart, rlength, pid if pid > 0 else 0, b""

    @staticmethod
    def _flock(ltype: int, start: int, length: int) -> bytes:
        if start > 0x7FFFFFFFFFFFFFFF or length > 0x7FFFFFFFFFFFFFFF:
            raise _err(errno.EINVAL)
        return _sys.FLOCK.pack(ltype, os.SEEK_SET, start, length, 0)
