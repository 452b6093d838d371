"""One 9P2000.L connection: framing, tags, flush, concurrency, msize.

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
import struct
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._quietwait import QuietWait
from .attach import AttachPoint, Session, session_memory_bound
from .attach.session import FDS_PER_FID
from .protocol import constants as C
from .protocol._wire import HEADER
from .protocol.codec import DECODERS, ENCODERS, RGETATTR, TGETATTR_BODY, ProtocolError
from .protocol.framing import FRAMING_ERROR, next_frame
from .protocol.messages import Message, Rflush, Rversion, Twrite

log = logging.getLogger("gofer9p.server")

_TREAD = struct.Struct("<IQI")
_HDR_U32 = struct.Struct("<IBHI")
"""A header and one u32: Rread's count (its data follows), Rwrite's count, Rlerror's ecode."""
_U32 = struct.Struct("<I")
_DONTWAIT = socket.MSG_DONTWAIT  # the socket may be in blocking mode (see _quietwait)

_MAY_BLOCK = frozenset({C.MsgType.TFSYNC, C.MsgType.TSETATTR, C.MsgType.TLOPEN})
"""Types that may go to a worker thread (Session.is_blocking decides).

Reads and writes of regular files are not among them: on local filesystems a
``preadv``/``pwrite`` of even a max-msize payload is one short syscall, and a
thread hand-off (plus the copy it forces out of the receive buffer) costs
more than it saves.  Reads and writes of FIFOs and devices are threaded
(``Session.read_blocks``)."""

# plain ints: comparing with an IntEnum member costs an attribute lookup per frame
_T_READ = int(C.MsgType.TREAD)
_T_GETATTR = int(C.MsgType.TGETATTR)
_R_GETATTR = int(C.MsgType.RGETATTR)
_RGETATTR_SIZE = RGETATTR.size
_T_VERSION = int(C.MsgType.TVERSION)
_T_FLUSH = int(C.MsgType.TFLUSH)
_T_WRITE = int(C.MsgType.TWRITE)
_R_WRITE = int(C.MsgType.RWRITE)
_T_CLUNK = int(C.MsgType.TCLUNK)
_T_REMOVE = int(C.MsgType.TREMOVE)
_T_WALK = int(C.MsgType.TWALK)
_R_CLUNK = int(C.MsgType.RCLUNK)
_R_REMOVE = int(C.MsgType.RREMOVE)
_R_WALK = int(C.MsgType.RWALK)
_TWALK0 = struct.Struct("<IIH")
_RWALK0 = struct.Struct("<IBHH")
_MAY_BLOCK_INTS = frozenset(int(t) for t in _MAY_BLOCK)
_NOT_PLAIN = _MAY_BLOCK_INTS | {_T_READ, _T_VERSION, _T_FLUSH, _T_WRITE, _T_GETATTR}

_SMALL_BUF = 1 << 18
"""Receive buffer kept by an idle connection that pipelined (an idle release
shrinks larger buffers to this)."""
_FIRST_BUF = 8 * 1024
"""Receive buffer of a new connection; it doubles only when received bytes
fill it (a partial frame, or a recv that filled the room), see _receive_loop."""
_BUF_SLACK = 1 << 16
"""Room kept past the largest frame a grown receive buffer must hold, so the
next frames' bytes arrive in the same recv."""
PRE_VERSION_FRAME = 8 * 1024
"""Largest frame accepted before a Tversion is granted: any Tversion fits
(its version string is a few bytes), and an unversioned peer cannot make the
receive buffer grow past this (a larger header closes the connection)."""

_BIG = 64 * 1024
"""Read replies at least this large use pooled buffers (no zero-fill, no mmap)."""
_ORDERED = frozenset({_T_READ, int(C.MsgType.TREADDIR), _T_FLUSH, _T_VERSION})
"""Requests before which a held-back large reply is sent (see _receive_loop)."""

_SPLICE_MIN = 32 * 1024
"""Smallest Tread count whose data is spliced (page references) instead of copied."""
_PIPE_BYTES = 256 * 1024
"""Pipe size for spliced reads: counts up to this less one page fit (a count at an
unaligned offset spans one page more than its size)."""
_F_SETPIPE_SZ = 1031
_R_READ = int(C.MsgType.RREAD)

