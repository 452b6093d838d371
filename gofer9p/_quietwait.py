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

Before sleeping, the wait may poll for a short window (``poll_s``; QEMU's
iothreads do the same with ``poll-max-ns``).  At QD1 the client's next
request usually arrives a few tens of microseconds after our reply; a thread
that slept meanwhile pays a wake-up (an IPI, a VM exit on a virtual CPU, cold
caches) that cost more than the request itself here: QD1 Tgetattr 38 -> 24 us,
the create cycle 272 -> 153 us per file, with the server's CPU per request
about unchanged (benchmarks/README.md, "poll window").

Whether to poll is decided by what polling *caught*, not by how long waits
took.  QEMU's rule (grow the window after a sleep that ended within the cap,
shrink it after a longer one) judges the client by the length of a wait that
slept, and that includes our own wake-up: a client that answers in 30 us,
well inside a 50 us window, looks like 55-65 us once the loop sleeps, so a
window that once shrank (a client's pause, the host preempting a vCPU) never
grew back, and whole benchmark reps ran at the slow rate (measured with
``benchmarks/qd1.py --think-us 20``: 0 of 22,053 requests caught).  Here the
window is either off or the whole cap.  While on, a wait the window caught
earns a credit and one it polled in vain costs two, so polling stays on while
at least about two thirds of the waits are caught and a run of misses turns
it off.  While off, a wait that slept for less than the cap turns it back on
at once, and every so many waits a probe turns it on with little credit (one
miss ends it); probes that catch nothing come less and less often (16 ->
1024 waits), so an idle or slow client costs almost nothing.

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
_CREDIT_MAX = 16
"""Most credit the poll window holds: this many net misses turn it off."""
_PROBE_CREDIT = 2
"""Credit of a window turned on by a probe or a short sleep (one miss ends it)."""
_PROBE_MIN = 16
_PROBE_MAX = 1024
"""Waits between probes while the window is off (doubling while probes fail)."""
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
        "_credit",
        "_deadlines",
        "_frame",
        "_idle",
        "_instruments",
        "_max",
        "_on_hits",
        "_pass",
        "_poll",
        "_probe_every",
        "_probe_in",
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
        self.window = self._max
        """Current poll window in seconds: ``poll_s`` while polling is on, else 0."""
        self.hits = 0
        """Waits that ended within the poll window (without sleeping)."""
        self._credit = _PROBE_CREDIT
        self._on_hits = 0
        self._probe_every = _PROBE_MIN
        self._probe_in = _PROBE_MIN
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
                    self._caught()
                    return n
            try:
                n = recv(view)
            except BlockingIOError:  # SO_RCVTIMEO: nothing for BLOCK_S, let trio wait
                n = -1
            if self._max:
                self._slept(_now() - t0)
            return n
        timeout = -1 if left == _INF else max(1, math.ceil(left * 1000))
        events: list[tuple[int, int]] = []
        if window > 0:
            end = t0 + window
            events = p.poll(0)
            while not events and _now() < end:
                events = p.poll(0)
        if events:
            self._caught()
        else:
            events = p.poll(timeout)
            if self._max:
                self._slept(_now() - t0)
        if len(events) != 1 or events[0][0] != self._sockfd:
            return -1
        try:
            return self._sock.recv_into(view, 0, _DONTWAIT)
        except BlockingIOError:
            return -1

    def _caught(self) -> None:
        self.hits += 1
        self._on_hits += 1
        if self._credit < _CREDIT_MAX:
            self._credit += 1

    def _slept(self, waited: float) -> None:
        """Account for a wait that slept (after polling in vain, if the window was on)."""
        if self.window:
            self._credit -= 2
            if self._credit <= 0:
                # a probe that caught (almost) nothing: probe less often
                few = self._on_hits < 4
                self._probe_every = min(2 * self._probe_every, _PROBE_MAX) if few else _PROBE_MIN
                self._probe_in = self._probe_every
                self.window = 0.0
            return
        self._probe_in -= 1
        if waited <= self._max or self._probe_in <= 0:
            # The client answered within the cap even with our wake-up in the
            # wait, or it is time to probe: poll again, on little credit.
            self.window = self._max
            self._credit = _PROBE_CREDIT
            self._on_hits = 0
