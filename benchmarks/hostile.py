"""Soak: the long variants of issue 21's hostile clients against the real gofer processes.

    python benchmarks/hostile.py [--targets serve,daemon] [--classes reads,flush,...]
    python benchmarks/hostile.py --tree /path/to/other/checkout   # "before" figures

Per attack class and target it prints the gofer's VmRSS before the attack, the peak
growth during it (sampled every 20 ms; a gofer past 3 GiB is killed and reported so),
the growth left a second after the attacker closed, fds before/peak, and the round-trip
latency (p50/p99/max, ms) of another client of the same gofer doing walk, open, read,
clunk every 50 ms meanwhile.  Loops are bounded in count and time; unix sockets only.
The daemon targets need root.  ``--tree`` runs the gofer from another checkout (flags
that checkout's ``serve`` lacks are left out).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's harness

from gofer9p.testing import hostile as H

CLASSES = ["reads", "flush", "writes", "fds", "trickle", "idle", "uname"]


def _serve_flags(tree: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "gofer9p", "serve", "--help"],
        cwd=tree, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=tree),
    ).stdout
    return {f for f in ("--max-connections", "--handshake-timeout") if f in out}


def _peak_fds(pid: int, stop: threading.Event, out: list[int]) -> None:
    while not stop.wait(0.05):
        try:
            out[0] = max(out[0], H.fd_count(pid))
        except OSError:
            return


def run_class(kind: str, cls: str, flags: set[str], tmp: Path) -> dict[str, object]:
    extra: list[str] = []
    if kind == "serve":
        extra += ["--msize", str(4 << 20)]
    conns = 1
    msize = 4 << 20
    if cls in ("idle", "trickle") and kind == "serve" and "--max-connections" in flags:
        extra += ["--max-connections", "1000"]
    g: H.Gofer = H.ListenGofer(tmp, *extra) if kind == "serve" else H.DaemonGofer(tmp)
    row: dict[str, object] = {"target": kind, "class": cls}
    stoppers: list[Callable[[], None]] = []
    socks: list[object] = []
    try:
        probe = H.Probe(g, fresh=(cls == "fds"))
        time.sleep(0.2)
        rss = H.RssSampler(g.pid)
        fds0 = H.fd_count(g.pid)
        fdpeak = [fds0]
        fstop = threading.Event()
        ft = threading.Thread(target=_peak_fds, args=(g.pid, fstop, fdpeak), daemon=True)
        ft.start()
        t0 = time.monotonic()
        what: object = ""
        if cls == "reads":
            c = H.Conn(g.attacker())
            msize = c.version(4 << 20)
            c.attach(1)
            what = H.attack_reads(c, 1000, msize)
            c.close()
        elif cls == "flush":
            c = H.Conn(g.attacker())
            msize = c.version(1 << 20)
            c.attach(1)
            oldtag, stop = H.stuck_replies(g, c, msize)
            stoppers.append(stop)
            what = f"{H.attack_flush(c, oldtag, 1_000_000)} flushes sent before back-pressure"
            time.sleep(1)
            c.close()
        elif cls == "writes":
            c = H.Conn(g.attacker())
            msize = c.version(4 << 20)
            c.attach(1)
            reader = H.open_fifo_for_writes(g, c)
            stoppers.append(lambda: os.close(reader))
            _tag, stop = H.stuck_replies(g, c, msize)
            stoppers.append(stop)
            what = f"{H.attack_fifo_writes(c, 64, msize)} of 64 Twrites sent before back-pressure"
            c.close()
        elif cls == "fds":
            out = []
            for _ in range(2):
                c = H.Conn(g.attacker())
                c.version(65536)
                c.attach(1)
                out.append(H.attack_fds(g, c))
                socks.append(c)
            what = out
            conns = 2
            msize = 65536
            time.sleep(1)  # the probe (a new client) meets the full shares
        elif cls == "trickle":
            what = H.attack_trickle(g, 1000 if kind == "serve" else 1, seconds=10.0)
            conns = 1000 if kind == "serve" else 1
        elif cls == "idle":
            n = 1000 if kind == "serve" else 1
            held = []
            for _ in range(n):
                try:
                    held.append(g.attacker())
                except OSError:
                    break
            time.sleep(2)
            what = f"{len(held)} connected, gofer's log: {g.log().count('connection start')} started"
            rss_idle = rss.now() - rss.base
            row["idle_growth_kib"] = rss_idle
            for s in held:
                s.close()
            conns = n
        elif cls == "uname":
            c = H.Conn(g.attacker())
            c.version()
            what = H.attack_uname(c)
        row["attack_s"] = round(time.monotonic() - t0, 1)
        for c2 in socks:
            c2.close()  # type: ignore[attr-defined]
        time.sleep(1.0)
        row["after_kib"] = rss.now() - rss.base
        row["peak_kib"] = rss.stop()
        row["base_kib"] = rss.base
        row["killed"] = rss.killed
        fstop.set()
        row["fds"] = f"{fds0}/{fdpeak[0]}"
        lat = probe.stop()
        row["probe"] = {k: (round(v * 1000, 2) if k != "n" else v) for k, v in lat.items()}
        row["probe_errors"] = probe.errors[:2]
        row["alive"] = g.alive()
        row["bound_kib"] = H.bound_kib(msize, conns) if cls not in ("idle", "trickle") else (
            conns * H.IDLE_CONN_KIB + H.bound_kib(0))
        row["what"] = what
        internal = g.log().count("internal error")
        if internal:
            row["internal_errors"] = internal
    finally:
        for s in stoppers:
            try:
                s()
            except OSError:
                pass
        g.stop()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="serve,daemon")
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--tree", help="run the gofer from this checkout (before figures)")
    args = ap.parse_args()
    if args.tree:
        os.environ["GOFER9P_TARGET_TREE"] = os.path.abspath(args.tree)
    tree = H.target_tree()
    flags = _serve_flags(tree)
    print(f"gofer code: {tree} (serve flags: {sorted(flags) or 'none new'})", flush=True)
    for kind in args.targets.split(","):
        if kind == "daemon" and os.geteuid() != 0:
            print("daemon: skipped (needs root)")
            continue
        for cls in args.classes.split(","):
            with tempfile.TemporaryDirectory(prefix="g9soak-") as d:
                try:
                    row = run_class(kind, cls, flags, Path(d))
                except Exception as e:  # a broken run is a figure too
                    row = {"target": kind, "class": cls, "error": f"{type(e).__name__}: {e}"}
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
