"""The p9bench harness's own CPU per unit against one server, both on CPU 0 (#17, session 9).

In the cost pinning (``--client-cpus 0 --server-cpus 0``) p9bench's throughput is bound by
the CPU of both processes, and the harness spent more CPU per request against gofer9p than
against diod.  This runs p9bench's own QD1 loops (its ``Conn``, frame builders and
``run_steps_qd1``, imported from the harness file, not copied) against one server for a
fixed number of units, and prints per unit: the harness's CPU (``process_time``, as p9bench
measures it) split into user and system time (``getrusage``, tick-sampled), the server's
CPU (/proc, its whole process), and both processes' voluntary and involuntary context
switches (/proc status, every thread).  Servers: ``diod``, ``floor-py``/``floor-c``
(p9bench's own floor pseudo-servers) or a PYTHONPATH whose gofer9p is served::

    python benchmarks/harness_cost.py diod --op create
    python benchmarks/harness_cost.py /work/bench/main-site --op read4k --ops 60000
    python benchmarks/harness_cost.py . --op create --trace /tmp/t.data   # + scheduler trace

``--trace FILE`` records CPU 0's scheduler and system-call events for half a second of
the run (``perf record``, software tracepoints) and prints per request who woke whom from
inside which system call and who switched out in which state: a wake-up from inside a
``recvfrom`` of the peer's request (syscall 45) is AF_UNIX's write-space wake-up of a
reader blocked on the other end, which finds no data and sleeps again.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from typing import Any

PY = sys.executable
DIOD = "diod -f -n -r {fd} -w {fd} -e {export} -L stderr"


def _load_p9bench(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("p9bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of ``pid``."""
    vol = inv = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    inv += int(line.split()[1])
    return vol, inv


def _target(pb: Any, server: str, export: str, workdir: str) -> Any:
    rfile = os.path.join(export, pb.BIG)
    wfile = os.path.join(export, pb.SCRATCH, "floor-write.bin")
    if server == "floor-py":
        return pb.Target("floor-py", [PY, "-c", pb.FLOOR_PY, "{fd}", rfile, wfile], "", floor=True)
    if server == "floor-c":
        exe = pb.build_floor_c(workdir)
        return pb.Target("floor-c", [exe, "{fd}", rfile, wfile], "", floor=True)
    cmd = DIOD if server == "diod" else (
        f"env PYTHONPATH={os.path.abspath(server)} {PY} -m gofer9p serve --fd {{fd}} {{export}}")
    return pb.Target(server, shlex.split(cmd), "{export}")


def _steps(pb: Any, sess: Any, op: str, gid: int) -> tuple[list[Any], int]:
    """p9bench's steps of ``op`` (its create_remove cycle, 4 KiB random Tread, Tgetattr)."""
    if op == "create":
        data = os.urandom(4096)
        flags = pb.L_O_WRONLY | pb.L_O_CREAT | pb.L_O_EXCL
        steps = []
        for i in range(1024):
            steps += [(pb.twalk(1, pb.F_SCRATCH, pb.F_CF, []), pb.RWALK, None),
                      (pb.tlcreate(1, pb.F_CF, f"c{i:05d}", flags, 0o644, gid), pb.RLCREATE, None),
                      (pb.twrite(1, pb.F_CF, 0, data), pb.RWRITE, 4096),
                      (pb.tremove(1, pb.F_CF), pb.RREMOVE, None)]
        return steps, 4
    if op == "read4k":
        fid = sess.open_big()
        offsets = pb._rand_offsets({"big_bytes": 64 << 20}, 4096)
        return [(pb.tread(1, fid, off, 4096), pb.RREAD, 4096) for off in offsets], 1
    return [(pb.tgetattr(1, pb.F_BIG), pb.RGETATTR, None)], 1


