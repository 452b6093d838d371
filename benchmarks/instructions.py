"""User-space instructions per unit of 9P work, counted by valgrind (cachegrind): gofer9p builds and diod.

The VM this project runs on is shared and noisy: CPU times of back-to-back runs move 10-20%,
more than most changes to a request's path save.  An instruction count does not move with the
host's load, so a change of a few percent shows in one run.  What it leaves out: the kernel's
work (system calls, wake-ups: system time) and what a cache miss costs (a cold request runs
the same instructions more slowly), so it ranks changes to the server's own code, and p9bench
and the guest workload say what they bought.

Each server runs under ``valgrind --tool=cachegrind --cache-sim=no`` twice, serving N1 and
then N2 units over a socketpair; (count(N2) - count(N1)) / (N2 - N1) cancels start-up and
shutdown.  Units (the export: 500 files of 100 bytes on /var/tmp's file system):

* ``getattr``: Tgetattr of the attach fid;
* ``read4k``: Tread of 4 KiB at a random page of a 1 MiB file (opened once);
* ``lookup``: what a v9fs ``stat`` of a name costs (cache=none): Twalk to a new fid, Tgetattr,
  Tclunk (3 requests);
* ``create``: p9bench's create cycle, Twalk clone, Tlcreate, Twrite 4 KiB, Tremove (4 requests).

    python benchmarks/instructions.py [--units getattr,lookup] [--n1 200] [--n2 1200]
        [--tree NAME=PATH ...] [--diod]

``--tree NAME=PATH``: gofer9p from PATH (a checkout: the pure build; a ``pip install
--target`` directory of a wheel: the compiled build), with this interpreter.  gofer9p's
quiet wait reads trio's statistics every 10 ms of wall time and measures a turn every few
requests; under valgrind a request takes about 1 ms, so those parts weigh more here than at
full speed, and move a count by 2-8% between runs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _pinned import rpc, s9

UNITS = ("getattr", "read4k", "lookup", "create")
FILES = 500


def _rpc(c: socket.socket, t: int, body: bytes) -> bytes:
    return rpc(c, t, 1, body)


def _unit(c: socket.socket, unit: str) -> Callable[[int], None]:
    """Set the session up for ``unit`` (fids: 0 the root, 2 the scratch directory, 4 the
    big file opened for reading); the function that does the i-th unit."""
    _rpc(c, 110, struct.pack("<IIH", 0, 2, 1) + s9(b"scratch"))
    _rpc(c, 110, struct.pack("<IIH", 0, 4, 1) + s9(b"big"))
    _rpc(c, 12, struct.pack("<II", 4, 0))
    rnd = random.Random(17)
    if unit == "getattr":
        frame = struct.pack("<IQ", 0, 0x7FF)

        def getattr_(i: int) -> None:
            _rpc(c, 24, frame)

        return getattr_
    if unit == "read4k":
        reads = [struct.pack("<IQI", 4, rnd.randrange(256) * 4096, 4096) for _ in range(256)]

        def read4k(i: int) -> None:
            _rpc(c, 116, reads[i % 256])

        return read4k
    if unit == "lookup":
        walks = [struct.pack("<IIH", 0, 1, 1) + s9(b"f%04d" % k) for k in range(FILES)]
        stat = struct.pack("<IQ", 1, 0x7FF)
        clunk = struct.pack("<I", 1)

        def lookup(i: int) -> None:
            _rpc(c, 110, walks[i % FILES])
            _rpc(c, 24, stat)
            _rpc(c, 120, clunk)

        return lookup
    clone = struct.pack("<IIH", 2, 3, 0)
    data = struct.pack("<IQI", 3, 0, 4096) + bytes(4096)
    remove = struct.pack("<I", 3)

    def create(i: int) -> None:
        _rpc(c, 110, clone)
        _rpc(c, 14, struct.pack("<I", 3) + s9(b"c%06d" % i) + struct.pack("<III", 0o301, 0o644, 0))
        _rpc(c, 118, data)
        _rpc(c, 122, remove)

    return create


def count(
    argv: Callable[[int, str], list[str]], env: dict[str, str], unit: str, n: int, keep: Path | None = None,
) -> int:
    """Instructions (Ir) of one server run doing ``n`` units, start-up and shutdown included.
    With ``keep``: run under callgrind instead, instrumenting only the units
    (by function and caller; start-up and shutdown left out), and keep its output there, for
    ``callgrind_annotate``."""
    work = Path(tempfile.mkdtemp(prefix="gofer9p-instr-", dir="/var/tmp"))
    exp = work / "export"
    exp.mkdir()
    for k in range(FILES):
        (exp / f"f{k:04d}").write_bytes(b"x" * 100)
    (exp / "big").write_bytes(os.urandom(1 << 20))
    (exp / "scratch").mkdir()
    out = keep or work / "cg.out"
    c, s = socket.socketpair()
    try:
        vg = (["valgrind", "--tool=callgrind", "-q", "--instr-atstart=no", f"--callgrind-out-file={out}"] if keep else
              ["valgrind", "--tool=cachegrind", "--cache-sim=no", "-q", f"--cachegrind-out-file={out}"])
        p = subprocess.Popen(
            vg + argv(s.fileno(), str(exp)), pass_fds=[s.fileno()], env=env, cwd=work,
            stderr=subprocess.DEVNULL,
        )
        s.close()
        _rpc(c, 100, struct.pack("<I", 65536) + s9(b"9P2000.L"))
        _rpc(c, 104, struct.pack("<II", 0, 0xFFFFFFFF) + s9(b"root") + s9(str(exp).encode())
             + struct.pack("<I", 0))
        do = _unit(c, unit)
        if keep:  # the profile holds the units only: start-up and session set-up left out
            subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, capture_output=True)
        for i in range(n):
            do(i)
        if keep:
            subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], check=True, capture_output=True)
        c.close()
        p.wait(600)
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if m is None:
            raise RuntimeError(f"no cachegrind summary in {out}")
        return int(m[1])
    finally:
        c.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", default="getattr,read4k,lookup,create", help="comma-separated: " + ", ".join(UNITS))
    ap.add_argument("--n1", type=int, default=200)
    ap.add_argument("--n2", type=int, default=1200)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="a gofer9p checkout or install directory (repeatable; default: this checkout)")
    ap.add_argument("--diod", action="store_true", help="count diod too")
    ap.add_argument("--callgrind", metavar="DIR", type=Path,
                    help="also profile each server doing N2 units under callgrind, into DIR/NAME-UNIT.out "
                         "(read with callgrind_annotate --inclusive=yes)")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind not installed (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    servers: list[tuple[str, Callable[[int, str], list[str]], dict[str, str]]] = []
    for spec in a.tree or [f"gofer9p={Path(__file__).resolve().parent.parent}"]:
        name, _, path = spec.partition("=")
        env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()), PYTHONSAFEPATH="1")
        servers.append((name, lambda fd, exp: [sys.executable, "-m", "gofer9p", "serve", "--fd", str(fd), exp], env))
    if a.diod:
        servers.append(("diod", lambda fd, exp: ["diod", "-f", "-n", "-r", str(fd), "-w", str(fd), "-e", exp,
                                                 "-L", "stderr"], dict(os.environ)))
    units = a.units.split(",")
    print(f"user-space instructions per unit ((Ir at {a.n2} - Ir at {a.n1}) / {a.n2 - a.n1}; cachegrind)")
    print("| unit | " + " | ".join(n for n, _, _ in servers) + " |")
    print("|---|" + "---:|" * len(servers))
    for u in units:
        cells = []
        for name, argv, env in servers:
            lo, hi = count(argv, env, u, a.n1), count(argv, env, u, a.n2)
            if a.callgrind:
                a.callgrind.mkdir(parents=True, exist_ok=True)
                count(argv, env, u, a.n2, a.callgrind.resolve() / f"{name}-{u}.out")
            cells.append(f"{(hi - lo) / (a.n2 - a.n1):,.0f}")
        print(f"| {u} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
