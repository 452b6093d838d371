"""Where a fork-server start goes: a timeline of one request, requester -> server -> child (#18).

benchmarks/forkserver.py times a start from outside; this one puts timestamps
(CLOCK_MONOTONIC, shared by all processes) on the steps in between, by wrapping the functions
that do them in all three processes, and prints each step's median over the rounds:

* requester: ``start_gofer`` (its spec, read or kept, the request sent to its claimed child or
  through the server (``--hand``), the wait for the start pipe's ``ok``), then Tversion ->
  Rversion and Tattach -> Rattach;
* fork-server: the request read (a claim, or a start request: the hand-over to the
  pre-forked child and the reply);
* child (pre-forked, so its fork and warm-up are not in the timeline): every step of
  :func:`gofer9p.daemon.run` up to ``ok``, then its first request.

Each process writes ``pid label ns minflt cpu`` lines to one pipe (the child keeps its end through
the fork-server's fd cleanup; it stops reading minor faults once seccomp is loaded, since
getrusage is not on the whitelist).  The wrappers cost a few microseconds per step, so the
total is slightly above benchmarks/forkserver.py's.  Root needed.

    python benchmarks/forkserver_breakdown.py [-n 30] [--prefork 1] [--rounds] [--detail] [--hand]
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import functools
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forkserver import _reply, tattach, tversion  # noqa: E402

_TRACE = -1
#: One mark: pid, label, CLOCK_MONOTONIC ns, minor faults (-1: unreadable), CPU number.
Event = tuple[int, str, int, int, int]
_counting = [True]  # minor faults read until seccomp is loaded (no getrusage after)


_getcpu = ctypes.CDLL(None).sched_getcpu  # glibc: rseq or the vDSO, no system call


def mark(label: str) -> None:
    flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if _counting[0] else -1
    os.write(_TRACE, f"{os.getpid()} {label} {time.monotonic_ns()} {flt} {_getcpu()}\n".encode())


def _wrap(owner: Any, name: str, label: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def w(*a: Any, **k: Any) -> Any:
        mark(label + "+")
        try:
            return f(*a, **k)
        finally:
            mark(label + "-")

    setattr(owner, name, w)


def _patch_server(detail: bool) -> None:
    """The fork-server's and its children's steps (this runs in the fork-server); ``detail``:
    also the steps between the seccomp load and the first request (trio's part)."""
    import trio

    from gofer9p import confine, daemon, forkserver, landlock, seccomp, server, spec

    srv = forkserver._Server
    detach = srv._detach
    srv._detach = lambda self, keep: detach(self, {*keep, _TRACE})  # type: ignore[method-assign]
    _wrap(srv, "_on_conn", "server.request")
    _wrap(srv, "_hand_over", "server.hand_over")
    _wrap(srv, "_claim", "server.claim")
    _wrap(srv, "_send", "server.reply")
    _wrap(forkserver, "_take_request", "child.take_request")
    _wrap(forkserver, "_place_fds", "child.place_fds")
    for name in ("_confined_start", "setup_logging", "check_io_fd", "_preload", "_open_attach_points"):
        _wrap(daemon, name, f"child.{name}")
    _wrap(spec, "load_spec", "child.load_spec")
    for name in (
        "preload",
        "assert_single_threaded",
        "set_not_dumpable",
        "chroot_tree",
        "private_mount_root",
        "_private_namespace",
        "_harden",
        "chroot_into",
        "drop_capabilities",
        "set_no_new_privs",
    ):
        _wrap(confine, name, f"child.{name}")
    install = seccomp.install_seccomp

    def install_seccomp(mode: Any) -> int:
        mark("child.install_seccomp+")
        _counting[0] = False
        try:
            return install(mode)
        finally:
            mark("child.install_seccomp-")

    seccomp.install_seccomp = install_seccomp
    _wrap(server, "fd_budget", "child.fd_budget")
    _wrap(landlock, "restrict", "child.landlock")
    _wrap(trio, "run", "child.trio_run")
    _wrap(forkserver._StartPipe, "ready", "child.ready")
    if detail:
        _wrap(daemon, "_serve_started", "child._serve_started")
        _wrap(trio, "open_signal_receiver", "child.open_signal_receiver")
        _wrap(daemon.signal, "pthread_sigmask", "child.sigmask")
        _wrap(daemon.log, "info", "child.log_info")
        _wrap(seccomp, "own_pid_written", "child.own_pid_written")
        _wrap(server.Connection, "__init__", "child.conn_init")
        _wrap(server.Connection, "_open_pipe", "child.open_pipe")
        from gofer9p import _quietwait
        _wrap(_quietwait.QuietWait, "__init__", "child.quiet_init")
        _wrap(server.ServerConfig, "__init__", "child.config_init")
    parser = daemon._parser()
    _wrap(parser, "parse_args", "child.parse_args")
    serve = server.serve

    async def traced_serve(*a: Any, **k: Any) -> None:
        mark("child.serve")
        await serve(*a, **k)

    server.serve = traced_serve
    recv_fds = socket.recv_fds

    server_pid = os.getpid()

    def traced_recv_fds(*a: Any, **k: Any) -> Any:
        got = recv_fds(*a, **k)
        if os.getpid() != server_pid:  # the server's own reads are in server.request
            mark("child.request_received")
        return got

    forkserver.socket.recv_fds = traced_recv_fds  # type: ignore[attr-defined]


def serve_main(fd: int, trace: int, prefork: int, detail: bool) -> int:
    global _TRACE
    # Above the fds a pre-forked child holds for io sockets (3 .. 3 + MAX_FDS - 1).
    _TRACE = fcntl.fcntl(trace, fcntl.F_DUPFD, 512)
    os.close(trace)
    from gofer9p import forkserver

    _patch_server(detail)
    return forkserver.run(["--fd", str(fd), f"--prefork={prefork}"])


def _minflt(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def _drive(n: int, prefork: int, show_rounds: bool, detail: bool, claim: bool) -> None:
    global _TRACE
    from gofer9p import launch
    from gofer9p.launch import ForkServer

    trace_r, trace_w = os.pipe()
    _TRACE = trace_w
    os.set_blocking(trace_r, False)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable, __file__, "--serve", str(theirs.fileno()), str(trace_w),
            str(prefork), str(int(detail)),
        ],
        pass_fds=[theirs.fileno(), trace_w],
        env=env,
    )
    theirs.close()
    fs = ForkServer(mine, proc, claim=claim)
    _wrap(launch, "load_spec", "req.load_spec")  # the name start_gofer calls
    _wrap(launch._SpecCache, "load", "req.spec_cache")
    _wrap(fs, "_request", "req.request")
    _wrap(fs, "_next_claim", "req.next_claim")
    _wrap(fs, "_start_claimed", "req.start_claimed")
    _wrap(launch, "_options", "req.options")
    _wrap(fs, "_start_gofer", "req._start_gofer")
    _wrap(launch, "_Lines", "req.start_pipe_open")
    buf = b""
    rounds: list[list[Event]] = []
    with tempfile.TemporaryDirectory(prefix="gofer9p-bench-") as tmp:
        bundle = os.path.join(tmp, "bundle")
        os.makedirs(os.path.join(bundle, "rootfs"))
        Path(bundle, "rootfs", "hello.txt").write_text("hello\n")
        Path(bundle, "config.json").write_text('{"root": {"path": "rootfs"}}')
        try:
            for i in range(n + 1):
                time.sleep(0.1)  # the pool refills
                mark("req.start+")
                gp = fs.start_gofer(bundle, extra_args=["--log-level", "warning"])
                mark("req.start-")
                at_ok = _minflt(gp.pid)
                s = gp.sockets[0]
                s.sendall(tversion())
                _reply(s, 101)
                mark("req.rversion")
                at_rversion = _minflt(gp.pid)
                s.sendall(tattach(b""))
                _reply(s, 105)
                mark("req.rattach")
                mark(f"gofer.minflt={at_ok},{at_rversion},{_minflt(gp.pid)}")
                mark(f"gofer.pid={gp.pid}")
                gp.stop()
                time.sleep(0.02)
                try:
                    while chunk := os.read(trace_r, 1 << 16):
                        buf += chunk
                except BlockingIOError:
                    pass
                lines = buf.split(b"\n")
                buf = lines.pop()
                evs = []
                for line in lines:
                    pid, label, ns, flt_s, cpu = line.decode().split()
                    evs.append((int(pid), label, int(ns), int(flt_s), int(cpu)))
                if i:  # the first is a warm-up
                    rounds.append(evs)
        finally:
            fs.stop()
    if show_rounds:
        _print_rounds(rounds)
    _report(rounds)


