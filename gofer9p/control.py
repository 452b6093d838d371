"""The statistics endpoint: a unix socket answering ``GET /metrics`` and ``GET /json``.

The protocol is the smallest useful part of HTTP/1.0, so that the tools operators
already have work unchanged (``curl --unix-socket PATH http://gofer/metrics``,
a Prometheus scrape through any unix-socket proxy)::

    GET /metrics HTTP/1.0      -> 200, the OpenMetrics text (gofer9p.openmetrics)
    GET /json HTTP/1.0         -> 200, the same snapshot as JSON (gofer9p.stats)
    GET /                      -> 200, a line naming the two
    anything else              -> 400, 404 or 405 and one line

Only the request line is read (headers are skipped); the answer has a
Content-Length and the connection is closed after it.  ``gofer9p stats`` and
``gofer9p top`` are clients of ``/json``.

It never slows the 9P connections of the process:

* it waits on none of its sockets through trio: a task waiting for an fd the
  server's quiet wait cannot see takes every connection off its one-system-call
  wait (gofer9p._quietwait).  It tries a non-blocking accept every
  :data:`ACCEPT_INTERVAL` and talks to a client with non-blocking calls between
  sleeps of :data:`IO_INTERVAL` (a timer is something the quiet wait honours);
* at most :data:`MAX_CLIENTS` clients at once (more wait in the listen backlog,
  which the kernel bounds), each gets :data:`CLIENT_TIMEOUT` seconds in all and
  may send :data:`MAX_REQUEST` bytes before it is answered: a hostile client
  holds a slot and 8 KiB, never more;
* snapshots (summing and rendering run in the trio thread) are at least
  :data:`MIN_INTERVAL` apart.

The listening socket is made by whoever starts the gofer: ``serve --stats
unix:PATH`` binds it (:func:`bind_unix`), ``gofer --stats-fd N`` inherits it
from its manager, so the confined daemon opens nothing: it accepts
(``accept4``, the one syscall the seccomp policy allows for this) on a socket
it was given.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .openmetrics import CONTENT_TYPE, render
from .stats import REGISTRY, ProcessProbe, Registry

__all__ = [
    "ACCEPT_INTERVAL",
    "CLIENT_TIMEOUT",
    "MAX_CLIENTS",
    "MAX_REQUEST",
    "MIN_INTERVAL",
    "StatsEndpoint",
    "bind_unix",
    "check_listening",
    "running",
]

log = logging.getLogger("gofer9p.stats")

ACCEPT_INTERVAL = 0.1
"""Seconds between two looks for a new client.  Each look is a timer: a quiet wait
whose sleep it would cut short (within ``_quietwait.BLOCK_S``, 10 ms: one wait in
ten) polls instead of sleeping in one ``recv``."""
IO_INTERVAL = 0.002
"""Seconds between two tries to read a client's request or write its answer."""
MAX_CLIENTS = 4
"""Clients answered at once."""
CLIENT_TIMEOUT = 5.0
"""Seconds a client has to send its request and take its answer."""
MAX_REQUEST = 8192
"""Bytes of a request (line and headers) read at most."""
MIN_INTERVAL = 0.02
"""Seconds between two snapshots at least."""


def _workers() -> dict[str, int]:
    """trio's worker threads: running a request, their limit, tasks queued for one."""
    st = trio.to_thread.current_default_thread_limiter().statistics()
    return {"busy": st.borrowed_tokens, "limit": int(st.total_tokens), "queued": st.tasks_waiting}


def check_listening(sock: socket.socket) -> str | None:
    """Why ``sock`` cannot be a statistics listener (a unix stream socket that listens), or None."""
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        return "not a unix stream socket"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "not listening"
    return None


