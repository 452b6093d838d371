"""The scheduler-free wait (gofer9p/_quietwait.py), by what it does: when it takes the
thread, and that nothing else in the trio run waits for it longer than the bound.

A wait that "takes the shortcut" returns the bytes it received (>= 0); -1 means
the caller waits through trio.  These tests fail if the shortcut stops working
under the installed trio (it would still be correct, only slower), and if it
ever holds the thread while trio has something else to do: a runnable task, a
task later in the same run-loop batch, a ``run_sync_soon`` callback, a
deadline, a reader it cannot see, another connection's data, work in worker
threads.  Where a test shows that something ends a wait *early*, ``BLOCK_S`` is
raised to 2 s first, so that "early" cannot be the bound itself.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from gofer9p import _quietwait
from gofer9p._quietwait import QuietWait

LONG = 2.0
"""BLOCK_S for tests that show a wait ending early; they assert well under it."""
EARLY = 1.0


@pytest.fixture
def long_block(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """QuietWaits made in this test may sleep up to ``LONG`` seconds at a time."""
    monkeypatch.setattr(_quietwait, "BLOCK_S", LONG)
    yield


PREEMPTIONS = [0]
"""What ``_quietwait._switches`` returns in these tests: the thread's involuntary
context switches, which a test bumps to say "this turn was preempted"."""
CPU = [0]
"""What ``_quietwait._cpu_ns`` returns: the thread's CPU time, which a test advances."""