def _print_rounds(rounds: list[list[Event]]) -> None:
    """``--rounds``: each start's events in time order, ms from req.start+ (no medians mixing
    steps of different rounds)."""
    for i, evs in enumerate(rounds):
        t0 = next(ns for _p, label, ns, _f, _c in evs if label == "req.start+")
        print(f"round {i + 1} (ms from the start call, CPU, label, minor faults)")
        for _pid, label, ns, flt, cpu in sorted(evs, key=lambda e: e[2]):
            if not label.startswith("gofer."):
                print(f"  {(ns - t0) / 1e6:8.3f} {cpu} {label}{f'  ({flt})' if flt >= 0 else ''}")


def _report(rounds: list[list[Event]]) -> None:
    """Per step: median start offset from req.start+, duration, minor faults."""
    offs: dict[str, list[float]] = collections.defaultdict(list)
    durs: dict[str, list[float]] = collections.defaultdict(list)
    flts: dict[str, list[int]] = collections.defaultdict(list)
    order: list[str] = []
    gofer_flt: list[list[int]] = []
    for evs in rounds:
        t0 = next(ns for _p, label, ns, _f, _c in evs if label == "req.start+")
        gofer = next(
            int(label[10:]) for _p, label, _n, _f, _c in evs if label.startswith("gofer.pid=")
        )
        open_: dict[str, tuple[int, int]] = {}
        for pid, label, ns, flt, _cpu in evs:
            if label.startswith("gofer.minflt="):
                gofer_flt.append([int(x) for x in label.split("=")[1].split(",")])
                continue
            if label.startswith("gofer.pid="):
                continue
            if label.startswith("child.") and pid != gofer:
                label = "refill." + label[6:]
            base = label.rstrip("+-")
            if base not in order:
                order.append(base)
            if label.endswith("+"):
                open_[base] = (ns, flt)
                offs[base].append((ns - t0) / 1e6)
            elif label.endswith("-"):
                start, f0 = open_.pop(base, (ns, flt))
                durs[base].append((ns - start) / 1e6)
                if f0 >= 0 and flt >= 0:
                    flts[base].append(flt - f0)
            else:
                offs[base].append((ns - t0) / 1e6)
    print(f"{len(rounds)} starts; medians, ms from the start call (minor faults where readable)")
    print(f"  {'step':34s} {'at':>7s} {'(min)':>7s} {'takes':>7s} {'(min)':>7s} {'faults':>7s}")
    for base in sorted(order, key=lambda b: statistics.median(offs[b]) if offs[b] else 0):
        at = statistics.median(offs[base]) if offs[base] else float("nan")
        at_min = min(offs[base]) if offs[base] else float("nan")
        d = (
            f"{statistics.median(durs[base]):7.3f} {min(durs[base]):7.3f}"
            if durs[base]
            else " " * 15
        )
        fl = f"{statistics.median(flts[base]):7.0f}" if flts[base] else ""
        print(f"  {base:34s} {at:7.3f} {at_min:7.3f} {d} {fl}")
    if gofer_flt:
        ok, rv, ra = (statistics.median(c) for c in zip(*gofer_flt, strict=True))
        print(
            f"  the gofer's minor faults (its life, warm-up included), medians: {ok:.0f} at ok, "
            f"{rv:.0f} at Rversion, {ra:.0f} at Rattach"
        )


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        return serve_main(*map(int, sys.argv[2:5]), sys.argv[5] == "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=30, help="starts (default 30)")
    ap.add_argument("--prefork", type=int, default=1, help="the fork-server's pool (default 1)")
    ap.add_argument("--rounds", action="store_true", help="also print each start's timeline")
    ap.add_argument(
        "--detail", action="store_true", help="also time trio's steps up to the first request"
    )
    ap.add_argument(
        "--hand", action="store_true", help="no claims: every request through the server"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/forkserver_breakdown.py: needs root")
        return 2
    _drive(args.n, args.prefork, args.rounds, args.detail, not args.hand)
    return 0


if __name__ == "__main__":
    sys.exit(main())
