"""The trio layer of a 9P2000.L connection: socket I/O, buffers, tasks and waits.

Every decision about frames, replies and states is made by the sans-IO
:class:`gofer9p.connection.ConnectionCore` (dispatch table, policy, flush
bookkeeping, Tversion); this module receives into its buffer, hands the bytes
to the core, sends the replies it queues and carries out its actions (a worker
thread, a splice, a flush that waits, a reset, a close).

Contract of :func:`serve`:

* It serves one connected stream socket until the peer closes it (EOF), a
  framing error makes the byte stream untrustworthy (clean close), or the
  surrounding scope is cancelled.  It returns normally in all those cases and
  raises ``OSError`` only for a real socket I/O error.  Client misbehaviour
  (bad frames, unknown fids, duplicate tags, anything a handler raises) never
  escapes: it becomes an ``Rlerror`` and a log line.
* Requests are handled in the order they arrive, but replies may go out of
  order: requests that can block long (fsync, blocking locks, I/O on FIFOs
  and devices, large writes) run as tasks in worker threads, the rest run
  inline in the receive loop, which is far cheaper than a task or a thread
  hand-off per request.  A slow request therefore never stalls a cheap one.
* Every complete frame in a received chunk is handled before the replies of
  that chunk are sent together (one ``sendmsg``), and replies are sent as
  soon as ``flush_bytes`` are queued.  The loop does not read again until
  those replies are written: a peer that sends and never reads stops being
  read.  Background requests take one of ``max_inflight`` slots and their
  bytes (Twrite payloads, threaded Tread buffers) in a per-connection budget
  of ``inflight_msizes`` x msize; when either is full the loop stops reading
  until a request finishes.
* Memory is committed only for work that can succeed, and never to what a
  header merely claims: the receive buffer grows with bytes that arrived, up
  to the frame being received (a header above the negotiated msize, or above
  8 KiB before Tversion, closes the connection first); a Tread takes a buffer
  after its fid is checked, no larger than the file can give.  What one
  connection can hold is the formula of :func:`memory_bound`, written out in
  docs/RESOURCES.md.
* ``Tflush`` of a background request cancels it if it has not started its
  system call yet and is answered only after the old reply was sent or
  dropped; further Tflushes of it (or of a waiting Tflush) are answered in
  order right after; each waits in an in-flight slot, with no task of its
  own.  A flush of a tag not in flight is answered at once (after any reply
  already queued, so ordering holds).
* ``Tversion`` starts a new session: background requests are cancelled and
  awaited, every fid is clunked.

Waiting: after a chunk of one request (a client waiting for its reply), the
loop waits for the next request itself, without a pass through trio's
scheduler, when trio has nothing else to run (:mod:`gofer9p._quietwait`);
otherwise through ``trio.lowlevel.wait_readable``.  The socket may therefore
be in blocking mode: every other receive and send passes ``MSG_DONTWAIT``.

Zero-copy: the socket is read into one reusable buffer; ``Twrite`` data is a
memoryview of that buffer handed straight to ``pwrite``; ``Tread`` reads
(``preadv``) straight into the reply buffer after its 11-byte header.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import socket
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final

import attrs
import trio

from ._quietwait import QuietWait
from .attach import FD_OVERHEAD, AttachPoint, FdBudget, IdMap, Session, session_memory_bound
from .connection import (
    DRAINED,
    MIN_MSIZE,
    PRE_VERSION_FRAME,
    SEND,
    Action,
    Background,
    Close,
    ConnectionCore,
    FlushWait,
    InFlight,
    Limits,
    Splice,
    State,
    Versioned,
)
from .protocol import constants as C
from .stats import CONNECTION_STATS_BYTES, REGISTRY, Registry

if TYPE_CHECKING:
    from .recorder import ConnectionRecording, Recording

log = logging.getLogger("gofer9p.server")

_DONTWAIT: Final = socket.MSG_DONTWAIT  # the socket may be in blocking mode (see _quietwait)
_CLOSED: Final = State.CLOSED
_clock = time.monotonic_ns  # the arrival of a chunk's frames (gofer9p.stats)
_T_READ: Final = int(C.MsgType.TREAD)
_T_FLUSH: Final = int(C.MsgType.TFLUSH)
_R_LERROR: Final = int(C.MsgType.RLERROR)

_SMALL_BUF: Final = 1 << 18
"""Receive buffer kept by an idle connection that pipelined (an idle release
shrinks larger buffers to this)."""
_FIRST_BUF: Final = 8 * 1024
"""Receive buffer of a new connection; it doubles only when received bytes
fill it (a partial frame, or a recv that filled the room), see _receive_loop."""
_BUF_SLACK: Final = 1 << 16
"""Room kept past the largest frame a grown receive buffer must hold, so the
next frames' bytes arrive in the same recv."""

