"""Gofer start-up and memory through the fork-server, beside a direct spawn and beside diod (#18).

Start-up, interleaved (one round = one start of each kind, in turn), root needed:

* ``pool``: ``ForkServer.start_gofer(bundle)`` on a fork-server with its default pool of one
  pre-forked child (refilled between rounds, while the other kinds run; each start waits
  ``--settle`` first, so that no refill runs into a measurement), which confines
  itself and serves (the call returns once it serves), then Tversion -> Rversion, then
  Tattach -> Rattach, on the root attach point's socket;
* ``fork``: the same on a fork-server with ``prefork=0`` (it forks on request);
* ``spawn``: ``launch.start_gofer(bundle)`` (``python -m gofer9p.daemon``), the same two
  requests;
* ``diod``: ``diod -f -n -r FD -w FD -e EXPORT -L stderr`` on a socketpair (as p9bench and
  benchmarks/compare.sh start it), the same two requests.

Times run from just before the start call / the spawn to the reply.  Beside them, the CPU
time a start costs up to the Rattach, on every CPU: the requester's thread
(:func:`time.thread_time_ns`), the fork-server and the gofer (or diod: all its threads), from
``/proc/PID/task/*/schedstat`` (a pre-forked child's warm-up, done before the request, is not
counted; a forked child's whole life is).  On a shared machine the wall-clock times swing with
what else runs; the CPU time much less (cold caches still inflate it).  Then memory: N gofers
started through the fork-server, each serving one attached connection, and
``/proc/PID/smaps_rollup`` of each: private = Private_Clean + Private_Dirty, and the total PSS
(which shares every page among the processes mapping it).

    python benchmarks/forkserver.py [-n 20] [--gofers 100] [--no-diod] [--no-spawn] [--no-fork]
        [--settle 0.05] [--base DIR] [--hand]

``--base DIR`` adds a kind ``base``: ``pool`` through a fork-server (and its children) that
imports gofer9p from the checkout at DIR (say, the main branch) instead of this one, in the
same rounds; the requester's side (:mod:`gofer9p.launch`) is this checkout's for both (a
server that predates claims answers the first one with an error, and every ``base`` start
then goes through it).  ``--hand`` adds ``hand``: ``pool`` with ``claim=False``, every
request handed to the pre-forked child by the server (what a claim saves).

The CPU column is the sum of per-process times (the kernel's ``sum_exec_runtime`` of each
thread, as ``getrusage`` and ``perf stat`` report them), not wall time: two processes that
pass a byte back and forth after sleeping show a few tens of microseconds of CPU each per
round trip here however long the trip took.  A start is a chain (requester, server, child;
requester, exec'd diod) in which mostly one process runs at a time, so on a quiet machine
its CPU sum lands close to its wall time, for every kind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gofer9p.launch import ForkServer, GoferProcess, start_gofer  # noqa: E402

NOFID = 0xFFFFFFFF


def _msg(mtype: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", 7 + len(body), mtype, tag) + body


def _s(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


def tversion() -> bytes:
    return _msg(100, 0xFFFF, struct.pack("<I", 65536) + _s(b"9P2000.L"))


def tattach(aname: bytes) -> bytes:
    return _msg(
        104, 1, struct.pack("<II", 1, NOFID) + _s(b"root") + _s(aname) + struct.pack("<I", 0)
    )


def _reply(sock: socket.socket, want: int) -> bytes:
    buf = b""
    while len(buf) < 4 or len(buf) < struct.unpack("<I", buf[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk
    if buf[4] != want:
        raise RuntimeError(f"wanted type {want}, got {buf[4]}: {buf!r}")
    return buf


def _oncpu(pid: int) -> int:
    """ns that the threads of ``pid`` alive now have run (``/proc/PID/task/*/schedstat``)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def _children(pid: int) -> list[int]:
    """Live children of ``pid`` (a fork-server's pre-forked one, before a request)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


#: One start: seconds to Rversion, seconds to Rattach, CPU seconds spent on the way to
#: Rattach by the requester (this thread), the fork-server and the gofer (or diod).
Sample = tuple[float, float, float]


def _version_attach(
    sock: socket.socket, t0: float, aname: bytes, cpu0: int, gofer: int, others: int
) -> Sample:
    """Tversion, Tattach; ``cpu0``: this thread's CPU ns at the start, ``others``: the CPU ns
    that ``gofer`` and the fork-server had then (read again after the Rattach)."""
    sock.sendall(tversion())
    _reply(sock, 101)
    t1 = time.perf_counter()
    sock.sendall(tattach(aname))
    _reply(sock, 105)
    t2 = time.perf_counter()
    cpu = time.thread_time_ns() - cpu0
    return t1 - t0, t2 - t0, (cpu + _oncpu(gofer) - others) / 1e9


def one_fork(fs: ForkServer, bundle: str) -> Sample:
    assert fs.proc is not None
    server = fs.proc.pid
    idle = {pid: _oncpu(pid) for pid in _children(server)}  # the pre-forked child's warm-up
    others = _oncpu(server)
    cpu0 = time.thread_time_ns()
    t0 = time.perf_counter()
    gp = fs.start_gofer(bundle, extra_args=["--log-level", "warning"])
    try:
        others -= _oncpu(server)  # the server's part, made negative: subtracted below
        return _version_attach(gp.sockets[0], t0, b"", cpu0, gp.pid, idle.get(gp.pid, 0) + others)
    finally:
        gp.stop()


def one_spawn(bundle: str, env: dict[str, str]) -> Sample:
    cpu0 = time.thread_time_ns()
    t0 = time.perf_counter()
    gp = start_gofer(bundle, env=env, extra_args=["--log-level", "warning"])
    try:
        return _version_attach(gp.sockets[0], t0, b"", cpu0, gp.pid, 0)
    finally:
        gp.stop()


def one_diod(diod: str, export: str) -> Sample:
    a, b = socket.socketpair()
    fd = b.fileno()
    cpu0 = time.thread_time_ns()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [diod, "-f", "-n", "-r", str(fd), "-w", str(fd), "-e", export, "-L", "stderr"],
        pass_fds=[fd],
        stderr=subprocess.DEVNULL,
    )
    b.close()
    try:
        return _version_attach(a, t0, export.encode(), cpu0, p.pid, 0)
    finally:
        a.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def smaps(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0])
    return out


def _stats(xs: list[float]) -> str:
    ms = sorted(x * 1e3 for x in xs)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 4 else [ms[0], ms[len(ms) // 2], ms[-1]]
    return f"median {statistics.median(ms):6.2f}  p25 {q[0]:6.2f}  p75 {q[2]:6.2f}  min {ms[0]:6.2f}  max {ms[-1]:6.2f}"


def memory(fs: ForkServer, bundle: str, n: int) -> None:
    gps: list[GoferProcess] = []
    try:
        for _ in range(n):
            gp = fs.start_gofer(bundle, extra_args=["--log-level", "warning"])
            s = gp.sockets[0]
            _version_attach(s, time.perf_counter(), b"", 0, gp.pid, 0)
            gps.append(gp)
        time.sleep(0.5)
        rolls = [smaps(gp.pid) for gp in gps]
        priv = sorted((r["Private_Clean"] + r["Private_Dirty"]) / 1024 for r in rolls)
        pss = sum(r["Pss"] for r in rolls) / 1024
        assert fs.proc is not None
        server = smaps(fs.proc.pid)
        print(f"memory: {n} gofers started through the fork-server, each serving an attach")
        print(
            f"  private per gofer (Private_Clean+Private_Dirty): median {statistics.median(priv):.2f} MiB"
            f"  min {priv[0]:.2f}  max {priv[-1]:.2f}  (target <= 8 MiB)"
        )
        print(
            f"  RSS per gofer: median {statistics.median(r['Rss'] for r in rolls) / 1024:.2f} MiB"
        )
        print(
            f"  total PSS of the {n} gofers: {pss:.1f} MiB ({pss / n:.2f} MiB each); "
            f"fork-server PSS {server['Pss'] / 1024:.1f} MiB, RSS {server['Rss'] / 1024:.1f} MiB; "
            f"all together {pss + server['Pss'] / 1024:.1f} MiB"
        )
    finally:
        for gp in gps:
            gp.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="interleaved rounds (default 20)")
    ap.add_argument("--gofers", type=int, default=100, help="gofers in the memory test (0: skip)")
    ap.add_argument("--no-diod", action="store_true")
    ap.add_argument("--no-spawn", action="store_true", help="leave out the direct spawn")
    ap.add_argument("--no-fork", action="store_true", help="leave out fork-on-request")
    ap.add_argument("--base", metavar="DIR", help="also pool starts from gofer9p at DIR")
    ap.add_argument(
        "--hand", action="store_true", help="also pool starts without claims (through the server)"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.05,
        help="pause before each start (s, default 0.05): the previous start's aftermath, such "
        "as the pool refill (fork + warm-up, ~10 ms of CPU), does not run into the next kind's "
        "measurement",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/forkserver.py: needs root (chroot, caps, mount namespaces)")
        return 2
    diod = None if args.no_diod else shutil.which("diod")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # `python -m` puts the working directory first on sys.path: run from a checkout, every
    # server would import that checkout's gofer9p, --base's too (as it did before this line).
    env["PYTHONSAFEPATH"] = "1"
    with tempfile.TemporaryDirectory(prefix="gofer9p-bench-") as tmp:
        bundle = os.path.join(tmp, "bundle")
        export = os.path.join(bundle, "rootfs")
        os.makedirs(export)
        Path(export, "hello.txt").write_text("hello\n")
        Path(bundle, "config.json").write_text('{"root": {"path": "rootfs"}}')
        # not realpath: a venv's python is a symlink that finds its venv by its own path
        py = sys.executable
        servers = [fs := ForkServer.start(env=env, python=py)]
        kinds: dict[str, Callable[[], Sample]] = {"pool": lambda: one_fork(fs, bundle)}
        if args.hand:
            servers.append(fsh := ForkServer.start(env=env, python=py, claim=False))
            kinds["hand"] = lambda: one_fork(fsh, bundle)
        if args.base:
            base_env = dict(env)
            base_env["PYTHONPATH"] = args.base + os.pathsep + os.environ.get("PYTHONPATH", "")
            servers.append(fsb := ForkServer.start(env=base_env, python=py))
            kinds["base"] = lambda: one_fork(fsb, bundle)
        if not args.no_fork:
            servers.append(fs0 := ForkServer.start(env=env, python=py, prefork=0))
            kinds["fork"] = lambda: one_fork(fs0, bundle)
        if not args.no_spawn:
            kinds["spawn"] = lambda: one_spawn(bundle, env)
        try:
            if diod:
                kinds["diod"] = lambda: one_diod(diod, export)
            for f in kinds.values():  # warm: the fork-server's imports, page cache
                f()
            res: dict[str, tuple[list[float], list[float], list[float]]] = {
                k: ([], [], []) for k in kinds
            }
            load0 = os.getloadavg()
            for _ in range(args.n):
                for k, f in kinds.items():
                    time.sleep(args.settle)  # the last start's aftermath (a pool refill) is over
                    for got, x in zip(res[k], f(), strict=True):
                        got.append(x)
            print(
                f"start-up, {args.n} interleaved rounds, ms (load average before "
                f"{load0[0]:.2f}, after {os.getloadavg()[0]:.2f})"
            )
            for k, (v, a, c) in res.items():
                print(f"  {k:5s} -> Rversion  {_stats(v)}")
                print(f"  {k:5s} -> Rattach   {_stats(a)}")
                print(f"  {k:5s} CPU to Rattach {_stats(c)}")
            if diod:
                dv = statistics.median(res["diod"][0])
                da = statistics.median(res["diod"][1])
                dc = statistics.median(res["diod"][2])
                for k in [k for k in kinds if k != "diod"]:
                    print(
                        f"  {k}/diod medians: Rversion {statistics.median(res[k][0]) / dv:.2f}x"
                        f"  Rattach {statistics.median(res[k][1]) / da:.2f}x"
                        f"  CPU {statistics.median(res[k][2]) / dc:.2f}x"
                    )
            if args.gofers:
                memory(fs, bundle, args.gofers)
        finally:
            for f in servers:
                f.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
