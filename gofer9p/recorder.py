"""A session recording in a running server: the pcap file, its bounded buffer, its writer.

One :class:`Recording` per process (``serve --record PATH``, ``gofer --record-fd N``)
holds the file's fd; each connection gets a :class:`ConnectionRecording` (its synthetic
TCP stream, :class:`gofer9p.record.TcpStream`) that the server calls where bytes come off
the socket (``received``) and where reply bytes went out (``sent``).  The pcap bytes are
made in the event loop (a copy of what was received or sent, plus 56 bytes a segment) and
appended to one buffer; a writer task hands the buffer to a worker thread for ``write``
once it holds :data:`FLUSH_BYTES`, or :data:`FLUSH_SECONDS` after its first byte, so a
slow disk never blocks the loop and a quiet session's recording is at most that late.

Memory is bounded by backpressure, never by dropping: when the bytes not yet written
(waiting plus being written) pass ``bound``, the connection whose bytes passed it waits
(its receive loop stops reading, or its reply send waits) until the writer has written,
as a connection waits for a peer that does not read.  A recording is evidence, and one
with holes cannot be replayed; a sink slower than the clients therefore slows the clients
to its speed.  The buffer thus stays under ``bound`` plus what one hook call of each
connection adds (docs/RESOURCES.md).  If the file cannot be written (ENOSPC, EIO, a closed
pipe), the recording stops with one error log line; serving goes on, and what was left
unwritten is counted in the closing log line.

Only ``write`` is made on the fd after start (from worker threads, which the server already
uses), so the confined daemon records with nothing added to its seccomp policy and opens
nothing: ``--record-fd`` is inherited.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from .record import FILE_HEADER, TcpStream

__all__ = ["FLUSH_BYTES", "FLUSH_SECONDS", "ConnectionRecording", "Recording"]

log = logging.getLogger("gofer9p.record")

FLUSH_BYTES = 1 << 20
"""Buffered pcap bytes that wake the writer (fewer, larger writes: one thread hop each)."""
FLUSH_SECONDS = 0.1
"""Longest a recorded byte waits in the buffer while the server is quiet."""
BOUND = 8 << 20
"""Default bound of unwritten bytes past which connections wait for the writer."""


class Recording:
    """The pcap file of one process's connections (see the module docstring).

    ``fd`` is written with the pcap file header at once (so a bad fd fails before serving)
    and owned from then on: :meth:`running` closes it.  ``max_frame`` is the largest frame
    the server accepts (its max msize): a headers-only recording holds at most one such
    frame per direction while it redacts it."""

    def __init__(
        self, fd: int, *, headers_only: bool = False, max_frame: int = 4 << 20, bound: int = BOUND
    ) -> None:
        self.fd = fd
        self.headers_only = headers_only
        self.max_frame = max_frame
        self.bound = bound
        self.connections = 0
        self.written = 0  # bytes written to the file
        self.dropped = 0  # bytes recorded but not written because the file failed
        self.error: str | None = None
        self.buf = bytearray()  # pcap records not handed to the writer yet (hooks append)
        self._writing: bytes | bytearray = b""  # the chunk a worker thread is writing
        self._done = 0  # of it, written so far
        self._full = trio.lowlevel.ParkingLot()  # the writer, waiting for FLUSH_BYTES
        self._room = trio.lowlevel.ParkingLot()  # connections waiting for the writer
        self._write_all(FILE_HEADER)

    @classmethod
    def create(cls, path: str, **kw: Any) -> Recording:
        """Open (create or truncate) ``path`` for a recording; ``OSError`` if it cannot be."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            return cls(fd, **kw)
        except BaseException:
            os.close(fd)
            raise

    def connection(self) -> ConnectionRecording:
        """A new connection's stream (its handshake is recorded now)."""
        stream = TcpStream(
            self.connections, headers_only=self.headers_only, max_frame=self.max_frame
        )
        self.connections += 1
        if self.error is None:
            stream.open(time.time_ns(), self.buf)
        return ConnectionRecording(self, stream)

    @property
    def pending(self) -> int:
        """Bytes recorded and not yet written."""
        return len(self.buf) + len(self._writing) - self._done

    def added(self) -> None:
        """Pcap records were appended to the buffer: wake the writer at FLUSH_BYTES."""
        if len(self.buf) >= FLUSH_BYTES:
            self._full.unpark()

    async def wait_room(self) -> None:
        """Wait while the unwritten bytes are over the bound (backpressure)."""
        while self.pending > self.bound and self.error is None:
            self._full.unpark()
            await self._room.park()

    @asynccontextmanager
    async def running(self, *, stop_on_sigterm: bool = False) -> AsyncIterator[Recording]:
        """Run the writer while the body serves; then write what is left and close the fd.

        The last write is made in the loop's thread (the process is stopping); cancelling
        the body loses nothing already recorded.  ``stop_on_sigterm``: SIGTERM cancels the
        body (``serve``, which would otherwise die with the recording's last bytes unwritten;
        the daemon handles its stop signals itself)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                if stop_on_sigterm:
                    nursery.start_soon(_cancel_on_sigterm, nursery.cancel_scope)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if self.error is None:
                try:
                    self._write_all(memoryview(self._writing)[self._done :])
                    self._write_all(self.buf)
                except OSError as e:
                    self._failed(e)
            self._writing = b""
            self.buf = bytearray()
            os.close(self.fd)
            log.info(
                "recording: %d connections, %d bytes written%s",
                self.connections,
                self.written,
                f", {self.dropped} bytes lost ({self.error})" if self.error else "",
            )

    async def _writer(self) -> None:
        while self.error is None:
            if len(self.buf) < FLUSH_BYTES:
                with trio.move_on_after(FLUSH_SECONDS):
                    await self._full.park()
            if not self.buf:
                continue
            self._writing, self.buf, self._done = self.buf, bytearray(), 0
            try:
                await trio.to_thread.run_sync(self._write_chunk)
            except OSError as e:
                self._failed(e)
            self._writing, self._done = b"", 0
            self._room.unpark_all()

    def _write_chunk(self) -> None:
        """(worker thread) write ``_writing`` from ``_done`` on, advancing ``_done``."""
        mv = memoryview(self._writing)
        while self._done < len(mv):
            n = os.write(self.fd, mv[self._done :])
            self._done += n
            self.written += n

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        while mv:
            n = os.write(self.fd, mv)
            self.written += n
            mv = mv[n:]

    def _failed(self, e: OSError) -> None:
        self.error = e.strerror or str(e)
        self.dropped += self.pending
        self.buf = bytearray()
        log.error("recording stopped: cannot write it (%s); serving goes on", self.error)
        self._room.unpark_all()


class ConnectionRecording:
    """One connection's recorder: the server's two hooks and its end."""

    __slots__ = ("recording", "stream")

    def __init__(self, recording: Recording, stream: TcpStream) -> None:
        self.recording = recording
        self.stream = stream

    async def received(self, data: memoryview) -> None:
        """Bytes that came off the socket (copied now: the receive buffer is reused)."""
        rec = self.recording
        if rec.error is not None:
            return
        self.stream.client(data, time.time_ns(), rec.buf)
        rec.added()
        if rec.pending > rec.bound:
            await rec.wait_room()

    async def sent(self, bufs: Sequence[Any], n: int) -> None:
        """The first ``n`` bytes of ``bufs`` went out (one sendmsg)."""
        rec = self.recording
        if rec.error is not None:
            return
        ts = time.time_ns()
        for b in bufs:  # piece by piece (a segment each): joining them would copy them all
            if n <= 0:
                break
            piece = memoryview(b)[:n]
            n -= len(piece)
            self.stream.server(piece, ts, rec.buf)
        rec.added()
        if rec.pending > rec.bound:
            await rec.wait_room()

    def close(self) -> None:
        """The connection ended: its FIN exchange."""
        rec = self.recording
        if rec.error is None:
            self.stream.close(time.time_ns(), rec.buf)


async def _cancel_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("SIGTERM received: closing the recording")
            scope.cancel()
            return
