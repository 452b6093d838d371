"""Id mapping between a guest and the host, for guests that run without a user namespace.

A manager that starts a VM guest (or any sandbox whose ids are not translated by
a kernel user namespace) tells the gofer how the guest's uids and gids stand for
host ids: ``--map-uid GUEST:HOST:COUNT`` / ``--map-gid`` ranges, like the lines
of ``/proc/PID/uid_map``, and/or ``--squash-ids UID:GID`` (every id the guest
gives becomes that one host pair, as diod's squash).  The protocol side
(``session.Session``) translates at the edge, so the backend only ever sees
host ids (its set-id rules, ``_kill_privs``, judge the host owner):

- guest -> host: Tattach's uid, Tsetattr's uid/gid, the gid of Tlcreate,
  Tmkdir, Tmknod and Tsymlink.  An id outside every range is refused (EPERM);
  with a squash every id becomes the squash pair.
- host -> guest: Rgetattr's uid/gid.  A host id outside every range is
  reported as the overflow id 65534, as the kernel reports an id its user
  namespace cannot map.

A kind (uids or gids) with no range given is not translated (identity both
ways): ``--map-uid`` alone maps uids only.  With a squash, replies use the
maps where given and report the real host ids otherwise (as diod does), see
:class:`IdMap`.

No other reply carries an id: Rgetlock's ``proc_id`` is a pid, dirents and
Rstatfs have none, and only ``user.`` xattrs are served (POSIX ACLs, which
hold ids, are not).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Final

__all__ = ["ID_MAX", "OVERFLOW_ID", "UNMAPPED", "IdMap", "IdTable"]

_RGETATTR_IDS: Final = struct.Struct("<II")
_RGETATTR_IDS_AT: Final = 32
"""Where Rgetattr's uid and gid are in its frame: after size[4] type[1] tag[2] valid[8]
qid[13] mode[4] (tests/unit/test_idmap.py checks it against the codec)."""

ID_MAX: Final = 0xFFFFFFFE
"""Largest id a range may hold: 2**32 - 1 is no id ((uid_t)-1, 9P's NONUNAME)."""
OVERFLOW_ID: Final = 65534
"""What the kernel reports for an id its user namespace cannot map (overflowuid)."""
UNMAPPED: Final = -1
"""What ``to_host`` answers for a guest id no range holds: the caller refuses (EPERM), and
a Tattach of such a uid makes a fid that may own nothing."""
MEMO_MAX: Final = 1024
"""Host ids whose guest id a table remembers (``IdTable.memo``): a Tgetattr of a known
owner then costs no call (the lookups are a dict hit each), and the memo stays bounded
whatever owners the export holds."""


def _span(start: int, count: int) -> str:
    return f"{start}" if count == 1 else f"{start}..{start + count - 1}"


class IdTable:
    """One kind's ranges (uids or gids), immutable: guest -> host and host -> guest
    lookups by bisection over the sorted range starts (O(log n) per lookup).

    ``ranges`` are (guest, host, count) triples; ``flag`` names them in errors
    (``--map-uid``).  Each range must be non-empty, inside 0..:data:`ID_MAX` on
    both sides, and overlap no other range on either side (else one host id
    would stand for two guest ids, or the other way round): ``ValueError``
    naming both ranges.  No ranges: identity both ways (``mapped`` is False).
    """

    __slots__ = ("_gcounts", "_ghosts", "_gstarts", "_hcounts", "_hguests", "_hstarts", "mapped",
                 "memo", "ranges")

    def __init__(self, ranges: Sequence[tuple[int, int, int]], flag: str = "--map-id") -> None:
        for g, h, n in ranges:
            if n < 1:
                raise ValueError(f"{flag} {g}:{h}:{n}: the count must be at least 1")
            if min(g, h) < 0 or max(g, h) + n - 1 > ID_MAX:
                raise ValueError(
                    f"{flag} {g}:{h}:{n}: ids must lie in 0..{ID_MAX} ({ID_MAX + 1} is no id)")
        self.ranges = tuple((g, h, n) for g, h, n in ranges)
        by_guest = sorted(self.ranges)
        by_host = sorted(self.ranges, key=lambda r: r[1])
        for side, rs, i in (("guest", by_guest, 0), ("host", by_host, 1)):
            for a, b in pairwise(rs):
                if b[i] < a[i] + a[2]:
                    lo, hi = b[i], min(a[i] + a[2], b[i] + b[2]) - 1
                    raise ValueError(
                        f"{flag} {a[0]}:{a[1]}:{a[2]} and {flag} {b[0]}:{b[1]}:{b[2]} overlap on "
                        f"the {side} side (ids {_span(lo, hi - lo + 1)})")
        self.mapped = bool(self.ranges)
        self._gstarts = tuple(r[0] for r in by_guest)
        self._ghosts = tuple(r[1] for r in by_guest)
        self._gcounts = tuple(r[2] for r in by_guest)
        self._hstarts = tuple(r[1] for r in by_host)
        self._hguests = tuple(r[0] for r in by_host)
        self._hcounts = tuple(r[2] for r in by_host)
        self.memo: dict[int, int] = {}
        """host -> guest answers of :meth:`to_guest` so far (at most :data:`MEMO_MAX`;
        shared by every connection: a lookup that misses it only fills it)."""

    def to_host(self, guest: int) -> int:
        """The host id for ``guest``; :data:`UNMAPPED` when no range holds it."""
        if not self.mapped:
            return guest
        i = bisect_right(self._gstarts, guest) - 1
        if i >= 0:
            d = guest - self._gstarts[i]
            if d < self._gcounts[i]:
                return self._ghosts[i] + d
        return UNMAPPED

    def to_guest(self, host: int) -> int:
        """The guest id for ``host``; :data:`OVERFLOW_ID` when no range holds it."""
        guest = host if not self.mapped else OVERFLOW_ID
        i = bisect_right(self._hstarts, host) - 1
        if i >= 0:
            d = host - self._hstarts[i]
            if d < self._hcounts[i]:
                guest = self._hguests[i] + d
        if len(self.memo) < MEMO_MAX:
            self.memo[host] = guest
        return guest


class IdMap:
    """What one export translates: uid and gid tables and an optional squash.

    Guest -> host (``uid_to_host``, ``gid_to_host``): the squash pair when
    ``squash`` is set (every id the guest gives, whether a range holds it or
    not), else the table's answer (:data:`UNMAPPED` for an id no range holds:
    the caller refuses with EPERM).

    Host -> guest (``getattr_mapper``): always through the tables.  With a
    squash and no table, that is the real host ids (diod's answer), and a
    guest sees every file it creates owned by the squash pair: a guest that
    runs as root (the usual VM sandbox) passes its own kernel's permission
    checks whatever the owner, and is told the truth about the host.  A guest
    that wants its files shown as its own adds a range holding the squash
    pair: ``--squash-ids 1000:1000 --map-uid 0:1000:1 --map-gid 0:1000:1``
    shows them as root's, as ``unshare -r`` would.  Reporting each viewer as
    the owner instead (sshfs's ``idmap=user``) would give one inode different
    owners per user, which a guest's attribute cache cannot hold.
    """

    __slots__ = ("gids", "squash", "uids")

    def __init__(
        self,
        uids: Sequence[tuple[int, int, int]] = (),
        gids: Sequence[tuple[int, int, int]] = (),
        squash: tuple[int, int] | None = None,
    ) -> None:
        self.uids = IdTable(uids, "--map-uid")
        self.gids = IdTable(gids, "--map-gid")
        if squash is not None and not all(0 <= i <= ID_MAX for i in squash):
            raise ValueError(
                f"--squash-ids {squash[0]}:{squash[1]}: ids must lie in 0..{ID_MAX}")
        self.squash = squash

    @classmethod
    def build(
        cls,
        uids: Sequence[tuple[int, int, int]] = (),
        gids: Sequence[tuple[int, int, int]] = (),
        squash: tuple[int, int] | None = None,
    ) -> IdMap | None:
        """The map for these options, or None when they translate nothing (mapping off:
        the session then takes the un-mapped paths)."""
        if not uids and not gids and squash is None:
            return None
        return cls(uids, gids, squash)

    def uid_to_host(self, uid: int) -> int:
        """A uid the guest gives (attach, chown) as the host id to use, or :data:`UNMAPPED`."""
        if self.squash is not None:
            return self.squash[0]
        return self.uids.to_host(uid)

    def gid_to_host(self, gid: int) -> int:
        """A gid the guest gives (create, chown) as the host id to use, or :data:`UNMAPPED`."""
        if self.squash is not None:
            return self.squash[1]
        return self.gids.to_host(gid)

    @property
    def maps_replies(self) -> bool:
        """Whether a reply's ids change (a range was given): a squash alone changes none."""
        return self.uids.mapped or self.gids.mapped

    def getattr_mapper(
        self, getattr_frame: Callable[[int, int, int], bytes]
    ) -> Callable[[int, int, int], bytes]:
        """``getattr_frame`` (the backend's: ``(tag, fid, mask)`` -> the whole Rgetattr
        frame) with the owner translated host -> guest: the uid and gid at their fixed
        place in the frame are replaced.  One closure per session, chosen once, so a
        session without a map calls the backend's method directly."""
        umemo, uslow = self.uids.memo, self.uids.to_guest
        gmemo, gslow = self.gids.memo, self.gids.to_guest
        ids, at = _RGETATTR_IDS, _RGETATTR_IDS_AT

        def frame(tag: int, fid: int, mask: int) -> bytes:
            b = getattr_frame(tag, fid, mask)
            u, g = ids.unpack_from(b, at)
            gu = umemo[u] if u in umemo else uslow(u)
            gg = gmemo[g] if g in gmemo else gslow(g)
            if gu == u and gg == g:
                return b
            return b[:at] + ids.pack(gu, gg) + b[at + ids.size:]

        return frame

    def describe(self) -> str:
        """The options as flags, for the gofer's ready line."""
        parts = [f"--map-uid {g}:{h}:{n}" for g, h, n in self.uids.ranges]
        parts += [f"--map-gid {g}:{h}:{n}" for g, h, n in self.gids.ranges]
        if self.squash is not None:
            parts.append(f"--squash-ids {self.squash[0]}:{self.squash[1]}")
        return " ".join(parts)
