"""Encoded directory listings, reused while a directory is unchanged.

Encoding a listing costs a Python loop per entry (about 1.5 us: unpack the
``linux_dirent64``, find the name's NUL, pack the 9P entry); a client that
lists the same directory again (``ls`` in a loop, a build scanning its tree)
pays it on every pass.  This cache keeps the whole encoded listing of a
directory, with the end position and cookie of each entry, and answers a
Treaddir by slicing it: an ``fstat`` of the open directory, a dict lookup and
a bisection, whatever the directory's size.

When a listing may be reused.  Any change to a directory's entries (create,
unlink, rename in or out, link, mkdir/rmdir) updates its ctime and mtime, and
a changed size/link count is caught too; the key is
``(ctime_ns, mtime_ns, size, nlink)`` of the directory, checked with an
``fstat`` of the fid's open fd on every Treaddir.  Timestamps come from a
coarse clock, so two changes within one tick can leave the same ctime: a
listing is therefore stored only when the directory's ctime is at least
:data:`SETTLE_NS` in the past, read again after the listing was built, and
unchanged (git's "racy index" rule).  A later change then gets a later ctime,
and ctime cannot be set by anyone.  What the cached bytes hold is exactly
what the uncached path would encode for an unchanged directory: kernel
cookies (``d_off``), qids from ``d_ino``/``d_type`` and "."/".." as the
uncached path encodes them (those depend only on the directory's (dev, ino)).

Only listings read from cookie 0 are stored, up to :data:`MAX_LISTING` bytes
each and :data:`MAX_TOTAL` bytes per session (oldest dropped first).  A
cookie the cached listing does not know (not one we returned) goes to the
uncached path.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from typing import Final

SETTLE_NS = 1_000_000_000
"""A directory changed less than this long ago is listed without the cache."""
MAX_LISTING: Final = 1 << 20
"""Largest encoded listing kept (about 30k entries of 10-byte names)."""
MAX_TOTAL: Final = 4 << 20
"""Bytes of listings kept per session, their indexes counted (INDEX_BYTES per entry)."""
INDEX_BYTES: Final = 144
"""Python memory of one entry's index: its end in ``ends`` (a list slot and an
int) and its cookie in ``index`` (a dict entry, an int key and value); a
listing of one-letter names is 25 bytes per entry, so without counting this
the cache could hold about 7 x MAX_TOTAL."""

_ENTRY_MAX: Final = 24 + 255  # a 9P dirent with the longest name


class _Listing:
    __slots__ = ("cost", "data", "ends", "index", "key")

    def __init__(self, key: tuple[int, int, int, int], data: bytes, ends: list[int], index: dict[int, int]) -> None:
        self.key = key
        self.data = data
        self.ends = ends  # ends[i]: end of entry i in data
        self.index = index  # cookie (d_off) of entry i -> i + 1
        self.cost = len(data) + INDEX_BYTES * len(ends)  # counted in MAX_TOTAL


def _parse(data: bytes) -> tuple[list[int], dict[int, int]] | None:
    """Entry ends and cookie index of encoded 9P dirents; None if cookies repeat."""
    ends: list[int] = []
    index: dict[int, int] = {}
    frm = int.from_bytes
    pos, n, i = 0, len(data), 0
    while pos < n:
        cookie = frm(data[pos + 13:pos + 21], "little")
        pos += 24 + data[pos + 22] + (data[pos + 23] << 8)
        ends.append(pos)
        i += 1
        index[cookie] = i
    if len(index) != i:
        return None
    return ends, index


class DirCache:
    """Per-session cache of encoded listings, keyed by (st_dev, st_ino)."""

    def __init__(self) -> None:
        self._map: dict[tuple[int, int], _Listing] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def read(
        self,
        ofd: int,
        offset: int,
        count: int,
        encode: Callable[[int, int], bytes | bytearray],
    ) -> bytes | bytearray | memoryview:
        """The Rreaddir data for cookie ``offset`` and ``count`` bytes.

        ``encode(offset, count)`` is the uncached path (lseek + getdents64 on
        ``ofd``); it is used when the listing is not cached and cannot be.
        """
        st = os.fstat(ofd)
        dkey = (st.st_dev, st.st_ino)
        key = (st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_nlink)
        lst = self._map.get(dkey)
        if lst is None or lst.key != key:
            if offset != 0 or time.time_ns() - st.st_ctime_ns < SETTLE_NS:
                return encode(offset, count)
            lst = self._build(ofd, dkey, key, encode)
            if lst is None:
                return encode(offset, count)
        if offset == 0:
            i = 0
        else:
            i = lst.index.get(offset, -1)
            if i < 0:
                return encode(offset, count)
        ends = lst.ends
        start = ends[i - 1] if i else 0
        j = bisect_right(ends, start + count)
        if j <= i:
            if i == len(ends):
                return b""
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return memoryview(lst.data)[start:ends[j - 1]]

    def _build(
        self,
        ofd: int,
        dkey: tuple[int, int],
        key: tuple[int, int, int, int],
        encode: Callable[[int, int], bytes | bytearray],
    ) -> _Listing | None:
        data = bytes(encode(0, MAX_LISTING))
        if len(data) + _ENTRY_MAX > MAX_LISTING:
            return None  # maybe incomplete: too big to keep
        st = os.fstat(ofd)
        if (st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_nlink) != key:
            return None  # changed while it was read
        parsed = _parse(data)
        if parsed is None:
            return None
        lst = _Listing(key, data, *parsed)
        if lst.cost > MAX_TOTAL:
            return None
        with self._lock:
            old = self._map.pop(dkey, None)
            if old is not None:
                self._bytes -= old.cost
            while self._map and self._bytes + lst.cost > MAX_TOTAL:
                victim = self._map.pop(next(iter(self._map)))
                self._bytes -= victim.cost
            self._map[dkey] = lst
            self._bytes += lst.cost
        return lst

    def clear(self) -> None:
        with self._lock:
            self._map.clear()
            self._bytes = 0