@pytest.fixture(autouse=True)
def no_preemption(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Turns are never preempted unless a test says so: on a loaded machine a real
    preemption would turn a test's poll window off (the shared-CPU rule).  Nor is
    there a CPU trial unless a test asks for one (``cpu_trials``): its blocks with
    the window off would change what the other tests count."""
    PREEMPTIONS[0] = CPU[0] = 0
    monkeypatch.setattr(_quietwait, "_switches", lambda: PREEMPTIONS[0])
    monkeypatch.setattr(_quietwait, "_cpu_ns", lambda: CPU[0])
    monkeypatch.setattr(_quietwait, "_TRIAL_FIRST", 1 << 40)
    yield


@pytest.fixture
def cpu_trials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CPU trials from the first measured turn with the window on."""
    monkeypatch.setattr(_quietwait, "_TRIAL_FIRST", 1)
    yield


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


async def _ready(sock: socket.socket, poll_s: float = 0.0) -> QuietWait:
    """A QuietWait past its run's first two scheduler passes (before them it cannot
    vouch that no task scheduled earlier is still to run)."""
    q = QuietWait(sock, poll_s)
    await trio.sleep(0)
    await trio.sleep(0)
    return q


def _buf() -> memoryview:
    return memoryview(bytearray(64))


def _timed(q: QuietWait, may_block: bool = True) -> tuple[int, float]:
    t = time.monotonic()
    n = q.recv_into(_buf(), may_block)
    return n, time.monotonic() - t


# ------------------------------------------------------------ taking the thread


async def test_available_inside_trio() -> None:
    assert _quietwait.available()
    a, b = _pair()
    with a, b:
        assert QuietWait(a).active


def test_unavailable_outside_trio() -> None:
    assert not _quietwait.available()


def test_unavailable_under_a_stopped_mock_clock() -> None:
    async def check() -> tuple[bool, bool]:
        a, b = _pair()
        with a, b:
            return _quietwait.available(), QuietWait(a).active

    assert trio.run(check, clock=trio.testing.MockClock()) == (False, False)
    assert trio.run(check, clock=trio.testing.MockClock(rate=1.0)) == (True, True)


async def test_receives_when_alone(long_block: None) -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        buf = bytearray(16)
        b.send(b"hello")
        assert q.recv_into(memoryview(buf), True) == 5
        assert bytes(buf[:5]) == b"hello"
        b.send(b"again")  # data already there: taken even when it may not block
        assert q.recv_into(memoryview(buf), False) == 5
        threading.Timer(0.005, b.send, (b"x",)).start()  # arrives while it sleeps
        assert q.recv_into(memoryview(buf), True) == 1


async def test_alone_it_sleeps_in_one_blocking_recv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our socket alone in the poll set: the sleep is the recv itself (blocking mode,
    SO_RCVTIMEO of BLOCK_S), no poll; it gives up after BLOCK_S."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.001)
        assert a.getblocking()
        sec, usec = struct.unpack("@ll", a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
        # (the kernel rounds it up to its clock tick)
        assert _quietwait.BLOCK_S <= sec + usec / 1e6 <= 2 * _quietwait.BLOCK_S
        assert q.recv_into(_buf(), True) == -1  # slept up to BLOCK_S, then gave up
        polls: list[float] = []

        class CountingPoll:
            def __init__(self, real: Any) -> None:
                self.real = real

            def poll(self, timeout: float | None = None) -> Any:
                polls.append(0.0 if timeout is None else timeout)
                return self.real.poll(timeout)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.real, name)

        monkeypatch.setattr(q, "_poll", CountingPoll(q._poll))
        q.window = 0.0
        threading.Timer(0.002, b.send, (b"x",)).start()
        assert q.recv_into(_buf(), True) == 1
        assert [t for t in polls if t] == [], "slept in poll, not in the recv"


async def test_catches_requests_at_qd1(long_block: None) -> None:
    """A peer answering each reply at once (QD1): every request is taken by the
    wait, most within the poll window (``hits``)."""
    a, b = _pair()
    rounds = 40

    def peer() -> None:
        b.sendall(b"q")
        for _ in range(rounds - 1):
            b.recv(1)
            b.sendall(b"q")

    with a, b:
        # a window far above a thread's round trip: a loaded machine may run the peer late
        q = await _ready(a, poll_s=0.2)
        t = threading.Thread(target=peer)
        t.start()
        try:
            got = []
            for _ in range(rounds):
                got.append(q.recv_into(_buf(), True))
                a.send(b"r")
        finally:
            t.join()
        assert got == [1] * rounds
        assert q.hits >= rounds // 2, q.hits


async def test_limit_ends_the_wait(long_block: None) -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        t = time.monotonic()
        assert q.recv_into(_buf(), True, 0.05) == -1
        assert time.monotonic() - t < EARLY


async def test_a_wait_sleeps_at_most_block_s() -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        n, took = _timed(q)
        assert n == -1
        assert took < 1.0  # a liveness bound (BLOCK_S is 20 ms), not a performance check


# ------------------------------------------------------------ yielding to trio


async def test_defers_to_a_runnable_task(nursery: trio.Nursery) -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        nursery.start_soon(trio.sleep, 0)  # now in the run queue
        b.send(b"x")
        assert q.recv_into(_buf(), True) == -1


async def test_deferred_counts_the_waits_sent_through_trio(nursery: trio.Nursery) -> None:
    """``deferred`` (the server logs it as ``trio=``) counts the -1 returns, and only them."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1
        assert q.deferred == 0
        nursery.start_soon(trio.sleep, 0)
        b.send(b"y")
        assert q.recv_into(_buf(), True) == -1
        assert q.recv_into(_buf(), True) == -1
        assert q.deferred == 2


async def test_refreshes_counts_the_reads_of_trios_statistics(long_block: None) -> None:
    """``refreshes`` (the server logs it as ``stats_reads=``) counts the reads of trio's
    statistics: once for a wait after a task ran, not again for the next wait while
    nothing else ran and the reading is fresh (``FRESH_S``)."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        assert q.refreshes == 0
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1
        assert q.refreshes == 1
        b.send(b"y")
        assert q.recv_into(_buf(), True) == 1
        assert q.refreshes == 1
        await trio.sleep(0)  # this task ran through the scheduler: read them again
        b.send(b"z")
        assert q.recv_into(_buf(), True) == 1
        assert q.refreshes == 2


async def test_a_reading_is_trusted_for_fresh_s_not_block_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """How long a reading of trio's statistics stays fresh is ``FRESH_S``, not the
    longest sleep (``BLOCK_S``): a wait ``BLOCK_S`` after the last reading, nothing else
    having run, does not read them again; one after ``FRESH_S`` does."""
    monkeypatch.setattr(_quietwait, "BLOCK_S", 0.01)
    monkeypatch.setattr(_quietwait, "FRESH_S", LONG)
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1
        assert q.refreshes == 1
        time.sleep(0.05)  # (the thread, not the task: nothing is scheduled)
        b.send(b"y")
        assert q.recv_into(_buf(), True) == 1
        assert q.refreshes == 1
        q._fresh_until = 0.0  # as if FRESH_S had gone by
        b.send(b"z")
        assert q.recv_into(_buf(), True) == 1
        assert q.refreshes == 2


async def test_defers_to_the_rest_of_the_batch() -> None:
    """Two tasks woken in the same pass: the one that runs first must not take the
    thread; the last one may (the first went back to trio, its socket is polled)."""
    results: dict[str, int] = {}
    order: list[str] = []
    go = trio.Event()
    socks = [_pair() for _ in range(2)]
    try:
        async with trio.open_nursery() as n:

            async def waiter(name: str, s: socket.socket) -> None:
                q = await _ready(s)
                await go.wait()
                order.append(name)
                got = results[name] = q.recv_into(_buf(), True)
                if len(results) == 2:
                    n.cancel_scope.cancel()
                elif got == -1:  # as server.py does: take the byte, wait through trio
                    assert s.recv_into(_buf()) == 1
                    await trio.lowlevel.wait_readable(s)

            for _, b in socks:
                b.send(b"z")
            n.start_soon(waiter, "one", socks[0][0])
            n.start_soon(waiter, "two", socks[1][0])
            await trio.testing.wait_all_tasks_blocked()
            go.set()  # both runnable: one batch
        assert results[order[0]] == -1  # the other one was still to run
        assert results[order[1]] == 1  # last in its batch, the other parked: the shortcut
    finally:
        for a, b in socks:
            a.close()
            b.close()


def test_does_not_trust_the_pass_it_started_in() -> None:
    """The first QuietWait of a run cannot know which tasks were scheduled before it
    started watching: in that pass it never takes the thread (here a task later in
    the same batch would starve)."""
    results: list[int] = []

    async def main() -> None:
        go = trio.Event()
        socks = [_pair() for _ in range(2)]
        try:

            async def waiter(s: socket.socket) -> None:
                await go.wait()
                results.append(QuietWait(s).recv_into(_buf(), True))

            for _, b in socks:
                b.send(b"z")
            async with trio.open_nursery() as n:
                for a, _ in socks:
                    n.start_soon(waiter, a)
                await trio.testing.wait_all_tasks_blocked()
                go.set()  # both runnable: one batch
        finally:
            for a, b in socks:
                a.close()
                b.close()

    trio.run(main)
    assert results == [-1, -1]


async def test_defers_to_a_run_sync_soon_callback() -> None:
    """Worker threads finishing and signals reach trio as run_sync_soon callbacks."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        trio.lowlevel.current_trio_token().run_sync_soon(lambda: None)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == -1


async def test_defers_to_a_due_deadline(long_block: None) -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        with trio.move_on_after(0.05):
            n, took = _timed(q)
            assert n == -1
            assert took < EARLY  # the deadline ended it, not the 2 s bound
        b.send(b"x")
        with trio.move_on_after(0):  # already due
            assert q.recv_into(_buf(), True) == -1


async def test_defers_once_its_task_is_cancelled() -> None:
    """A client that keeps a request ready must not keep a cancelled task (the
    daemon's SIGTERM handler cancels every connection) from its next checkpoint."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        async with trio.open_nursery() as n:
            with trio.CancelScope() as cs:
                b.send(b"x")
                assert q.recv_into(_buf(), True) == 1

                async def cancel() -> None:  # as another task would
                    cs.cancel()

                n.start_soon(cancel)
                with trio.CancelScope(shield=True):
                    await trio.testing.wait_all_tasks_blocked()
                assert cs.cancel_called
                b.send(b"x")
                assert q.recv_into(_buf(), True) == -1


async def test_sees_its_own_new_deadline_and_cancel(long_block: None) -> None:
    """A scope this task entered (or cancelled) since the wait last looked at trio."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1
        with trio.move_on_after(0.05):
            n, took = _timed(q)
            assert n == -1
            assert took < EARLY
        with trio.CancelScope() as cs:
            cs.cancel()
            n, took = _timed(q)
            assert n == -1
            assert took < EARLY


async def _own_deadline_reads(monkeypatch: pytest.MonkeyPatch, fixed_scopes: bool) -> int:
    """How often a wait that sleeps without re-reading the statistics reads its
    task's own deadline (a walk of its cancel-scope stack)."""
    a, b = _pair()
    with a, b:
        q = QuietWait(a, fixed_scopes=fixed_scopes)
        await trio.sleep(0)
        await trio.sleep(0)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1  # looks at trio's statistics
        reads = [0]
        real = trio.current_effective_deadline

        def counted() -> float:
            reads[0] += 1
            return real()

        monkeypatch.setattr(trio, "current_effective_deadline", counted)
        assert q.recv_into(_buf(), True) == -1  # sleeps (BLOCK_S) on the same statistics
        monkeypatch.setattr(trio, "current_effective_deadline", real)
        return reads[0]


async def test_fixed_scopes_skip_the_own_deadline_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """server.py's loop waits from one place inside the same scopes: its sleeps do
    not walk the scope stack (some 20 Python calls a request at QD1 on one CPU)."""
    assert await _own_deadline_reads(monkeypatch, fixed_scopes=False) == 1
    assert await _own_deadline_reads(monkeypatch, fixed_scopes=True) == 0


async def test_fixed_scopes_still_defer_once_cancelled_by_another_task() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a, fixed_scopes=True)
        await trio.sleep(0)
        await trio.sleep(0)
        async with trio.open_nursery() as n:
            with trio.CancelScope() as cs:
                b.send(b"x")
                assert q.recv_into(_buf(), True) == 1

                async def cancel() -> None:
                    cs.cancel()

                n.start_soon(cancel)
                with trio.CancelScope(shield=True):
                    await trio.testing.wait_all_tasks_blocked()
                b.send(b"x")
                assert q.recv_into(_buf(), True) == -1


async def test_a_deadline_whose_scope_ended_does_not_count(long_block: None) -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        with trio.move_on_after(0.02):
            b.send(b"x")
            assert q.recv_into(_buf(), True) == 1
        time.sleep(0.03)  # that deadline has passed, and its scope is gone
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1


async def test_defers_to_a_writer(nursery: trio.Nursery) -> None:
    """A task waiting to send (a full socket buffer): trio must see when it drains."""
    a, b = _pair()
    c, d = _pair()
    with a, b, c, d:
        q = await _ready(a)
        try:
            while True:
                c.send(bytes(65536))
        except BlockingIOError:
            pass
        nursery.start_soon(trio.lowlevel.wait_writable, c)
        await trio.testing.wait_all_tasks_blocked()
        b.send(b"x")
        assert q.recv_into(_buf(), True) == -1


async def test_defers_to_a_reader_it_cannot_see(nursery: trio.Nursery, long_block: None) -> None:
    """Another task waits for an fd that is not a quiet-waiting connection's (a
    listener, a client in the same loop): no wait of ours may hide it."""
    a, b = _pair()
    c, d = _pair()
    with a, b, c, d:
        q = await _ready(a)
        nursery.start_soon(trio.lowlevel.wait_readable, c)
        await trio.testing.wait_all_tasks_blocked()
        n, took = _timed(q)  # nothing comes: only trio can tell when c does
        assert n == -1
        assert took < EARLY


async def test_sees_a_reader_that_came_while_it_had_data(nursery: trio.Nursery) -> None:
    """Another task started waiting for an fd since the last wait took the shortcut:
    the next wait looks at trio again instead of trusting what it saw then."""
    a, b = _pair()
    c, d = _pair()
    with a, b, c, d:
        q = await _ready(a)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1
        nursery.start_soon(trio.lowlevel.wait_readable, c)
        await trio.testing.wait_all_tasks_blocked()
        d.send(b"y")  # that task's fd is ready, and so is ours: trio goes first
        b.send(b"x")
        assert q.recv_into(_buf(), True) == -1


async def test_polls_the_other_connections(long_block: None) -> None:
    """A second connection that went back to trio: the wait still takes the shortcut,
    and ends at once when the other one's data arrives (its task is woken)."""
    a, b = _pair()
    c, d = _pair()
    woken = trio.Event()
    with a, b, c, d:
        qa = await _ready(a)
        qc = QuietWait(c)

        async def other() -> None:
            assert qc.recv_into(_buf(), False) == -1  # c has nothing: back to trio
            await trio.lowlevel.wait_readable(c)
            woken.set()

        async with trio.open_nursery() as n:
            n.start_soon(other)
            await trio.testing.wait_all_tasks_blocked()
            b.send(b"x")
            assert qa.recv_into(_buf(), True) == 1  # an idle second connection: still ours
            threading.Timer(0.01, d.send, (b"y",)).start()
            n_, took = _timed(qa)
            assert n_ == -1
            assert took < EARLY
            with trio.fail_after(EARLY):
                await woken.wait()


async def test_a_watched_socket_is_polled(long_block: None) -> None:
    """A reader declared with ``watching`` (a listener's accept loop): the shortcut
    stays, and the watched socket becoming readable ends a wait at once."""
    a, b = _pair()
    c, d = _pair()
    accepted = trio.Event()
    with a, b, c, d:
        q = await _ready(a)

        async def listener() -> None:
            with _quietwait.watching(c):
                await trio.lowlevel.wait_readable(c)
            accepted.set()

        async with trio.open_nursery() as n:
            n.start_soon(listener)
            await trio.testing.wait_all_tasks_blocked()
            b.send(b"x")
            assert q.recv_into(_buf(), True) == 1
            timer = threading.Timer(0.01, d.send, (b"y",))
            timer.start()
            n_, took = _timed(q)
            timer.join()
            assert n_ == -1
            assert took < EARLY
            with trio.fail_after(EARLY):
                await accepted.wait()
        b.send(b"x")  # the block ended: c no longer counts
        assert q.recv_into(_buf(), True) == 1


def test_watching_outside_trio_does_nothing() -> None:
    a, b = _pair()
    with a, b, _quietwait.watching(a):
        pass


async def test_a_dropped_connection_leaves_the_registry() -> None:
    """A connection that went back to trio and then ended (its QuietWait dropped)
    no longer counts as a reader the others must account for."""
    a, b = _pair()
    c, d = _pair()
    with a, b, c, d:
        q = await _ready(a)
        qc = QuietWait(c)
        assert qc.recv_into(_buf(), False) == -1  # parked; then the connection ends
        del qc
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1


async def test_wake_up_during_a_sleep_is_seen_soon() -> None:
    """A run_sync_soon that arrives while the wait sleeps cannot end that sleep
    (trio's wake-up socket is private), but a wait soon after goes back to trio,
    even when each one finds data."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        token = trio.lowlevel.current_trio_token()
        timers = [
            threading.Timer(0.005, token.run_sync_soon, (lambda: None,)),
            threading.Timer(0.01, b.send, (b"x",)),
        ]
        for tm in timers:
            tm.start()
        t = time.monotonic()
        while q.recv_into(_buf(), True) != -1:
            assert time.monotonic() - t < 1.0, "trio starved"
            b.send(b"x")
        for tm in timers:
            tm.join()


async def test_a_streaming_client_does_not_starve_trio() -> None:
    """Requests that are always there when asked for: trio still gets the thread
    within about ``BLOCK_S`` (its statistics are read again at least that often)."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1
        trio.lowlevel.current_trio_token().run_sync_soon(lambda: None)
        t = time.monotonic()
        for _ in range(1_000_000):
            b.send(b"x")
            if q.recv_into(_buf(), True) == -1:
                break
            assert time.monotonic() - t < 5.0, "trio starved"
        else:
            raise AssertionError("never went back to trio")


async def test_never_sleeps_while_work_is_in_threads(long_block: None) -> None:
    """may_block=False (requests in worker threads): only data already there."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=LONG)
        # the worker thread runs until the checks are done (a fixed sleep could end
        # between them on a slow moment, and its completion is then trio's pending work)
        release = threading.Event()
        async with trio.open_nursery() as n:
            n.start_soon(trio.to_thread.run_sync, release.wait)
            try:
                # the thread is running, its task waits for it: not a fixed sleep, after
                # which (on a loaded machine) the task may still be between its steps
                # (scheduled, not stepped: the wait rightly defers, -1, to every call)
                await trio.testing.wait_all_tasks_blocked()
                n_, took = _timed(q, may_block=False)
                assert n_ == -1
                assert took < EARLY
                b.send(b"x")
                assert q.recv_into(_buf(), False) == 1
            finally:
                release.set()


async def test_a_finished_thread_goes_first(long_block: None) -> None:
    """While requests are in worker threads, each wait looks at trio: a thread that
    finished (a queued run_sync_soon) is answered before the next request is taken."""
    a, b = _pair()
    with a, b:
        q = await _ready(a)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1  # trio's statistics now trusted for 2 s
        trio.lowlevel.current_trio_token().run_sync_soon(lambda: None)  # as a thread ending
        b.send(b"x")
        assert q.recv_into(_buf(), False) == -1


async def test_client_in_the_same_loop(long_block: None) -> None:
    """A server loop like server.py's and its client in one trio run: each round
    trip is quick (the server's wait never holds the thread its client needs)."""
    a, b = _pair()
    rounds = 20
    with a, b:
        tb = trio.socket.from_stdlib_socket(b)
        q = await _ready(a, poll_s=0.001)

        async def server() -> None:
            buf = _buf()
            for _ in range(rounds):
                got = q.recv_into(buf, True)
                if got < 0:
                    await trio.lowlevel.wait_readable(a)
                    got = a.recv_into(buf)
                assert got == 1
                a.send(b"r")

        with trio.fail_after(rounds * LONG / 4):
            async with trio.open_nursery() as n:
                n.start_soon(server)
                for _ in range(rounds):
                    await tb.send(b"q")
                    assert await tb.recv(1) == b"r"


# ------------------------------------------------------------ the poll window


def _miss(q: QuietWait, after: float) -> None:
    """A wait that nothing ends but its limit, ``after`` seconds (longer than the cap)."""
    assert q.recv_into(_buf(), True, after) == -1


async def test_poll_window_starts_on_and_one_miss_ends_a_fresh_window() -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.001)
        assert q.window == 0.001
        _miss(q, 0.05)  # the wait gives up after BLOCK_S
        assert q.window == 0.0
        assert q.hits == 0


async def test_poll_window_credit_from_hits_outlasts_misses() -> None:
    """Each caught wait earns a credit, each wait polled in vain costs two."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.002)
        for _ in range(4):
            b.send(b"x")
            assert q.recv_into(_buf(), True) == 1
        assert q.hits == 4
        seen = []
        for _ in range(3):
            _miss(q, 0.005)
            seen.append(q.window)
        assert seen == [0.002, 0.002, 0.0], seen  # credit 2 + 4 = 6: off at the third


async def test_poll_window_probes_less_often_while_probes_catch_nothing() -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.001)
        on = []
        for i in range(98):
            _miss(q, 0.003)  # each wait sleeps past the cap: no reason to poll
            if q.window:
                on.append(i)
        # off after the first wait; probes after 32 waits, then after 64 more
        assert on == [32, 97], on
        b.send(b"x")  # the probe catches data: polling stays on
        assert q.recv_into(_buf(), True) == 1
        assert q.hits == 1 and q.window == 0.001


async def test_poll_window_turns_on_after_a_sleep_within_the_cap(long_block: None) -> None:
    """A client that answered within the cap while we slept: poll for the next one."""
    a, b = _pair()
    with a, b:
        # a cap far above the timers' 5 ms: a loaded machine may fire them late
        q = await _ready(a, poll_s=0.3)
        _miss(q, 0.6)
        assert q.window == 0.0
        buf = _buf()
        threading.Timer(0.005, b.send, (b"x",)).start()  # 5 ms into the wait
        assert q.recv_into(buf, True) == 1
        assert q.window == 0.3 and q.hits == 0  # slept, then on again
        threading.Timer(0.005, b.send, (b"y",)).start()
        assert q.recv_into(buf, True) == 1
        assert q.hits == 1  # caught by the window this time


async def test_poll_window_catches_data_without_sleeping(long_block: None) -> None:
    """Data sent while the window is open is taken by the poll (counted in ``hits``)."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=LONG)
        threading.Timer(0.01, b.send, (b"late",)).start()
        n, took = _timed(q)
        assert n == 4
        assert took < EARLY  # ended by the data, not the window
        assert q.hits == 1
        assert q.window == LONG  # a hit leaves the window as it is


async def test_no_poll_window_when_disabled() -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a)  # poll_s=0
        for may_block in (True, False, True):
            b.send(b"x")
            assert q.recv_into(_buf(), may_block) == 1
        assert q.window == 0.0 and q.hits == 0