MIN_MSIZE = 4096
"""Smaller msizes leave no room for a useful readdir or walk reply."""


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
    through our memory (see Connection._read)."""
    connections: int = 2
    """Connections expected to share the process's fd table: each gets
    :func:`fd_share` of it (``serve --fd``: 1, ``serve --listen``: the
    connection limit, the daemon: its attach points)."""
    fd_share: int = 0
    """Host fds a connection may hold (fids, lock descriptions, the splice
    pipe); 0: ``fd_share(connections)``."""
    inflight_msizes: int = 2
    """Byte budget of background requests, in msizes: the payloads they hold and
    the reply buffers of threaded Treads, from admission until the reply is
    sent.  Past it the loop stops reading (one request is always admitted when
    nothing else is in flight)."""
    poll_us: int = 50
    """Longest adaptive poll (microseconds) for the next request before the
    loop sleeps, when it has nothing else to do (0: never poll).  Saves the
    wake-up that dominated a QD1 round trip; a client that keeps pausing longer
    than this turns it off for that connection within a few requests
    (see _quietwait.py)."""


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


FD_RESERVE = 256
"""Fds of the process's limit that no connection's share may take.

What they keep working when every connection holds its whole share: ``accept``
(and closing a connection refused at the connection limit), each connection's
socket (one per connection, beside its share), Tattach and the walks of a new
session up to their own share, the attach points' fds, stdio and the log file,
trio's wake-up fds, and the short-lived fds of requests in progress (an
inline request opens a few at a time for the whole process; worker threads,
at most trio's 40, one or two each)."""

FD_SHARE_MIN = 64
"""Smallest useful share (about 20 fids): ``serve --listen`` lowers its
connection limit rather than give a connection less."""


