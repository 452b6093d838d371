"""Command line: ``gofer9p serve|gofer|launch|forkserver|client|stats|top``.

Kept light on imports: the start-up time of ``gofer9p gofer``/``serve`` is a
measured target, so trio and the server are imported only by the commands that
need them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .logs import setup_logging
from .options import (
    add_fd_budget_arg,
    add_idmap_args,
    add_log_args,
    add_max_fids_arg,
    add_poll_arg,
    add_record_args,
    add_stats_args,
    idmap_from_args,
)

if TYPE_CHECKING:  # typing only: the serve path imports these lazily (start-up time)
    import socket

    from .attach import AttachPoint
    from .recorder import Recording
    from .server import ServerConfig


def _serve_main(args: argparse.Namespace) -> int:
    import os
    import socket
    from contextlib import nullcontext

    import trio

    from ._quietwait import watching
    from .attach import AttachPoint
    from .server import GUEST_MAX_FIDS, ServerConfig, fd_budget, serve

    try:
        setup_logging(args.log_level, args.log_file)
    except OSError as e:
        print(f"gofer9p serve: --log-file {args.log_file!r}: {e.strerror}", file=sys.stderr)
        return 2
    log = logging.getLogger("gofer9p.serve")
    listen_fids = ServerConfig().max_fids  # a --listen connection's default and most
    if args.fd is None and args.max_fids > listen_fids:
        print(f"gofer9p serve: --max-fids {args.max_fids}: at most {listen_fids} with --listen",
              file=sys.stderr)
        return 2
    try:
        point = AttachPoint.open(args.directory, readonly=args.read_only)
    except OSError as e:
        print(f"gofer9p serve: cannot open {args.directory}: {e.strerror}", file=sys.stderr)
        return 2
    from .control import StatsEndpoint, bind_unix, running

    stats = None
    if args.stats is not None:
        try:
            stats = StatsEndpoint(bind_unix(args.stats))
        except OSError as e:
            print(f"gofer9p serve: --stats unix:{args.stats}: {e.strerror}", file=sys.stderr)
            return 2
    record = _open_recording(
        args, args.msize or (FD_MSIZE if args.fd is not None else LISTEN_MSIZE)
    )
    if isinstance(record, int):
        return record
    # the recording's writer runs around serving; SIGTERM then finishes the file
    recording = nullcontext() if record is None else record.running(stop_on_sigterm=True)
    if args.fd is not None:
        config = ServerConfig(
            max_msize=args.msize or FD_MSIZE, poll_us=args.poll_us, connections=1,
            idmap=idmap_from_args(args), record=record,
            fd_budget=fd_budget(1, args.fd_budget), max_fids=args.max_fids or GUEST_MAX_FIDS,
        )
        if stats is not None:
            stats.probe.fd_budget = config.fd_budget  # published as gofer9p_fd_budget_*
        try:
            os.fstat(args.fd)
            sock = socket.socket(fileno=args.fd)
        except OSError as e:
            print(f"gofer9p serve: --fd {args.fd}: {e.strerror}", file=sys.stderr)
            return 2
        if sock.type != socket.SOCK_STREAM:
            print(f"gofer9p serve: --fd {args.fd} is not a stream socket", file=sys.stderr)
            return 2

        async def one() -> None:
            async with recording, running(stats):
                await serve(sock, point, config, name=f"fd{args.fd}")

        try:
            trio.run(one)
        except OSError as e:
            log.error("connection ended on I/O error: %s", e)
            return 1
        except KeyboardInterrupt:
            return 0
        return 0

    addr: str = args.listen
    from .server import connections_for_fds

    budget = fd_budget(args.max_connections, args.fd_budget)
    max_conn = connections_for_fds(args.max_connections, budget)
    if max_conn < args.max_connections:  # the budget's pinned shares split by what is served
        budget = fd_budget(max_conn, args.fd_budget)
    if max_conn < args.max_connections:
        log.warning(
            "the fd limit leaves room for %d connections, not %d: serving at most %d "
            "(raise RLIMIT_NOFILE for more)",
            max_conn,
            args.max_connections,
            max_conn,
        )
    config = ServerConfig(
        max_msize=args.msize or LISTEN_MSIZE, poll_us=args.poll_us, connections=max_conn,
        idmap=idmap_from_args(args), record=record, fd_budget=budget,
        max_fids=args.max_fids or listen_fids,
    )
    if stats is not None:
        stats.probe.fd_budget = budget
    limits = _Limits(max_conn, args.handshake_timeout)

    async def listen() -> None:
        publish = None
        if addr.startswith("unix:"):
            # Bound and listening under a temporary name, then renamed into place
            # (replacing a stale socket): a client that waits for the path to
            # appear and connects is never refused.
            path = addr[5:]
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            lsock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await lsock.bind(tmp)
            publish = (tmp, path)
        elif addr.startswith("tcp:"):
            host, _, port = addr[4:].rpartition(":")
            lsock = trio.socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
            )
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await lsock.bind((host.strip("[]"), int(port)))
        else:
            raise SystemExit(
                f"gofer9p serve: --listen wants unix:PATH or tcp:HOST:PORT, not {addr}"
            )
        lsock.listen(64)
        if publish is not None:
            os.rename(*publish)
        log.info(
            "serving %s on %s%s: at most %d connections, msize <= %d, fd budget %d",
            args.directory,
            addr,
            " (read-only)" if args.read_only else "",
            max_conn,
            config.max_msize,
            budget.limit,
        )
        count = 0
        # the accept loop waits for the listener through trio: quiet waits poll it too
        with watching(lsock):
            async with recording, running(stats), trio.open_nursery() as nursery:
                while True:
                    try:
                        conn, _ = await lsock.accept()
                    except OSError as e:
                        # EMFILE/ENFILE/ENOBUFS...: the listener must outlive a
                        # client that exhausts our fds; retry once some are freed.
                        log.warning("accept failed: %s; retrying in 0.1 s", e.strerror or e)
                        await trio.sleep(0.1)
                        continue
                    count += 1
                    if not limits.admit():
                        conn.close()
                        continue
                    std = socket.socket(conn.family, conn.type, fileno=conn.detach())
                    if std.family != socket.AF_UNIX:
                        std.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    nursery.start_soon(_serve_closing, std, point, config, f"conn{count}", limits)

    try:
        trio.run(listen)
    except KeyboardInterrupt:
        log.info("interrupted, exiting")
    return 0


def _open_recording(args: argparse.Namespace, max_frame: int) -> Recording | int | None:
    """``--record PATH``'s recording (None without it), or 2 after saying why it cannot be."""
    if args.record is None:
        if args.record_headers_only:
            print("gofer9p serve: --record-headers-only needs --record", file=sys.stderr)
            return 2
        return None
    from .recorder import Recording

    try:
        return Recording.create(
            args.record, headers_only=args.record_headers_only, max_frame=max_frame
        )
    except OSError as e:
        print(f"gofer9p serve: --record {args.record!r}: {e.strerror}", file=sys.stderr)
        return 2


