"""Receive on one socket without a pass through trio's scheduler, when that is safe.

At one request in flight (QD1) a large share of a round trip's server CPU is
trio's wake path: re-arming the fd (``epoll_ctl``), a run-loop pass,
``epoll_wait`` and resuming the task (benchmarks/README.md, "QD1").  When the
receiving task is the only thing trio could run, the thread can wait for the
socket itself (``poll`` + ``recv``) and trio loses nothing.  This module decides
that from trio's public API only:

* **Nothing runnable.**  An :class:`trio.abc.Instrument` (one per run) keeps the
  set of tasks scheduled but not yet stepped (``task_scheduled`` adds,
  ``before_task_step`` removes).  That covers the run queue *and* the rest of
  the run loop's current batch: tasks woken in the same pass as ours are no
  longer queued but have not run, and a wait taken then would hold them up (a
  test's client in the same loop would wait behind our poll for its own turn).  Tasks scheduled before
  the instrument was added are not in the set, so it is trusted only after two
  run-loop passes (``after_io_wait``), by when all of them have run.
* **Nothing trio waits for that we cannot see.**  ``current_statistics()``
  says how many tasks wait for an fd.  One reader is trio's own: the task
  behind ``run_sync_soon`` (worker threads finishing, signals,
  ``from_thread``), which waits on trio's wake-up socket.  The others must all
  be quiet-waiting connections of this run that went back to trio (each
  records its socket in a per-run registry when it does): the wait polls our
  socket *and theirs*, and returns -1 when one of theirs becomes readable, so
  trio wakes its task; so does a socket declared with :func:`watching` (a
  listener's accept loop).  Any other reader (an undeclared listener, a test's
  client in the same loop) or any writer waiting, a non-empty ``run_sync_soon``
  queue or a due deadline: the caller waits through trio.
* **What we cannot see is bounded.**  trio's wake-up socket is private, so a
  wake-up that arrives while the statistics are not being read (a worker
  thread finishing, a signal such as the daemon's SIGTERM, whose handler queues
  a ``run_sync_soon`` callback) waits: they are read again whenever another
  task ran and at least every ``FRESH_S`` (also while requests keep arriving:
  else a client that never pauses would starve trio), and no wait sleeps
  longer than ``BLOCK_S``, so such a wake-up waits at most about ``BLOCK_S +
  FRESH_S`` (60 ms).  The caller passes ``may_block=False`` while it has requests in
  worker threads: then every wait reads the statistics, takes only data
  already there and never sleeps, so their replies are not delayed.  A
  ``wait_all_tasks_blocked`` waiter is invisible too; it wakes once a wait
  gives up.
* **Deadlines and cancellation.**  A sleep ends before the next cancel-scope
  deadline (``seconds_to_next_deadline``, and this task's own
  ``current_effective_deadline()``, which also tells that it was cancelled)
  and before the caller's ``limit``; the clock must run in real time (a
  :class:`trio.testing.MockClock` that does not turns the shortcut off).
  Reading the task's own deadline walks its whole cancel-scope stack (three
  Python calls per scope, some 20 calls a wait in the server, which at QD1 on
  one shared CPU sleeps on every request), so a caller that waits from one
  place whose enclosing scopes it never enters or cancels between waits
  (``fixed_scopes=True``: server.py's receive loop) has it read only with the
  statistics; a scope that another task cancels or moves shows as a task run,
  and a deadline set before the statistics were read is in them.

How it sleeps: when the poll set is our socket alone (one connection, nothing
else trio waits for but its wake-up socket), a blocking ``recv`` with
``SO_RCVTIMEO`` of ``BLOCK_S`` is the whole wait: one system call per request,
as in a synchronous server (``poll`` and then ``recv`` cost a second one, some
15-25% more server CPU per QD1 request on its own CPU: benchmarks/README.md).
The socket is therefore in blocking mode from the first wait on, and every
other receive and send on it passes ``MSG_DONTWAIT`` (the server's; splice,
which has no such flag, makes it non-blocking for its duration).  Otherwise
(other connections parked, a watched listener, a deadline nearer than
``BLOCK_S``) ``poll`` on all of them does the sleeping.

Before sleeping, the wait may poll for a short window (``poll_s``; QEMU's
iothreads do the same with ``poll-max-ns``).  At QD1 the client's next request
usually arrives a few tens of microseconds after our reply; a thread that slept
meanwhile pays a wake-up (an IPI, a VM exit on a virtual CPU, cold caches) that
costs more than the request itself.

Whether to poll is decided by what polling *caught*, not by how long waits
took.  QEMU's rule (grow the window after a sleep that ended within the cap,
shrink it after a longer one) judges the client by the length of a wait that
slept, and that includes our own wake-up: a client that answers in 30 us, well
inside a 50 us window, looks like 55-65 us once the loop sleeps, so a window
that once shrank never grew back.  Here the window is either off or the whole
cap.  While on, a wait the window caught earns a credit and one it polled in
vain costs two, so polling stays on while at least about two thirds of the
waits are caught and a run of misses turns it off.  While off, a wait that
slept for less than the cap turns it back on at once, and every so many waits a
probe turns it on with little credit (one miss ends it); probes that catch
nothing come less and less often (16 -> 1024 waits), so an idle or slow client
costs almost nothing.

Polling only pays if the client runs *beside* us.  With the client on our CPU
(p9bench's ``--server-cpus 0``, a host with more sandboxes than CPUs) a caught
request was already there (the client ran when our reply's ``send`` woke it and
preempted us), and when the client was not so quick the window spun its whole
length while the client, on our CPU, could not run: with 88% of the waits
"caught", the window cost some 9 us more server CPU per QD1 Tgetattr than
sleeping (benchmarks/README.md, #17).  That case has a sure sign: a request's
turn (from one wait to the next: handling it, sending the reply) is preempted,
which on a CPU of our own practically never happens (a turn is tens of
microseconds, a time slice milliseconds).  So every ``_CHECK_EVERY`` waits
(``_CHECK_SHARED`` while marked shared), one turn is measured with ``getrusage(RUSAGE_THREAD)``'s involuntary context
switches; a preempted turn has the next one measured at once, and two preempted
turns in a row mark the CPU *shared* (one alone may be another process taking
our CPU for a moment, on a busy host): the window turns off, and
neither short sleeps (on a shared CPU every sleep is short: the client runs the
moment we sleep) nor probes turn it on until ``_SHARED_TURNS`` measured turns in
a row were not preempted (about one turn in eight is not, on a shared CPU: the
client did not preempt our ``send``; one such turn must not turn polling on).

Even beside the client, polling must pay in CPU, not only in latency: a caught
request saves a sleep and a wake-up (on this project's VM some 10-15 us of
kernel time on a CPU that went idle: benchmarks/README.md, "#17, session 9"),
but the window spins until the client's next request, and which of the two
is dearer depends on the client and on what else the CPUs run (the README
measured it both ways with the same Python client).  Only the thread's own CPU
time can tell (``time.thread_time_ns``, read at measured turns' starts during a
trial only): while the window is on, every ``_TRIAL_EVERY`` measured turns (and
``_TRIAL_FIRST`` after it turns on) a *trial* alternates blocks (measured
turn to measured turn, ``_CHECK_EVERY`` waits) with the window on and off,
``_TRIAL_PAIRS`` of each, and compares the CPU per wait.  If polling cost more,
the window turns off and is *held* off (no short sleep or probe turns it on)
for ``_HOLD_MIN`` measured turns (one in ``_CHECK_SHARED`` waits while held: 512
waits), twice as long after each trial it loses again (up to ``_HOLD_MAX``: 8,192
waits), so that polling which does not pay costs a trial's 64 polled waits in
thousands.  A polling block is polling as it goes, misses included: misses may
turn the window off within it (and each polling block turns it on again, as a
probe does), but do not end the trial (a client that the window misses now and
then would otherwise end every trial before its verdict, and polling that flaps
on and off would never be judged); a shared CPU ends a trial without a verdict.

Guest mode (``trio.lowlevel.start_guest_run``) is not supported: the wait would
hold the host loop's thread.  gofer9p never runs trio as a guest.
"""