def _summarize_trace(path: str, harness: int, server: int, units: int) -> None:
    """Per harness request: wake-ups by the system call they came from, switches by state."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "pid,tid,event,trace"],
                         capture_output=True, text=True, check=True).stdout
    who: dict[str, str] = {}
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)/(\d+)\s+(\S+):\s*(.*)", line)
        if m:
            pid, tid, ev, rest = m.groups()
            if int(pid) in (harness, server):
                who[tid] = "harness" if int(pid) == harness else "server"
            rows.append((tid, ev, rest))
    insys: dict[str, int] = {}
    c: Counter[str] = Counter()
    for tid, ev, rest in rows:
        me = who.get(tid)
        if ev == "raw_syscalls:sys_enter":
            insys[tid] = int(rest.split()[1])
            if me == "harness" and insys[tid] == 44:
                c["requests"] += 1
        elif ev == "raw_syscalls:sys_exit":
            insys.pop(tid, None)
        elif ev == "sched:sched_waking" and me:
            m = re.search(r"pid=(\d+)", rest)
            other = who.get(m.group(1), "other") if m else "other"
            if other != me:
                c[f"{me} wakes {other} in syscall {insys.get(tid)}"] += 1
        elif ev == "sched:sched_switch":
            m = re.search(r"prev_pid=(\d+) .*prev_state=(\S+) ==> .* next_pid=(\d+)", rest)
            if m and who.get(m.group(1)):
                c[f"{who[m.group(1)]} switched out ({m.group(2)})"] += 1
    n = c.pop("requests", 0) or 1
    print(f"trace: {n} harness requests (of {units} units' worth)")
    for k, v in sorted(c.items()):
        if v / n >= 0.01:
            print(f"  {k:40} {v / n:6.3f} per request")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", help="diod, floor-py, floor-c, or a PYTHONPATH holding gofer9p")
    ap.add_argument("--op", choices=("create", "read4k", "getattr"), default="create")
    ap.add_argument("--ops", type=int, default=20000, help="units (files or requests)")
    ap.add_argument("--p9bench", default="/work/shared/bench/p9bench.py")
    ap.add_argument("--trace", metavar="FILE", help="perf record CPU 0's scheduler events for 0.5 s")
    a = ap.parse_args()
    pb = _load_p9bench(a.p9bench)
    os.sched_setaffinity(0, {0})
    workdir = tempfile.mkdtemp(prefix="harness-cost-")
    export = tempfile.mkdtemp(prefix="export-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    cfg = types.SimpleNamespace(sockbuf=0, fd=None, export=export, workdir=workdir,
                                server_cpus={0}, client_cpus={0}, all_cpus=os.sched_getaffinity(0),
                                uname="root", n_uname=os.getuid(), gid=os.getgid())
    pb.make_fixtures(export, 64 << 20)
    sess = pb.Session(_target(pb, a.server, export, workdir), cfg, 65536, "h")
    try:
        steps, per = _steps(pb, sess, a.op, cfg.gid)
        pb.run_steps_qd1(sess.conn, steps, per, 0.2, 1, "warm-up")
        rec = None
        if a.trace:
            rec = subprocess.Popen(
                ["taskset", "-c", "1", "perf", "record", "-q", "-C", "0", "-o", a.trace, "-e",
                 "sched:sched_switch,sched:sched_waking,raw_syscalls:sys_enter,raw_syscalls:sys_exit",
                 "--", "sleep", "0.5"])
            time.sleep(0.2)
        s0, h0, c0 = _switches(sess.pid), _switches(os.getpid()), sess.cpu()
        ru0, p0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
        ops, secs = pb.run_steps_qd1(sess.conn, steps, per, 0, a.ops, a.op)
        p1, ru1 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        s1, h1, c1 = _switches(sess.pid), _switches(os.getpid()), sess.cpu()
        if rec is not None:
            rec.wait()
    finally:
        sess.close()
        shutil.rmtree(export, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)

    def us(x: float) -> str:
        return f"{x / ops * 1e6:.2f}"

    print(f"{a.server} {a.op}: {ops} units, {ops / secs:.0f}/s; per unit: harness CPU {us(p1 - p0)} us"
          f" (user {us(ru1.ru_utime - ru0.ru_utime)}, sys {us(ru1.ru_stime - ru0.ru_stime)}),"
          f" server CPU {us(c1 - c0)} us; switches harness vol/invol"
          f" {(h1[0] - h0[0]) / ops:.2f}/{(h1[1] - h0[1]) / ops:.2f},"
          f" server {(s1[0] - s0[0]) / ops:.2f}/{(s1[1] - s0[1]) / ops:.2f}")
    if a.trace:
        _summarize_trace(a.trace, os.getpid(), sess.pid, ops)


if __name__ == "__main__":
    main()
