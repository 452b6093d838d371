"""Command-line flags that ``gofer9p serve`` (cli.py), ``gofer9p gofer`` (daemon.py) and
``gofer9p launch`` (launch.py) share.

Defined once, so that their spelling, range, default and help cannot drift apart between the
two front ends; each front end owns the rest of its parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .attach import IdMap

__all__ = [
    "add_confine_args",
    "add_fd_budget_arg",
    "add_idmap_args",
    "add_log_args",
    "add_max_fids_arg",
    "add_poll_arg",
    "add_record_args",
    "add_stats_args",
    "idmap_from_args",
]


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
        default=0,
        metavar="US",
        help="poll up to this long (adaptive) for the next request before sleeping "
        "(default 0: never; a window such as 50 can save a wake-up per request at one "
        "request in flight where wake-ups are dear, for CPU: benchmarks/README.md)",
    )


def add_log_args(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-file``, for :func:`gofer9p.logs.setup_logging`."""
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error", "critical"), default="info"
    )
    p.add_argument("--log-file", help="append the log here instead of stderr")


def _ids(text: str, n: int, form: str) -> tuple[int, ...]:
    """``text`` as ``n`` colon-separated decimal numbers (``form`` names them in the error)."""
    parts = text.split(":")
    if len(parts) != n or not all(p.isdigit() and p.isascii() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: want {form} (decimal numbers)")
    return tuple(int(p) for p in parts)


def _id_range(text: str) -> tuple[int, int, int]:
    g, h, c = _ids(text, 3, "GUEST:HOST:COUNT")
    return g, h, c


def _id_pair(text: str) -> tuple[int, int]:
    u, g = _ids(text, 2, "UID:GID")
    return u, g


class _IdFlag(argparse.Action):
    """Stores a ``--map-uid``/``--map-gid`` range (appended to the ones before it) or the
    ``--squash-ids`` pair, checked by building the ``IdMap`` of what it has so far (ids in
    range, no overlap on either side), so that a bad one is a usage error naming the flag,
    in every front end."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: Any, option_string: str | None = None,
    ) -> None:
        from .attach import IdMap

        new: Any = values
        try:
            if self.dest == "squash_ids":
                IdMap(squash=new)
            else:
                new = [*getattr(namespace, self.dest), values]
                IdMap(**{"uids" if self.dest == "map_uid" else "gids": new})
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None
        setattr(namespace, self.dest, new)


def add_idmap_args(p: argparse.ArgumentParser) -> None:
    """``--map-uid``, ``--map-gid`` (repeatable) and ``--squash-ids``: the export's id
    mapping for a guest without a user namespace (:func:`idmap_from_args`)."""
    p.add_argument(
        "--map-uid", type=_id_range, action=_IdFlag, default=[], metavar="GUEST:HOST:COUNT",
        help="guest uids GUEST.. stand for host uids HOST.. (repeatable; ranges may not "
        "overlap on either side): created files get the host owner, getattr reports the "
        "guest's; a guest uid outside every range may not create or chown (EPERM), a host "
        "uid outside every range is reported as 65534",
    )
    p.add_argument(
        "--map-gid", type=_id_range, action=_IdFlag, default=[], metavar="GUEST:HOST:COUNT",
        help="the same for gids",
    )
    p.add_argument(
        "--squash-ids", type=_id_pair, action=_IdFlag, default=None, metavar="UID:GID",
        help="every file created (and every chown) gets this one host owner, whatever "
        "the guest asks (as diod's squash); getattr reports host ids through the maps "
        "if given, else the real host ids",
    )


def idmap_from_args(args: argparse.Namespace) -> IdMap | None:
    """The :class:`~gofer9p.attach.IdMap` of :func:`add_idmap_args`'s flags (each already
    checked as it was parsed); None when none was given (the server then takes its
    un-mapped paths)."""
    from .attach import IdMap

    uids: Sequence[tuple[int, int, int]] = args.map_uid
    gids: Sequence[tuple[int, int, int]] = args.map_gid
    return IdMap.build(uids, gids, args.squash_ids)
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


def _max_fids(v: str) -> int:
    from .server import GUEST_MAX_FIDS  # the most fids any connection is given

    n = int(v)
    if not 1 <= n <= GUEST_MAX_FIDS:
        raise argparse.ArgumentTypeError(f"{v}: want 1 to {GUEST_MAX_FIDS} fids")
    return n


def add_max_fids_arg(p: argparse.ArgumentParser) -> None:
    """``--max-fids`` (``ServerConfig.max_fids``; 0 = the default of the way the process
    serves, which is also the most it allows: a manager lowers the fid term F of the
    memory bound in docs/RESOURCES.md with it, never raises it)."""
    from .server import GUEST_MAX_FIDS, ServerConfig  # the defaults the help states

    p.add_argument(
        "--max-fids",
        type=_max_fids,
        default=0,
        metavar="N",
        help="fids one connection may hold at once; a walk or attach past it is EMFILE. "
        "Bounds the memory a client can make the process hold (docs/RESOURCES.md) "
        f"(default, and the most: {GUEST_MAX_FIDS} for a guest's connection, serve --fd and "
        f"gofer; {ServerConfig().max_fids} for each serve --listen connection)",
    )
