"""Session.write_regular in a loop: the Twrite fast path's cost per call, no server, no socket.

A file on /dev/shm opened for writing by a fid attached as ``--uid``; best of 7 rounds of
``-n`` pwrites of ``--size`` bytes at offset 0.  Uid 0 never arms the set-id check, another
uid arms it at open and the first write disarms it, so both should cost the same.

    python benchmarks/write_fastpath.py --uid 1234 --size 4096 -n 200000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from gofer9p.attach import AttachPoint
from gofer9p.attach.session import Session
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uid", type=int, default=1234)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("-n", type=int, default=200000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        path = os.path.join(d, "f")
        open(path, "wb").close()
        os.chown(path, 1234, 1234)
        point = AttachPoint.open(d)
        s = Session(point)
        s.attach(M.Tattach(tag=0, fid=1, afid=C.NOFID, uname=b"u", aname=b"", n_uname=a.uid))
        s.walk(M.Twalk(tag=0, fid=1, newfid=2, wnames=[b"f"]))
        s.lopen(M.Tlopen(tag=0, fid=2, flags=C.L_O_WRONLY))
        data = memoryview(b"x" * a.size)
        best = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(a.n):
                s.write_regular(2, 0, data)
            best = min(best, (time.perf_counter() - t) / a.n)
        print(f"uid={a.uid} size={a.size}: best of 7 x {a.n}: {best * 1e9:.0f} ns/write")
        s.reset()
        point.close()
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
