"""Receive on one socket without a pass through trio's scheduler, when that is safe.

At one request in flight (QD1) most of a round trip's server CPU was trio's
wake path: re-arming the fd (``epoll_ctl``), a run-loop pass, ``epoll_wait``
and resuming the task: ~15-20 us per request in CPython, more than handling
the request (benchmarks/README.md, "QD1").  When the receiving task is the
only thing trio could run next (no runnable task, no ``wait_all_tasks_blocked``
waiter, no instrument, a real clock, no deadline due), the thread can wait
for the socket itself and trio loses nothing:

* If trio is waiting on no fd but its own wake-up socket (worker threads
  finishing, ``run_sync_soon``, signals), a plain blocking ``recv`` with a
  short ``SO_RCVTIMEO`` (``BLOCK_S``) is the whole wait: one syscall per
  request, like a synchronous server.  Anything that arrives on the wake-up
  socket meanwhile waits at most ``BLOCK_S``; the caller passes
  ``may_block=False`` while it has work in worker threads, whose replies
  must not wait.
* Otherwise (other connections, a listener, a test's client in the same
  loop), ``poll`` on the socket *and on trio's epoll fd*: anything else trio
  cares about makes the epoll fd readable, and the caller falls back to
  ``trio.lowlevel.wait_readable``.

Either way the wait ends before the next trio deadline, so cancel scopes and
timeouts fire on time (through the fallback).

Before sleeping, the wait may poll for a short, adaptive window (``poll_s``
caps it; QEMU's iothreads do the same with ``poll-max-ns``).  At QD1 the
client's next request usually arrives a few tens of microseconds after our
reply; a thread that slept meanwhile pays a wake-up (an IPI, a VM exit on a
virtual CPU, cold caches) that cost more than the request itself here:
QD1 Tgetattr 38 -> 24 us, the create cycle 272 -> 153 us per file, with the
server's CPU per request about unchanged (benchmarks/README.md, "poll
window").  The window adapts like QEMU's: a wait that slept but ended
within ``poll_s`` doubles it (from 4 us), a wait longer than ``poll_s``
(an idle client) halves it, down to 0, so a connection whose client pauses
longer than the cap soon polls for nothing at all.

"Nothing else to run" includes the rest of the run loop's current batch:
tasks made runnable in the same pass as ours are no longer in the run queue
but have not run yet, and a shortcut taken then would starve them (a test
client in the same loop deadlocked that way).  The batch is a local of trio's
run loop, read from its frame once per scheduler pass that resumed us
(``Task._schedule_points`` tells a new pass from the same one).

This reads trio internals (the runner, its run queue, deadlines, epoll object
and registrations).  Each is looked up once and checked; anything unexpected
turns the shortcut off and the caller always takes the ordinary path, which is
correct on its own.  ``tests/unit/test_quietwait.py`` fails if the installed
trio no longer lets the shortcut work.
"""

from __future__ import annotations

import math
import select
import socket
import struct
import sys
import time
from typing import Any

__all__ = ["BLOCK_S", "QuietWait", "available"]

BLOCK_S = 0.02
"""Longest a blocking receive holds the thread (the SO_RCVTIMEO it sets)."""

_DONTWAIT = socket.MSG_DONTWAIT
_INF = math.inf
_GROW_FROM = 4e-6
"""First non-zero poll window (seconds), as in QEMU's adaptive polling."""
_now = time.perf_counter


def _run_loop_frame() -> Any:
    """The frame of trio's ``unrolled_run`` that is running the current task, or None."""
    try:
        from trio._core import _run

        code = _run.unrolled_run.__code__
    except Exception:
        return None
    f: Any = sys._getframe(1)
    while f is not None and f.f_code is not code:
        f = f.f_back
    return f


def _runner() -> Any:
    """Trio's current Runner, or None if this trio does not look as expected."""
    try:
        from trio._core import _run

        runner = _run.GLOBAL_RUN_CONTEXT.runner
        task = _run.GLOBAL_RUN_CONTEXT.task
        io = runner.io_manager
        ok = (
            type(runner.clock) is _run.SystemClock
            and not runner.is_guest
            and hasattr(io, "_epoll")
            and isinstance(getattr(io, "_registered", None), dict)
            and hasattr(runner, "runq")
            and hasattr(runner, "waiting_for_idle")
            and hasattr(runner.deadlines, "next_deadline")
            and isinstance(runner.instruments.data.get("_all"), dict)
            and isinstance(runner.entry_queue.wakeup.wakeup_sock, socket.socket)
            and isinstance(task._schedule_points, int)
            and isinstance(_batch(_run_loop_frame()), list)
        )
    except Exception:
        return None
    return runner if ok else None


def _batch(frame: Any) -> Any:
    """The run loop's list of tasks still to run in this pass (None if not found).

    ``f_locals`` snapshots all 24 locals of trio's loop (~0.7 us, paid once per
    scheduler pass that resumed the caller, not per request on the shortcut);
    the snapshot dict holds those objects only until the next call replaces it.
    """
    try:
        return frame.f_locals.get("batch")
    except Exception:
        return None


