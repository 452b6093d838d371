"""A real client's workload through v9fs, timed phase by phase, against gofer9p and diod.

Boots the guest tier's VM (tests/guest: a Debian kernel + busybox initramfs under qemu, TCG
unless GOFER9P_GUEST_ACCEL=kvm) once per server and cache mode, back to back, with one
read-write 9P mount served by ``gofer9p serve --fd`` (this tree, or ``--gofer-path``) or by
``diod``.  In the guest, per run: untar a source tree (this checkout's tracked files,
``--copies`` copies, from a tarball in the guest's RAM, so only the extraction goes through
9P), ``ls -lR`` it, read every file (``find -type f -exec cat``), ``rm -rf`` it.  Phase times
come from the guest's /proc/uptime (10 ms resolution), so the host's load between boots
only moves them through the guest's own speed.  Slow under TCG (minutes per boot):

    python benchmarks/guest_workload.py [--cache none,loose] [--runs 2] [--copies 4] [--rounds 1]
        [--gofer NAME=PATH ...]

``--gofer NAME=PATH[,ARG...]`` (repeatable) serves with the gofer9p found at PATH (a checkout: the
pure build; a ``pip install --target`` directory of a wheel built with a compiler: the
compiled build, which is what ``pip install`` gives on such a machine) and the ARGs given to
``serve`` (``--poll-us=0``), each booted in turn beside diod; the default is this checkout
(pure).

Not a test and not run by CI (issue #17's guest workload); prints one table per cache mode
with the median per phase and each server's ratio to diod (>1: gofer9p faster), and a last
row with each server's CPU time over the whole boot (user + system, all its threads, from
/proc/PID/stat; ratio >1: gofer9p spent less): what the host paid for the same work.
The phase times move 5-20% between back-to-back boots on this project's VM.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _pinned import proc_cpu  # noqa: E402  (benchmarks/ is on sys.path: the script's own directory)

from tests.guest import guestvm, servers  # noqa: E402

PHASES = ("untar", "ls_lR", "read_all", "rm_rf")
CPU = ("server_user", "server_sys")
"""Besides the phases: the server's CPU seconds over the whole boot (all its threads)."""

WORKLOAD = r"""#!/bin/sh
# benchmarks/guest_workload.py's guest side: time each phase RUNS times on the mount $RW.
R=${RW:-/mnt/rw}
now() { cut -d' ' -f1 /proc/uptime; }
phase() {
    name=$1
    shift
    a=$(now)
    "$@" >/dev/null 2>/tmp/err
    rc=$?
    b=$(now)
    echo "VALUE ${name}_${run} $a $b $rc" >&9
    [ $rc -eq 0 ] || echo "RESULT ${name}_${run} FAIL $(head -c 300 /tmp/err)" >&9
}
run=1
while [ $run -le ${RUNS:-1} ]; do
    mkdir "$R/t"
    phase untar tar -xf /src.tar -C "$R/t"
    phase ls_lR ls -lR "$R/t"
    phase read_all find "$R/t" -type f -exec cat {} +
    phase rm_rf rm -rf "$R/t"
    run=$((run + 1))
done
echo "RESULT bench PASS" >&9
"""


def source_tar(copies: int) -> bytes:
    """This checkout's tracked files, ``copies`` times under c1/ .. cN/."""
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for c in range(1, copies + 1):
            for n in names:
                p = REPO / n
                if p.is_file() and not p.is_symlink():
                    tar.add(p, arcname=f"c{c}/{n}", recursive=False)
    return out.getvalue()


@dataclass(frozen=True)
class _Gofer(servers.GoferServe):
    """``gofer9p serve --fd`` of the tree at ``path`` (on PYTHONPATH), with this interpreter."""

    path: Path = REPO

    def start(
        self, socks: Sequence[socket.socket], mounts: Sequence[guestvm.Mount], workdir: Path
    ) -> list[subprocess.Popen[bytes]]:
        procs = []
        for i, (s, m) in enumerate(zip(socks, mounts, strict=True)):
            fd = s.fileno()
            argv = [sys.executable, "-m", "gofer9p", "serve", "--fd", str(fd),
                    *self.extra_args, str(m.export)]
            # PYTHONSAFEPATH: ``-m`` would put the cwd first on sys.path, and from a
            # checkout's root that is the checkout's own (pure) gofer9p, whatever PATH says
            env = dict(os.environ, PYTHONPATH=str(self.path), PYTHONSAFEPATH="1")
            procs.append(guestvm.spawn_with_fd(argv, [fd], workdir / f"server{i}.log", env=env))
        return procs


