"""The scheduler-free wait (gofer9p/_quietwait.py): when it may and may not take the thread.

These tests fail if a trio upgrade silently turns the shortcut off (it would
still be correct, only slower), and if the shortcut ever runs while trio has
something else to run: a runnable task, a task later in the same run-loop
batch, a due deadline, another fd ready, or work in worker threads.
"""

from __future__ import annotations

import socket
import threading
import time

import trio
import trio.testing

from gofer9p import _quietwait
from gofer9p._quietwait import BLOCK_S, QuietWait


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


async def test_available_under_installed_trio() -> None:
    assert _quietwait.available()
    a, b = _pair()
    with a, b:
        assert QuietWait(a).active


def test_unavailable_outside_trio() -> None:
    assert not _quietwait.available()


async def test_receives_when_alone() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a)
        b.send(b"hello")
        buf = bytearray(16)
        assert q.recv_into(memoryview(buf), True) == 5
        assert bytes(buf[:5]) == b"hello"
        # poll path too (may_block=False)
        b.send(b"again")
        assert q.recv_into(memoryview(buf), False) == 5


async def test_blocking_wait_gives_up_after_block_s() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a)
        t = time.monotonic()
        assert q.recv_into(memoryview(bytearray(16)), True) == -1
        assert BLOCK_S * 0.5 <= time.monotonic() - t < 5.0  # a liveness bound (no hang), not a performance check


async def test_blocking_wait_sees_data_sent_later() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a)
        threading.Timer(0.005, b.send, (b"x",)).start()
        assert q.recv_into(memoryview(bytearray(16)), True) == 1


async def test_defers_to_a_runnable_task(nursery: trio.Nursery) -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a)
        nursery.start_soon(trio.sleep, 0)  # now in the run queue
        b.send(b"x")
        assert q.recv_into(memoryview(bytearray(16)), True) == -1


async def test_defers_to_a_due_deadline() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a)
        with trio.move_on_after(0.05):
            t = time.monotonic()
            assert q.recv_into(memoryview(bytearray(16)), False) == -1
            assert time.monotonic() - t < 5.0  # a liveness bound (no hang), not a performance check
        with trio.move_on_after(0):  # already due
            assert q.recv_into(memoryview(bytearray(16)), True) == -1


async def test_defers_to_another_fd(nursery: trio.Nursery) -> None:
    """Another task waiting on a ready fd wakes the poll: -1, not a hang."""
    a, b = _pair()
    c, d = _pair()
    with a, b, c, d:
        q = QuietWait(a)
        nursery.start_soon(trio.lowlevel.wait_readable, c)
        await trio.testing.wait_all_tasks_blocked()
        threading.Timer(0.01, d.send, (b"y",)).start()
        t = time.monotonic()
        assert q.recv_into(memoryview(bytearray(16)), True) == -1
        assert time.monotonic() - t < 5.0  # a liveness bound (no hang), not a performance check


async def test_defers_to_worker_threads() -> None:
    """While the caller has thread work (may_block=False) a thread finishing ends the wait."""
    a, b = _pair()
    with a, b:
        q = QuietWait(a)
        async with trio.open_nursery() as n:
            n.start_soon(trio.to_thread.run_sync, time.sleep, 0.01)
            await trio.sleep(0.001)  # the thread is running, its task waits for it
            t = time.monotonic()
            assert q.recv_into(memoryview(bytearray(16)), False) == -1
            assert time.monotonic() - t < 5.0  # a liveness bound (no hang), not a performance check


async def test_defers_to_the_rest_of_the_batch() -> None:
    """Two tasks woken in the same pass: the one that runs first must not take the thread."""
    results: dict[str, int] = {}
    order: list[str] = []
    go = trio.Event()
    socks = [_pair() for _ in range(2)]
    try:

        async def waiter(name: str, s: socket.socket) -> None:
            q = QuietWait(s)
            await go.wait()
            order.append(name)
            results[name] = q.recv_into(memoryview(bytearray(16)), True)

        for _, b in socks:
            b.send(b"z")
        async with trio.open_nursery() as n:
            n.start_soon(waiter, "one", socks[0][0])
            n.start_soon(waiter, "two", socks[1][0])
            await trio.testing.wait_all_tasks_blocked()
            go.set()  # both runnable: one batch
        assert results[order[0]] == -1  # the other one was still to run
        assert results[order[1]] == 1  # last in its batch, alone: the shortcut
    finally:
        for a, b in socks:
            a.close()
            b.close()


# ------------------------------------------------------------ the poll window