FD_MSIZE = 4 << 20
"""Largest msize ``serve --fd`` grants by default (virtio and p9bench clients use 4 MiB)."""
LISTEN_MSIZE = 1 << 20
"""Largest msize ``serve --listen`` grants by default.  Linux's v9fs client over
tcp, unix or fd transports never uses more (``MAX_SOCK_BUF``, 1 MiB, is their
``maxsize``), and a connection's memory bound is a multiple of msize, which
``--max-connections`` multiplies again (see docs/RESOURCES.md)."""
MAX_CONNECTIONS = 64
"""Default ``--max-connections`` (see docs/RESOURCES.md for its memory and fd cost)."""
HANDSHAKE_TIMEOUT = 5.0
"""Default ``--handshake-timeout``: seconds a connection may take to finish Tversion."""


class _Limits:
    """``serve --listen``'s connection limit and handshake timeout.

    At the limit, a new connection is accepted and closed at once: the client
    sees its connection closed (a mount fails at once) instead of a connect that
    hangs in the listen backlog.  One log line when refusing starts and one when
    a slot is free again (with the count refused), not one per connection: a
    client reconnecting in a loop must not fill the log.
    """

    def __init__(self, max_connections: int, handshake_timeout: float) -> None:
        self.max = max_connections
        self.handshake_timeout = handshake_timeout
        self.active = 0
        self.refused = 0  # in the current episode at the limit
        self.log = logging.getLogger("gofer9p.serve")

    def admit(self) -> bool:
        """Count a new connection in, or refuse it (the caller closes it)."""
        if self.active >= self.max:
            if not self.refused:
                self.log.warning(
                    "connection limit (%d) reached: closing new connections until one ends",
                    self.max,
                )
            self.refused += 1
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
        if self.refused:
            self.log.info(
                "below the connection limit again: %d connection(s) were refused", self.refused
            )
            self.refused = 0