from __future__ import annotations

import math
import resource
import select
import socket
import struct
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

import trio
from mypy_extensions import mypyc_attr

__all__ = ["BLOCK_S", "FRESH_S", "QuietWait", "available", "watching"]

BLOCK_S = 0.01
"""Longest one wait sleeps (read when a QuietWait is made)."""
FRESH_S = 0.05
"""Longest a reading of trio's statistics is trusted while nothing else ran (read when a
QuietWait is made; at least ``BLOCK_S``).  A reading is interpreted code in trio, some
30,000 instructions: as much as a whole Tgetattr.  With 10 ms, a client sending a
request every 0.5-2 ms (the guest workload through v9fs under TCG) had one read every
13 requests, about 7% of the server's instructions; what it bounds is how long a
signal's handler (the daemon's SIGTERM) waits while a client keeps the loop busy."""

_TRIO_READERS: Final = 1
"""Fd readers that are trio's own: the ``run_sync_soon`` task on its wake-up socket.

Not a documented number: if a trio release changes it, the counts never match,
the shortcut is never taken (correct, slower) and tests/unit/test_quietwait.py
fails."""

_DONTWAIT: Final = socket.MSG_DONTWAIT
_POLLIN: Final = select.POLLIN
_POLLNVAL: Final = select.POLLNVAL
_INF: Final = math.inf
_NONE: list[tuple[int, int]] = []
_CREDIT_MAX: Final = 16
"""Most credit the poll window holds: this many net misses turn it off."""
_PROBE_CREDIT: Final = 2
"""Credit of a window turned on by a probe or a short sleep (one miss ends it)."""
_PROBE_MIN: Final = 16
_PROBE_MAX: Final = 1024
"""Waits between probes while the window is off (doubling while probes fail)."""
_CHECK_EVERY: Final = 8
"""Waits per measured turn (two ``getrusage`` calls) while a poll window is configured."""
_CHECK_SHARED: Final = 32
"""Waits per measured turn while the CPU is marked shared (or the window is held off
after a CPU trial): nothing but the end of the sharing is to be found then, which may
take a few more waits to see (issue #17: the measuring was a ``getrusage`` every four
requests of a QD1 client on our CPU)."""
_SHARED_TURNS: Final = 3
"""Measured turns in a row without preemption that end a shared CPU."""
_NEVER: Final = 1 << 62
"""``_check_in`` without a poll window: no turn is ever measured."""
_WARM_PASSES: Final = 2
"""Run-loop passes after which every scheduled task was seen by the instrument."""
_now: Final = time.perf_counter