_PIPE_BYTES: Final = 256 * 1024
"""Pipe size for spliced reads: counts up to this less one page fit (a count at an
unaligned offset spans one page more than its size)."""
_F_SETPIPE_SZ: Final = 1031


@attrs.define
class ServerConfig:
    """Per-connection limits."""

    max_msize: int = 4 << 20
    """Largest msize granted; a client asking for more gets this."""
    max_inflight: int = 64
    """Background (threaded) requests in flight before the loop stops reading."""
    max_fids: int = 16384
    """Fids per connection; more is ``EMFILE``."""
    flush_bytes: int = 256 * 1024
    """Replies are sent as soon as this much is queued, so that a pipeline of
    large reads holds one reply buffer at a time, not a whole chunk's worth."""
    idle_release: float = 0.1
    """Seconds without a request after which a connection gives back its
    max-msize receive and read buffers."""
    sockbuf: int = 4 << 20
    """SO_SNDBUF/SO_RCVBUF asked for (best effort): a max-msize reply then
    leaves in one sendmsg instead of many wake-ups."""
    splice: bool = True
    """Send the data of mid-sized Treads of regular files (32 KiB up to a
    256 KiB pipe) by ``splice``: file pages -> pipe -> socket, no copy
    through our memory (see Connection._send_spliced)."""
    connections: int = 2
    """Connections expected to share the process's fd table (``serve --fd``: 1,
    ``serve --listen``: the connection limit, the daemon: its attach points):
    the default budget keeps a socket's fd for each (:func:`fd_budget`)."""
    fd_budget: FdBudget | None = None
    """The process's host-fd budget, split evenly between the connections being
    served (fids, lock descriptions, splice pipes; idle fids' fds are reclaimed
    at a connection's share); None: one budget per process, made on first use
    with :func:`fd_budget` (``--fd-budget``: cli.py, daemon.py)."""
    fd_share: int = 0
    """When not 0: a budget of this many fds for each connection alone instead
    (the fork server's warm-up, tests)."""
    inflight_msizes: int = 2
    """Byte budget of background requests, in msizes: the payloads they hold and
    the reply buffers of threaded Treads, from admission until the reply is
    sent.  Past it the loop stops reading (one request is always admitted when
    nothing else is in flight)."""
    poll_us: int = 0
    """Longest adaptive poll (microseconds) for the next request before the
    loop sleeps, when it has nothing else to do (0: never poll).  It can save
    the wake-up of a QD1 round trip where a wake-up is dear; a client that keeps
    pausing longer than this turns it off for that connection within a few
    requests (see _quietwait.py).  Off by default: on the VMs this project is
    measured on, a window of 50 us cost 1-14 us more server CPU per QD1 request
    than none and bought no latency (p9bench, session 13), and v9fs guests never
    let it catch a request (benchmarks/README.md, "#17")."""
    idmap: IdMap | None = None
    """Guest <-> host id mapping of every connection (``--map-uid``, ``--map-gid``,
    ``--squash-ids``; see gofer9p/attach/_idmap.py); None: ids pass unchanged."""
    record: Recording | None = None
    """Where every connection's bytes are recorded (``--record``; gofer9p.recorder);
    a recording turns splicing off, so that reply data passes through our memory."""
    stats: Registry = REGISTRY
    """Where the connections' statistics are summed (gofer9p.stats; tests give their own)."""


_malloc_tuned = False


def _tune_malloc() -> None:
    """Make glibc serve every allocation of 1 MiB or more with its own mmap.

    By default glibc raises its mmap threshold to the size of the largest
    block freed so far, so once a 4 MiB receive or read buffer has been freed,
    the next ones come from the heap and freeing them never returns memory to
    the system: 50 connections that each sent one 4 MiB frame kept 200 MiB
    after they went idle.  A fixed threshold also fixes the trim threshold.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc
    mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


FD_RESERVE: Final = 256
"""Fds of the process's limit that no connection's share may take.

What they keep working when every connection holds its whole share: ``accept``
(and closing a connection refused at the connection limit), each connection's
socket (one per connection, beside its share), Tattach and the walks of a new
session up to their own share, the attach points' fds, stdio and the log file,
trio's wake-up fds, and the short-lived fds of requests in progress (an
inline request opens a few at a time for the whole process; worker threads,
at most trio's 40, one or two each)."""

FD_SHARE_MIN: Final = 64
"""Smallest useful share (about 20 fids): ``serve --listen`` lowers its
connection limit rather than give a connection less."""


GUEST_MAX_FIDS: Final = 1 << 17
"""``max_fids`` of ``serve --fd`` and the daemon: one client per connection, often a guest
kernel, and a Linux client mounted with cache=loose keeps a fid per cached dentry (an ``ls -l``
of a 100,000-entry directory holds 100,000 fids).  Their host fds are bounded by the fd budget
(idle fids' fds are reclaimed), their memory by docs/RESOURCES.md (F x FID_BYTES)."""