class _CpuWatch:
    """The CPU time (user, system seconds) of the processes a boot's servers run as.

    Sampled from /proc/PID/stat every ``PERIOD`` until the process is gone: a process
    that exited keeps its totals there until it is reaped, so the last sample is its
    whole run (but for what it spent in its last ``PERIOD``, after the guest's power-off:
    idle).  Not rusage: run_guest reaps the servers with ``Popen.wait``, which drops it,
    and the servers may be anything (diod's threads are in its process's totals too)."""

    PERIOD = 0.05

    def __init__(self) -> None:
        self.last: dict[int, tuple[float, float]] = {}
        self.threads: list[threading.Thread] = []

    def follow(self, procs: Sequence[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            t = threading.Thread(target=self._sample, args=(p.pid,), daemon=True)
            t.start()
            self.threads.append(t)

    def _sample(self, pid: int) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while True:
            try:
                user, system, state = proc_cpu(pid)
            except OSError:
                return
            self.last[pid] = (user / tick, system / tick)
            if state in ("Z", "X"):
                return
            time.sleep(self.PERIOD)

    def total(self) -> tuple[float, float]:
        for t in self.threads:
            t.join(5)
        return (sum(u for u, _ in self.last.values()), sum(s for _, s in self.last.values()))


def boot_once(
    server: servers.Server, cache: str, runs: int, tar: bytes, kernel: guestvm.Kernel, work: Path
) -> dict[str, list[float]]:
    """One boot: phase -> seconds per run, and CPU -> the servers' seconds (one value)."""
    export = work / "export"
    shutil.rmtree(export, ignore_errors=True)
    export.mkdir(parents=True)
    mounts = [guestvm.Mount(export, "/mnt/rw", aname=server.aname(export))]
    env = {
        "CACHE": cache,
        "MSIZE": "262144",
        "EXTRA_OPTS": server.mount_options(),
        "RW": "/mnt/rw",
        "RUNS": str(runs),
    }
    files = {
        "workload.sh": WORKLOAD.encode(),
        "src.tar": tar,
        "etc/guest.env": "".join(f"{k}='{v}'\n" for k, v in env.items()).encode(),
        "etc/mounts.conf": b"0 /mnt/rw rw " + (mounts[0].aname or "-").encode() + b"\n",
    }
    initrd = work / "initrd.gz"
    init = (REPO / "tests" / "guest" / "init.sh").read_text()
    guestvm.build_initramfs(initrd, kernel, init, files, tools_dir=work.parent / "tools")
    watch = _CpuWatch()

    def start(
        socks: Sequence[socket.socket], ms: Sequence[guestvm.Mount], workdir: Path
    ) -> list[subprocess.Popen[bytes]]:
        procs = server.start(socks, ms, workdir)
        watch.follow(procs)
        return procs

    run = guestvm.run_guest(work, kernel, initrd, mounts, start, timeout=3600)
    fails = {k: v for k, v in run.result_map().items() if v[0] != "PASS"}
    if run.timed_out or fails or "bench" not in run.result_map():
        raise RuntimeError(f"{server.name} cache={cache}: {fails or 'no result'}\n{run.diagnostics()}")
    out: dict[str, list[float]] = {p: [] for p in PHASES}
    out["server_user"], out["server_sys"] = ([x] for x in watch.total())
    for key, val in run.values().items():
        name, _, _ = key.rpartition("_")
        if name not in out:
            continue  # (init.sh's own values: workload_seconds)
        a, b, rc = val.split()
        if rc == "0":
            out[name].append(float(b) - float(a))
    return out


def _cpu_median(got: dict[str, list[float]]) -> float:
    """Median over boots of a server's CPU seconds (user + system)."""
    return statistics.median(
        u + y for u, y in zip(got["server_user"], got["server_sys"], strict=True)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="none,loose", help="v9fs cache modes, comma-separated")
    ap.add_argument("--runs", type=int, default=2, help="workload runs per boot")
    ap.add_argument("--copies", type=int, default=4, help="copies of the source tree in the tarball")
    ap.add_argument("--rounds", type=int, default=1, help="boots per server and cache mode (alternating)")
    ap.add_argument("--gofer-path", type=Path, default=None,
                    help="the gofer9p tree to serve with (same as --gofer gofer9p=PATH)")
    ap.add_argument("--gofer", action="append", default=[], metavar="NAME=PATH[,ARG...]",
                    help="a gofer9p tree or install directory to serve with, and serve's "
                         "own arguments (e.g. c0=SITE,--poll-us=0; repeatable)")
    ap.add_argument("--keep-logs", type=Path, default=None,
                    help="copy each boot's server logs here (the connection-end lines say "
                         "how the quiet wait went: polled=, trio=, stats_reads=)")
    a = ap.parse_args()
    gofers: list[servers.Server] = []
    for spec in a.gofer:
        name, sep, rest = spec.partition("=")
        path, *args = rest.split(",")
        if not sep or not name or not path or name == "diod":
            ap.error(f"--gofer wants NAME=PATH[,ARG...] (NAME not diod), got {spec!r}")
        gofers.append(_Gofer(name, extra_args=tuple(args), path=Path(path).resolve()))
    if a.gofer_path is not None or not gofers:
        gofers.insert(0, _Gofer("gofer9p", path=(a.gofer_path or REPO).resolve()))
    reason = guestvm.unavailable_reason()
    kernel = guestvm.find_kernel()
    if reason or kernel is None:
        print(f"guest tier unavailable: {reason}", file=sys.stderr)
        return 2
    diod = servers.Diod("diod")
    if diod.unavailable():
        print(diod.unavailable(), file=sys.stderr)
        return 2
    tar = source_tar(a.copies)
    order: list[servers.Server] = [*gofers, diod]
    base = Path(tempfile.mkdtemp(prefix="gofer9p-guestbench-"))
    try:
        for cache in a.cache.split(","):
            got: dict[str, dict[str, list[float]]] = {
                s.name: {p: [] for p in (*PHASES, *CPU)} for s in order
            }
            for r in range(a.rounds):
                for s in order if r % 2 == 0 else order[::-1]:
                    t0 = time.monotonic()
                    res = boot_once(s, cache, a.runs, tar, kernel, base / f"{s.name}-{cache}-{r}")
                    for p in (*PHASES, *CPU):
                        got[s.name][p] += res[p]
                    if a.keep_logs is not None:
                        boot = base / f"{s.name}-{cache}-{r}"
                        a.keep_logs.mkdir(parents=True, exist_ok=True)
                        for log in boot.glob("server*.log"):
                            shutil.copy(log, a.keep_logs / f"{boot.name}-{log.name}")
                    print(f"# {s.name} cache={cache} round {r}: {time.monotonic() - t0:.0f} s, "
                          + ", ".join(f"{p} {res[p]}" for p in PHASES)
                          + f", server CPU user {res['server_user'][0]:.2f} s"
                          f" sys {res['server_sys'][0]:.2f} s", flush=True)
            names = [g.name for g in gofers]
            print(f"\ncache={cache}, {a.copies} copies of {REPO.name}'s tracked files, "
                  f"{a.runs} runs x {a.rounds} boots each (median s; ratio: diod's time / ours)")
            print("| phase | " + " | ".join(names) + " | diod | "
                  + " | ".join(f"{n} ratio" for n in names) + " |")
            print("|---|" + "---:|" * (2 * len(names) + 1))
            for p in PHASES:
                d = statistics.median(got["diod"][p])
                g = [statistics.median(got[n][p]) for n in names]
                print(f"| {p} | " + " | ".join(f"{x:.2f}" for x in g) + f" | {d:.2f} | "
                      + " | ".join(f"{d / x:.2f}x" for x in g) + " |")
            # the servers' CPU per boot (user + system, median over boots): what the
            # host paid for the same workload
            d = _cpu_median(got["diod"])
            g = [_cpu_median(got[n]) for n in names]
            print("| server CPU per boot | " + " | ".join(f"{x:.2f}" for x in g)
                  + f" | {d:.2f} | " + " | ".join(f"{d / x:.2f}x" for x in g) + " |")
            print(flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
