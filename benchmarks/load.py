#!/usr/bin/env python3
"""Sustained load on ONE gofer: many connections, deep pipelines, mixed operations.

    python benchmarks/load.py [--connections 64] [--qd 64] [--duration 60] [--procs 1]

Starts one ``gofer9p serve DIR --listen unix:PATH`` subprocess on a fresh export and drives it
with ``--connections`` connections, each keeping ``--qd`` requests in flight for ``--duration``
seconds.  The mix per request slot (weights in ``MIX``): Tgetattr of the root, Twalk of a file
pipelined with the Tclunk of the new fid, a 4 KiB Tread, a 4 KiB Twrite (each connection has its
own 1 MiB file), and a Treaddir of a 64-entry directory.

Why raw pipelined frames and not ``gofer9p.client``: the point is to load the server, and a
Python client spends far more per request than the server does.  Each client process runs a
``selectors`` loop over its share of the connections; frames are pre-encoded with the project's
codec, replies are checked by type and tag only.

What it reports (and the exit status checks): total operations, ops/s (overall and per 5 s
window), errors (Rlerror or unexpected replies: must be 0), the server's VmRSS at start, middle
and end of the run (should be flat), and its fd count before the connections and after they are
closed (must be equal: every fid and socket released).  ``--json FILE`` writes the numbers.
Stdlib + ``gofer9p.protocol`` only; unix sockets only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gofer9p.protocol import constants as C  # noqa: E402
from gofer9p.protocol import messages as M  # noqa: E402
from gofer9p.protocol.codec import encode  # noqa: E402

HDR = struct.Struct("<IBH")
IO_SIZE = 4096
FILE_SIZE = 1 << 20
DIR_ENTRIES = 64

# op name -> weight
MIX: dict[str, int] = {"getattr": 30, "walkclunk": 20, "read": 20, "write": 20, "readdir": 10}

ROOT_FID, FILE_FID, DIR_FID, WALK_FID_BASE = 1, 2, 3, 1000


# --------------------------------------------------------------------------- server side


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def make_export(root: Path, connections: int) -> None:
    """One 1 MiB file per connection (so writes do not contend) and a directory to list."""
    block = os.urandom(FILE_SIZE)
    for i in range(connections):
        (root / f"f{i}").write_bytes(block)
    d = root / "d"
    d.mkdir()
    for i in range(DIR_ENTRIES):
        (d / f"entry-{i:03d}").write_bytes(b"")


def start_server(export: Path, sock_path: str, msize: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(export), "--listen", f"unix:{sock_path}",
         "--msize", str(msize), "--log-level", "warning"],
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load: server exited with {proc.returncode} at start")
        if os.path.exists(sock_path):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock_path)
                s.close()
                return proc
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("load: server did not start listening within 20 s")


# --------------------------------------------------------------------------- client side


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(1 << 20):
        if len(buf) >= n:
            break
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed during setup")
        buf += chunk
    return buf


def _rpc(sock: socket.socket, msg: M.Message) -> bytes:
    """Blocking request/reply for connection setup; raises on Rlerror."""
    sock.sendall(encode(msg))
    size, mtype, _ = HDR.unpack(_recv_exact(sock, 7))
    body = _recv_exact(sock, size - 7)
    if mtype == C.MsgType.RLERROR:
        raise OSError(struct.unpack("<I", body[:4])[0], f"setup {type(msg).__name__}")
    return body


class LoadConn:
    """One connection: ``qd`` slots, each always has one operation in flight.

    Slot ``s`` uses tag ``s`` (and ``s + qd`` for the Tclunk that follows its Twalk) and, for
    walk+clunk, the fid ``WALK_FID_BASE + s``, so nothing is allocated per request.
    """

    def __init__(self, path: str, index: int, qd: int, msize: int, seed: int) -> None:
        self.index = index
        self.qd = qd
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        _rpc(self.sock, M.Tversion(tag=C.NOTAG, msize=msize, version=C.VERSION_9P2000L))
        _rpc(self.sock, M.Tattach(tag=0, fid=ROOT_FID, afid=C.NOFID, uname=b"root", aname=b"",
                                  n_uname=0))
        _rpc(self.sock, M.Twalk(tag=0, fid=ROOT_FID, newfid=FILE_FID,
                                wnames=[f"f{index}".encode()]))
        _rpc(self.sock, M.Tlopen(tag=0, fid=FILE_FID, flags=C.L_O_RDWR))
        _rpc(self.sock, M.Twalk(tag=0, fid=ROOT_FID, newfid=DIR_FID, wnames=[b"d"]))
        _rpc(self.sock, M.Tlopen(tag=0, fid=DIR_FID, flags=C.L_O_RDONLY | C.L_O_DIRECTORY))
        self.sock.setblocking(False)
        self.rng = random.Random(seed)
        self.ops = list(MIX)
        self.weights = [MIX[o] for o in self.ops]
        payload = os.urandom(IO_SIZE)
        blocks = FILE_SIZE // IO_SIZE
        # pre-encoded frames per slot; read/write use a per-slot block of the file
        self.frames: dict[str, list[bytes]] = {op: [] for op in self.ops}
        self.clunks: list[bytes] = []
        for s in range(qd):
            off = (s % blocks) * IO_SIZE
            self.frames["getattr"].append(
                encode(M.Tgetattr(tag=s, fid=ROOT_FID, request_mask=C.GETATTR_BASIC)))
            self.frames["walkclunk"].append(
                encode(M.Twalk(tag=s, fid=ROOT_FID, newfid=WALK_FID_BASE + s,
                               wnames=[f"f{index}".encode()])))
            self.clunks.append(encode(M.Tclunk(tag=s + qd, fid=WALK_FID_BASE + s)))
            self.frames["read"].append(encode(M.Tread(tag=s, fid=FILE_FID, offset=off,
                                                      count=IO_SIZE)))
            self.frames["write"].append(encode(M.Twrite(tag=s, fid=FILE_FID, offset=off,
                                                        data=payload)))
            self.frames["readdir"].append(encode(M.Treaddir(tag=s, fid=DIR_FID, offset=0,
                                                            count=8192)))
        self.expect = {"getattr": C.MsgType.RGETATTR, "walkclunk": C.MsgType.RWALK,
                       "read": C.MsgType.RREAD, "write": C.MsgType.RWRITE,
                       "readdir": C.MsgType.RREADDIR}
        self.slot_op: list[str] = [""] * qd
        self.slot_wait: list[int] = [0] * qd  # replies still awaited by the slot
        self.outbuf = bytearray()
        self.inbuf = bytearray()
        self.outstanding = 0
        self.issuing = True
        self.done = Counter[str]()
        self.errors = Counter[str]()
        self.frames_done = 0
        self.want_write = False

    def _issue(self, s: int) -> None:
        op = self.rng.choices(self.ops, self.weights)[0]
        self.slot_op[s] = op
        self.outbuf += self.frames[op][s]
        if op == "walkclunk":
            self.outbuf += self.clunks[s]
            self.slot_wait[s] = 2
        else:
            self.slot_wait[s] = 1
        self.outstanding += 1

    def start(self) -> None:
        for s in range(self.qd):
            self._issue(s)
        self.flush()

    def flush(self) -> None:
        """Send what we can; the caller watches for writability while ``want_write``."""
        for _ in range(64):
            if not self.outbuf:
                break
            try:
                n = self.sock.send(self.outbuf)
            except BlockingIOError:
                break
            del self.outbuf[:n]
        self.want_write = bool(self.outbuf)

    def on_readable(self, bucket: Counter[int], now_bucket: int) -> bool:
        """Handle every complete reply; False when the server closed the connection."""
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        if not data:
            return False
        buf = self.inbuf
        buf += data
        pos = 0
        n = len(buf)
        qd = self.qd
        while n - pos >= 7:
            size, mtype, tag = HDR.unpack_from(buf, pos)
            if n - pos < size:
                break
            pos += size
            self.frames_done += 1
            s = tag if tag < qd else tag - qd
            if s >= qd or self.slot_wait[s] == 0:
                self.errors["bad-tag"] += 1
                continue
            op = self.slot_op[s]
            if tag >= qd:
                if mtype != C.MsgType.RCLUNK:
                    self.errors[f"clunk:{mtype}"] += 1
            elif mtype != self.expect[op]:
                self.errors[f"{op}:{mtype}"] += 1
            self.slot_wait[s] -= 1
            if self.slot_wait[s] == 0:
                self.outstanding -= 1
                self.done[op] += 1
                bucket[now_bucket] += 1
                if self.issuing:
                    self._issue(s)
        del buf[:pos]
        self.flush()
        return True


def run_worker(path: str, indexes: list[int], args: dict[str, Any], start_at: float,
               out: Connection) -> None:
    """One client process: its connections in one selectors loop; results go to ``out``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conns = [LoadConn(path, i, args["qd"], args["msize"], args["seed"] + i) for i in indexes]
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    bucket: Counter[int] = Counter()
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    t0 = time.monotonic()
    for c in conns:
        c.start()
    deadline = t0 + args["duration"]
    drain_deadline = deadline + 15
    closed = 0
    writers: set[LoadConn] = set()
    for _ in range(int(args["duration"] * 1_000_000) + 1_000_000):  # bounded by time below
        now = time.monotonic()
        if now >= deadline and conns[0].issuing:
            for c in conns:
                c.issuing = False
        if now >= deadline and all(c.outstanding == 0 for c in conns):
            break
        if now >= drain_deadline:
            break
        # writability only matters for connections with queued output
        for c in conns:
            if c.want_write and c not in writers:
                sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
                writers.add(c)
            elif not c.want_write and c in writers:
                sel.modify(c.sock, selectors.EVENT_READ, c)
                writers.discard(c)
        b = int(now - t0) // 5
        for key, mask in sel.select(timeout=0.05):
            c = key.data
            if mask & selectors.EVENT_WRITE:
                c.flush()
            if mask & selectors.EVENT_READ and not c.on_readable(bucket, b):
                c.errors["closed-by-server"] += 1
                sel.unregister(c.sock)
                closed += 1
                c.outstanding = 0
    elapsed = time.monotonic() - t0
    result = {
        "ops": sum(sum(c.done.values()) for c in conns),
        "frames": sum(c.frames_done for c in conns),
        "by_op": dict(sum((c.done for c in conns), Counter[str]())),
        "errors": dict(sum((c.errors for c in conns), Counter[str]())),
        "unanswered": sum(c.outstanding for c in conns),
        "buckets": dict(bucket),
        "elapsed": elapsed,
    }
    for c in conns:
        c.sock.close()
    out.send(result)
    out.close()


