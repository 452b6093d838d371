"""One request at a time (QD1): latency and the server's user/system CPU per request.

p9bench reports the server's CPU per unit of work as one number; this splits it
into user and system time (from /proc/PID/stat), which is what tells Python
overhead from kernel work (syscalls, wake-ups).  Client pinned to CPU 0, server
to CPU 1 (``--server-cpu 0``: both on CPU 0), tmpfs export; run the servers alternately
several times, the VM is noisy.  ``QD1_WRAP`` in the environment (e.g. a script running
``perf stat -e task-clock,syscalls:sys_enter_recvfrom -o FILE "$@"``) prefixes gofer9p's
command: exact CPU time and syscall counts instead of /proc's 100 Hz ticks.

    python benchmarks/qd1.py gofer9p|diod [--op getattr|read4k|create] [--ops N]
        [--poll-us US] [--think-us US] [--server-cpu 0|1]

``create`` is p9bench's create cycle (Twalk clone, Tlcreate, Twrite 4 KiB,
Tremove); its figures are per file (4 requests).  ``--think-us`` makes the
client pause before each request (then the first column is the period, not the
latency): with ``--poll-us`` it shows what the server's poll window costs in
CPU when the client is slower than the window.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import struct
import tempfile
import time
from typing import IO

from _pinned import GOFER, proc_cpu, s9, spawn_pinned, tmpfs_export
from _pinned import rpc as _rpc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", choices=["gofer9p", "diod"])
    ap.add_argument("--op", choices=["getattr", "read4k", "create"], default="getattr")
    ap.add_argument("--ops", type=int, default=20000, help="requests measured")
    ap.add_argument(
        "--poll-us", type=int, default=None, help="gofer9p's --poll-us (default: its default)"
    )
    ap.add_argument(
        "--think-us",
        type=float,
        default=0.0,
        help="client pause between requests (busy-waited, microseconds): "
        "what the poll window costs when the client is slower",
    )
    ap.add_argument(
        "--server-cpu",
        type=int,
        default=1,
        help="the server's CPU (the client is on 0; 0 pins both together, as p9bench's "
        "--server-cpus 0: what a QD1 request costs when every wait sleeps)",
    )
    a = ap.parse_args()
    with tmpfs_export() as exp:
        return _run(a, exp)


def _run(a: argparse.Namespace, exp: str) -> int:
    with open(os.path.join(exp, "f"), "wb") as fh:
        fh.write(os.urandom(1 << 20))
    os.mkdir(os.path.join(exp, "scratch"))

    def argv(fd: int) -> list[str]:
        if a.server == "diod":
            return ["diod", "-f", "-n", "-r", str(fd), "-w", str(fd), "-e", exp, "-L", "stderr"]
        poll = [] if a.poll_us is None else ["--poll-us", str(a.poll_us)]
        return [*os.environ.get("QD1_WRAP", "").split(), GOFER, "serve", "--fd", str(fd), exp, *poll]

    log = tempfile.TemporaryFile()
    c, p = spawn_pinned(argv, stderr=log, server_cpu=a.server_cpu)

    def rpc(t: int, tag: int, body: bytes) -> bytes:
        return _rpc(c, t, tag, body)

    rpc(100, 0xFFFF, struct.pack("<I", 65536) + s9(b"9P2000.L"))
    rpc(104, 1, struct.pack("<II", 0, 0xFFFFFFFF) + s9(b"root") + s9(exp.encode()) + struct.pack("<I", 0))
    rpc(110, 1, struct.pack("<IIH", 0, 1, 1) + s9(b"f"))
    rpc(12, 1, struct.pack("<II", 1, 0))  # Tlopen f read-only
    rpc(110, 1, struct.pack("<IIH", 0, 2, 1) + s9(b"scratch"))
    per = 1
    if a.op == "getattr":
        frames = [struct.pack("<IBHIQ", 19, 24, 1, 0, 0x7FF)]
    elif a.op == "read4k":
        frames = [struct.pack("<IBHIQI", 23, 116, 1, 1, random.randrange(256) * 4096, 4096) for _ in range(256)]
    else:
        per = 4
        frames = []
        for i in range(256):
            nm = s9(b"c%05d" % i)
            frames += [
                struct.pack("<IBHIIH", 17, 110, 1, 2, 3, 0),
                struct.pack("<IBHI", 7 + 4 + len(nm) + 12, 14, 1, 3) + nm + struct.pack("<III", 0o301, 0o644, 0),
                struct.pack("<IBHIQI", 23 + 4096, 118, 1, 3, 0, 4096) + bytes(4096),
                struct.pack("<IBHI", 11, 122, 1, 3),
            ]

    def cpu() -> tuple[int, int]:
        user, system, _ = proc_cpu(p.pid)
        return user, system

    think = a.think_us / 1e6
    clock = time.perf_counter

    def loop(n: int) -> None:
        for i in range(n):
            if think:
                end = clock() + think
                while clock() < end:
                    pass
            c.sendall(frames[i % len(frames)])
            size = struct.unpack("<I", c.recv(4, socket.MSG_WAITALL))[0]
            c.recv(size - 4, socket.MSG_WAITALL)

    loop(2048)  # warm-up (a whole number of create cycles)
    n = a.ops - a.ops % len(frames) if a.ops >= len(frames) else a.ops
    u0, s0 = cpu()
    t0 = time.perf_counter()
    loop(n)
    t1 = time.perf_counter()
    u1, s1 = cpu()
    c.close()
    p.wait(10)
    tck = os.sysconf("SC_CLK_TCK")
    units = n / per
    unit = "file" if per > 1 else "op"
    print(
        f"{a.server:8s} {a.op}: {'latency' if not think else 'period'} "
        f"{1e6 * (t1 - t0) / units:7.1f} us/{unit}   server CPU "
        f"user {1e6 * (u1 - u0) / tck / units:6.1f}  sys {1e6 * (s1 - s0) / tck / units:6.1f} us/{unit}"
        + _polled(log)
    )
    return 0


def _polled(log: IO[bytes]) -> str:
    """gofer9p's connection-end counters: how many requests the poll window caught."""
    log.seek(0)
    m = re.search(rb"frames=(\d+) polled=(\d+)", log.read())
    return f"   polled {int(m[2])}/{int(m[1])} requests" if m else ""


if __name__ == "__main__":
    raise SystemExit(main())
