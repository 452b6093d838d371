"""Command-line flags that ``gofer9p serve`` (cli.py) and ``gofer9p gofer`` (daemon.py) share.

Defined once, so that their spelling, range, default and help cannot drift apart between the
two front ends; each front end owns the rest of its parser.
"""

from __future__ import annotations

import argparse

__all__ = ["add_log_args", "add_poll_arg", "add_stats_args"]


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


def _unix_address(v: str) -> str:
    if not v.startswith("unix:") or len(v) == 5:
        raise argparse.ArgumentTypeError(f"{v}: want unix:PATH")
    return v[5:]


def _fd_number(v: str) -> int:
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{v}: want a file descriptor number")
    return n


def add_stats_args(p: argparse.ArgumentParser, *, inherited: bool) -> None:
    """The statistics endpoint (gofer9p.control): ``--stats unix:PATH`` for ``serve``
    (it binds the socket), ``--stats-fd N`` for ``gofer`` (``inherited``: a listening
    unix socket its manager bound, so the confined gofer opens nothing)."""
    if inherited:
        p.add_argument(
            "--stats-fd",
            type=_fd_number,
            metavar="N",
            help="answer statistics (GET /metrics, /json) on this inherited listening unix "
            "stream socket",
        )
    else:
        p.add_argument(
            "--stats",
            type=_unix_address,
            metavar="unix:PATH",
            help="answer statistics (GET /metrics, /json) on a unix socket bound at PATH",
        )
