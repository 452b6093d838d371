"""The gofer daemon: ``gofer9p gofer --bundle DIR --io-fds 3 --io-fds 4 ...`` (design.md §1).

A sandbox manager (see :mod:`gofer9p.launch`) spawns this process with one connected unix stream
socket per attach point: the bundle's root first, then each 9P mount in spec order.  We check
everything that can be checked while the host is still visible, then confine ourselves (chroot,
capabilities, no_new_privs, seccomp) and only then start serving untrusted clients.

Exit status:

* 0 - every connection ended at EOF, or SIGTERM/SIGINT asked us to stop;
* 1 - a connection ended on an I/O error (or an unexpected internal error);
* 2 - could not start: bad flags, bad bundle, wrong/closed/non-socket fds, chroot or confinement
  failure.  Exactly one line on stderr says why.
* 70 - ``--panic-on-write`` caught a mutating request on a read-only attach point
  (``AttachPoint.panic``).

Nothing heavy is imported before the arguments, bundle and fds are validated, so the error paths
answer fast; everything the server needs is imported *before* the chroot, since the Python library
is not inside the sandbox root.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from .logs import setup_logging
from .options import add_log_args, add_poll_arg, add_stats_args

if TYPE_CHECKING:
    from .attach import AttachPoint
    from .control import StatsEndpoint
    from .seccomp import SeccompMode
    from .server import ServerConfig
    from .spec import Spec

__all__ = [
    "EXIT_IO_ERROR",
    "EXIT_OK",
    "EXIT_SETUP",
    "DaemonError",
    "StartReport",
    "main",
    "run",
]

EXIT_OK = 0
EXIT_IO_ERROR = 1
EXIT_SETUP = 2

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

log = logging.getLogger("gofer9p")

#: :func:`_serve_all`'s arguments as :func:`_confined_start` leaves them: io fds, their
#: sockets, attach points, server config, ready line, statistics endpoint (or None).
_Started = tuple[
    list[int], list[socket.socket], "list[AttachPoint]", "ServerConfig", str, "StatsEndpoint | None"
]


class DaemonError(Exception):
    """The daemon cannot start; ``str(err)`` is the one line printed on stderr."""


class StartReport(Protocol):
    """Where a gofer started by :mod:`gofer9p.forkserver` says how its start went.

    Exactly one of the two is called, once: ``ready()`` when it serves (after confinement,
    with its stop-signal receiver in place), ``failed(line)`` with the one stderr line when it
    could not start (before exiting 2).
    """

    def ready(self) -> None: ...

    def failed(self, line: str) -> None: ...


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``DaemonError``), not usage text + exit."""

    def error(self, message: str) -> NoReturn:
        raise DaemonError(message)


def _parse_bool(v: str) -> bool:
    low = v.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def build_parser(prog: str = "gofer9p gofer") -> argparse.ArgumentParser:
    """The flags of ``gofer9p gofer`` (shared with the cli.py front)."""
    p = _ArgumentParser(prog=prog, description="Serve an OCI bundle's root and 9P mounts.")
    p.add_argument("--bundle", required=True, help="OCI bundle directory (holds config.json)")
    p.add_argument(
        "--io-fds",
        action="append",
        required=True,
        metavar="N[,M...]",
        help="inherited connected unix stream socket, one per attach point: root first, then "
        "each 9P mount in spec order (repeat the flag or give a comma list)",
    )
    p.add_argument(
        "--panic-on-write",
        action="store_true",
        help="abort the whole gofer on a mutating request to a read-only attach point",
    )
    p.add_argument(
        "--apply-caps",
        type=_parse_bool,
        default=True,
        metavar="true|false",
        help="drop capabilities to the six the gofer needs (default true)",
    )
    p.add_argument("--seccomp", choices=("kill", "log", "off"), default="kill")
    add_poll_arg(p)
    add_log_args(p)
    add_stats_args(p, inherited=True)
    return p


_parsers: list[argparse.ArgumentParser] = []


def _parser() -> argparse.ArgumentParser:
    """:func:`build_parser`'s parser, built once (a fork-server builds it for its children)."""
    if not _parsers:
        _parsers.append(build_parser())
    return _parsers[0]