# ------------------------------------------------------------------------------ driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--qd", type=int, default=64, help="requests in flight per connection")
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--procs", type=int, default=1, help="client processes")
    p.add_argument("--msize", type=int, default=65536)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", help="export directory (default: a fresh temp dir)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if a.qd < 1 or a.qd > 30000 or a.connections < 1 or a.procs < 1:
        p.error("need 1 <= qd <= 30000, connections >= 1, procs >= 1")

    work = Path(tempfile.mkdtemp(prefix="g9load-"))
    export = Path(a.dir) if a.dir else work / "export"
    export.mkdir(exist_ok=True)
    make_export(export, a.connections)
    sock_path = str(work / "gofer.sock")
    server = start_server(export, sock_path, a.msize)
    pid = server.pid
    try:
        # Warm up with one short connection: the first re-open of a file makes the attach
        # point cache one directory fd per file system (for open_by_handle_at), held for the
        # server's life.  It is not a per-connection resource, so count fds after it.
        warm = LoadConn(sock_path, 0, 1, a.msize, 0)
        warm.sock.close()
        time.sleep(0.3)
        fds_before = proc_fds(pid)
        rss: dict[str, int] = {"start": proc_rss_kib(pid)}
        ctx = mp.get_context("fork")
        shares = [list(range(i, a.connections, a.procs)) for i in range(a.procs)]
        start_at = time.time() + 1.0 + 0.02 * a.connections
        pipes: list[Connection] = []
        workers: list[Any] = []
        cfg = {"qd": a.qd, "msize": a.msize, "seed": a.seed, "duration": a.duration}
        for share in shares:
            if not share:
                continue
            r, w = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=run_worker, args=(sock_path, share, cfg, start_at, w))
            proc.start()
            w.close()
            pipes.append(r)
            workers.append(proc)
        # sample the server while the clients run
        samples: list[tuple[float, int]] = []
        while time.time() < start_at:
            time.sleep(0.01)
        rss["loaded"] = proc_rss_kib(pid)
        t0 = time.monotonic()
        mid_taken = False
        for _ in range(int(a.duration * 10) + 400):  # bounded: 0.1 s steps
            el = time.monotonic() - t0
            if not mid_taken and el >= a.duration / 2:
                rss["middle"] = proc_rss_kib(pid)
                mid_taken = True
            if el >= a.duration - 0.5 and "end" not in rss:
                rss["end"] = proc_rss_kib(pid)
            if len(samples) == 0 or el - samples[-1][0] >= 5:
                samples.append((el, proc_rss_kib(pid)))
            if all(not w.is_alive() for w in workers):
                break
            if el > a.duration + 30:
                break
            time.sleep(0.1)
        results = [r.recv() if r.poll(30) else {} for r in pipes]
        for w in workers:
            w.join(10)
        rss.setdefault("middle", -1)
        rss.setdefault("end", proc_rss_kib(pid))
        # connections closed: the server must give every fd back
        fds_after = -1
        for _ in range(100):
            fds_after = proc_fds(pid)
            if fds_after == fds_before:
                break
            time.sleep(0.1)
        rss["after_close"] = proc_rss_kib(pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)

    ops = sum(r.get("ops", 0) for r in results)
    frames = sum(r.get("frames", 0) for r in results)
    elapsed = max((r.get("elapsed", 0.0) for r in results), default=0.0)
    errors: Counter[str] = Counter()
    by_op: Counter[str] = Counter()
    buckets: Counter[int] = Counter()
    unanswered = 0
    for r in results:
        errors.update(r.get("errors", {}))
        by_op.update(r.get("by_op", {}))
        buckets.update({int(k): v for k, v in r.get("buckets", {}).items()})
        unanswered += r.get("unanswered", 0)
    missing = len(pipes) - sum(1 for r in results if r)
    windows = [round(buckets[b] / 5) for b in sorted(buckets)]
    summary = {
        "connections": a.connections, "qd": a.qd, "duration_s": a.duration, "procs": a.procs,
        "msize": a.msize, "ops": ops, "frames": frames, "elapsed_s": round(elapsed, 2),
        "ops_per_s": round(ops / elapsed) if elapsed else 0,
        "frames_per_s": round(frames / elapsed) if elapsed else 0,
        "ops_per_s_per_5s_window": windows,
        "by_op": dict(by_op), "errors": dict(errors), "unanswered": unanswered,
        "workers_without_result": missing,
        "server_vmrss_kib": rss, "server_vmrss_every_5s_kib": [v for _, v in samples],
        "server_fds_before": fds_before, "server_fds_after": fds_after,
        "server_alive_at_end": alive,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1) + "\n")
    ok = (not errors and not unanswered and not missing and alive and fds_after == fds_before
          and ops > 0)
    print("load: OK" if ok else "load: FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
