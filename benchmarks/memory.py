"""VmHWM/VmRSS of a serving gofer at max msize over a long run.

Spawns ``gofer9p serve --fd N`` on a tmpfs export, negotiates msize 4 MiB and
for ``--seconds`` alternates pipelined (QD ``--qd``) max-size Twrite and Tread
passes over a 64 MiB file, a readdir of a 1000-entry directory and a burst of
Tgetattr, sampling /proc/PID/status every ``--every`` seconds.

    python benchmarks/memory.py [--seconds 60] [--qd 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HDR = struct.Struct("<IBH")


def msg(t: int, tag: int, body: bytes = b"") -> bytes:
    return HDR.pack(7 + len(body), t, tag) + body


def s16(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def replies(self, n: int) -> list[tuple[int, bytes]]:
        out = []
        while len(out) < n:
            while len(self.buf) >= 4 and len(self.buf) >= HDR.unpack_from(self.buf)[0]:
                size, t, _ = HDR.unpack_from(self.buf)
                out.append((t, bytes(self.buf[7:min(size, 64)])))
                del self.buf[:size]
                if len(out) == n:
                    return out
            d = self.sock.recv(8 << 20)
            if not d:
                raise EOFError
            self.buf += d
        return out

    def rpc(self, frames: list[bytes]) -> list[tuple[int, bytes]]:
        self.sock.sendall(b"".join(frames))
        rs = self.replies(len(frames))
        for (t, body), f in zip(rs, frames, strict=True):
            if t != f[4] + 1:
                raise RuntimeError(f"reply {t} to {f[4]}: {body!r}")
        return rs


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--qd", type=int, default=8)
    ap.add_argument("--every", type=float, default=5)
    args = ap.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "gofer9p")
    msize = 4 << 20
    count = msize - 24
    with tempfile.TemporaryDirectory(dir="/dev/shm") as export:
        with open(os.path.join(export, "big"), "wb") as f:
            f.write(os.urandom(64 << 20))
        os.mkdir(os.path.join(export, "dir"))
        for i in range(1000):
            open(os.path.join(export, "dir", f"e{i:04d}"), "w").close()
        a, b = socket.socketpair()
        p = subprocess.Popen([exe, "serve", "--fd", str(b.fileno()), "--log-level", "warning", export],
                             pass_fds=(b.fileno(),))
        b.close()
        c = Conn(a)
        c.rpc([msg(100, 0xFFFF, struct.pack("<I", msize) + s16(b"9P2000.L"))])
        c.rpc([msg(104, 1, struct.pack("<II", 0, 0xFFFFFFFF) + s16(b"root") + s16(b"") + struct.pack("<I", 0))])
        c.rpc([msg(110, 1, struct.pack("<IIH", 0, 1, 1) + s16(b"big")), msg(12, 2, struct.pack("<II", 1, 2))])
        c.rpc([msg(110, 1, struct.pack("<IIH", 0, 2, 0))])
        c.rpc([msg(14, 1, struct.pack("<I", 2) + s16(b"w") + struct.pack("<III", 2, 0o644, 0))])
        payload = os.urandom(count)
        wframes = [msg(118, i, struct.pack("<IQI", 2, i * count, count) + payload) for i in range(args.qd)]
        rframes = [msg(116, i, struct.pack("<IQI", 1, (i * count) % (60 << 20), count)) for i in range(args.qd)]
        gframes = [msg(24, i, struct.pack("<IQ", 0, 0x7FF)) for i in range(256)]
        ddir = [msg(110, 1, struct.pack("<IIH", 0, 3, 1) + s16(b"dir")), msg(12, 2, struct.pack("<II", 3, 0))]
        rdir = [msg(40, 3, struct.pack("<IQI", 3, 0, msize - 24)), msg(120, 4, struct.pack("<I", 3))]
        samples = []
        t0 = time.monotonic()
        nxt = t0
        moved = 0
        while time.monotonic() - t0 < args.seconds:
            if time.monotonic() >= nxt:
                st = status(p.pid)
                samples.append((round(time.monotonic() - t0), st))
                nxt += args.every
            c.rpc(wframes)
            c.rpc(rframes)
            c.rpc(gframes)
            c.rpc(ddir)
            c.rpc(rdir)
            moved += 2 * args.qd * count
        st = status(p.pid)
        samples.append((round(time.monotonic() - t0), st))
        a.close()
        p.wait()
    dt = time.monotonic() - t0
    for t, st in samples:
        print(f"t={t:3d}s VmHWM {st['VmHWM'] / 1024:.1f} MiB  VmRSS {st['VmRSS'] / 1024:.1f} MiB  threads {st['Threads']}")
    print(f"{moved / dt / (1 << 20):.0f} MiB/s moved; VmHWM first sample {samples[0][1]['VmHWM'] / 1024:.1f} MiB, "
          f"last {samples[-1][1]['VmHWM'] / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