async def _serve_closing(
    sock: socket.socket, point: AttachPoint, config: ServerConfig, name: str, limits: _Limits
) -> None:
    """Serve one accepted connection and close it; an I/O error ends only that one.

    A connection that has not finished Tversion ``limits.handshake_timeout``
    seconds after it was accepted is closed (idle or trickling clients would
    otherwise hold a connection slot, and its memory, for ever)."""
    import trio

    from .server import Connection

    log = logging.getLogger("gofer9p.serve")
    try:
        conn = Connection(sock, point, config, name)
        async with trio.open_nursery() as nursery:

            async def handshake_deadline() -> None:
                await trio.sleep(limits.handshake_timeout)
                if not conn.msize:
                    log.warning(
                        "%s: no Tversion within %g s of connecting: closing",
                        name,
                        limits.handshake_timeout,
                    )
                    nursery.cancel_scope.cancel()

            nursery.start_soon(handshake_deadline)
            await conn.run()
            nursery.cancel_scope.cancel()
    except OSError as e:
        log.warning("%s: I/O error: %s", name, e)
    finally:
        sock.close()
        limits.release()


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v}: want a positive number")
    return n


def _seconds(v: str) -> float:
    t = float(v)
    if not 0 < t <= 3600:
        raise argparse.ArgumentTypeError(f"{v}: want 0 < seconds <= 3600")
    return t


def _client_main(args: argparse.Namespace) -> int:
    from .tool import run_client_command

    return run_client_command(args)


def _stats_main(args: argparse.Namespace) -> int:
    from .top import run_stats

    return run_stats(args)


def _top_main(args: argparse.Namespace) -> int:
    from .top import run_top

    return run_top(args)


def _interval(v: str) -> float:
    t = float(v)
    if not 0 <= t <= 3600:
        raise argparse.ArgumentTypeError(f"{v}: want 0 <= seconds <= 3600")
    return t


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gofer9p", description="A 9P2000.L file server (gofer) for sandboxes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve one directory (no bundle needed)")
    p.add_argument("directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="serve the connected socket inherited at this fd")
    where.add_argument("--listen", metavar="unix:PATH|tcp:HOST:PORT", help="accept connections")
    p.add_argument("--read-only", action="store_true", help="every mutating request gets EROFS")
    p.add_argument(
        "--msize",
        type=int,
        default=0,
        help=f"largest msize granted (default {FD_MSIZE} with --fd, {LISTEN_MSIZE} with --listen)",
    )
    p.add_argument(
        "--max-connections",
        type=_positive_int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="--listen: connections served at once; more are closed at once (default "
        f"{MAX_CONNECTIONS}; each gets an equal share of the fd limit)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=_seconds,
        default=HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="--listen: close a connection that has not finished Tversion after this long "
        f"(default {HANDSHAKE_TIMEOUT:g})",
    )
    add_poll_arg(p)
    add_log_args(p)
    add_idmap_args(p)
    add_record_args(p, inherited=False)
    add_fd_budget_arg(p)
    add_max_fids_arg(p)
    add_stats_args(p, inherited=False)
    p.set_defaults(func=_serve_main)

    sub.add_parser("gofer", help="serve an OCI bundle's mounts on inherited fds", add_help=False)
    sub.add_parser(
        "launch", help="set up a bundle's mounts and start a gofer for it", add_help=False
    )
    sub.add_parser(
        "forkserver", help="a warm parent that forks a confined gofer per request", add_help=False
    )

    c = sub.add_parser("client", help="poke a server: ls, cat, stat, put, mkdir, rm")
    c.add_argument("address", help="unix:PATH or tcp:HOST:PORT")
    c.add_argument("op", choices=["ls", "cat", "stat", "put", "mkdir", "rm", "df"])
    c.add_argument("path", nargs="?", default="")
    c.add_argument("--uid", type=int, default=0, help="n_uname to attach as")
    c.set_defaults(func=_client_main)

    st = sub.add_parser("stats", help="print a gofer's statistics (its --stats endpoint)")
    st.add_argument("address", help="unix:PATH of the statistics endpoint")
    st.add_argument(
        "--interval",
        type=_interval,
        default=0.0,
        metavar="SECONDS",
        help="rates and latencies over this long (default 0: since the gofer started)",
    )
    st.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    st.set_defaults(func=_stats_main)

    tp = sub.add_parser("top", help="a gofer's statistics, refreshed live (q quits)")
    tp.add_argument("address", help="unix:PATH of the statistics endpoint")
    tp.add_argument(
        "--delay", type=_seconds, default=1.0, metavar="SECONDS", help="between refreshes (1)"
    )
    tp.add_argument(
        "--iterations",
        type=_positive_int,
        default=0,
        metavar="N",
        help="stop after N tables (default: until q or Ctrl-C)",
    )
    tp.set_defaults(func=_top_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # gofer and launch own their flags (gVisor-style --flag=value parsing)
    if argv and argv[0] == "gofer":
        from .daemon import main as gofer_main

        return gofer_main(argv[1:])
    if argv and argv[0] == "forkserver":
        from .forkserver import main as forkserver_main

        return forkserver_main(argv[1:])
    if argv and argv[0] == "launch":
        from .launch import main as launch_main

        return launch_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