def fd_share(connections: int) -> int:
    """Host fds one of ``connections`` connections may hold (``Session.fd_share``).

    All connections of a gofer share one process fd table (the daemon serves the
    root and every 9P mount from one process).  The fd limit is raised first
    (:func:`raise_fd_limit`); then :data:`FD_RESERVE` is set apart and the rest
    split evenly, less each connection's own socket.  ``connections`` connections
    at their share therefore leave the reserve free.  At least
    :data:`FD_SHARE_MIN`, whatever the limit (callers that accept connections
    bound their number with :func:`connections_for_fds` first).
    """
    soft = raise_fd_limit()
    return max(FD_SHARE_MIN, (soft - FD_RESERVE) // max(1, connections) - 1)


def connections_for_fds(wanted: int) -> int:
    """How many of ``wanted`` connections the fd limit gives at least FD_SHARE_MIN fds each."""
    soft = raise_fd_limit()
    return max(1, min(wanted, (soft - FD_RESERVE) // (FD_SHARE_MIN + 1)))


def fid_cap(max_fids: int, connections: int = 2) -> int:
    """Fids a connection may hold when it holds nothing else (no lock descriptions, no pipe)."""
    return min(max_fids, fd_share(connections) // FDS_PER_FID)


FD_LIMIT_GOAL = 1 << 20
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


def _rlerror(tag: int, err: int) -> bytes:
    return _HDR_U32.pack(11, C.MsgType.RLERROR, tag, err)


class _Pending:
    """A background request: its cancel scope, completion event and the tags of
    the Tflushes waiting for it (answered in order once its reply was sent or
    dropped; each holds an in-flight slot and is in ``Connection.pending``
    under its own tag until answered)."""

    __slots__ = ("answered", "done", "flushes", "scope", "tag")

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.flushes: list[int] = []
        self.answered = False  # its flushes were answered: a later one is answered at once


class Connection:
    """State of one connection; see the module docstring for the contract."""

    threaded = 0
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
            fd_share=config.fd_share or fd_share(config.connections),
        )
        self.handlers: dict[int, Callable[[Any], Message]] = self.session.handlers
        # (decoder, handler) of the types that are always handled inline with
        # no check of their own: one lookup in _dispatch instead of the chain
        self._plain: dict[int, tuple[Callable[[Any, int], Message], Callable[[Any], Message]]] = {
            t: (DECODERS[t], h)
            for t, h in self.handlers.items()
            if t in DECODERS and t not in _NOT_PLAIN
        }
        self.msize = 0  # 0 until Tversion
        self.max_frame = PRE_VERSION_FRAME
        self.pending: dict[int, _Pending] = {}
        self.send_lock = trio.StrictFIFOLock()
        self._sending = 0  # tasks in _send (holding or waiting for send_lock)
        self.inflight = trio.Semaphore(config.max_inflight)
        self._inbytes = 0  # payload and reply bytes of background requests in flight
        self._budget = 0  # limit of _inbytes (set by Tversion, see ServerConfig.inflight_msizes)
        self._bytes_freed = trio.lowlevel.ParkingLot()
        self.nursery: trio.Nursery | None = None
        self.closed = False
        self.frames = 0
        self.quiet: QuietWait | None = None  # the receive loop's waiter (its poll counters)
        self._pool: list[bytearray] = []  # free max-msize read buffers (at most one kept)
        self._pool_min = max(_BIG, config.flush_bytes)  # smallest read using a pooled buffer
        self._lent: list[bytearray] = []  # pooled buffers in replies not yet sent
        self._pipe: tuple[int, int] | None = None  # (read, write) end for spliced Treads
        self._splice_max = 0  # largest spliced Tread count; 0: splicing off

    # ------------------------------------------------------------------ I/O
    async def _send(self, bufs: list[Any]) -> None:
        """Write every buffer, in order, holding the send lock."""
        if self.closed:
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
        while bufs:
            try:
                n = sock.sendmsg(bufs, (), _DONTWAIT)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            bufs = _unsent(bufs, n)

    def _send_now(self, bufs: list[Any]) -> list[Any] | None:
        """The fast path of a send: no lock and no await; returns what did not
        fit in the socket buffer (to go through ``_send``), or None when the
        fast path is not allowed (a task is part-way through a reply and holds
        or awaits the lock, the connection is closed, or too many buffers).

        Safe because nothing else runs in this thread until the caller awaits.
        A lone reply (QD1) goes out with ``send()``, which skips sendmsg's
        list-to-iovec work."""
        if len(bufs) > 512 or self.closed or self._sending:
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
        if self._lent:
            # One spare buffer: a reply is written out (flush_bytes) before the
            # next large read is handled, so one is all the loop reuses, and a
            # second max-msize buffer would be 4 MiB of VmHWM for nothing.
            if not self._pool:
                self._pool.append(self._lent[0])
            self._lent.clear()

    # -------------------------------------------------------------- serving
    async def run(self) -> None:
        sock = self.sock
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, self.config.sockbuf)
            except OSError:
                pass
        if self.config.splice and hasattr(os, "splice"):
            self._splice_max = _PIPE_BYTES - 4096
        peer = _peer_name(sock)
        log.info("%s: connection start peer=%s", self.name, peer)
        reason = "EOF"
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    reason = await self._receive_loop()
                except (BrokenPipeError, ConnectionResetError) as e:
                    reason = f"peer closed ({e.strerror})"
                finally:
                    self.closed = True
                    for p in list(self.pending.values()):
                        p.scope.cancel()
        finally:
            self.session.reset()
            self._drop_pipe()
            log.info(
                "%s: connection end (%s) frames=%d polled=%d",
                self.name,
                reason,
                self.frames,
                self.quiet.hits if self.quiet else 0,
            )

    async def _receive_loop(self) -> str:
        sock = self.sock
        # The buffer starts small and grows with what arrives: it doubles when
        # received bytes fill it (a partial frame, or a pipelining client's
        # chunk), up to the largest frame seen plus slack (never past
        # max_frame + slack), never to what a header merely announces.
        bufsize = _FIRST_BUF
        buf = bytearray(bufsize)
        mv = memoryview(buf)
        start = end = 0
        recv_into = sock.recv_into
        send_now = self._send_now
        dispatch = self._dispatch
        flush_bytes = self.config.flush_bytes
        wait_readable = trio.lowlevel.wait_readable
        drained = False  # the last recv left the socket empty: wait before the next
        busy = 0  # chunks handled since this task last yielded to the scheduler
        self.quiet = quiet = QuietWait(sock, self.config.poll_us / 1e6)
        idle_release = self.config.idle_release
        frame: memoryview | None = None
        r: Any = None
        out: list[Any] = []
        filled = False  # the last recv filled the buffer's room
        need = 0  # size the partial frame at start announces (0: not known yet)
        while True:
            # make room for the rest of a partial frame
            if start == end:
                start = end = 0
                if filled and bufsize < _SMALL_BUF:
                    # a pipelining client filled the buffer: take larger chunks
                    bufsize *= 2
                    buf = bytearray(bufsize)
                    mv = memoryview(buf)
            elif bufsize - end < 4096 or start + need > bufsize:
                n = end - start
                grow = 0
                if need + 4096 > bufsize and need <= self.max_frame and 2 * n >= bufsize:
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
                    # and frame that may hold it or the old buffer: the growth
                    # then peaks at the old buffer plus the new, below a
                    # max-msize session's rest state (receive + read buffer).
                    self._pool.clear()
                    frame = r = None
                    out = []
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
                big = bufsize > _SMALL_BUF or bool(self._pool)
                got = quiet.recv_into(
                    mv[end:], not Connection.threaded, idle_release if big else math.inf
                )
                if got < 0:
                    if big:
                        # Holding max-msize buffers: if the client goes idle, give
                        # them back (a server may have thousands of idle connections).
                        with trio.move_on_after(idle_release) as idle:
                            await wait_readable(sock)
                        if idle.cancelled_caught:
                            self._pool.clear()
                            n = end - start
                            # the last frame's view and the last replies keep buffers alive
                            frame = r = None
                            out = []
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
                    got = recv_into(mv[end:], 0, _DONTWAIT)
                except BlockingIOError:
                    drained = True
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    return "reset by peer"
            if got == 0:
                return "EOF"
            filled = got == room
            end += got
            out = []
            queued = 0
            # One large reply (a max-msize Rread) is held back until the end of
            # the chunk so that the small replies behind it overtake it: a
            # Tgetattr pipelined behind a 4 MiB Tread waits for the read's one
            # preadv, not for 4 MiB to cross the socket.
            held: Any = None
            first = self.frames
            # handle every complete frame in the buffer
            while True:
                size, mtype, tag = next_frame(buf, start, end, self.max_frame)
                if mtype < 0:
                    if mtype == FRAMING_ERROR:
                        return await self._framing_close(size, out, held)
                    need = size  # NEED_DATA: what the partial frame announces
                    break
                if held is not None and mtype in _ORDERED:
                    # a second large reply would need a second buffer, and an
                    # Rflush or Rversion must follow the replies sent before it
                    out.append(held)
                    held = None
                    await self._send_batched(out)
                    out = []
                    queued = 0
                self.frames += 1
                frame = mv[start : start + size]
                start += size
                try:
                    r = dispatch(mtype, tag, frame)
                except _Control as ctl:
                    # replies queued so far go out first: the control step may await
                    if held is not None:
                        out.append(held)
                        held = None
                    if out:
                        await self._send_batched(out)
                        out = []
                        queued = 0
                    r = await ctl.act(self)
                if r is not None:
                    n = len(r)
                    if n >= flush_bytes and held is None:
                        held = r
                        continue
                    out.append(r)
                    queued += n
                    if queued >= flush_bytes:
                        if held is not None:
                            out.append(held)
                            held = None
                        await self._send_batched(out)
                        out = []
                        queued = 0
            if held is not None:
                out.append(held)
                held = None  # the idle release below must find no reference to it
            if out:
                # _send_batched's fast path without a coroutine (the QD1 case);
                # lent pool buffers need _send_batched's return to the pool
                rest = None if self._lent else send_now(out)
                if rest is None:
                    await self._send_batched(out)
                elif rest:
                    await self._send(rest)
            drained = got < room and self.frames - first <= 1
            busy += 1
            if busy >= 8 and not drained:
                # keep other connections' tasks fair when a client floods us
                # (sends without contention do not yield)
                busy = 0
                await trio.lowlevel.checkpoint()

    async def _framing_close(self, size: int, out: list[Any], held: Any) -> str:
        """A frame size outside [7, max_frame]: the stream cannot be trusted any more.
        Send the replies already made (the held-back one last), log, and end."""
        log.warning(
            "%s: framing error: frame size %d outside [7, %d]; closing",
            self.name,
            size,
            self.max_frame,
        )
        if held is not None:
            out.append(held)
        if out:
            await self._send_batched(out)
        return "framing error"

    def _dispatch(self, mtype: int, tag: int, frame: memoryview) -> Any:
        """Handle one frame inline; return the reply buffer (or raise a control signal)."""
        try:
            if mtype == _T_READ:
                return self._read(tag, frame)
            if self.msize and tag not in self.pending:
                # The commonest requests without message objects: fixed layouts
                # unpacked and packed here (anything unusual, a malformed frame
                # included, falls through to the general path below).
                n = len(frame)
                if mtype == _T_GETATTR and n == 19:
                    # the most frequent request of a mounted client
                    fid, mask = TGETATTR_BODY.unpack_from(frame, 7)
                    return RGETATTR.pack(
                        _RGETATTR_SIZE, _R_GETATTR, tag, *self.session.getattr_fields(fid, mask)
                    )
                if n == 11 and mtype == _T_CLUNK:  # the fid is the whole body
                    self.session.clunk_fid(_U32.unpack_from(frame, 7)[0])
                    return HEADER.pack(7, _R_CLUNK, tag)
                if n == 11 and mtype == _T_REMOVE:
                    self.session.remove_fid(_U32.unpack_from(frame, 7)[0])
                    return HEADER.pack(7, _R_REMOVE, tag)
                if n == 17 and mtype == _T_WALK:
                    fid, newfid, nwname = _TWALK0.unpack_from(frame, 7)
                    if nwname == 0 and newfid != fid:  # a clone
                        self.session.clone_fid(fid, newfid)
                        return _RWALK0.pack(9, _R_WALK, tag, 0)
                if mtype == _T_WRITE and n >= 23:
                    # Twrite to an open regular file (same layout as Tread's head)
                    fid, offset, count = _TREAD.unpack_from(frame, 7)
                    if count == n - 23:
                        written = self.session.write_regular(fid, offset, frame[23:])
                        if written >= 0:
                            return _HDR_U32.pack(11, _R_WRITE, tag, written)
                plain = self._plain.get(mtype)
                if plain is not None:
                    reply = plain[1](plain[0](frame[7:], tag))
                    return ENCODERS[type(reply)](reply)
            dec = DECODERS.get(mtype)
            if dec is None or mtype & 1:
                log.warning("%s: tag=%d unsupported message type %d", self.name, tag, mtype)
                return _rlerror(tag, errno.EOPNOTSUPP)
            msg: Any = dec(frame[7:], tag)
            if mtype == _T_VERSION:
                return self._version(msg)
            if self.msize == 0:
                log.warning("%s: tag=%d %s before Tversion", self.name, tag, type(msg).__name__)
                return _rlerror(tag, errno.EPROTO)
            if tag in self.pending:
                log.warning("%s: tag=%d already in flight (duplicate tag)", self.name, tag)
                return _rlerror(tag, errno.EINVAL)
            if mtype == _T_FLUSH:
                return self._flush(msg)
            handler = self.handlers.get(mtype)
            if handler is None:
                return _rlerror(tag, errno.EOPNOTSUPP)
            if mtype in _MAY_BLOCK_INTS and self.session.is_blocking(msg):
                raise _Background(msg, handler)
            if mtype == _T_WRITE and self.session.read_blocks(msg.fid):
                raise _Background(msg, handler)
            reply = handler(msg)
            return ENCODERS[type(reply)](reply)
        except OSError as e:
            return _rlerror(tag, e.errno or errno.EIO)
        except ProtocolError as e:
            log.warning("%s: tag=%d malformed frame: %s", self.name, tag, e)
            return _rlerror(tag, errno.EINVAL)
        except _Control:
            raise
        except Exception:
            log.exception("%s: tag=%d internal error handling type %d", self.name, tag, mtype)
            return _rlerror(tag, errno.EIO)

    # ------------------------------------------------------------- messages
    def _version(self, msg: Any) -> Any:
        msize = min(msg.msize, self.config.max_msize)
        if msg.version == C.VERSION_9P2000L and msize >= MIN_MSIZE:
            version = C.VERSION_9P2000L
            self.msize = msize
            self.max_frame = msize
            self._budget = self.config.inflight_msizes * msize
            self._pool.clear()
            if self._splice_max and self._pipe is None and msize >= _SPLICE_MIN + C.IOHDRSZ:
                # made here, not on the first read: the pipe is part of the
                # session, like the socket (an fd count taken after Tversion
                # sees the same number after every fid is clunked)
                self._open_pipe()
            self.session.set_msize(msize)
        else:
            version = C.VERSION_UNKNOWN
            self.msize = 0
            self.max_frame = PRE_VERSION_FRAME
            log.info("%s: Tversion %r msize=%d refused", self.name, msg.version, msg.msize)
        reply = Rversion(tag=msg.tag, msize=msize, version=version)
        encoded = ENCODERS[Rversion](reply)
        if self.pending or self.session.fid_count():
            raise _VersionReset(encoded)
        return encoded

    async def _reset_pending(self) -> None:
        for p in list(self.pending.values()):
            p.scope.cancel()
        for p in list(self.pending.values()):
            await p.done.wait()
        self.session.reset()

    def _read(self, tag: int, frame: memoryview) -> Any:
        if self.msize == 0:
            return _rlerror(tag, errno.EPROTO)
        if len(frame) != 7 + 16:
            raise ProtocolError("Tread", "size", f"frame of {len(frame)} bytes, expected 23")
        fid, offset, count = _TREAD.unpack_from(frame, 7)
        if tag in self.pending:
            return _rlerror(tag, errno.EINVAL)
        limit = self.msize - C.IOHDRSZ
        if count > limit:
            count = limit
        if self.session.read_blocks(fid):
            from .protocol.messages import Tread

            raise _Background(Tread(tag=tag, fid=fid, offset=offset, count=count), None)
        p = self._pipe
        if p is not None and _SPLICE_MIN <= count <= self._splice_max:
            n = self.session.splice_read(fid, offset, count, p[1])
            if n > 0:
                raise _Spliced(_HDR_U32.pack(11 + n, _R_READ, tag, n), n)
            if n == 0:
                return _HDR_U32.pack(11, _R_READ, tag, 0)
        if count < _BIG:
            # at most 64 KiB, freed at once if the read fails
            return self._fill_rread(bytearray(11 + count), tag, fid, offset, count)
        # Memory only for work that can succeed: the fid is checked and the
        # count clamped to what the file can give before any buffer is taken.
        count = self.session.read_size(fid, offset, count)
        if count < self._pool_min:
            return self._fill_rread(bytearray(11 + count), tag, fid, offset, count)
        # A reply this large is held back and sent before the next Tread
        # (_receive_loop), so one pooled buffer is lent at a time.
        pool = self._pool
        rb = pool.pop() if pool else bytearray(11 + self.msize)
        try:
            r = self._fill_rread(rb, tag, fid, offset, count, True)
        except BaseException:
            pool.append(rb)
            raise
        if len(r) - 11 < self._pool_min:
            # a short read (the file shrank meanwhile): the reply is not held
            # back, so it must not keep the pooled buffer
            pool.append(rb)
            return bytes(r)
        self._lent.append(rb)
        return r

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
        if not self.session.charge_fds(2):
            log.info("%s: fd share used up: no pipe for spliced reads, copying", self.name)
            self._splice_max = 0
            return
        try:
            r, w = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            self.session.release_fds(2)
            log.warning("%s: no pipe for spliced reads (%s): copying", self.name, e.strerror)
            self._splice_max = 0
            return
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError as e:
            # e.g. EPERM past the user's pipe-user-pages-soft without CAP_SYS_RESOURCE
            log.info("%s: pipe size %d refused (%s): reads are copied", self.name, _PIPE_BYTES, e.strerror)
            os.close(r)
            os.close(w)
            self.session.release_fds(2)
            self._splice_max = 0
            return
        self._pipe = (r, w)

    def _drop_pipe(self) -> None:
        """Close the pipe (with whatever it still holds): reads are copied until
        a Tversion makes a new one."""
        p, self._pipe = self._pipe, None
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
            if self.closed:
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
                        self._splice_max = 0
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

    def _fill_rread(
        self, rb: bytearray, tag: int, fid: int, offset: int, count: int, pooled: bool = False
    ) -> Any:
        """Read into ``rb`` after its 11-byte header; the Rread frame.

        After a short read the unused tail is given back (``rb`` is cut to the
        reply), so that a queued reply holds no more memory than it sends; a
        ``pooled`` buffer is kept whole and a view of it returned."""
        mv = memoryview(rb)
        n = self.session.read_into(fid, offset, mv[11 : 11 + count])
        _HDR_U32.pack_into(rb, 0, 11 + n, C.MsgType.RREAD, tag, n)
        if n != len(rb) - 11:
            if pooled:
                return mv[: 11 + n]
            mv.release()
            del rb[11 + n :]
        return rb

    # Flush.  A Tflush of a background request (or of a Tflush waiting for
    # one) joins that request's list of waiting flushes: no task of its own,
    # one in-flight slot, its tag in ``pending`` until answered.  They are
    # answered in arrival order right after the old reply was sent or dropped
    # (a second Tflush of the same old tag thus right after the first: it may
    # not be answered at once, since the old reply could still follow it).
    # Any other Tflush (a tag not in flight, already answered or flushed) is
    # answered at once, after the replies queued before it.
    def _flush(self, msg: Any) -> Any:
        p = self.pending.get(msg.oldtag)
        if p is None or p.answered:
            return ENCODERS[Rflush](Rflush(tag=msg.tag))
        raise _FlushWait(msg.tag, msg.oldtag)

    async def _join_flush(self, tag: int, oldtag: int) -> Any:
        """Wait for an in-flight slot (the loop stops reading meanwhile), then
        make the Tflush ``tag`` wait for ``oldtag``; the Rflush if it need not wait."""
        await self.inflight.acquire()
        p = self.pending.get(oldtag)
        if p is None or p.answered:  # done while we waited for the slot
            self.inflight.release()
            return ENCODERS[Rflush](Rflush(tag=tag))
        p.scope.cancel()
        p.flushes.append(tag)
        self.pending[tag] = p
        return None

    async def _answer_flushes(self, p: _Pending) -> None:
        """Send the Rflushes waiting for ``p`` (its reply was sent or dropped)."""
        flushes = p.flushes
        try:
            while flushes:  # a Tflush of a waiting Tflush may join meanwhile
                tag = flushes[0]
                if not self.closed:
                    try:
                        await self._send([ENCODERS[Rflush](Rflush(tag=tag))])
                    except OSError as e:
                        log.info("%s: tag=%d Rflush not sent: %s", self.name, tag, e)
                del flushes[0]
                del self.pending[tag]
                self.inflight.release()
        finally:
            p.answered = True
            for tag in flushes:  # cancelled (the connection is closing)
                del self.pending[tag]
                self.inflight.release()
            flushes.clear()

    # ----------------------------------------------------- background tasks
    async def _start_background(self, msg: Any, handler: Callable[[Any], Message] | None) -> None:
        """Admit a background request: an in-flight slot, then its bytes in the
        byte budget (payload, and for a Tread its reply buffer); the loop
        stops reading until both are free.  A request is always admitted when
        no other request's bytes are in flight, so a max-size one never waits
        forever.  Twrite data is copied out of the receive buffer (reused once
        we return) only after admission."""
        payload = len(msg.data) if isinstance(msg, Twrite) else 0
        reply = 11 + msg.count if handler is None else 0  # Tread: its Rread buffer
        cost = payload + reply
        await self.inflight.acquire()
        try:
            while self._inbytes and self._inbytes + cost > self._budget:
                await self._bytes_freed.park()
        except BaseException:
            self.inflight.release()
            raise
        self._inbytes += cost
        if payload:
            msg.data = bytes(msg.data)
        p = _Pending(msg.tag)
        self.pending[msg.tag] = p
        Connection.threaded += 1
        assert self.nursery is not None
        self.nursery.start_soon(self._background, msg, handler, p, payload, reply)

    def _release_bytes(self, n: int) -> None:
        if n:
            self._inbytes -= n
            self._bytes_freed.unpark_all()

    async def _background(
        self,
        msg: Any,
        handler: Callable[[Any], Message] | None,
        p: _Pending,
        payload: int,
        cost: int,
    ) -> None:
        tag = msg.tag
        reply: Any = None
        try:
            with p.scope:
                try:
                    if handler is None:  # Tread
                        reply = await trio.to_thread.run_sync(self._read_sync, msg)
                    else:
                        r = await trio.to_thread.run_sync(handler, msg)
                        reply = ENCODERS[type(r)](r)
                except OSError as e:
                    reply = _rlerror(tag, e.errno or errno.EIO)
                except Exception:
                    log.exception("%s: tag=%d internal error in background request", self.name, tag)
                    reply = _rlerror(tag, errno.EIO)
                finally:
                    if payload:  # used (or never to be): drop it now, not after the reply
                        msg.data = b""
                        self._release_bytes(payload)
                        payload = 0
            if p.scope.cancelled_caught:
                log.info("%s: tag=%d flushed", self.name, tag)
                reply = None
            if reply is not None and not self.closed:
                try:
                    await self._send([reply])
                except OSError as e:
                    log.info("%s: tag=%d reply not sent: %s", self.name, tag, e)
        finally:
            reply = None
            del self.pending[tag]
            Connection.threaded -= 1
            self.inflight.release()
            self._release_bytes(payload + cost)
            try:
                if p.flushes:
                    await self._answer_flushes(p)
            finally:
                p.answered = True
                p.done.set()

    def _read_sync(self, msg: Any) -> Any:
        return self._fill_rread(bytearray(11 + msg.count), msg.tag, msg.fid, msg.offset, msg.count)


class _Control(Exception):
    """Raised by the synchronous _dispatch for a request whose handling must await.

    The receive loop sends the replies queued so far, then awaits ``act``; a
    reply it returns is queued like an inline one.
    """

    async def act(self, conn: Connection) -> Any:
        raise NotImplementedError


class _Background(_Control):
    """Run this request in a worker thread."""

    def __init__(self, msg: Any, handler: Callable[[Any], Message] | None) -> None:
        self.msg = msg
        self.handler = handler

    async def act(self, conn: Connection) -> None:
        await conn._start_background(self.msg, self.handler)


class _Spliced(_Control):
    """An Rread whose data waits in the connection's pipe: send the header, then splice."""

    def __init__(self, header: bytes, n: int) -> None:
        self.header = header
        self.n = n

    async def act(self, conn: Connection) -> None:
        await conn._send_spliced(self.header, self.n)


class _FlushWait(_Control):
    """Answer this Tflush once the pending request is done (see Connection._flush)."""

    def __init__(self, tag: int, oldtag: int) -> None:
        self.tag = tag
        self.oldtag = oldtag

    async def act(self, conn: Connection) -> Any:
        return await conn._join_flush(self.tag, self.oldtag)


class _VersionReset(_Control):
    """Tversion must abandon background requests before replying."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    async def act(self, conn: Connection) -> bytes:
        await conn._reset_pending()
        return self.reply


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

    The socket is put in non-blocking mode and is not closed here: the caller
    owns it.
    """
    conn = Connection(sock, point, config or ServerConfig(), name or f"fd{sock.fileno()}")
    await conn.run()


# ------------------------------------------------------------------ the bound
REQUEST_BYTES = 16 * 1024
"""Python memory of one background request or flush waiter besides the bytes
the budget counts: its task, cancel scope, event, message and worker-thread
hand-off (about 6 KB measured for a threaded Tread)."""
CONNECTION_BYTES = 128 * 1024
"""A connection's fixed state: Connection, Session, handler tables, its task,
its QuietWait, the log line objects in flight."""
_REPLY_BYTES = 64
"""Python memory of a queued reply beyond twice its wire size (object header,
list slot); a cut Rread buffer may keep up to twice its size."""
_MIN_REPLY = 7  # Rflush: the smallest reply


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
        + CONNECTION_BYTES
    )
    return connections * per_connection


__all__ = ["Connection", "ServerConfig", "memory_bound", "serve"]