def parse_io_fds(values: Sequence[str]) -> list[int]:
    """``["3", "4,5"]`` -> ``[3, 4, 5]``; no negatives, no duplicates."""
    fds: list[int] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            try:
                fd = int(part, 10)
            except ValueError:
                raise DaemonError(f"--io-fds: {part!r} is not a file descriptor number") from None
            if fd < 0:
                raise DaemonError(f"--io-fds: {fd} is negative")
            if fd in fds:
                raise DaemonError(f"--io-fds: fd {fd} given twice")
            fds.append(fd)
    return fds


_FILE_KINDS = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a pipe",
    stat.S_IFLNK: "a symlink",
}


def check_io_fd(fd: int) -> socket.socket:
    """Return a socket object owning ``fd`` if it is an open, connected unix stream socket.

    On failure the fd is left open (the socket object is detached) and :class:`DaemonError`
    names the fd and what is wrong with it.
    """
    try:
        st = os.fstat(fd)
    except OSError:
        raise DaemonError(f"--io-fds: fd {fd} is not open") from None
    if not stat.S_ISSOCK(st.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a socket")
        raise DaemonError(f"--io-fds: fd {fd} is not a socket ({kind})")
    sock = socket.socket(fileno=fd)  # takes ownership; detach() on every error path
    try:
        if sock.family != socket.AF_UNIX:
            raise DaemonError(f"--io-fds: fd {fd} is not a unix socket ({sock.family.name})")
        if sock.type != socket.SOCK_STREAM:
            raise DaemonError(f"--io-fds: fd {fd} is not a stream socket ({sock.type.name})")
        try:
            sock.getpeername()
        except OSError:
            raise DaemonError(f"--io-fds: fd {fd} is not a connected socket") from None
    except DaemonError:
        sock.detach()
        raise
    return sock


def _open_attach_points(spec: Spec, panic_on_write: bool) -> list[AttachPoint]:
    """One attach point per io fd: "/" then each 9P mount's destination, in spec order.

    A destination may be a regular file (managers bind-mount ``/etc/hosts``,
    ``/etc/resolv.conf`` ...): its attach root is the file itself, as in gVisor, and it
    takes its own fd like any other 9P mount.  Anything but a directory or a regular file
    is refused here, before serving.
    """
    from .attach import AttachPoint

    points = []
    wanted = [("/", spec.root_readonly)] + [(m.destination, m.readonly) for m in spec.mounts]
    for path, ro in wanted:
        try:
            points.append(AttachPoint.open(path, readonly=ro, panic_on_write=panic_on_write))
        except OSError as e:
            raise DaemonError(f"attach point {path!r}: {e.strerror or e}") from None
    return points


def _preload() -> None:
    """Import everything serving needs while the host's Python library is still reachable.

    Also make one user and one group lookup: glibc (2.33+) loads its NSS configuration and
    modules now, from the host, and after it notices the chroot it never reloads them.  Without
    this, the first Tattach by user name would read the *sandbox's* /etc/nsswitch.conf and could
    dlopen a library from the sandbox-controlled root into the gofer.  Later lookups still read
    the chroot's /etc/passwd (the "files" source), which is the right namespace for 9P unames.
    """
    import grp
    import pwd
    import resource  # noqa: F401  (server.fid_cap imports it per connection; a C extension)

    import trio  # noqa: F401

    from . import attach, server  # noqa: F401

    for lookup in (pwd.getpwnam, grp.getgrnam):
        try:
            lookup("root")
        except KeyError:
            pass


class _LateImportWarner:
    """A ``sys.meta_path`` finder that only reports: after the chroot, an import of a module not
    yet loaded will usually fail (the library is outside the root), so say which one, once."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name not in self.seen:
            self.seen.add(name)
            log.warning("module %s imported after the chroot; preload it in daemon._preload", name)


def run(
    argv: Sequence[str] | None = None,
    *,
    after_confine: Callable[[], None] | None = None,
    report: StartReport | None = None,
) -> int:
    """The daemon; ``after_confine`` exists only for :mod:`gofer9p.testing.gofer_with_hooks`.

    The release entry points (:func:`main`, ``python -m gofer9p.daemon``, ``gofer9p gofer``)
    never pass it, so no flag or environment variable can reach a test hook.  ``report`` is
    how a forked gofer (:mod:`gofer9p.forkserver`) tells its requester that it serves or why
    it could not start; the process is the same either way.
    """
    try:
        return _run(argv, after_confine, report)
    except DaemonError as e:
        return _setup_failed(e, report)


async def run_in_loop(
    argv: Sequence[str],
    *,
    after_confine: Callable[[], None] | None = None,
    report: StartReport | None = None,
) -> int:
    """:func:`run` from inside a trio run the caller started before it had ``argv``.

    A pre-forked gofer (:mod:`gofer9p.forkserver`) starts its trio run while it waits for a
    request (starting one costs ~0.7 ms), so the request finds the loop running.  Everything
    :func:`run` does before serving happens here in the same order (flags, spec, fd checks,
    not-dumpable, chroot, attach points, caps, no_new_privs, seccomp), before the first byte
    of any io fd is read; the trio run's own fds (its epoll and wake-up sockets) are then
    older than the chroot and the seccomp filter, which a spawned gofer's are not, and need
    nothing from either.  Same exit statuses and report lines as :func:`run`.
    """
    try:
        start = _confined_start(argv, after_confine)
    except DaemonError as e:
        return _setup_failed(e, report)
    return await _serve_started(start, report)


def _setup_failed(e: DaemonError, report: StartReport | None) -> int:
    """Say why the gofer could not start (stderr, the log file, ``report``): exit status 2."""
    line = f"gofer9p gofer: error: {e}"
    print(line, file=sys.stderr, flush=True)
    if any(isinstance(h, logging.FileHandler) for h in log.handlers):
        log.error("%s", e)  # the log file alone should also say why the gofer stopped
    if report is not None:
        report.failed(line)
    return EXIT_SETUP


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``gofer9p gofer`` and ``python -m gofer9p.daemon``."""
    return run(argv)


def _run(
    argv: Sequence[str] | None,
    after_confine: Callable[[], None] | None,
    report: StartReport | None,
) -> int:
    start = _confined_start(list(sys.argv[1:] if argv is None else argv), after_confine)

    import trio

    return trio.run(_serve_started, start, report)


async def _serve_started(start: _Started, report: StartReport | None) -> int:
    """Serve what :func:`_confined_start` prepared; the exit status (an internal error: 1)."""
    fds, socks, points, config, ready_line, stats = start
    on_ready = None if report is None else report.ready
    try:
        status = await _serve_all(fds, socks, points, config, ready_line, on_ready, stats)
    except Exception:
        log.critical("internal error", exc_info=True)
        return EXIT_IO_ERROR
    log.info("exiting with status %d", status)
    return status


def _confined_start(argv: Sequence[str], after_confine: Callable[[], None] | None) -> _Started:
    """Everything before serving, in order: flags, logging, spec, fd checks, preloads, then
    confinement (not-dumpable, chroot, attach points, caps, no_new_privs, seccomp).  Returns
    :func:`_serve_all`'s arguments; raises :class:`DaemonError` with the one line."""
    args = _parser().parse_args(list(argv))
    # Hold SIGTERM/SIGINT until the serving loop's receiver is installed (_serve_all unblocks
    # them): a stop request during start-up is then a clean exit 0, never a half-confined
    # death or a KeyboardInterrupt traceback.  SIGKILL still works, and stop() escalates to it.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    fds = parse_io_fds(args.io_fds)
    try:
        setup_logging(args.log_level, args.log_file)
    except OSError as e:
        raise DaemonError(f"--log-file {args.log_file!r}: {e.strerror}") from None
    # Only now: --help and flag errors answer without attrs (spec's classes) being imported.
    from . import confine, seccomp
    from .spec import SpecError, load_spec

    try:
        spec = load_spec(args.bundle)
    except SpecError as e:
        raise DaemonError(str(e)) from None
    socks = [check_io_fd(fd) for fd in fds]
    if len(socks) != spec.attach_count:
        for s in socks:
            s.detach()
        raise DaemonError(
            f"got {len(socks)} --io-fds but the bundle has {spec.attach_count} attach points "
            f"(root + {len(spec.mounts)} 9P mounts)"
        )
    seccomp_mode: SeccompMode = args.seccomp

    try:
        _preload()
        confine.preload(seccomp_mode, apply_caps=args.apply_caps)
    except ImportError as e:
        raise DaemonError(f"cannot load the server: {e}") from None
    except (confine.ConfineError, seccomp.SeccompError) as e:
        raise DaemonError(str(e)) from None
    # before the chroot: the endpoint's process probe opens /proc/self/status
    stats = None if args.stats_fd is None else _stats_endpoint(args.stats_fd)
    try:
        confine.assert_single_threaded()
        # First: from here on no process of our uid (a sibling gofer, the manager) can
        # ptrace us or read our memory through /proc.
        confine.set_not_dumpable()
        # while we still hold CAP_SYS_RESOURCE: a cache=loose client keeps a fid
        # (host fds) per cached dentry, far beyond the usual 1024-20000; then each
        # connection (attach point) gets an
        # equal share of it, less a reserve (server.fd_share), so that one client that
        # exhausts its share leaves the others able to attach, walk and open
        from .server import fd_share

        share = fd_share(len(socks))
        root = confine.private_mount_root(spec.root_path)
        confine.chroot_into(root)
        points = _open_attach_points(spec, args.panic_on_write)
        if args.apply_caps:
            confine.drop_capabilities()
        confine.set_no_new_privs()
        allowed = seccomp.install_seccomp(seccomp_mode)
    except (confine.ConfineError, seccomp.SeccompError) as e:
        raise DaemonError(str(e)) from None

    ready_line = (
        f"serving bundle {spec.bundle} root {spec.root_path}: {len(points)} attach points on "
        f"fds {','.join(map(str, fds))}; caps {'dropped' if args.apply_caps else 'kept'}, "
        f"seccomp {seccomp_mode}{f' ({allowed} syscalls)' if allowed else ''}"
        f"{', panic-on-write' if args.panic_on_write else ''}"
    )
    sys.meta_path.insert(0, _LateImportWarner())
    if after_confine is not None:
        after_confine()

    from .server import ServerConfig

    config = ServerConfig(poll_us=args.poll_us, connections=len(socks), fd_share=share)
    return fds, socks, points, config, ready_line, stats


def _stats_endpoint(fd: int) -> StatsEndpoint:
    """The statistics endpoint on the inherited listening socket ``fd`` (``--stats-fd``)."""
    from .control import StatsEndpoint, check_listening

    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise DaemonError(f"--stats-fd: fd {fd}: {e.strerror}") from None
    why = check_listening(sock)
    if why is not None:
        sock.detach()
        raise DaemonError(f"--stats-fd: fd {fd} is {why}")
    return StatsEndpoint(sock)


async def _serve_all(
    fds: list[int],
    socks: list[socket.socket],
    points: list[AttachPoint],
    config: ServerConfig,
    ready_line: str = "serving",
    on_ready: Callable[[], None] | None = None,
    stats: StatsEndpoint | None = None,
) -> int:
    """One server task per connection in one nursery; SIGTERM/SIGINT cancel them all.
    ``stats``: the statistics endpoint, served beside them until they end.

    ``ready_line`` is logged (and ``on_ready`` called) once the signal receiver is in place and
    the held stop signals are unblocked: from then on the daemon is serving and a stop request
    is handled cleanly.
    """
    import trio

    from .server import serve

    failed = False
    remaining = len(socks)

    async with trio.open_nursery() as nursery:
        if stats is not None:
            nursery.start_soon(stats.serve)  # cancelled with the nursery, below

        async def watch_signals(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # pending ones arrive
                task_status.started()
                async for signum in signals:
                    log.info("%s received: closing all connections", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

        async def serve_one(fd: int, sock: socket.socket, point: AttachPoint) -> None:
            nonlocal failed, remaining
            try:
                await serve(sock, point, config, name=f"fd{fd}")
            except OSError as e:
                failed = True
                log.error("fd%d: connection ended on an I/O error: %s", fd, e)
            else:
                log.debug("fd%d: connection closed", fd)
            finally:
                # ours from here on: the client sees its connection end now, not
                # when the last attach point's connection ends too
                sock.close()
                remaining -= 1
                if remaining == 0:
                    nursery.cancel_scope.cancel()  # stops watch_signals

        await nursery.start(watch_signals)
        log.info("%s", ready_line)
        if on_ready is not None:
            on_ready()
        for fd, sock, point in zip(fds, socks, points, strict=True):
            nursery.start_soon(serve_one, fd, sock, point)
    if stats is not None:
        stats.close()
    return EXIT_IO_ERROR if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
