"""Per-frame cost of the sans-IO connection core: pipelined frames through ``receive``.

No socket and no trio: a ConnectionCore over a Session of a tmpfs-or-tmp directory is
fed 2000 pipelined frames at once (the chunk a pipelining client fills), and the best of
``--rounds`` passes is divided by the frame count.  What it shows is the Python cost of
framing, the guards, the table entry and the reply queueing, with the session's syscalls.

    python benchmarks/core_frames.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from gofer9p.attach import AttachPoint, Session
from gofer9p.connection import DRAINED, ConnectionCore, Limits, Versioned
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode

N = 2000
MSIZE = 1 << 20


def _workloads() -> dict[str, bytes]:
    getattr_ = M.Tgetattr(tag=10, fid=1, request_mask=C.GETATTR_BASIC)
    clone = M.Twalk(tag=10, fid=1, newfid=2, wnames=[])
    read = M.Tread(tag=12, fid=3, offset=0, count=4096)
    return {
        "getattr": encode(getattr_) * N,
        "walkclunk": (encode(clone) + encode(M.Tclunk(tag=11, fid=2))) * (N // 2),
        "read4k": encode(read) * N,
    }


def _feed(core: ConnectionCore, data: bytes) -> None:
    """Every frame of ``data``, as the I/O layer would (taking the replies at each stop)."""
    mv = memoryview(bytearray(data))
    start = 0
    while True:
        act = core.receive(mv, start, len(data))
        start = core.start
        core.take()
        if isinstance(act, Versioned):
            core.version_done(act)
            core.take()
        elif act is DRAINED:
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        with open(os.path.join(tmp, "f"), "wb") as fh:
            fh.write(b"x" * 4096)
        point = AttachPoint.open(tmp)
        session = Session(point, max_fids=64, msize=MSIZE, fd_share=256)
        core = ConnectionCore(session, point, Limits(MSIZE, 256 * 1024, 2, 0), "bench")
        _feed(
            core,
            encode(M.Tversion(tag=C.NOTAG, msize=MSIZE, version=C.VERSION_9P2000L))
            + encode(M.Tattach(tag=1, fid=1, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0))
            + encode(M.Twalk(tag=2, fid=1, newfid=3, wnames=[b"f"]))
            + encode(M.Tlopen(tag=3, fid=3, flags=C.L_O_RDONLY)),
        )
        for name, data in _workloads().items():
            best = min(_timed(core, data) for _ in range(a.rounds))
            print(f"{name:10s} {best / N * 1e6:6.2f} us/frame")
        session.reset()
    finally:
        shutil.rmtree(tmp)
    return 0


def _timed(core: ConnectionCore, data: bytes) -> float:
    t = time.perf_counter()
    _feed(core, data)
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
