"""How long a small request waits behind a large read on the same connection.

The performance target: "a 4 MiB Tread in flight does not delay a Tgetattr by
more than one syscall".  The client sends a max-msize Tread and a Tgetattr in
one write and times the Rgetattr (and, for reference, the Rread, and a lone
Tgetattr).  Client pinned to CPU 0, server to CPU 1, tmpfs export.

    python benchmarks/overtake.py [--rounds N] [--server-cmd 'gofer9p serve --fd {fd} {export}']
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import struct
import time

from _pinned import GOFER, s9, spawn_pinned, tmpfs_export

MSIZE = 4 << 20


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--server-cmd", default=f"{GOFER} serve --fd {{fd}} {{export}}")
    a = ap.parse_args()
    with tmpfs_export() as exp:
        return _run(a, exp)


def _run(a: argparse.Namespace, exp: str) -> int:
    with open(os.path.join(exp, "big"), "wb") as fh:
        fh.write(os.urandom(MSIZE))
    c, p = spawn_pinned(lambda fd: shlex.split(a.server_cmd.format(fd=fd, export=exp)))
    buf = bytearray()

    def frame() -> tuple[int, int, float]:
        """The next reply: (type, tag, arrival time of its last byte)."""
        nonlocal buf
        while True:
            if len(buf) >= 7:
                size, t, tag = struct.unpack_from("<IBH", buf)
                if len(buf) >= size:
                    del buf[:size]
                    return t, tag, time.perf_counter()
            chunk = c.recv(1 << 20)
            if not chunk:
                raise EOFError
            buf += chunk

    def rpc(t: int, tag: int, body: bytes) -> None:
        c.sendall(struct.pack("<IBH", 7 + len(body), t, tag) + body)
        rt, _, _ = frame()
        if rt == 7:
            raise OSError("Rlerror")

    rpc(100, 0xFFFF, struct.pack("<I", MSIZE) + s9(b"9P2000.L"))
    rpc(104, 1, struct.pack("<II", 0, 0xFFFFFFFF) + s9(b"root") + s9(exp.encode()) + bytes(4))
    rpc(110, 1, struct.pack("<IIH", 0, 1, 1) + s9(b"big"))
    rpc(12, 1, struct.pack("<II", 1, 0))
    count = MSIZE - 24
    tread = struct.pack("<IBHIQI", 23, 116, 10, 1, 0, count)
    tgetattr = struct.pack("<IBHIQ", 19, 24, 11, 0, 0x7FF)
    behind, rread, alone = [], [], []
    first_getattr = 0
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        c.sendall(tgetattr)
        frame()
        alone.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        c.sendall(tread + tgetattr)
        got = {}
        order = []
        while len(got) < 2:
            _, tag, t = frame()
            got[tag] = t - t0
            order.append(tag)
        behind.append(got[11])
        rread.append(got[10])
        first_getattr += order[0] == 11
    c.close()
    p.wait(10)

    def med(xs: list[float]) -> str:
        return f"{1e6 * statistics.median(xs):8.1f} us"

    print(f"server: {a.server_cmd}")
    print(f"lone Tgetattr                       {med(alone)}")
    print(
        f"Tgetattr behind a 4 MiB Tread       {med(behind)}  (answered first in {first_getattr}/{a.rounds})"
    )
    print(f"the 4 MiB Rread itself              {med(rread)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
