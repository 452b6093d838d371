"""``gofer9p stats ADDR`` and ``gofer9p top ADDR``: a running gofer's statistics as a table.

Both fetch ``GET /json`` from the statistics endpoint (gofer9p.control) over a
plain blocking unix socket and print :func:`table`: per message type the count,
the rate, p50/p99 latency (interpolated in the histogram's power-of-two
buckets, as Prometheus's ``histogram_quantile``), errors and bytes; then the
connections and the process.  Rates and percentiles are over the interval
between two snapshots (``stats --interval S``, each refresh of ``top``), or,
from a single snapshot, since the statistics began.

``top`` redraws in place with plain ANSI escapes (like diod's ``dtop``; no
curses): ``q`` or Ctrl-C ends it.  When stdout is not a terminal it prints
successive tables, separated by a blank line; ``--iterations N`` stops after N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .stats import quantile

__all__ = ["fetch", "run_stats", "run_top", "table"]

MAX_ANSWER = 64 << 20
"""Largest answer read from an endpoint (a snapshot of thousands of connections
is a few MB)."""


class StatsError(Exception):
    """The endpoint could not be reached or answered nonsense; one line."""


def fetch(address: str, timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot at ``address`` (``unix:PATH``), from ``GET /json``."""
    if not address.startswith("unix:"):
        raise StatsError(f"{address}: want unix:PATH")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            deadline = time.monotonic() + timeout
            while True:  # a full listen backlog answers EAGAIN: the endpoint is busy
                try:
                    s.connect(address[5:])
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            s.settimeout(timeout)
            s.sendall(b"GET /json HTTP/1.0\r\nHost: gofer9p\r\n\r\n")
            chunks = []
            size = 0
            while size <= MAX_ANSWER:
                data = s.recv(1 << 16)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
    except OSError as e:
        raise StatsError(f"{address}: {e.strerror or e}") from None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/") or status.split()[1:2] != [b"200"]:
        raise StatsError(f"{address}: answered {status.decode(errors='replace')!r}")
    try:
        snap: dict[str, Any] = json.loads(body)
    except ValueError as e:
        raise StatsError(f"{address}: not a snapshot: {e}") from None
    return snap


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f}us"
    if x < 1:
        return f"{x * 1e3:.1f}ms"
    return f"{x:.2f}s"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _delta(cur: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    """Per op: what happened since ``prev`` (all of ``cur`` without one)."""
    out = {}
    for op, o in cur["ops"].items():
        p = (prev or {}).get("ops", {}).get(op)
        if p is None:
            out[op] = o
            continue
        out[op] = {
            "count": o["count"] - p["count"],
            "latency": [a - b for a, b in zip(o["latency"], p["latency"], strict=True)],
            "bytes_in": o["bytes_in"] - p["bytes_in"],
            "bytes_out": o["bytes_out"] - p["bytes_out"],
        }
    return out


def table(cur: dict[str, Any], prev: dict[str, Any] | None = None) -> str:
    """The table of snapshot ``cur``; rates and percentiles over the time since ``prev``."""
    span = cur["uptime"] - (prev["uptime"] if prev else 0.0)
    span = max(span, 1e-9)
    bounds: list[float] = cur["latency_bounds"]
    delta = _delta(cur, prev)
    p: dict[str, Any] = cur["process"]
    w: dict[str, int] = p.get("workers") or {}
    budget = p.get("fd_budget")
    fds = f"host fds {cur['host_fds_held']}" + (
        f" (budget {budget['in_use']}/{budget['limit']}, reclaims {budget['reclaims']},"
        f" reopens {budget['reopens']})"
        if budget
        else ""
    )
    lines = [
        f"gofer9p pid {p.get('pid', '?')}  up {cur['uptime']:.0f}s  "
        f"{'over ' + format(span, '.1f') + 's' if prev else 'since start'}  "
        f"rss {_bytes(p.get('rss_bytes'))}  threads {p.get('threads', '-')}  "
        f"workers {w.get('busy', '-')}/{w.get('limit', '-')} busy, {w.get('queued', '-')} queued",
        f"connections {len(cur['connections'])} (ended {cur['connections_ended']})  {fds}  "
        f"fd limit {p.get('fd_limit', '-')}",
        "",
        f"{'OP':<13}{'COUNT':>10}{'OPS/S':>10}{'P50':>9}{'P99':>9}{'ERRORS':>8}"
        f"{'IN/S':>11}{'OUT/S':>11}",
    ]
    rows = sorted(cur["ops"].items(), key=lambda kv: (-delta[kv[0]]["count"], -kv[1]["count"], kv[0]))
    for op, o in rows:
        d = delta[op]
        lines.append(
            f"{op:<13}{o['count']:>10}{d['count'] / span:>10.1f}"
            f"{_seconds(quantile(d['latency'], bounds, 0.5)):>9}"
            f"{_seconds(quantile(d['latency'], bounds, 0.99)):>9}"
            f"{sum(o['errors'].values()):>8}"
            f"{_bytes(d['bytes_in'] / span):>11}{_bytes(d['bytes_out'] / span):>11}"
        )
    errors = [
        f"{op} {name} {n}" for op, o in cur["ops"].items() for name, n in o["errors"].items()
    ]
    if errors:
        lines += ["", "errors: " + ", ".join(errors)]
    lines += ["", f"{'CONNECTION':<16}{'FIDS':>8}{'INFLIGHT':>10}{'HOST FDS':>10}"]
    for c in cur["connections"]:
        lines.append(f"{c['name']:<16}{c['fids']:>8}{c['inflight']:>10}{c['host_fds']:>10}")
    return "\n".join(lines) + "\n"


def run_stats(args: argparse.Namespace) -> int:
    """``gofer9p stats ADDR [--interval S] [--json]``."""
    try:
        prev = None
        if args.interval > 0:
            prev = fetch(args.address)
            time.sleep(args.interval)
        cur = fetch(args.address)
    except StatsError as e:
        print(f"gofer9p stats: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(cur, indent=1) + "\n" if args.json else table(cur, prev))
    return 0


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[bool]:
    """Single key presses from ``stream`` (a terminal: no echo, no line buffering) for the
    block; yields whether keys can be read at all."""
    if not stream.isatty():
        yield False
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(wait: float, keys: bool) -> bool:
    """Wait ``wait`` seconds; True if ``q`` was pressed meanwhile."""
    if not keys:
        time.sleep(wait)
        return False
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and os.read(sys.stdin.fileno(), 1) in (b"q", b"Q"):
            return True
    return False


def run_top(args: argparse.Namespace) -> int:
    """``gofer9p top ADDR [--delay S] [--iterations N]``."""
    out = sys.stdout
    live = out.isatty()
    prev = None
    shown = 0
    try:
        with _keys(sys.stdin) as keys:
            if live:
                out.write("\x1b[?25l")  # hide the cursor
            try:
                while True:
                    cur = fetch(args.address)
                    text = table(cur, prev)
                    if live:
                        out.write("\x1b[H\x1b[2J" + text.replace("\n", "\x1b[K\n"))
                    else:
                        out.write(("\n" if shown else "") + text)
                    out.flush()
                    prev = cur
                    shown += 1
                    if args.iterations and shown >= args.iterations:
                        break
                    if _quit_pressed(args.delay, keys):
                        break
            finally:
                if live:
                    out.write("\x1b[?25h")
                    out.flush()
    except StatsError as e:
        print(f"gofer9p top: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
