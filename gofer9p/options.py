"""Command-line flags that ``gofer9p serve`` (cli.py) and ``gofer9p gofer`` (daemon.py) share.

Defined once, so that their spelling, range, default and help cannot drift apart between the
two front ends; each front end owns the rest of its parser.
"""

from __future__ import annotations

import argparse

__all__ = ["add_log_args", "add_poll_arg"]


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


def _fd_budget(v: str) -> int:
    n = int(v)
    if not 64 <= n <= 1 << 30:
        raise argparse.ArgumentTypeError(f"{v}: want 64 or more host fds")
    return n


def add_fd_budget_arg(p: argparse.ArgumentParser) -> None:
    """``--fd-budget`` (``server.fd_budget``; 0 = derived from RLIMIT_NOFILE)."""
    p.add_argument(
        "--fd-budget",
        type=_fd_budget,
        default=0,
        metavar="N",
        help="host fds the process may hold, shared evenly by its connections; idle fids' "
        "fds are reclaimed and reopened on demand, and past the budget an open is EMFILE "
        "(default: RLIMIT_NOFILE, raised as far as allowed, less a reserve of 256)",
    )


__all__ += ["add_fd_budget_arg"]