async def test_poll_window_still_defers_to_another_connection(long_block: None) -> None:
    """Polling does not hide a parked connection's data: it ends the poll with -1."""
    a, b = _pair()
    c, d = _pair()
    with a, b, c, d:
        qa = await _ready(a, poll_s=LONG)
        qc = QuietWait(c)
        async with trio.open_nursery() as n:

            async def other() -> None:
                assert qc.recv_into(_buf(), False) == -1
                await trio.lowlevel.wait_readable(c)

            n.start_soon(other)
            await trio.testing.wait_all_tasks_blocked()
            threading.Timer(0.01, d.send, (b"y",)).start()
            n_, took = _timed(qa)
            assert n_ == -1
            assert took < EARLY  # ended by the other socket, not the window
            assert qa.hits == 0


async def test_poll_window_ends_at_a_deadline(long_block: None) -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=LONG)
        with trio.move_on_after(0.05):
            n, took = _timed(q)
            assert n == -1
            assert took < EARLY  # the deadline, not the window


async def test_poll_window_looks_with_recv_when_alone(
    long_block: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only its own socket to watch, the window spins on recv: data that arrives
    in it costs no poll at all (each poll(0) + recv was a syscall more per request)."""
    polls = [0]
    real_poll = select.poll

    class Counted:
        def __init__(self) -> None:
            self._p = real_poll()

        def register(self, fd: int, events: int) -> None:
            self._p.register(fd, events)

        def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
            polls[0] += 1
            return self._p.poll(timeout)

    monkeypatch.setattr(select, "poll", Counted)
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=LONG)
        b.send(b"x")
        assert q.recv_into(_buf(), True) == 1  # reads the statistics: builds the poll set
        threading.Timer(0.01, b.send, (b"late",)).start()
        before = polls[0]
        n, took = _timed(q)
        assert n == 4 and took < EARLY
        assert q.hits == 2
        assert polls[0] == before


# ------------------------------------------------------------ a CPU shared with the client


def _turn(q: QuietWait, b: socket.socket) -> int:
    """One request whose data is there when the wait starts."""
    b.send(b"x")
    return q.recv_into(_buf(), True)


def _until_on(q: QuietWait, b: socket.socket, first: int, last: int) -> list[int]:
    """Waits ``first``..``last`` with data there, up to the one after which the window is on."""
    for i in range(first, last + 1):
        assert _turn(q, b) == 1
        if q.window:
            return [i]
    return []


async def test_poll_window_turns_off_on_a_shared_cpu(long_block: None) -> None:
    """Two preempted turns in a row (the client ran on our CPU) turn the window off, and
    short sleeps do not turn it on again until enough measured turns were not preempted."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.3)
        assert _turn(q, b) == 1  # wait 1 starts a measured turn
        PREEMPTIONS[0] += 1  # ... which is preempted: our reply's send let the client run
        assert _turn(q, b) == 1  # wait 2 ends it: the next turn is measured too
        assert _turn(q, b) == 1
        assert q.window == 0.3
        PREEMPTIONS[0] += 1
        assert _turn(q, b) == 1  # wait 4 ends the second preempted turn: shared
        assert q.window == 0.0
        threading.Timer(0.005, b.send, (b"x",)).start()  # wait 5: a sleep well within the cap
        assert q.recv_into(_buf(), True) == 1
        assert q.window == 0.0  # (on a CPU of our own it turns the window on)
        # measured turns end at waits 36, 68, 100 (one in _CHECK_SHARED while
        # shared): the third without preemption ends it
        every, turns = _quietwait._CHECK_SHARED, _quietwait._SHARED_TURNS
        assert _until_on(q, b, 6, 4 + every * turns + 10) == [4 + every * turns]


async def test_one_preempted_turn_leaves_the_window_on(long_block: None) -> None:
    """Another process may take our CPU for a moment: one preempted turn is not enough."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.3)
        for i in range(1, 40):
            if i == 2:
                PREEMPTIONS[0] += 1  # in the turn that wait 1 starts and wait 2 ends
            assert _turn(q, b) == 1
            assert q.window == 0.3, i


async def test_a_preempted_turn_restarts_the_count(long_block: None) -> None:
    """While shared, one preempted turn needs ``_SHARED_TURNS`` clean ones again."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.3)
        for i in (1, 2, 3, 4):
            if i in (2, 4):
                PREEMPTIONS[0] += 1
            _turn(q, b)
        # shared since wait 4; measured turns end at 4 + every, 4 + 2 * every, ...
        assert q.window == 0.0
        every, turns = _quietwait._CHECK_SHARED, _quietwait._SHARED_TURNS
        first = 4 + every
        assert _until_on(q, b, 5, first - 1) == []
        PREEMPTIONS[0] += 1  # in the turn that wait ``first`` ends
        assert _until_on(q, b, first, first + every * turns + 10) == [first + every * turns]


async def test_no_turn_is_measured_without_a_poll_window(monkeypatch: pytest.MonkeyPatch) -> None:
    def never() -> int:
        raise AssertionError("getrusage without a poll window")

    a, b = _pair()
    with a, b:
        q = await _ready(a)
        monkeypatch.setattr(_quietwait, "_switches", never)
        for _ in range(3 * _quietwait._CHECK_EVERY):
            assert _turn(q, b) == 1


# ------------------------------------------------------------ polling must pay in CPU


def _costed_turns(q: QuietWait, b: socket.socket, n: int, on_ns: int, off_ns: int) -> list[bool]:
    """``n`` requests whose data is there when the wait starts, each costing the thread
    ``on_ns`` of CPU if the window was on for it, else ``off_ns``; whether it was on."""
    seen = []
    for _ in range(n):
        assert _turn(q, b) == 1
        on = bool(q.window)
        CPU[0] += on_ns if on else off_ns
        seen.append(on)
    return seen


def _trial_pattern() -> list[bool]:
    """The window in a CPU trial's blocks: on, off, on, off, ... (a measured turn apart)."""
    every, pairs = _quietwait._CHECK_EVERY, _quietwait._TRIAL_PAIRS
    return [k % 2 == 0 for k in range(2 * pairs) for _ in range(every)]


async def test_poll_window_that_costs_more_cpu_than_it_saves_turns_off(
    long_block: None, cpu_trials: None
) -> None:
    """A trial measures the thread's CPU per wait with the window on and off, block by
    block; polling that cost more than the sleeps it saved turns off and stays off for
    ``_HOLD_MIN`` measured turns, short sleeps notwithstanding."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.3)
        pattern = _trial_pattern()
        assert _costed_turns(q, b, len(pattern), 30, 10) == pattern
        assert _costed_turns(q, b, 1, 30, 10) == [False]  # the verdict: polling lost
        threading.Timer(0.005, b.send, (b"x",)).start()
        assert q.recv_into(_buf(), True) == 1
        assert q.window == 0.0  # (a sleep within the cap: no reason while held)
        held = _quietwait._HOLD_MIN * _quietwait._CHECK_SHARED  # (measured turns while held)
        assert not any(_costed_turns(q, b, held - 2, 30, 10))
        threading.Timer(0.005, b.send, (b"x",)).start()  # the hold's last turn is over
        assert q.recv_into(_buf(), True) == 1
        assert q.window == 0.3


async def test_poll_window_that_saves_cpu_stays_on(long_block: None, cpu_trials: None) -> None:
    """Polling that costs less CPU per wait than sleeping stays on after the trial, and
    the next trial is ``_TRIAL_EVERY`` measured turns away."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.3)
        pattern = _trial_pattern()
        assert _costed_turns(q, b, len(pattern) + 200, 10, 30) == pattern + [True] * 200
        assert q.hits == len(pattern) // 2 + 200


async def test_a_lost_trial_holds_the_window_off_longer_each_time(
    long_block: None, cpu_trials: None
) -> None:
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.3)
        pattern = _trial_pattern()
        every, first = _quietwait._CHECK_EVERY, _quietwait._HOLD_MIN
        for hold in (first, 2 * first):
            assert _costed_turns(q, b, len(pattern), 30, 10) == pattern
            assert not any(_costed_turns(q, b, hold * _quietwait._CHECK_SHARED, 30, 10))
            threading.Timer(0.005, b.send, (b"x",)).start()  # on again: the next trial
            assert q.recv_into(_buf(), True) == 1
            assert q.window == 0.3
            assert _costed_turns(q, b, every - 1, 30, 10) == [True] * (every - 1)


