"""Startup of a serving gofer vs. the bare cost of ``python -c "import trio"``.

Interleaves N spawns of each, same interpreter (the venv's own, not a pyenv shim or the base
interpreter behind the venv's link):

* gofer9p: spawn ``<bin>/gofer9p serve --fd 3 DIR`` with one end of a socketpair
  on fd 3, send Tversion at once, time until the Rversion arrives (what
  p9bench's startup_ms measures);
* trio: spawn ``python -c "import trio"`` and time until it exits.

    python benchmarks/startup.py [-n 20] [--cpu 1]

Prints medians/min and the ratio gofer9p/trio (target <= 1.3).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from _pinned import GOFER


def tversion(msize: int = 65536) -> bytes:
    v = b"9P2000.L"
    body = struct.pack("<BHIH", 100, 0xFFFF, msize, len(v)) + v
    return struct.pack("<I", 4 + len(body)) + body


def gofer_once(exe: str, export: str, pre: list[str]) -> float:
    a, b = socket.socketpair()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [*pre, exe, "serve", "--fd", str(b.fileno()), "--log-level", "warning", export],
        pass_fds=(b.fileno(),),
    )
    b.close()
    a.sendall(tversion())
    got = a.recv(4096)
    dt = time.perf_counter() - t0
    assert got[4] == 101, got
    a.close()
    p.wait()
    return dt


def trio_once(py: str, pre: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*pre, py, "-c", "import trio"], check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--cpu", help="pin both to this CPU list (taskset -c)")
    args = ap.parse_args()
    # The venv's own python and gofer9p: realpath(sys.executable) is the base interpreter,
    # outside the venv, which has neither trio nor gofer9p.
    py = sys.executable
    exe = GOFER
    pre = ["taskset", "-c", args.cpu] if args.cpu else []
    g: list[float] = []
    t: list[float] = []
    with tempfile.TemporaryDirectory() as export:
        gofer_once(exe, export, pre)
        trio_once(py, pre)
        for _ in range(args.n):
            g.append(gofer_once(exe, export, pre))
            t.append(trio_once(py, pre))
    gm, tm = statistics.median(g) * 1e3, statistics.median(t) * 1e3
    print(f"gofer9p spawn->Rversion: median {gm:.1f} ms  min {min(g) * 1e3:.1f} ms  (n={args.n})")
    print(f"python -c 'import trio': median {tm:.1f} ms  min {min(t) * 1e3:.1f} ms")
    print(f"ratio (median) {gm / tm:.2f}x   ratio (min) {min(g) / min(t):.2f}x   target <= 1.30x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