def _miss(q: QuietWait, may_block: bool, after: float) -> None:
    """A wait that nothing ends but a deadline ``after`` seconds away (longer than the cap)."""
    with trio.move_on_after(after):
        assert q.recv_into(memoryview(bytearray(16)), may_block) == -1


async def test_poll_window_starts_on_and_one_miss_ends_a_fresh_window() -> None:
    for may_block in (True, False):
        a, b = _pair()
        with a, b:
            q = QuietWait(a, poll_s=0.001)
            assert q.window == 0.001
            _miss(q, may_block, 0.05)  # the blocking path gives up after BLOCK_S
            assert q.window == 0.0, may_block
            assert q.hits == 0


async def test_poll_window_credit_from_hits_outlasts_misses() -> None:
    """Each caught wait earns a credit, each wait polled in vain costs two."""
    a, b = _pair()
    with a, b:
        q = QuietWait(a, poll_s=0.002)
        for _ in range(4):
            b.send(b"x")
            assert q.recv_into(memoryview(bytearray(16)), False) == 1
        assert q.hits == 4
        seen = []
        for _ in range(3):
            _miss(q, False, 0.005)
            seen.append(q.window)
        assert seen == [0.002, 0.002, 0.0], seen  # credit 2 + 4 = 6: off at the third


async def test_poll_window_probes_less_often_while_probes_catch_nothing() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a, poll_s=0.001)
        on = []
        for i in range(98):
            _miss(q, False, 0.003)  # each wait sleeps past the cap: no reason to poll
            if q.window:
                on.append(i)
        # off after the first wait; probes after 32 waits, then after 64 more
        assert on == [32, 97], on
        b.send(b"x")  # the probe catches data: polling stays on
        assert q.recv_into(memoryview(bytearray(16)), False) == 1
        assert q.hits == 1 and q.window == 0.001


async def test_poll_window_turns_on_after_a_sleep_within_the_cap() -> None:
    """A client that answered within the cap while we slept: poll for the next one."""
    for may_block in (True, False):
        a, b = _pair()
        with a, b:
            q = QuietWait(a, poll_s=0.05)
            _miss(q, may_block, 0.1)
            assert q.window == 0.0
            buf = memoryview(bytearray(16))
            threading.Timer(0.005, b.send, (b"x",)).start()  # 5 ms into the wait
            assert q.recv_into(buf, may_block) == 1
            assert q.window == 0.05 and q.hits == 0, may_block  # slept, then on again
            threading.Timer(0.005, b.send, (b"y",)).start()
            assert q.recv_into(buf, may_block) == 1
            assert q.hits == 1, may_block  # caught by the window this time


async def test_poll_window_catches_data_without_sleeping() -> None:
    """Data sent while the window is open is taken by the poll (counted in ``hits``)."""
    for may_block in (True, False):
        a, b = _pair()
        with a, b:
            q = QuietWait(a, poll_s=2.0)
            q.window = 2.0
            threading.Timer(0.01, b.send, (b"late",)).start()
            t = time.monotonic()
            assert q.recv_into(memoryview(bytearray(16)), may_block) == 4
            assert time.monotonic() - t < 1.9  # ended by the data, not the window
            assert q.hits == 1, may_block
            assert q.window == 2.0  # a hit leaves the window as it is


async def test_no_poll_window_when_disabled() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a)  # poll_s=0
        for may_block in (True, False, True):
            b.send(b"x")
            assert q.recv_into(memoryview(bytearray(16)), may_block) == 1
        assert q.window == 0.0 and q.hits == 0


async def test_poll_window_still_defers_to_another_fd(nursery: trio.Nursery) -> None:
    """Polling does not hide another task's ready fd: it ends the poll with -1."""
    a, b = _pair()
    c, d = _pair()
    with a, b, c, d:
        q = QuietWait(a, poll_s=2.0)
        q.window = 2.0
        nursery.start_soon(trio.lowlevel.wait_readable, c)
        await trio.testing.wait_all_tasks_blocked()
        threading.Timer(0.01, d.send, (b"y",)).start()
        t = time.monotonic()
        assert q.recv_into(memoryview(bytearray(16)), True) == -1
        assert time.monotonic() - t < 1.9  # ended by the other fd, not the window


async def test_poll_window_ends_at_a_deadline() -> None:
    a, b = _pair()
    with a, b:
        q = QuietWait(a, poll_s=2.0)
        q.window = 2.0
        with trio.move_on_after(0.05):
            t = time.monotonic()
            assert q.recv_into(memoryview(bytearray(16)), True) == -1
            assert time.monotonic() - t < 1.9  # the deadline, not the window
