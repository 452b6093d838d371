"""Command-line flags that ``gofer9p serve`` (cli.py), ``gofer9p gofer`` (daemon.py) and
``gofer9p launch`` (launch.py) share.

Defined once, so that their spelling, range, default and help cannot drift apart between the
two front ends; each front end owns the rest of its parser.
"""

from __future__ import annotations

import argparse

__all__ = ["add_confine_args", "add_log_args", "add_poll_arg"]


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


def _fd(v: str) -> int:
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{v}: not a file descriptor number")
    return n


def add_confine_args(p: argparse.ArgumentParser) -> None:
    """``--spec-fd``, ``--mounts-fd``, ``--setup-root``, ``--landlock``: where the spec comes
    from, where the resolved mounts go, and the confinement beyond chroot and seccomp."""
    p.add_argument(
        "--spec-fd",
        type=_fd,
        metavar="N",
        help="read the OCI spec from inherited fd N (a pipe, memfd or file: read to EOF, then "
        "closed) instead of BUNDLE/config.json; --bundle then only anchors relative paths",
    )
    p.add_argument(
        "--mounts-fd",
        type=_fd,
        metavar="N",
        help="write the attach points as resolved to inherited fd N as one JSON array "
        "(index, destination, source, readonly per io fd), then close it",
    )
    p.add_argument(
        "--setup-root",
        action="store_true",
        help="pivot into an empty tmpfs root holding only the rootfs and the 9P mount sources "
        "bound at their destinations, the old root detached (default: chroot into the rootfs)",
    )
    p.add_argument(
        "--landlock",
        choices=("auto", "require", "off"),
        default="auto",
        help="restrict the gofer to its attach points' trees with Landlock, write access only "
        "beneath read-write ones (auto: if the kernel has it; require: fail without it)",
    )