def available() -> bool:
    """Whether the shortcut works under the running trio (for tests and logs)."""
    return _runner() is not None


def _current_task() -> Any:
    from trio._core import _run

    return _run.GLOBAL_RUN_CONTEXT.task


class QuietWait:
    """The waiting side of one connection's receive loop.

    Puts the socket in blocking mode (with ``SO_RCVTIMEO``) when the shortcut
    is available: every other receive and send on it must pass
    ``MSG_DONTWAIT``.  Call only from the trio thread, in the task that owns
    the socket.
    """

    __slots__ = (
        "_clock",
        "_deadlines",
        "_frame",
        "_idle",
        "_instruments",
        "_max",
        "_pass",
        "_poll",
        "_registered",
        "_runq",
        "_sock",
        "_sockfd",
        "_task",
        "_wakefd",
        "hits",
        "window",
    )

    def __init__(self, sock: socket.socket, poll_s: float = 0.0) -> None:
        self._poll: Any = None
        self._sock = sock
        self._max = max(0.0, poll_s)
        self.window = 0.0
        """Current poll window in seconds (adaptive, at most ``poll_s``)."""
        self.hits = 0
        """Waits that ended within the poll window (without sleeping)."""
        runner = _runner()
        if runner is None:
            return
        try:
            io = runner.io_manager
            epfd = io._epoll.fileno()
            wakefd = runner.entry_queue.wakeup.wakeup_sock.fileno()
            sock.setblocking(True)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, int(BLOCK_S * 1e6))
            )
        except (AttributeError, OSError):
            sock.setblocking(False)
            return
        p = select.poll()
        p.register(sock.fileno(), select.POLLIN)
        p.register(epfd, select.POLLIN)
        self._poll = p
        self._task = _current_task()
        self._frame = _run_loop_frame()
        self._pass = -1  # the scheduler pass (task._schedule_points) known to have no other task
        self._sockfd = sock.fileno()
        self._wakefd = wakefd
        self._registered = io._registered
        self._runq = runner.runq
        self._idle = runner.waiting_for_idle
        self._instruments = runner.instruments.data["_all"]  # mutated in place, never replaced
        self._deadlines = runner.deadlines
        self._clock = runner.clock

    @property
    def active(self) -> bool:
        return self._poll is not None

    def recv_into(self, view: memoryview, may_block: bool, limit: float = math.inf) -> int:
        """Wait for data and receive it into ``view``; -1: wait through trio instead.

        Returns what ``recv_into`` returned (0 at EOF).  ``limit`` (seconds)
        bounds the wait further (the caller's own timer).  Connection errors
        propagate.
        """
        p = self._poll
        if p is None or self._runq or self._idle or self._instruments:
            return -1
        if self._task._schedule_points != self._pass:
            # trio resumed us since the last check: alone in that pass's batch?
            batch = _batch(self._frame)
            if batch is None:
                self._poll = None  # trio changed shape: ordinary waits from now on
                return -1
            if batch:
                return -1
            self._pass = self._task._schedule_points
        left = self._deadlines.next_deadline()
        if left != _INF or limit != _INF:
            left = min(left - self._clock.current_time(), limit)
            if left <= 0:
                return -1
        reg = self._registered
        t0 = _now() if self._max else 0.0
        window = min(self.window, left)
        if may_block and left > BLOCK_S and len(reg) == 1 and self._wakefd in reg:
            recv = self._sock.recv_into
            if window > 0:
                end = t0 + window
                while True:
                    try:
                        n = recv(view, 0, _DONTWAIT)
                    except BlockingIOError:
                        if _now() < end:
                            continue
                        break
                    self.hits += 1
                    return n
            try:
                n = recv(view)
            except BlockingIOError:  # SO_RCVTIMEO: nothing for BLOCK_S, let trio wait
                n = -1
            if self._max:
                self._adapt(_now() - t0)
            return n
        timeout = -1 if left == _INF else max(1, math.ceil(left * 1000))
        events: list[tuple[int, int]] = []
        if window > 0:
            end = t0 + window
            events = p.poll(0)
            while not events and _now() < end:
                events = p.poll(0)
        if events:
            self.hits += 1
        else:
            events = p.poll(timeout)
            if self._max:
                self._adapt(_now() - t0)
        if len(events) != 1 or events[0][0] != self._sockfd:
            return -1
        try:
            return self._sock.recv_into(view, 0, _DONTWAIT)
        except BlockingIOError:
            return -1

    def _adapt(self, waited: float) -> None:
        """Double after a sleep shorter than the cap, halve after a longer one.

        QEMU resets to 0 on a long sleep; halving measured better here: one
        pause of the client (a GC, a scheduler tick) no longer costs the next
        five requests their poll (create cycle at a 50 us cap: 92-96% -> 99% of
        waits caught, 179 -> 151 us per file), and an idle client still takes
        the window to 0 within a few requests (at most ~2x the cap polled in vain).
        """
        if waited > self._max:
            self.window = 0.0 if self.window < 2 * _GROW_FROM else self.window / 2
        elif self.window < self._max:
            self.window = min(self._max, max(self.window * 2, _GROW_FROM))
