"""The host-fd budget of one gofer process, split fairly between its connections.

A Linux client mounted with ``cache=loose`` keeps a fid per cached dentry, so
the fids a client holds are unbounded in practice; the host fds behind them
must not be (virtiofsd and QEMU's 9p server hit RLIMIT_NOFILE the same way).
One ``FdBudget`` per process says how many host fds the gofer may hold for its
clients' fids, lock descriptions and splice pipes; every connection's fid
table (``_fids.FidTable``) registers with it and gets an equal share of it
(``fd_share``, re-split whenever a connection comes or goes; tables above
their new share give back idle fds at once).  A table at its share reclaims
its own idle fids' fds, least recently used first, and reopens them on demand
(``_fids``).  What cannot be reclaimed (files open for I/O, locks, the splice
pipe) is capped per connection at ``pin_share``, the pool split between the
connections the process expects (``connections``: ``serve --listen``'s limit,
the daemon's attach points), so that connections which came first cannot pin
the fds of one that comes later; past it an open is EMFILE (a lock ENOLCK).

``limit`` counts every fd of the process; ``reserve`` of them are kept out of
the shares for what the process holds for itself (stdio, the log, trio's
wake-up fds, the attach points and their mount fds, one socket per
connection, the short-lived fds of requests in flight), so that a process at
its budget holds at most ``limit`` fds in all.

The counters are plain ints, read without a lock (``in_use`` sums the tables'
charges when read): ``limit``, ``in_use``, ``reclaims`` (fids whose fds were
reclaimed), ``reopens`` (fids reopened after a reclaim).
"""

from __future__ import annotations

import threading
from typing import Final, Protocol

__all__ = ["FD_OVERHEAD", "FdBudget"]

FD_OVERHEAD: Final = 32
"""Fds of a budget kept for the process itself besides one socket per connection:
stdio (3), the log (1), trio's epoll and wake-up fds (3), the attach points'
fds and their mount fds, the few fds the inline request opens, one or two for
each worker thread busy with a request."""


class _Table(Protocol):
    """What the budget asks of a connection's fid table (``_fids.FidTable``)."""

    fd_share: int
    pin_share: int

    def fds_charged(self) -> int: ...
    def trim(self) -> None: ...


class FdBudget:
    """Host fds one process may hold for its clients (see the module docstring)."""

    def __init__(self, limit: int, reserve: int = 0, connections: int = 1) -> None:
        self.limit = limit
        self.reserve = reserve
        """Fds of ``limit`` no share takes (FD_OVERHEAD plus the expected connections' sockets)."""
        self.connections = connections
        """Connections the process expects at most (``pin_share`` is the pool split by them)."""
        self.reclaims = 0
        self.reopens = 0
        self._tables: list[_Table] = []
        self._lock = threading.Lock()  # _tables and the two counters

    @property
    def pool(self) -> int:
        """Fds the shares split: ``limit`` less ``reserve`` (at least 1)."""
        return max(1, self.limit - self.reserve)

    @property
    def in_use(self) -> int:
        """Fds now charged by every table (each table's count is a plain int)."""
        return sum(t.fds_charged() for t in list(self._tables))

    def share(self) -> int:
        """One table's share now: the pool split evenly between the registered tables."""
        return max(1, self.pool // max(1, len(self._tables)))

    def register(self, table: _Table) -> None:
        """A new connection: the shares shrink, and tables above theirs give back idle fds."""
        with self._lock:
            self._tables.append(table)
            tables = list(self._tables)
        self._reshare(tables)
        for t in tables:
            if t is not table and t.fds_charged() > t.fd_share:
                t.trim()

    def unregister(self, table: _Table) -> None:
        """A connection ended (its fds are closed): the others' shares grow."""
        with self._lock:
            if table not in self._tables:
                return
            self._tables.remove(table)
            tables = list(self._tables)
        self._reshare(tables)

    def _reshare(self, tables: list[_Table]) -> None:
        share = self.share()
        pin = max(1, self.pool // max(self.connections, len(tables)))
        for t in tables:
            t.fd_share = share
            t.pin_share = pin

    def count(self, reclaims: int, reopens: int) -> None:
        """Add to the counters (tables of different connections count concurrently)."""
        with self._lock:
            self.reclaims += reclaims
            self.reopens += reopens
