"""Profile the server's hot paths in-process: cProfile around one connection.

A stdlib client thread pipelines raw frames (QD N) over a socketpair while the
server runs in trio in the main thread under cProfile, so the profile shows
only server-side Python.  Workloads: getattr, walkclunk, read4k, readdir,
seqread, seqwrite, create (p9bench's create cycle: Twalk clone, Tlcreate,
Twrite 4 KiB, Tremove; ops count requests).

    python benchmarks/profile_server.py getattr --seconds 3 [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import socket
import struct
import tempfile
import threading
import time

import trio

from gofer9p.attach import AttachPoint
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode
from gofer9p.server import ServerConfig, serve


def _recv_frames(sock: socket.socket, n: int, buf: bytearray) -> None:
    got = 0
    while got < n:
        while len(buf) >= 4:
            size = struct.unpack_from("<I", buf)[0]
            if len(buf) < size:
                break
            if buf[4] == C.MsgType.RLERROR:
                raise RuntimeError(f"Rlerror {struct.unpack_from('<I', buf, 7)[0]}")
            del buf[:size]
            got += 1
            if got == n:
                return
        data = sock.recv(1 << 22)
        if not data:
            raise EOFError
        buf += data


def client(sock: socket.socket, workload: str, seconds: float, qd: int, msize: int) -> int:
    buf = bytearray()

    def rpc(*msgs: M.Message) -> None:
        sock.sendall(b"".join(encode(m) for m in msgs))
        _recv_frames(sock, len(msgs), buf)

    rpc(M.Tversion(tag=C.NOTAG, msize=msize, version=b"9P2000.L"))
    rpc(M.Tattach(tag=1, fid=0, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0))
    if workload in ("read4k", "seqread"):
        rpc(M.Twalk(tag=1, fid=0, newfid=1, wnames=[b"file"]), M.Tlopen(tag=2, fid=1, flags=0))
    if workload == "seqwrite":
        rpc(M.Twalk(tag=1, fid=0, newfid=1, wnames=[]))
        rpc(M.Tlcreate(tag=1, fid=1, name=b"w", flags=C.L_O_RDWR, mode=0o644, gid=0))
    count = msize - 24
    payload = b"x" * count
    ops = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if workload == "getattr":
            batch = [M.Tgetattr(tag=i, fid=0, request_mask=C.GETATTR_BASIC) for i in range(qd)]
        elif workload == "walkclunk":
            batch = []
            for i in range(qd):
                batch.append(M.Twalk(tag=2 * i, fid=0, newfid=100 + i, wnames=[b"file"]))
                batch.append(M.Tclunk(tag=2 * i + 1, fid=100 + i))
        elif workload == "read4k":
            batch = [
                M.Tread(tag=i, fid=1, offset=(i * 4096) % (64 << 20), count=4096) for i in range(qd)
            ]
        elif workload == "seqread":
            batch = [
                M.Tread(tag=i, fid=1, offset=(i * count) % (64 << 20), count=count)
                for i in range(qd)
            ]
        elif workload == "seqwrite":
            batch = [M.Twrite(tag=i, fid=1, offset=i * count, data=payload) for i in range(qd)]
        elif workload == "create":
            batch = []
            for i in range(qd):
                fid, name = 100 + i, b"c%05d" % i
                batch += [
                    M.Twalk(tag=4 * i, fid=0, newfid=fid, wnames=[]),
                    M.Tlcreate(tag=4 * i + 1, fid=fid, name=name, flags=0o301, mode=0o644, gid=0),
                    M.Twrite(tag=4 * i + 2, fid=fid, offset=0, data=payload[:4096]),
                    M.Tremove(tag=4 * i + 3, fid=fid),
                ]
        elif workload == "readdir":
            batch = [
                M.Twalk(tag=1, fid=0, newfid=2, wnames=[b"dir"]),
                M.Tlopen(tag=2, fid=2, flags=0),
            ]
            rpc(*batch)
            off = 0
            while True:
                sock.sendall(encode(M.Treaddir(tag=3, fid=2, offset=off, count=msize - 24)))
                while True:
                    data = sock.recv(1 << 22)
                    buf += data
                    if len(buf) >= 4 and len(buf) >= struct.unpack_from("<I", buf)[0]:
                        break
                size = struct.unpack_from("<I", buf)[0]
                frame = bytes(buf[:size])
                del buf[:size]
                if size == 11:
                    break
                from gofer9p.protocol.codec import decode_dirents

                off = decode_dirents(frame[11:])[-1].offset
            rpc(M.Tclunk(tag=4, fid=2))
            ops += 1
            continue
        else:
            raise SystemExit(f"unknown workload {workload}")
        rpc(*batch)
        ops += len(batch)
    sock.close()
    return ops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--msize", type=int, default=65536)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    export = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    with open(os.path.join(export, "file"), "wb") as f:
        f.write(os.urandom(64 << 20))
    os.mkdir(os.path.join(export, "dir"))
    for i in range(1000):
        open(os.path.join(export, "dir", f"entry-{i:04d}"), "w").close()
    a, b = socket.socketpair()
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(client(b, args.workload, args.seconds, args.qd, args.msize))
    )
    point = AttachPoint.open(export)
    prof = cProfile.Profile()
    t.start()
    t0 = time.perf_counter()
    if not args.no_profile:
        prof.enable()
    try:
        trio.run(serve, a, point, ServerConfig())
    finally:
        prof.disable()
        dt = time.perf_counter() - t0
        t.join()
        shutil.rmtree(export, ignore_errors=True)  # 64 MiB on tmpfs
    print(f"{args.workload}: {result[0]} ops in {dt:.2f}s = {result[0] / dt:,.0f} ops/s")
    if not args.no_profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