_TRIAL_PAIRS: Final = 8
"""Blocks with the window on, and as many with it off, that a CPU trial compares (a
block's CPU moves +-30% with what the client did meanwhile: fewer misjudge)."""
_TRIAL_FIRST = 16
"""Measured turns with the window on before a trial (at the start, after a hold): not
the connection's first waits, whose CPU is its warming up as much as the window's."""
_TRIAL_EVERY: Final = 256
"""Measured turns (about 2,000 waits) between trials while polling pays for itself."""
_HOLD_MIN: Final = 16
_HOLD_MAX: Final = 256
"""Measured turns the window stays off after a trial it lost, one in ``_CHECK_SHARED``
waits while held (about 500 -> 8,000 waits, doubling while trials keep losing)."""


def _thread_switches() -> int:
    """Involuntary context switches of the calling thread so far (preemptions)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw


_switches: Callable[[], int] = _thread_switches
"""What measures a turn: a variable, not a ``def``, so that a compiled build looks it up
at each call (mypyc binds calls to a module's own functions early) and tests can replace it."""
_cpu_ns: Callable[[], int] = time.thread_time_ns
"""The thread's CPU time, which a CPU trial compares (a variable for the same reasons).
Not ``getrusage``'s: that leaves out the running thread's time since the scheduler last
accounted it (up to a tick), which a spinning window's blocks would hand to the next."""



class _Run(trio.abc.Instrument):
    """What the quiet waits of one trio run share: the scheduler's state and the registry.

    ``pending``: tasks scheduled and not yet stepped (trusted once ``warm``).
    ``gen``: counts schedulings, so a wait can tell that some task ran since it
    last read trio's statistics.  ``waits``: its QuietWaits' registry entries (weak: a
    connection that ends and is dropped leaves it); those that went back to
    trio are *parked* (``parked`` counts them), and ``version`` changes whenever
    one parks or unparks.  ``watched``: other sockets a task waits on through
    trio (see ``watching``).
    """

    __slots__ = ("gen", "parked", "pending", "version", "waits", "warm", "watched")

    def __init__(self) -> None:
        self.pending: set[trio.lowlevel.Task] = set()
        self.gen = 0
        self.warm = False
        self.waits: weakref.WeakSet[_Entry] = weakref.WeakSet()
        self.parked = 0
        self.watched: dict[_HasFileno, None] = {}
        self.version = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.pending.add(task)
        self.gen += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.pending.discard(task)


@mypyc_attr(native_class=False)  # (compiled classes take no weak references)
class _Entry:
    """A QuietWait's place in its run's registry (``_Run.waits``): its socket and
    whether it is parked.

    Only its QuietWait holds it, so it leaves the registry with its wait, and a
    wait dropped while parked (a connection that ended after going back to trio)
    stops counting as a parked reader."""

    __slots__ = ("__weakref__", "parked", "run", "sock")

    def __init__(self, run: _Run, sock: socket.socket) -> None:
        self.run = run
        self.sock = sock
        self.parked = False

    def __del__(self) -> None:
        if self.parked:
            self.run.parked -= 1
            self.run.version += 1


class _Warmup(trio.abc.Instrument):
    """Marks a run's ``_Run`` trusted after ``_WARM_PASSES`` run-loop passes, then leaves.

    A separate instrument so that ``after_io_wait`` costs nothing once warm."""

    __slots__ = ("left", "run")

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.left = _WARM_PASSES

    def after_io_wait(self, timeout: float) -> None:
        self.left -= 1
        if self.left <= 0:
            self.run.warm = True
            trio.lowlevel.remove_instrument(self)


_RUN: trio.lowlevel.RunVar[_Run] = trio.lowlevel.RunVar("gofer9p.quietwait")


def _real_time_clock() -> bool:
    """Whether trio's clock runs in real time (deadlines can be waited for in seconds)."""
    clock = trio.lowlevel.current_clock()
    ahead = clock.deadline_to_sleep_time(clock.current_time() + 1.0)
    return 0.5 < ahead <= 1.0


def available() -> bool:
    """Whether the shortcut works in the calling context (inside trio, on a real-time clock,
    with the statistics it needs)."""
    try:
        io = trio.lowlevel.current_statistics().io_statistics
        return (
            isinstance(getattr(io, "tasks_waiting_read", None), int)
            and isinstance(getattr(io, "tasks_waiting_write", None), int)
            and _real_time_clock()
        )
    except RuntimeError:  # not inside trio.run
        return False


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


@contextmanager
def watching(sock: _HasFileno) -> Iterator[None]:
    """Declare, for the block's duration, that a task of this run waits through trio
    for ``sock`` to become readable (a listener's accept loop).

    Quiet waits then poll it with their own socket and go back to trio when it is
    readable, instead of leaving the shortcut altogether while a reader they
    cannot account for waits.  Outside trio it does nothing."""
    if not available():
        yield
        return
    run = _current_run()
    run.watched[sock] = None
    run.version += 1
    try:
        yield
    finally:
        del run.watched[sock]
        run.version += 1


def _current_run() -> _Run:
    """This trio run's shared state, created (and its instruments added) on first use."""
    try:
        return _RUN.get()
    except LookupError:
        run = _Run()
        _RUN.set(run)
        trio.lowlevel.add_instrument(run)
        trio.lowlevel.add_instrument(_Warmup(run))
        return run


class QuietWait:
    """The waiting side of one connection's receive loop.

    Puts the socket in blocking mode with ``SO_RCVTIMEO`` (``BLOCK_S``) when
    the shortcut is available: every other receive and send on it must pass
    ``MSG_DONTWAIT``.  Call only from the trio thread, in the task that owns
    the socket.  ``recv_into`` returning -1 means: wait through trio
    (``trio.lowlevel.wait_readable(sock)``) now; the socket is then in the
    registry that other connections' waits poll, until the next call.
    ``fixed_scopes``: the caller waits from one place and enters or cancels none
    of the scopes around it between waits (see the module docstring).
    """

    __slots__ = (
        "_alone",
        "_block",
        "_blocking",
        "_check_in",
        "_clock",
        "_cost_off",
        "_cost_on",
        "_cpu",
        "_credit",
        "_deadline",
        "_entry",
        "_fd",
        "_fixed",
        "_fresh",
        "_fresh_until",
        "_gen",
        "_held",
        "_hold_next",
        "_mark",
        "_max",
        "_on_hits",
        "_parked",
        "_poll",
        "_probe_every",
        "_probe_in",
        "_recv",
        "_run",
        "_shared",
        "_sock",
        "_span",
        "_suspect",
        "_trial",
        "_trial_in",
        "_version",
        "_waits_off",
        "_waits_on",
        "deferred",
        "hits",
        "refreshes",
        "window",
    )

    def __init__(self, sock: socket.socket, poll_s: float = 0.0, fixed_scopes: bool = False) -> None:
        self._run: _Run | None = None
        self._fixed = fixed_scopes
        self._parked = False
        self._sock = sock
        self._recv = sock.recv_into
        self._fd = sock.fileno()
        self._max = max(0.0, poll_s)
        self.window = self._max
        """Current poll window in seconds: ``poll_s`` while polling is on, else 0."""
        self.hits = 0
        """Waits that ended within the poll window (without sleeping)."""
        self.deferred = 0
        """Waits that sent the caller through trio (returned -1)."""
        self.refreshes = 0
        """Reads of trio's statistics (interpreted code in trio: the costliest part of a
        wait that takes them, some 30,000 instructions; the server logs the count)."""
        self._credit = _PROBE_CREDIT
        self._on_hits = 0
        self._probe_every = _PROBE_MIN
        self._probe_in = _PROBE_MIN
        self._check_in = 2 if self._max else _NEVER  # measure the first turn
        self._span = 2  # waits from one measured turn's start to the next one's
        self._mark = 0  # involuntary switches at the start of a measured turn
        self._suspect = False  # the last measured turn was preempted
        self._shared = 0
        """Non-zero: the CPU looks shared with the client (the window stays off) for
        this many more measured turns without preemption."""
        self._cpu = 0  # thread CPU time (ns) at the last measured turn's start, in a trial
        self._trial = 0
        """Non-zero: a CPU trial is on, with this many blocks (measured turn to measured
        turn) to go; even: the current block polls, odd: it sleeps."""
        self._trial_in = _TRIAL_FIRST
        self._cost_on = self._cost_off = self._waits_on = self._waits_off = 0
        self._held = 0
        """Non-zero: polling lost a trial, the window stays off for this many measured turns."""
        self._hold_next = _HOLD_MIN
        self._block = BLOCK_S
        self._fresh = max(FRESH_S, self._block)
        self._clock: Any = None
        self._poll: Any = None
        self._alone = False  # the poll set is our socket only
        self._version = -1
        self._gen = -1
        self._fresh_until = 0.0
        self._deadline = 0.0
        self._blocking = False  # the socket sleeps in a blocking recv (see the module docstring)
        self._entry: _Entry | None = None
        if available():
            self._run = run = _current_run()
            self._entry = entry = _Entry(run, sock)
            run.waits.add(entry)
            self._clock = trio.lowlevel.current_clock().current_time
            usec = int(self._block * 1e6)
            try:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", *divmod(usec, 10**6))
                )
                sock.setblocking(True)
                self._blocking = True
            except OSError:
                sock.setblocking(False)  # (a transport without receive timeouts: poll sleeps)

    @property
    def active(self) -> bool:
        """Whether waits may take the shortcut at all (inside trio, real-time clock)."""
        return self._run is not None

    def recv_into(self, view: memoryview, may_block: bool, limit: float = _INF) -> int:
        """Wait for data and receive it into ``view``; -1: wait through trio instead.

        Returns what ``recv_into`` returned (0 at EOF).  ``limit`` (seconds)
        bounds the wait further (the caller's own timer).  ``may_block=False``:
        take only data already there (requests are in worker threads, whose
        completions this wait cannot see).  Connection errors propagate.
        """
        self._check_in -= 1
        if self._check_in <= 1:
            self._measure_turn()
        run = self._run
        if run is None:
            self.deferred += 1
            return -1
        if self._parked:
            self._unpark(run)
        if run.pending or not run.warm:
            return self._defer(run)
        now = _now()
        looked = run.gen != self._gen or now >= self._fresh_until or not may_block
        if looked and not self._refresh(run, now):
            return self._defer(run)
        left = self._deadline - now
        if left <= 0 and not looked:
            # the deadline seen last time is due: its scope may be gone since
            if not self._refresh(run, now):
                return self._defer(run)
            looked = True
            left = self._deadline - now
        if limit < left:
            left = limit
        if left <= 0:
            return self._defer(run)
        # (self._poll.poll is looked up where it is called: bound once per wait it
        # made a method object per request, for a wait that sleeps in recv)
        window = self.window
        if window and may_block and self._alone:
            # Our socket is all the poll set holds: the window looks with recv
            # itself, so a caught request costs that one syscall (a poll(0) that
            # sees it and then a recv cost two, and react later).
            end = now + (window if window < left else left)
            recv = self._recv
            while True:
                try:
                    got = recv(view, 0, _DONTWAIT)
                except BlockingIOError:
                    if _now() < end:
                        continue
                    break
                self._caught()
                return got
            left -= _now() - now
            window = 0.0  # (spent: on to the sleep)
            events = _NONE
        else:
            events = self._poll.poll(0) if window or not may_block else _NONE
        slept = False
        if not events:
            if not may_block:
                return self._defer(run)
            if window:
                end = now + (window if window < left else left)
                while not events and _now() < end:
                    events = self._poll.poll(0)
                left -= _now() - now  # (without a window, no time to speak of went by)
            if not events:
                if not looked and not self._fixed:
                    # this task may have entered (or cancelled) a scope since
                    # the statistics were read: its own deadline, read now
                    own = trio.current_effective_deadline()
                    if own != _INF:
                        if own == -_INF:
                            return self._defer(run)
                        own -= self._clock()
                        if own < left:
                            left = own
                if left >= self._block:
                    left = self._block
                    if self._alone and self._blocking:
                        # the one-syscall sleep: a blocking recv that gives up
                        # after SO_RCVTIMEO (BLOCK_S) with EAGAIN
                        try:
                            got = self._recv(view)
                        except BlockingIOError:
                            got = -1
                        if self._max and (self.window or not (self._shared or self._held)):
                            # (while shared or held and off, _slept changes nothing)
                            self._slept(_now() - now)
                        return got if got >= 0 else self._defer(run)
                # (a deadline already due: one last look, and the window's miss
                # counted; poll rounds a fraction of a millisecond up)
                events = self._poll.poll(left * 1000 if left > 0 else 0)
                slept = True
                if self._max:
                    self._slept(_now() - now)
        if len(events) == 1 and events[0][0] == self._fd:
            if not slept and self.window:
                self._caught()
            try:
                return self._recv(view, 0, _DONTWAIT)
            except BlockingIOError:
                return self._defer(run)
        for fd, ev in events:
            if ev & _POLLNVAL and fd != self._fd:
                self._version = -1  # a parked socket was closed: rebuild without it
        return self._defer(run)

    def _refresh(self, run: _Run, now: float) -> bool:
        """Read trio's statistics: may this task wait for the socket itself?"""
        self.refreshes += 1
        st = trio.lowlevel.current_statistics()
        io: Any = st.io_statistics
        if (
            st.tasks_runnable
            or st.run_sync_soon_queue_size
            or io.tasks_waiting_write
            or io.tasks_waiting_read != _TRIO_READERS + run.parked + len(run.watched)
        ):
            return False
        if trio.current_effective_deadline() == -_INF:
            return False  # this task is cancelled: to its next checkpoint
        if run.version != self._version:
            self._rebuild(run)  # (only now: it costs a syscall per socket)
        self._deadline = now + st.seconds_to_next_deadline
        self._gen = run.gen
        self._fresh_until = now + self._fresh
        return True

    def _rebuild(self, run: _Run) -> None:
        """A new poll set: our socket and every other parked one still open."""
        p = select.poll()
        p.register(self._fd, _POLLIN)
        socks = [e.sock for e in run.waits if e.parked and e is not self._entry]
        alone = True
        for s in [*socks, *run.watched]:
            fd = s.fileno()
            if fd >= 0 and fd != self._fd:
                p.register(fd, _POLLIN)
                alone = False
        self._poll = p
        self._alone = alone
        self._version = run.version

    def _defer(self, run: _Run) -> int:
        """Wait through trio: parked (polled by the others' waits) until the next call."""
        self.deferred += 1
        if not self._parked:
            self._parked = True
            assert self._entry is not None  # (made with self._run)
            self._entry.parked = True
            run.parked += 1
            self._bump(run)
        return -1

    def _unpark(self, run: _Run) -> None:
        self._parked = False
        assert self._entry is not None
        self._entry.parked = False
        run.parked -= 1
        self._bump(run)

    def _bump(self, run: _Run) -> None:
        """Tell the other waits that the parked set changed (our own poll set did not)."""
        mine = self._version == run.version
        run.version += 1
        if mine:
            self._version = run.version

    def _measure_turn(self) -> None:
        """Start a measured turn, or end it: was it preempted (the CPU is shared)?"""
        if self._check_in == 1:
            self._mark = _switches()
            if self._trial or (self.window and self._trial_in <= 1) or self._held:
                self._account()
            elif self.window and not self._shared:
                self._trial_in -= 1
            return
        if _switches() != self._mark:
            if not (self._suspect or self._shared):
                self._suspect = True
                self._check_in = self._span = 2  # measure the next turn too
                return
            self._suspect = False
            self._shared = _SHARED_TURNS
            if self.window:
                self._off()
        else:
            self._suspect = False
            if self._shared:
                self._shared -= 1
        # (while held, as while shared, the window is off: turns are measured less often)
        self._check_in = self._span = _CHECK_SHARED if self._shared or self._held else _CHECK_EVERY

    def _account(self) -> None:
        """At a measured turn's start, in or at the start of a CPU trial or a hold (see
        the module docstring).

        The thread's CPU time since the last measured turn's start (``_span`` waits)
        goes to the block that just ended; blocks alternate between polling and not."""
        if self._held:
            self._held -= 1
            return
        t = self._trial
        if not t:
            if self.window and not self._shared:
                self._trial = 2 * _TRIAL_PAIRS  # the block starting now polls
                self._cost_on = self._cost_off = self._waits_on = self._waits_off = 0
                self._cpu = _cpu_ns()
            return
        cpu = _cpu_ns()
        used = cpu - self._cpu
        self._cpu = cpu
        if self._shared:  # (the window is off): no verdict
            self._trial = 0
            self._trial_in = _TRIAL_FIRST
            return
        if t & 1:
            self._cost_off += used
            self._waits_off += self._span
            # on again, as a probe turns it on (misses may have turned it off in the
            # last polling block: the trial measures polling as it goes, misses included)
            self.window = self._max
            self._credit = _PROBE_CREDIT
            self._on_hits = 0
        else:
            self._cost_on += used
            self._waits_on += self._span
            self.window = 0.0  # the next block sleeps
        self._trial = t - 1
        if t > 1:
            return
        if self._cost_on * self._waits_off > self._cost_off * self._waits_on:
            # per wait, polling cost more CPU than sleeping: off, for a while
            self._off()
            self._held = self._hold_next
            self._hold_next = min(2 * self._hold_next, _HOLD_MAX)
            self._trial_in = _TRIAL_FIRST
        else:
            self._hold_next = _HOLD_MIN
            self._trial_in = _TRIAL_EVERY

    def _off(self) -> None:
        """Window off; after a window that caught (almost) nothing, probe less often."""
        few = self._on_hits < 4
        self._probe_every = min(2 * self._probe_every, _PROBE_MAX) if few else _PROBE_MIN
        self._probe_in = self._probe_every
        self.window = 0.0

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
                self._off()
            return
        if self._shared or self._held or self._trial:
            return  # (until a measured turn says otherwise)
        self._probe_in -= 1
        if waited <= self._max or self._probe_in <= 0:
            # The client answered within the cap even with our wake-up in the
            # wait, or it is time to probe: poll again, on little credit.
            self.window = self._max
            self._credit = _PROBE_CREDIT
            self._on_hits = 0
