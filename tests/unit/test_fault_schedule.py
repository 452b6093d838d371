"""The fault schedule (gofer9p.testing.faults) is a function of the request, not of time:
a socket call that finds the socket not ready (a real EAGAIN, whose number depends on when
the client's bytes arrive) does not use up a slot of the schedule."""

from __future__ import annotations

import socket

import pytest

from gofer9p.testing import faults


def _first_injected_recv(schedule: faults.Schedule) -> int:
    """The index of the first recv_into call the schedule fails for request key 1."""
    faults._REQUEST.set(faults._Request(1))
    for n in range(10_000):
        if schedule.errno_for("recv_into", faults.SOCKET_CALLS["recv_into"],
                              faults.SOCKET_SCALE):
            return n
    raise AssertionError("no call failed")


def test_a_socket_not_ready_does_not_use_a_slot() -> None:
    schedule = faults.Schedule(seed=1, rate=0.5)
    k = _first_injected_recv(schedule)
    assert k >= 2  # (the seed is chosen so that calls run before the one that fails)
    a, b = socket.socketpair()
    sock = faults.faulty_socket(schedule, a)
    try:
        sock.setblocking(False)
        req = faults._Request(1)
        faults._REQUEST.set(req)
        buf = bytearray(16)
        # the k calls before the failing one run; between them, any number of real EAGAINs
        for _ in range(k):
            for _ in range(3):
                with pytest.raises(BlockingIOError):
                    sock.recv_into(buf)
            b.send(b"x")
            assert sock.recv_into(buf) == 1
        assert req.counts["recv_into"] == k
        b.send(b"x")
        with pytest.raises(OSError) as info:
            sock.recv_into(buf)
        assert "injected" in str(info.value)
    finally:
        faults._REQUEST.set(None)
        sock.close()
        b.close()
