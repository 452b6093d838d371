"""Command-line flags that ``gofer9p serve`` (cli.py) and ``gofer9p gofer`` (daemon.py) share.

Defined once, so that their spelling, range, default and help cannot drift apart between the
two front ends; each front end owns the rest of its parser.
"""

from __future__ import annotations

import argparse

__all__ = ["add_log_args", "add_poll_arg", "add_record_args"]


def _microseconds(v: str) -> int:
    n = int(v)
    if not 0 <= n <= 20000:
        raise argparse.ArgumentTypeError(f"{v}: want 0..20000 microseconds")
    return n


def add_poll_arg(p: argparse.ArgumentParser) -> None:
    """``--poll-us`` (ServerConfig.poll_us)."""
    p.add_argument(
        "--poll-us",
        type=_microseconds,
        default=50,
        metavar="US",
        help="poll up to this long (adaptive) for the next request before sleeping; "
        "0 never polls (default 50: saves a wake-up per request at one request in flight)",
    )


def add_log_args(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-file``, for :func:`gofer9p.logs.setup_logging`."""
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error", "critical"), default="info"
    )
    p.add_argument("--log-file", help="append the log here instead of stderr")


def add_record_args(p: argparse.ArgumentParser, *, inherited: bool) -> None:
    """``--record PATH`` (``serve``) or ``--record-fd N`` (``gofer``, ``inherited``: the
    confined daemon opens nothing), and ``--record-headers-only`` (gofer9p.recorder)."""
    if inherited:
        p.add_argument(
            "--record-fd",
            type=int,
            metavar="N",
            help="record every connection's frames, both ways, as a pcap file written to this "
            "inherited fd (open for writing, empty)",
        )
    else:
        p.add_argument(
            "--record",
            metavar="PATH",
            help="record every connection's frames, both ways, as a pcap file (created or "
            "truncated) that Wireshark and tshark dissect as 9P",
        )
    p.add_argument(
        "--record-headers-only",
        action="store_true",
        help="record sizes, types, tags, fids and other numbers only: names emptied, "
        "file data and directory entries not captured",
    )
