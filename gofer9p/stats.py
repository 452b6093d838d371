"""Statistics of a gofer: counters kept per connection without locks, summed on demand.

Always on, so the counting is a few list increments on the paths that already
touch each frame (see docs/CONTRACTS.md, "stats.py"):

* the connection core (``gofer9p.connection``), per frame it handles, adds the
  frame's size to ``rx[type]`` and, for a reply it queues, the reply's size to
  ``tx[type]``; an error reply also counts ``errors[type, errno]`` and puts its
  request's type in ``errk``;
* the trio layer (``gofer9p.server``) reads the clock once per chunk it
  receives (the arrival of every frame in it) and, once the replies it took
  from the core are handed to the socket, calls :meth:`ConnStats.replied` with
  them: one clock read, one bucket, and per reply one increment of
  ``hist[bucket][type]`` and one of ``lsum[type]`` (the type read from the
  reply's own type byte).  A reply sent on its own (a worker thread's, a
  spliced Rread, a late Rflush) goes through :meth:`ConnStats.replied_one`.

Everything is touched only from the trio thread (a worker thread's reply is
counted by the trio task that sends it), so there are no locks: a snapshot
(:meth:`Registry.snapshot`, also in the trio thread) sees every counter as of
one instant.  The count of a message type is the sum of its histogram row: a
request is counted when its reply was handed to the socket, so the buckets add
up to the count by construction (a flushed request, whose reply is dropped, is
not counted; its bytes in are).

Latency is from the arrival of the frame (the end of the ``recv`` that
completed it) to the reply handed to the socket (the ``send`` that wrote its
last byte returned); its buckets are powers of two of nanoseconds, from
2**10 ns (about 1 us) to 2**34 ns (about 17 s), and one above: bucket ``b`` holds
latencies below ``2**(10+b)`` ns, computed with one ``bit_length``.

Process numbers (:class:`ProcessProbe`) come from an fd of ``/proc/self/status``
opened before any chroot (the confined daemon has no ``/proc``; the fd keeps
working inside the chroot and under seccomp: ``pread64`` only) and, without it,
from ``threading`` and ``time.process_time`` (``getrusage`` is not in the seccomp
policy).  The host-fd budget of issue #14 is any object with the int attributes
``limit``, ``in_use``, ``reclaims`` and ``reopens`` (:class:`FdBudget`), or None.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from .protocol.constants import MsgType

__all__ = [
    "BUCKETS",
    "COLUMNS",
    "CONNECTION_STATS_BYTES",
    "ConnStats",
    "FdBudget",
    "ProcessProbe",
    "Registry",
    "bucket_bounds",
    "op_name",
    "quantile",
]

COLUMNS: Final = 128
"""Message types counted one by one (every 9P2000.L T-message is below 128); a
frame of a larger type is counted in column 0 (``other``)."""
FIRST_BIT: Final = 10
"""Bucket 0 holds latencies below 2**FIRST_BIT ns (1.024 us)."""
BUCKETS: Final = 26
"""Latency buckets: 25 bounded ones (2**10 .. 2**34 ns) and the one above."""
MAX_ERROR_KEYS: Final = 512
"""Distinct (type, errno) pairs kept per connection; past it, new pairs count under
errno 0 of their type (at most COLUMNS keys more).  A real export never gets near:
a few errnos per type; the bound is for memory."""
CONNECTION_STATS_BYTES: Final = 160 * 1024
"""Most memory one connection's counters hold: 29 lists of COLUMNS slots and, in
the worst case, one int object (32 bytes) in each, plus the error table."""

_clock = time.monotonic_ns
_TLERROR: Final = int(MsgType.TLERROR)
_BUCKET_OF: Final = tuple(min(b, BUCKETS - 1) for b in range(128 - FIRST_BIT + 1))
"""The bucket of a latency ``dt`` (ns, below 2**128) is ``_BUCKET_OF[(dt >> FIRST_BIT).bit_length()]``:
one index where a comparison and a branch would run per reply."""


class FdBudget(Protocol):
    """The host-fd budget of a gofer process (issue #14, ``attach.FdBudget``): ints read
    without a lock (read-only here, so that a property such as ``in_use`` qualifies)."""

    @property
    def limit(self) -> int: ...

    @property
    def in_use(self) -> int: ...

    @property
    def reclaims(self) -> int: ...

    @property
    def reopens(self) -> int: ...


def bucket_bounds() -> list[float]:
    """Upper bounds (seconds) of the bounded buckets, in order (the last bucket has none)."""
    return [2 ** (FIRST_BIT + b) / 1e9 for b in range(BUCKETS - 1)]


def op_name(column: int) -> str:
    """``Twalk`` for MsgType.TWALK; ``other`` for column 0; ``type N`` for a number
    that names no message."""
    if column == 0:
        return "other"
    try:
        name = MsgType(column).name
    except ValueError:
        return f"type {column}"
    return name[0] + name[1:].lower()


class ConnStats:
    """The counters of one connection (see the module docstring for who adds what).

    ``gauges`` answers the connection's ``(fids, requests in flight, host fds held)``
    when a snapshot is taken."""

    __slots__ = ("errk", "errors", "gauges", "hist", "lsum", "name", "rx", "tx")

    def __init__(self, name: str, gauges: Callable[[], tuple[int, int, int]]) -> None:
        self.name = name
        self.gauges = gauges
        self.rx = [0] * COLUMNS
        """Request bytes received, per type."""
        self.tx = [0] * COLUMNS
        """Reply bytes sent (or queued to be), per type."""
        self.lsum = [0] * COLUMNS
        """Sum of latencies (ns), per type."""
        self.hist: list[list[int] | None] = [None] * BUCKETS
        """hist[bucket][type]: a row is made when its bucket is first used."""
        self.errk: list[int] = []
        """Types of the requests whose Rlerror replies are queued in the core and not
        yet counted in ``hist`` (an Rlerror does not say what it answers)."""
        self.errors: dict[tuple[int, int], int] = {}

    def replied(self, out: list[Any], t0: int) -> None:
        """The replies ``out`` (the core's queue, see the module docstring) were handed
        to the socket; their frames arrived at ``t0``.

        A reply's type byte is its request's plus one, except an Rlerror's: those are
        counted in column 6 first (Tlerror, which no client sends: no branch per
        reply) and moved to their requests' types from ``errk``."""
        dt: int = _clock() - t0
        made = self.hist[_BUCKET_OF[(dt >> FIRST_BIT).bit_length()]]
        # (declared types: compiled, list[int] indexed by an int is a direct list
        # operation; an index or a row of an inferred Any or union type went through
        # the generic PyObject_GetItem/SetItem, five of them per reply)
        row: list[int] = self._row(dt) if made is None else made
        lsum = self.lsum
        for r in out:
            k: int = r[4] - 1
            row[k] += 1
            lsum[k] += dt
        if self.errk:  # loaded again below: the common case (no Rlerror) stores nothing
            errk = self.errk
            for k in errk:
                row[k] += 1
                lsum[k] += dt
            n = len(errk)
            row[_TLERROR] -= n
            lsum[_TLERROR] -= n * dt
            errk.clear()

    def replied_one(self, mtype: int, t0: int, nbytes: int) -> None:
        """A reply of ``nbytes`` to a ``mtype`` request that arrived at ``t0`` was
        handed to the socket on its own, not through the core's queue (which may
        hold replies being sent meanwhile)."""
        dt = _clock() - t0
        self._row(dt)[mtype] += 1
        self.lsum[mtype] += dt
        self.tx[mtype] += nbytes

    def _row(self, dt: int) -> list[int]:
        """The histogram row of latency ``dt`` (ns), made on first use."""
        b = _BUCKET_OF[(dt >> FIRST_BIT).bit_length()]
        row = self.hist[b]
        if row is None:
            row = self.hist[b] = [0] * COLUMNS
        return row

    def error(self, mtype: int, err: int) -> None:
        """An Rlerror ``err`` answered a ``mtype`` request."""
        key = (mtype if 0 <= mtype < COLUMNS else 0, err)
        errors = self.errors
        if key not in errors and len(errors) >= MAX_ERROR_KEYS:
            key = (key[0], 0)
        errors[key] = errors.get(key, 0) + 1

    def add_to(self, total: _Totals) -> None:
        """Add these counters to ``total`` (a connection that ended)."""
        for mine, theirs in ((self.rx, total.rx), (self.tx, total.tx), (self.lsum, total.lsum)):
            for i, v in enumerate(mine):
                if v:
                    theirs[i] += v
        for b, row in enumerate(self.hist):
            if row is not None:
                trow = total.hist[b]
                for i, v in enumerate(row):
                    if v:
                        trow[i] += v
        for key, n in self.errors.items():
            total.errors[key] = total.errors.get(key, 0) + n


class _Totals:
    """Counters summed over connections (the ended ones, or a snapshot's)."""

    def __init__(self) -> None:
        self.rx = [0] * COLUMNS
        self.tx = [0] * COLUMNS
        self.lsum = [0] * COLUMNS
        self.hist = [[0] * COLUMNS for _ in range(BUCKETS)]
        self.errors: dict[tuple[int, int], int] = {}

    def copy(self) -> _Totals:
        t = _Totals()
        t.rx, t.tx, t.lsum = list(self.rx), list(self.tx), list(self.lsum)
        t.hist = [list(row) for row in self.hist]
        t.errors = dict(self.errors)
        return t


class Registry:
    """The connections of a process, and what the ended ones counted.

    A connection is ``add``-ed when it starts and ``remove``-d when it ends (its
    counters go to the totals); :meth:`snapshot` sums them all."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far, as if the process started now: a fork-server's
        pre-forked child serves a throw-away warm-up connection whose requests must not show
        in the statistics of the gofer it becomes."""
        self.live: dict[int, ConnStats] = {}
        self.ended = _Totals()
        self.connections_ended = 0
        self.started = time.monotonic()

    def add(self, cs: ConnStats) -> None:
        self.live[id(cs)] = cs

    def remove(self, cs: ConnStats) -> None:
        if self.live.pop(id(cs), None) is not None:
            cs.add_to(self.ended)
            self.connections_ended += 1

    def snapshot(self, process: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every counter as one JSON-able document (the endpoint's ``/json``; the
        OpenMetrics text is rendered from it).  ``process``: :meth:`ProcessProbe.read`'s."""
        total = self.ended.copy()
        conns = []
        for cs in list(self.live.values()):
            cs.add_to(total)
            fids, inflight, fds = cs.gauges()
            conns.append({"name": cs.name, "fids": fids, "inflight": inflight, "host_fds": fds})
        ops: dict[str, Any] = {}
        for col in range(COLUMNS):
            latency = [total.hist[b][col] for b in range(BUCKETS)]
            count = sum(latency)
            errs = {
                _errno.errorcode.get(e, str(e)): n
                for (c, e), n in sorted(total.errors.items())
                if c == col
            }
            if not (count or total.rx[col] or errs):
                continue
            ops[op_name(col)] = {
                "count": count,
                "latency": latency,
                "latency_sum": total.lsum[col] / 1e9,
                "bytes_in": total.rx[col],
                "bytes_out": total.tx[col],
                "errors": errs,
            }
        return {
            "version": 1,
            "uptime": time.monotonic() - self.started,
            "latency_bounds": bucket_bounds(),
            "ops": ops,
            "connections": conns,
            "connections_ended": self.connections_ended,
            "host_fds_held": sum(c["host_fds"] for c in conns),
            "process": process or {},
        }


REGISTRY: Final = Registry()
"""The process's registry: every server connection is in it unless its
``ServerConfig.stats`` names another (tests)."""


def quantile(latency: list[int], bounds: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram with upper ``bounds`` (seconds),
    interpolated inside its bucket as Prometheus's ``histogram_quantile`` does
    (a quantile in the unbounded last bucket is its lower bound); None when empty."""
    count = sum(latency)
    if not count:
        return None
    rank = q * count
    seen = 0
    for b, n in enumerate(latency):
        if n and seen + n >= rank:
            if b >= len(bounds):
                return bounds[-1]
            lo = bounds[b - 1] if b else 0.0
            return lo + (bounds[b] - lo) * (rank - seen) / n
        seen += n
    return bounds[-1]


class ProcessProbe:
    """Process numbers: resident memory, threads, CPU time, the fd limit, the fd budget
    and the worker threads.

    :meth:`open` takes an fd of ``/proc/self/status`` now (call it before a chroot);
    :meth:`read` reads it with ``pread`` (no path lookup: works in the chroot, under
    the seccomp policy).  Without it (no /proc), ``rss_bytes`` is None and
    ``threads`` counts Python's threads."""

    def __init__(
        self,
        status_fd: int = -1,
        fd_budget: FdBudget | None = None,
        workers: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.status_fd = status_fd
        self.fd_budget = fd_budget
        self.workers = workers
        """Worker-thread numbers (the trio layer's: busy, queued, limit)."""

    @classmethod
    def open(cls, **kw: Any) -> ProcessProbe:
        try:
            fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        return cls(fd, **kw)

    def close(self) -> None:
        if self.status_fd >= 0:
            os.close(self.status_fd)
            self.status_fd = -1

    def read(self) -> dict[str, Any]:
        import resource

        out: dict[str, Any] = {
            "pid": os.getpid(),
            "rss_bytes": None,
            "peak_rss_bytes": None,
            "threads": threading.active_count(),
            "cpu_seconds": time.process_time(),
            "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        }
        if self.status_fd >= 0:
            try:
                text = os.pread(self.status_fd, 8192, 0).decode("ascii", "replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out["rss_bytes"] = int(value.split()[0]) * 1024
                elif key == "VmHWM":
                    out["peak_rss_bytes"] = int(value.split()[0]) * 1024
                elif key == "Threads":
                    out["threads"] = int(value)
        b = self.fd_budget
        out["fd_budget"] = (
            None
            if b is None
            else {"limit": b.limit, "in_use": b.in_use, "reclaims": b.reclaims, "reopens": b.reopens}
        )
        out["workers"] = self.workers() if self.workers is not None else {}
        return out