def fd_budget(connections: int, limit: int = 0) -> FdBudget:
    """The process's host-fd budget when serving up to ``connections`` connections.

    All connections of a gofer share one process fd table (the daemon serves the
    root and every 9P mount from one process).  The fd limit is raised first
    (:func:`raise_fd_limit`); the budget is ``limit`` fds (``--fd-budget``; no more
    than the fd limit), by default the fd limit less :data:`FD_RESERVE`, as
    virtiofsd keeps a reserve.  Of it, :data:`~gofer9p.attach.FD_OVERHEAD` and a
    socket per connection are kept for the process itself, and the rest is split
    evenly between the connections being served (``attach/_budget.py``).
    """
    soft = raise_fd_limit()
    want = min(limit, soft) if limit else soft - FD_RESERVE
    return FdBudget(max(FD_SHARE_MIN, want), FD_OVERHEAD + connections, connections)


_process_budget: list[FdBudget] = []  # the default budget (ServerConfig.fd_budget None)


def process_fd_budget(connections: int) -> FdBudget:
    """The budget of connections whose config names none: one per process."""
    if not _process_budget:
        _process_budget.append(fd_budget(connections))
    return _process_budget[0]


def connections_for_fds(wanted: int, budget: FdBudget) -> int:
    """How many of ``wanted`` connections ``budget`` gives at least FD_SHARE_MIN fds each."""
    return max(1, min(wanted, (budget.limit - FD_OVERHEAD) // (FD_SHARE_MIN + 1)))


FD_LIMIT_GOAL: Final = 1 << 20
"""RLIMIT_NOFILE we try to reach (Linux's default fs.nr_open).

A Linux client mounted with cache=loose keeps a fid per cached dentry, so an
``ls -l`` of a 10k-entry directory holds 10k fids (~2 host fds each); the usual
soft/hard limits of 1024-20000 fds would make it fail with EMFILE.  Raising the
hard limit needs CAP_SYS_RESOURCE: the daemon does it before it drops
capabilities; unprivileged ``serve`` settles for its hard limit."""


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed (idempotent); returns the soft limit."""
    import resource

    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == inf:
        return FD_LIMIT_GOAL
    # the goal (raising the hard limit needs CAP_SYS_RESOURCE), else up to the hard limit
    for want in (FD_LIMIT_GOAL if hard == inf else max(hard, FD_LIMIT_GOAL), hard):
        if want == inf or want <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard if hard == inf else want))
            return want
        except (OSError, ValueError):
            continue
    return soft




def _unsent(bufs: list[Any], n: int) -> list[Any]:
    """The buffers (the first one cut) that a sendmsg which wrote ``n`` bytes left."""
    i = 0
    while n:
        ln = len(bufs[i])
        if n >= ln:
            n -= ln
            i += 1
        else:
            return [memoryview(bufs[i])[n:], *bufs[i + 1 :]]
    return bufs[i:]


class _Task:
    """The trio side of a background request: its cancel scope and completion event."""

    __slots__ = ("done", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()


class Connection:
    """The trio layer of one connection: socket I/O, buffers, tasks and waits.

    Every decision about frames, replies and states is the sans-IO
    :class:`~gofer9p.connection.ConnectionCore`'s (``self.core``); this class
    carries out its actions.  See the module docstring for the contract."""

    threaded: ClassVar[int] = 0
    """Requests of every connection now in worker threads: while there are
    any, no receive may hold the thread in a blocking wait (their replies are
    delivered through trio's wake-up socket, which that wait does not watch)."""

    def __init__(
        self,
        sock: socket.socket,
        point: AttachPoint,
        config: ServerConfig,
        name: str,
    ) -> None:
        _tune_malloc()
        self.sock = sock
        self.config = config
        self.name = name
        self.session = Session(
            point,
            max_fids=config.max_fids,
            msize=config.max_msize,
            fd_share=config.fd_share,
            fd_budget=None if config.fd_share else (
                config.fd_budget or process_fd_budget(config.connections)),
            idmap=config.idmap,
        )
        self.rec: ConnectionRecording | None = None
        if config.record is not None:
            self.rec = config.record.connection()
        splice_max = (
            _PIPE_BYTES - 4096
            if config.splice and self.rec is None and hasattr(os, "splice")
            else 0
        )
        limits = Limits(config.max_msize, config.flush_bytes, config.inflight_msizes, splice_max)
        self.core = ConnectionCore(self.session, limits, name)
        self.stats = self.core.stats
        self._flush_t0: dict[int, int] = {}  # arrival of the Tflushes waiting for a request
        self.tasks: dict[int, _Task] = {}  # background requests by tag
        self.send_lock = trio.StrictFIFOLock()
        # tasks in _send (holding or waiting for send_lock); a recording counts one more
        # for good, so that _send_now refuses and every reply goes through _sendmsg_all
        self._sending = 0 if self.rec is None else 1
        self.inflight = trio.Semaphore(config.max_inflight)
        self._inbytes = 0  # payload and reply bytes of background requests in flight
        self._bytes_freed = trio.lowlevel.ParkingLot()
        self.nursery: trio.Nursery | None = None
        self.quiet: QuietWait | None = None  # the receive loop's waiter (its poll counters)
        self._pipe: tuple[int, int] | None = None  # (read, write) end for spliced Treads

    @property
    def msize(self) -> int:
        """The negotiated msize; 0 until a Tversion is granted."""
        return self.core.msize

    # ------------------------------------------------------------------ I/O
    async def _send(self, bufs: list[Any]) -> None:
        """Write every buffer, in order, holding the send lock."""
        if self.core.state is _CLOSED:
            return
        await self._lock_send()
        try:
            await self._sendmsg_all(bufs)
        finally:
            self._unlock_send()

    async def _lock_send(self) -> None:
        """Take the send lock (counted in ``_sending``, which _send_now checks).

        acquire_nowait first: ``async with lock`` always yields to the
        scheduler (a whole run-loop pass with an epoll_wait) even when the
        lock is free, which is most of a QD1 round trip's overhead."""
        self._sending += 1
        try:
            self.send_lock.acquire_nowait()
        except trio.WouldBlock:
            try:
                await self.send_lock.acquire()
            except BaseException:
                self._sending -= 1
                raise

    def _unlock_send(self) -> None:
        self.send_lock.release()
        self._sending -= 1

    async def _sendmsg_all(self, bufs: list[Any]) -> None:
        """sendmsg until every buffer is out, waiting for room (send lock held)."""
        sock = self.sock
        rec = self.rec
        while bufs:
            try:
                n = sock.sendmsg(bufs, (), _DONTWAIT)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            if rec is not None:
                await rec.sent(bufs, n)
            bufs = _unsent(bufs, n)

    def _send_now(self, bufs: list[Any]) -> list[Any] | None:
        """The fast path of a send: no lock and no await; returns what did not
        fit in the socket buffer (to go through ``_send``), or None when the
        fast path is not allowed (a task is part-way through a reply and holds
        or awaits the lock, the connection is closed, or too many buffers).

        Safe because nothing else runs in this thread until the caller awaits.
        A lone reply (QD1) goes out with ``send()``, which skips sendmsg's
        list-to-iovec work."""
        if len(bufs) > 512 or self._sending or self.core.state is _CLOSED:
            return None
        try:
            if len(bufs) == 1:
                n = self.sock.send(bufs[0], _DONTWAIT)
            else:
                n = self.sock.sendmsg(bufs, (), _DONTWAIT)
        except BlockingIOError:
            n = 0
        return _unsent(bufs, n)

    async def _send_batched(self, bufs: list[Any]) -> None:
        """Send reply buffers; sendmsg takes at most IOV_MAX (1024) buffers a call.

        Pooled read buffers in ``bufs`` go back to the pool once written.
        """
        rest = self._send_now(bufs)
        if rest is None:
            for i in range(0, len(bufs), 512):
                await self._send(bufs[i : i + 512])
        elif rest:  # keeps its order under the lock
            await self._send(rest)
        if self.core.lent:
            self.core.returned()

    async def _send_out(self, t0: int) -> None:
        """Send the replies the core queued (none stays referenced here); their
        frames arrived at ``t0``."""
        out = self.core.take()
        if out:
            await self._send_batched(out)
            self.stats.replied(out, t0)

    # -------------------------------------------------------------- serving
    async def run(self) -> None:
        sock = self.sock
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, self.config.sockbuf)
            except OSError:
                pass
        peer = _peer_name(sock)
        log.info("%s: connection start peer=%s", self.name, peer)
        reason = "EOF"
        registry = self.config.stats
        registry.add(self.stats)
        failed: OSError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    reason = await self._receive_loop()
                except (BrokenPipeError, ConnectionResetError) as e:
                    reason = f"peer closed ({e.strerror})"
                except OSError as e:
                    # the socket failed otherwise (ENOBUFS or ENOMEM under memory pressure):
                    # raised here it would leave the nursery as an ExceptionGroup, which the
                    # callers' ``except OSError`` (one connection's I/O error) does not catch
                    reason = f"I/O error ({e.strerror})"
                    failed = e
                finally:
                    self.core.close()
                    for t in list(self.tasks.values()):
                        t.scope.cancel()
        finally:
            self.session.close()
            self._drop_pipe()
            registry.remove(self.stats)
            if self.rec is not None:
                self.rec.close()
            log.info(
                "%s: connection end (%s) frames=%d polled=%d trio=%d stats_reads=%d",
                self.name,
                reason,
                self.core.frames,
                self.quiet.hits if self.quiet else 0,
                self.quiet.deferred if self.quiet else 0,
                self.quiet.refreshes if self.quiet else 0,
            )
        if failed is not None:
            raise failed

    async def _receive_loop(self) -> str:
        sock = self.sock
        core = self.core
        # The buffer starts small and grows with what arrives: it doubles when
        # received bytes fill it (a partial frame, or a pipelining client's
        # chunk), up to the largest frame seen plus slack (never past
        # max_frame + slack), never to what a header merely announces.
        bufsize = _FIRST_BUF
        buf = bytearray(bufsize)
        mv = memoryview(buf)
        start = end = 0
        recv_into = sock.recv_into
        rec = self.rec
        sock_send = sock.send
        # (the core's, the stats' and this object's own methods are called on their
        # objects, not through bound methods kept in locals: compiled, such a call is a
        # direct C call, where a bound method goes through vectorcall and argument parsing)
        stats = self.stats
        clock = _clock
        wait_readable = trio.lowlevel.wait_readable
        drained = False  # the last recv left the socket empty: wait before the next
        busy = 0  # chunks handled since this task last yielded to the scheduler
        # (fixed_scopes: the loop waits from one place and enters or cancels
        # none of its own scopes between waits)
        self.quiet = quiet = QuietWait(sock, self.config.poll_us / 1e6, fixed_scopes=True)
        idle_release = self.config.idle_release
        out: list[Any] | None = None
        filled = False  # the last recv filled the buffer's room
        while True:
            # make room for the rest of a partial frame
            if start == end:
                start = end = 0
                if filled and bufsize < _SMALL_BUF:
                    # a pipelining client filled the buffer: take larger chunks
                    bufsize *= 2
                    buf = bytearray(bufsize)
                    mv = memoryview(buf)
            elif bufsize - end < 4096 or start + core.need > bufsize:
                n = end - start
                need = core.need
                grow = 0
                if need + 4096 > bufsize and 2 * n >= bufsize:
                    # the frame does not fit and its bytes already fill half the
                    # buffer: double it (at most to the frame plus slack)
                    grow = min(2 * bufsize, need + _BUF_SLACK)
                    if grow < need + 4096 and need <= grow and bufsize >= _SMALL_BUF:
                        # A doubling would hold the frame but not the 4 KiB past
                        # it that this test wants, so a second growth would follow
                        # with the doubled buffer alive (a max-msize frame: 2 -> 4
                        # -> 4 MiB + 64 KiB): the frame plus slack at once, at
                        # most 64 KiB (1/8 of the doubling) more than a doubling.
                        grow = need + _BUF_SLACK
                if filled and bufsize < _SMALL_BUF:
                    # a pipelining client filled the buffer, a frame cut at its
                    # end: take larger chunks too (pipelined 64 KiB Twrites in a
                    # frame-plus-slack buffer took one recv and one move of the
                    # partial frame per frame)
                    grow = max(grow, min(2 * bufsize, _SMALL_BUF))
                if grow > bufsize:
                    bufsize = grow
                    # The pooled read buffer goes first, and the last replies
                    # that may hold it or the old buffer: the growth then peaks
                    # at the old buffer plus the new, below a max-msize
                    # session's rest state (receive + read buffer).
                    core.pool.clear()
                    out = None
                    nbuf = bytearray(bufsize)
                    nmv = memoryview(nbuf)
                    # into the view: ``nbuf[:n] = view`` would copy it to a
                    # temporary bytearray first (n bytes more at the peak)
                    nmv[:n] = mv[start:end]
                    buf, mv = nbuf, nmv
                elif start:
                    mv[0:n] = mv[start:end]
                start, end = 0, n
            got = -1
            if drained:
                # A chunk of one request that left the socket empty: the client
                # is waiting for the reply (QD1), so wait first instead of a
                # recv that fails with EAGAIN (a syscall and an exception per
                # request).  After a chunk of several requests (a pipelining
                # client) more are likely there already: recv at once.
                big = bufsize > _SMALL_BUF or bool(core.pool)
                got = quiet.recv_into(
                    mv if end == 0 else mv[end:], not Connection.threaded,
                    idle_release if big else math.inf,
                )
                if got < 0:
                    if big:
                        # Holding max-msize buffers: if the client goes idle, give
                        # them back (a server may have thousands of idle connections).
                        with trio.move_on_after(idle_release) as idle:
                            await wait_readable(sock)
                        if idle.cancelled_caught:
                            core.pool.clear()
                            n = end - start
                            out = None  # the last replies keep buffers alive
                            if bufsize > _SMALL_BUF and n <= _SMALL_BUF - 4096:
                                bufsize = _SMALL_BUF
                                nbuf = bytearray(bufsize)
                                nmv = memoryview(nbuf)
                                nmv[:n] = mv[start:end]  # (not via a temporary)
                                buf, mv = nbuf, nmv
                                start, end = 0, n
                            await wait_readable(sock)
                    else:
                        await wait_readable(sock)
                busy = 0
            room = bufsize - end
            if got < 0:
                try:
                    # (the whole buffer when it is empty, the common case: a slice is a
                    # new memoryview, some 500 instructions)
                    got = recv_into(mv if end == 0 else mv[end:], 0, _DONTWAIT)
                except BlockingIOError:
                    drained = True
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    return "reset by peer"
            if got == 0:
                return "EOF"
            t0 = clock()  # the arrival of the frames this chunk completes
            filled = got == room
            end += got
            if rec is not None:
                await rec.received(mv[end - got : end])
            first = core.frames
            # handle every complete frame in the buffer, carrying out the
            # core's actions (the replies it queued before one go out first)
            act = core.receive(mv, start, end)
            while act is not DRAINED:
                start = core.start
                if isinstance(act, Close):
                    # the replies made before the bad frame still go out (the
                    # core is closed already, so past the closed-state check)
                    out = core.take()
                    await self._lock_send()
                    try:
                        await self._sendmsg_all(out)
                    finally:
                        self._unlock_send()
                    stats.replied(out, t0)
                    return "framing error"
                if act is not SEND:
                    await self._send_out(t0)
                    await self._act(act, t0)
                else:
                    await self._send_out(t0)
                act = core.receive(mv, start, end)
            start = core.start
            out = core.out
            if out:
                if len(out) == 1 and not self._sending and not core.lent:
                    # One reply (QD1) and nothing being sent: _send_now's fast path
                    # written out (no call, no _unsent), and the core's queue, sent
                    # whole, is emptied for the next reply instead of replaced
                    # (core.take) by a new list.  (Not closed: a framing error
                    # returned above, and core.close() ends this loop first.)
                    r = out[0]
                    try:
                        n = sock_send(r, _DONTWAIT)
                    except BlockingIOError:
                        n = 0
                    if n == len(r):
                        stats.replied(out, t0)
                        out.clear()
                    else:
                        core.out = []
                        await self._send([memoryview(r)[n:]])
                        stats.replied(out, t0)
                else:
                    core.out = []  # (core.take(), without the call)
                    # _send_batched's fast path without a coroutine; lent pool
                    # buffers need _send_batched's return to the pool
                    rest = None if core.lent else self._send_now(out)
                    if rest is None:
                        await self._send_batched(out)
                    elif rest:
                        await self._send(rest)
                    stats.replied(out, t0)
            drained = got < room and core.frames - first <= 1
            busy += 1
            if busy >= 8 and not drained:
                # keep other connections' tasks fair when a client floods us
                # (sends without contention do not yield)
                busy = 0
                await trio.lowlevel.checkpoint()

    async def _act(self, act: Action, t0: int) -> None:
        """Carry out one of the core's actions (see gofer9p.connection), for a
        frame that arrived at ``t0``."""
        if isinstance(act, Background):
            await self._start_background(act, t0)
        elif isinstance(act, Splice):
            await self._send_spliced(act.header, act.n)
            self.stats.replied_one(_T_READ, t0, len(act.header) + act.n)
        elif isinstance(act, FlushWait):
            await self._join_flush(act, t0)
        elif isinstance(act, Versioned):
            await self._version(act)
        else:  # pragma: no cover - every action is one of the above
            raise AssertionError(f"unknown action {act!r}")

    async def _version(self, act: Versioned) -> None:
        """Tversion: background requests are cancelled and awaited and every fid
        clunked (when there are any), the splice pipe made; then the Rversion."""
        if act.reset:
            for t in list(self.tasks.values()):
                t.scope.cancel()
            for t in list(self.tasks.values()):
                await t.done.wait()
            self.session.reset()
        if act.open_pipe:
            self._open_pipe()
        self.core.version_done(act)

    # Spliced Treads.  A Tread of a regular file is the costliest request per
    # byte: preadv copies the page-cache pages into our buffer, sendmsg copies
    # them again into the socket.  splice(file -> pipe) takes references to
    # the pages and splice(pipe -> socket) hands them to the socket: the only
    # copy left is the client's own receive (p9bench seq Tread 64K: see
    # benchmarks/README.md).  What it changes: the reply carries the pages as
    # they are when the client receives them, so a write racing with the read
    # may show in it (as it may in a read racing with a write on the host);
    # a read that completes before a write is issued is unaffected, since the
    # client has consumed the reply by then.  Only counts that fit one pipe,
    # and below flush_bytes (larger reads keep the held-back path, behind
    # which small replies overtake).
    def _open_pipe(self) -> None:
        """Make the connection's splice pipe; failing that, turn splicing off.

        Its two fds are charged to the connection's fd share like a fid's."""
        core = self.core
        if not self.session.charge_fds(2):
            log.info("%s: fd share used up: no pipe for spliced reads, copying", self.name)
            core.splice_max = 0
            return
        try:
            r, w = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            self.session.release_fds(2)
            log.warning("%s: no pipe for spliced reads (%s): copying", self.name, e.strerror)
            core.splice_max = 0
            return
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError as e:
            # e.g. EPERM past the user's pipe-user-pages-soft without CAP_SYS_RESOURCE
            log.info("%s: pipe size %d refused (%s): reads are copied", self.name, _PIPE_BYTES, e.strerror)
            os.close(r)
            os.close(w)
            self.session.release_fds(2)
            core.splice_max = 0
            return
        self._pipe = (r, w)
        core.pipe_w = w

    def _drop_pipe(self) -> None:
        """Close the pipe (with whatever it still holds): reads are copied until
        a Tversion makes a new one."""
        p, self._pipe = self._pipe, None
        self.core.pipe_w = -1
        if p is not None:
            os.close(p[0])
            os.close(p[1])
            self.session.release_fds(2)

    async def _send_spliced(self, header: bytes, n: int) -> None:
        """Send an Rread header, then its ``n`` data bytes waiting in the pipe,
        under the send lock so that no other reply comes between them."""
        try:
            await self._lock_send()
        except BaseException:
            self._drop_pipe()
            raise
        done = False
        try:
            if self.core.state is _CLOSED:
                return
            await self._sendmsg_all([header])
            assert self._pipe is not None
            sock = self.sock
            r, fd = self._pipe[0], sock.fileno()
            # splice has no MSG_DONTWAIT: it blocks on a blocking socket (the
            # quiet wait's mode) whatever its flags, so the socket is made
            # non-blocking for the duration (one ioctl each way).
            blocking = sock.getblocking()
            if blocking:
                sock.setblocking(False)
            try:
                while n:
                    try:
                        n -= os.splice(r, fd, n)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
                    except OSError as e:
                        if e.errno != errno.EINVAL:
                            raise
                        # a transport splice cannot write to: send the rest as bytes
                        log.info("%s: socket refuses splice: reads are copied", self.name)
                        self.core.splice_max = 0
                        data = bytearray()
                        while len(data) < n:
                            data += os.read(r, n - len(data))
                        n = 0
                        await self._sendmsg_all([data])
            finally:
                if blocking:
                    sock.setblocking(True)
            done = True
        finally:
            if not done:
                self._drop_pipe()  # what is left in it belongs to a reply that will not be sent
            self._unlock_send()

    # Flush (the bookkeeping is the core's, see ConnectionCore.join_flush):
    # a Tflush of a background request waits in an in-flight slot, with no
    # task of its own, and is answered right after that request's reply was
    # sent or dropped.
    async def _join_flush(self, act: FlushWait, t0: int) -> None:
        """Wait for an in-flight slot (the loop stops reading meanwhile), then
        make the Tflush wait for its old request, cancelling that request."""
        await self.inflight.acquire()
        tag = self.core.join_flush(act)
        if tag < 0:  # done while we waited for the slot: answered at once
            self.inflight.release()
            return
        self._flush_t0[act.tag] = t0
        t = self.tasks.get(tag)
        if t is not None:
            t.scope.cancel()

    async def _answer_flushes(self, p: InFlight) -> None:
        """Send the Rflushes waiting for ``p`` (its reply was sent or dropped)."""
        core = self.core
        try:
            while True:  # a Tflush of a waiting Tflush may join meanwhile
                rflush = core.next_flush(p)
                if rflush is None:
                    break
                t0 = self._flush_t0.pop(p.flushes[0])
                if core.state is not _CLOSED:
                    try:
                        await self._send([rflush])
                    except OSError as e:
                        log.info("%s: tag=%d Rflush not sent: %s", self.name, p.flushes[0], e)
                    else:
                        self.stats.replied_one(_T_FLUSH, t0, len(rflush))
                core.flush_answered(p)
                self.inflight.release()
        finally:
            for _ in range(core.flushes_done(p)):  # cancelled (the connection is closing)
                self.inflight.release()

    # ----------------------------------------------------- background tasks
    async def _start_background(self, act: Background, t0: int) -> None:
        """Admit a background request: an in-flight slot, then its bytes in the
        byte budget (payload, and for a Tread its reply buffer); the loop
        stops reading until both are free.  A request is always admitted when
        no other request's bytes are in flight, so a max-size one never waits
        forever."""
        cost = act.payload + act.reply
        await self.inflight.acquire()
        try:
            while self._inbytes and self._inbytes + cost > self.core.budget:
                await self._bytes_freed.park()
        except BaseException:
            self.inflight.release()
            raise
        self._inbytes += cost
        p = self.core.admit(act)
        t = _Task()
        self.tasks[p.tag] = t
        Connection.threaded += 1
        assert self.nursery is not None
        self.nursery.start_soon(self._background, act, p, t, t0)

    def _count_background(self, mtype: int, reply: Any, t0: int) -> None:
        """Count the reply of a background request (made in a worker thread, counted
        here in the trio thread, so the counters need no lock)."""
        if reply[4] == _R_LERROR:
            self.stats.error(mtype, int.from_bytes(reply[7:11], "little"))
        self.stats.replied_one(mtype, t0, len(reply))

    def _release_bytes(self, n: int) -> None:
        if n:
            self._inbytes -= n
            self._bytes_freed.unpark_all()

    async def _background(self, act: Background, p: InFlight, t: _Task, t0: int) -> None:
        msg = act.msg
        tag = p.tag
        payload = act.payload
        core = self.core
        reply: Any = None
        try:
            with t.scope:
                try:
                    reply = await trio.to_thread.run_sync(core.run_blocking, msg, act.handler)
                finally:
                    if payload:  # used (or never to be): drop it now, not after the reply
                        msg.data = b""
                        self._release_bytes(payload)
                        payload = 0
            if t.scope.cancelled_caught:
                log.info("%s: tag=%d flushed", self.name, tag)
                reply = None
            if reply is not None and core.state is not _CLOSED:
                try:
                    await self._send([reply])
                except OSError as e:
                    # the stream has lost a reply (or part of one): the client would wait
                    # for it for ever, so the connection ends (the loop sees EOF)
                    log.info("%s: tag=%d reply not sent: %s; closing", self.name, tag, e)
                    try:
                        self.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                else:
                    self._count_background(msg.TYPE, reply, t0)
        finally:
            reply = None
            core.finished(tag)
            del self.tasks[tag]
            Connection.threaded -= 1
            self.inflight.release()
            self._release_bytes(payload + act.reply)
            try:
                await self._answer_flushes(p)
            finally:
                t.done.set()


def _peer_name(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return repr(peer) if peer else "unnamed"


async def serve(
    sock: socket.socket,
    point: AttachPoint,
    config: ServerConfig | None = None,
    *,
    name: str = "",
) -> None:
    """Serve one connected stream socket until EOF (see the module docstring).

    The socket's blocking mode is ours while serving (non-blocking, or blocking with a
    receive timeout when the quiet wait sleeps in ``recv``: every call we make on it
    passes ``MSG_DONTWAIT``); it is not closed here: the caller owns it.
    """
    conn = Connection(sock, point, config or ServerConfig(), name or f"fd{sock.fileno()}")
    await conn.run()


# ------------------------------------------------------------------ the bound
REQUEST_BYTES: Final = 16 * 1024
"""Python memory of one background request or flush waiter besides the bytes
the budget counts: its task, cancel scope, event, message and worker-thread
hand-off (about 6 KB measured for a threaded Tread)."""
CONNECTION_BYTES: Final = 128 * 1024
"""A connection's fixed state: Connection, Session, handler tables, its task,
its QuietWait, the log line objects in flight."""
_REPLY_BYTES: Final = 64
"""Python memory of a queued reply beyond twice its wire size (object header,
list slot); a cut Rread buffer may keep up to twice its size."""
_MIN_REPLY: Final = 7  # Rflush: the smallest reply


def memory_bound(config: ServerConfig, connections: int = 1) -> int:
    """Most Python memory (bytes, tracemalloc's measure) ``connections``
    connections with ``config`` can make the server hold, whatever bytes they
    send and whether or not they read their replies.  The formula and the
    defaults' numbers are written out in docs/RESOURCES.md; every term is a
    limit this module or ``attach`` enforces (M = max_msize, Fb = flush_bytes,
    I = max_inflight, B = inflight_msizes x M, F = max_fids):

    * receive buffer: 2 x max(256 KiB, M + 64 KiB) (old and new during a growth);
    * queued replies: Fb of small replies (at most 2 x wire + 64 bytes each, 7
      bytes at least: 12 x Fb), plus the reply that crossed Fb, the held-back
      large reply and the pooled read buffer: 3 x (M + 64);
    * the request being handled: 2 x M (a reply built and its encoding);
    * background requests: B + I x REQUEST_BYTES (flush waiters share the I slots);
    * the session: ``attach.session_memory_bound(F)``;
    * its statistics: ``stats.CONNECTION_STATS_BYTES``;
    * the rest: CONNECTION_BYTES.
    """
    m = config.max_msize
    small_replies = 2 * config.flush_bytes + (config.flush_bytes // _MIN_REPLY + 1) * _REPLY_BYTES
    per_connection = (
        2 * max(_SMALL_BUF, m + _BUF_SLACK)
        + small_replies
        + 3 * (m + _REPLY_BYTES)
        + 2 * m
        + config.inflight_msizes * m
        + config.max_inflight * REQUEST_BYTES
        + session_memory_bound(config.max_fids)
        + CONNECTION_STATS_BYTES
        + CONNECTION_BYTES
    )
    return connections * per_connection


__all__ = [
    "MIN_MSIZE",
    "PRE_VERSION_FRAME",
    "Connection",
    "ServerConfig",
    "memory_bound",
    "serve",
]
