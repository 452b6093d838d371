"""What a QD1 round trip costs a server that does nothing, in each pinning: the floor.

A forked child answers each 19-byte message on a socketpair with the same bytes (a
blocking ``recv_into`` and a ``send``: one syscall each, as gofer9p's quiet wait does
alone on its socket); this process, pinned to CPU 0, sends one at a time.  The child's
CPU time per round trip comes from ``/proc/PID/schedstat`` (the scheduler's exact
runtime, not 100 Hz ticks), with its voluntary and involuntary context switches.

    python benchmarks/wakeup_floor.py [--server-cpu 0|1] [--n N] [--work K]

With the child on CPU 1 every ``recv`` sleeps and is woken from CPU 0 (an IPI), and
every ``send`` wakes the client's CPU; with both on CPU 0 the client preempts the
child at the ``send`` and the next message is usually there at the ``recv``.  The
difference is what any server, diod included, pays per request in the latency pinning
beyond its own work (issue #17; benchmarks/README.md, "#17, session 9").  ``--work K``
adds K dictionary look-ups of Python work per message and times them in the child
(wall clock, printed by the child): whether the same instructions run slower after a
sleep.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time


def _serve(s: socket.socket, cpu: int, work: int, count: int) -> None:
    """The child: echo each message, with ``work`` look-ups before the reply."""
    os.sched_setaffinity(0, {cpu})
    mv = memoryview(bytearray(8192))
    table = {i: str(i) for i in range(20000)}
    spent = 0.0
    done = 0
    while True:
        n = s.recv_into(mv)
        if not n:
            break
        t0 = time.perf_counter()
        x = 0
        for i in range(work):
            x += len(table[(i * 7919) % 20000])
        spent += time.perf_counter() - t0
        done += 1
        s.send(mv[:n])
        if done == count and work:
            print(f"  child: the look-ups took {1e6 * spent / done:.2f} us per message", file=sys.stderr)


def _usage(pid: int) -> tuple[int, int, int]:
    """The child's runtime (ns) and voluntary / involuntary context switches so far."""
    with open(f"/proc/{pid}/schedstat") as f:
        runtime = int(f.read().split()[0])
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    vol = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
    inv = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)
    assert vol and inv
    return runtime, int(vol[1]), int(inv[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-cpu", type=int, default=1, help="the child's CPU (this process is on 0)")
    ap.add_argument("--n", type=int, default=40000, help="round trips measured")
    ap.add_argument("--work", type=int, default=0, help="dictionary look-ups per message in the child")
    a = ap.parse_args()
    warm = 2000
    c, s = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        c.close()
        _serve(s, a.server_cpu, a.work, warm + a.n)
        os._exit(0)
    s.close()
    os.sched_setaffinity(0, {0})
    msg = b"x" * 19
    for _ in range(warm):
        c.send(msg)
        c.recv(64)
    r0, v0, i0 = _usage(pid)
    t0 = time.perf_counter()
    for _ in range(a.n):
        c.send(msg)
        c.recv(64)
    t1 = time.perf_counter()
    r1, v1, i1 = _usage(pid)
    c.close()
    os.waitpid(pid, 0)
    print(
        f"server CPU {a.server_cpu}, work {a.work}: round trip {1e6 * (t1 - t0) / a.n:6.1f} us, "
        f"server runtime {(r1 - r0) / 1e3 / a.n:6.2f} us, voluntary switches "
        f"{(v1 - v0) / a.n:.2f}, involuntary {(i1 - i0) / a.n:.2f} per round trip"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