def bind_unix(path: str) -> socket.socket:
    """A unix socket listening at ``path`` (a stale socket there is replaced).

    Bound under a temporary name and renamed into place, so a client that waits
    for the path to appear is never refused."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        sock.bind(tmp)
        sock.listen(MAX_CLIENTS)
        os.rename(tmp, path)
    except OSError:
        sock.close()
        raise
    return sock


class StatsEndpoint:
    """Answers statistics clients on ``listener`` (see the module docstring).

    Make it before any chroot: :class:`~gofer9p.stats.ProcessProbe` opens
    /proc/self/status now.  It owns ``listener`` (:meth:`close`)."""

    def __init__(
        self,
        listener: socket.socket,
        registry: Registry = REGISTRY,
        probe: ProcessProbe | None = None,
    ) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.registry = registry
        self.probe = probe if probe is not None else ProcessProbe.open()
        if self.probe.workers is None:
            self.probe.workers = _workers
        self._next = 0.0
        self._accept_failed = False

    def close(self) -> None:
        self.listener.close()
        self.probe.close()

    async def serve(self) -> None:
        """Answer clients until cancelled."""
        slots = trio.Semaphore(MAX_CLIENTS)
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                conn = await self._accept()
                nursery.start_soon(self._answer, conn, slots)

    async def _accept(self) -> socket.socket:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                await trio.sleep(ACCEPT_INTERVAL)
                continue
            except OSError as e:  # EMFILE and the like: try again later, say it once
                if not self._accept_failed:
                    log.warning("statistics: accept failed: %s", e.strerror or e)
                    self._accept_failed = True
                await trio.sleep(ACCEPT_INTERVAL)
                continue
            self._accept_failed = False
            conn.setblocking(False)
            return conn

    async def _answer(self, conn: socket.socket, slots: trio.Semaphore) -> None:
        try:
            with trio.move_on_after(CLIENT_TIMEOUT):
                head = await self._read_request(conn)
                if head is not None:
                    await self._send_all(conn, await self.respond(head))
        except OSError as e:
            log.debug("statistics client: %s", e)
        finally:
            conn.close()
            slots.release()

    async def _read_request(self, conn: socket.socket) -> bytes | None:
        """The request's bytes up to its blank line (at most MAX_REQUEST); None if
        the client closed without sending any."""
        buf = bytearray()
        while b"\n\r\n" not in buf and b"\n\n" not in buf and len(buf) < MAX_REQUEST:
            try:
                data = conn.recv(MAX_REQUEST - len(buf))
            except (BlockingIOError, InterruptedError):
                await trio.sleep(IO_INTERVAL)
                continue
            if not data:
                break
            buf += data
        return bytes(buf) if buf else None

    async def _send_all(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = conn.send(view)
            except (BlockingIOError, InterruptedError):
                await trio.sleep(IO_INTERVAL)
                continue
            view = view[n:]

    async def respond(self, request: bytes) -> bytes:
        """The whole HTTP answer to ``request`` (its line and headers)."""
        if len(request) >= MAX_REQUEST and b"\n\r\n" not in request and b"\n\n" not in request:
            return _answer(431, "text/plain", b"request too large\n")
        parts = request.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _answer(400, "text/plain", b"want: GET /metrics or GET /json\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return _answer(405, "text/plain", b"only GET\n")
        if target not in (b"/metrics", b"/json", b"/"):
            return _answer(404, "text/plain", b"try /metrics (OpenMetrics) or /json\n")
        if target == b"/":
            return _answer(200, "text/plain", b"gofer9p statistics: /metrics (OpenMetrics), /json\n")
        snap = await self.snapshot()
        if target == b"/json":
            return _answer(200, "application/json", json.dumps(snap).encode())
        return _answer(200, CONTENT_TYPE, render(snap).encode())

    async def snapshot(self) -> dict[str, object]:
        """The registry's snapshot with the process's numbers, at most one per MIN_INTERVAL."""
        wait = self._next - trio.current_time()
        if wait > 0:
            await trio.sleep(wait)
        self._next = trio.current_time() + MIN_INTERVAL
        return self.registry.snapshot(self.probe.read())


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large"}  # fmt: skip


def _answer(status: int, ctype: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


@asynccontextmanager
async def running(endpoint: StatsEndpoint | None) -> AsyncIterator[None]:
    """Serve ``endpoint`` (if any) while the block runs; cancelled and closed after it."""
    if endpoint is None:
        yield
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.serve)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    finally:
        endpoint.close()
