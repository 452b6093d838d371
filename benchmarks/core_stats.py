"""What the statistics add to a QD1 request's path through the connection core (#16).

No socket and no trio: per iteration one clock read, ``ConnectionCore.receive`` of one
Tgetattr or 4 KiB Tread frame, ``take`` and, in a tree that has statistics,
``ConnStats.replied`` (a tree without them runs the same loop less that call).  Run each
tree with its PYTHONPATH:

    PYTHONPATH=TREE python benchmarks/core_stats.py getattr 100000 --time   # ns per request
    # instructions per request: Ir(60000) - Ir(20000), over 40000
    PYTHONPATH=TREE valgrind --tool=callgrind python benchmarks/core_stats.py getattr 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from gofer9p.attach import AttachPoint, Session
from gofer9p.connection import ConnectionCore, Limits, Versioned
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode


def _frame(msg: M.Message) -> tuple[memoryview, int]:
    f = bytearray(encode(msg))
    return memoryview(f), len(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=("getattr", "read4k"))
    ap.add_argument("n", type=int)
    ap.add_argument("--time", action="store_true", help="print ns per request (best of 5)")
    args = ap.parse_args()
    d = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        with open(os.path.join(d, "file"), "wb") as f:
            f.write(b"x" * (1 << 20))
        s = Session(AttachPoint.open(d), max_fids=100, msize=1 << 20)
        core = ConnectionCore(s, Limits(1 << 20, 256 * 1024, 2, 0), "bench")
        mv, ln = _frame(M.Tversion(tag=0xFFFF, msize=1 << 20, version=b"9P2000.L"))
        act = core.receive(mv, 0, ln)
        assert isinstance(act, Versioned)
        core.version_done(act)
        core.take()
        for m in (
            M.Tattach(tag=1, fid=0, afid=0xFFFFFFFF, uname=b"root", aname=b"", n_uname=0),
            M.Twalk(tag=1, fid=0, newfid=1, wnames=[b"file"]),
            M.Tlopen(tag=1, fid=1, flags=0),
        ):
            mv, ln = _frame(m)
            core.receive(mv, 0, ln)
            assert core.take()[0][4] != 7  # not an Rlerror
        if args.workload == "getattr":
            mv, ln = _frame(M.Tgetattr(tag=1, fid=0, request_mask=0x7FF))
        else:
            mv, ln = _frame(M.Tread(tag=1, fid=1, offset=4096, count=4096))
        stats: Any = getattr(core, "stats", None)
        replied: Callable[[list[Any], int], None] | None = stats.replied if stats else None
        clock = time.monotonic_ns
        receive, take = core.receive, core.take

        def loop(k: int) -> None:
            for _ in range(k):
                t0 = clock()
                receive(mv, 0, ln)
                out = take()
                if replied is not None:
                    replied(out, t0)

        if not args.time:
            loop(args.n)
            return
        best = []
        for _ in range(5):
            t = time.thread_time_ns()
            loop(args.n)
            best.append(time.thread_time_ns() - t)
        print(f"{min(best) / args.n:.0f} ns per request")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