async def test_turns_are_measured_less_often_while_the_window_is_held_off(
    long_block: None, cpu_trials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held window is off like a shared CPU's: one turn in ``_CHECK_SHARED`` waits is
    measured (two ``getrusage`` calls), not one in ``_CHECK_EVERY``."""
    calls = [0]

    def counted() -> int:
        calls[0] += 1
        return PREEMPTIONS[0]

    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.3)
        pattern = _trial_pattern()
        assert _costed_turns(q, b, len(pattern), 30, 10) == pattern  # polling lost
        monkeypatch.setattr(_quietwait, "_switches", counted)
        every = _quietwait._CHECK_SHARED
        assert not any(_costed_turns(q, b, 4 * every, 30, 10))
        assert calls[0] == 2 * 4


async def test_a_trial_judges_polling_that_misses(cpu_trials: None) -> None:
    """Misses turn the window off within a trial's polling block (polling as it goes)
    but do not end the trial, and each polling block turns it on again: the trial
    reaches its verdict on polling that flaps on and off."""
    a, b = _pair()
    with a, b:
        q = await _ready(a, poll_s=0.001)
        every = _quietwait._CHECK_EVERY
        for i in range(len(_trial_pattern()) + 1):
            _miss(q, 0.003)  # the window spins in vain, then the wait sleeps to its limit
            CPU[0] += 30 if i % (2 * every) < every else 10  # (polling blocks cost more)
        assert q.hits == 0
        assert q.window == 0.0 and q._held == _quietwait._HOLD_MIN  # polling lost


def test_the_poll_window_is_off_unless_asked_for() -> None:
    """Every way to start a server polls for no request by default (session 13's p9bench: a
    50 us window cost 2-13 us more server CPU per QD1 request than none and bought no
    latency), and ``--poll-us`` still turns a window on."""
    from gofer9p import cli, daemon
    from gofer9p.server import ServerConfig

    assert ServerConfig().poll_us == 0
    assert cli.build_parser().parse_args(["serve", "/tmp", "--fd", "3"]).poll_us == 0
    assert daemon.build_parser().parse_args(["--bundle", "b", "--io-fds", "3"]).poll_us == 0
    on = daemon.build_parser().parse_args(["--bundle", "b", "--io-fds", "3", "--poll-us", "50"])
    assert on.poll_us == 50
