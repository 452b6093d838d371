"""The gofer daemon: ``gofer9p gofer --bundle DIR --io-fds 3 --io-fds 4 ...`` (design.md §1).

A sandbox manager (see :mod:`gofer9p.launch`) spawns this process with one connected unix stream
socket per attach point: the bundle's root first, then each 9P mount in spec order.  We check
everything that can be checked while the host is still visible, then confine ourselves (chroot,
or with ``--setup-root`` a pivoted tmpfs root; capabilities, no_new_privs, Landlock, seccomp)
and only then start serving untrusted clients.

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
from contextlib import nullcontext
from typing import TYPE_CHECKING, NoReturn, Protocol

from .logs import setup_logging
from .options import (
    add_confine_args,
    add_fd_budget_arg,
    add_idmap_args,
    add_log_args,
    add_max_fids_arg,
    add_poll_arg,
    add_record_args,
    add_stats_args,
    idmap_from_args,
)

if TYPE_CHECKING:
    from .attach import AttachPoint
    from .confine import Tree
    from .control import StatsEndpoint
    from .recorder import Recording
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

    ``ready()`` once everything its request decides is done and checked: flags, spec, io
    fds, the chroot (or pivoted root) and the attach points (a bad bundle fails there), the
    mounts report, and whether Landlock can be had as asked.  ``failed(line)`` (with the one
    stderr line, before exiting 2) when one of those fails; only one of the two is called.
    What is left after ``ready()`` are kernel calls that do not depend on the request
    (capabilities, no_new_privs, Landlock, seccomp: ~0.5 ms) and the serving loop's setup,
    all before the first byte of a client is read; they run while the requester wakes up and
    returns (on this VM a wake-up of an idle CPU costs 0.3-1 ms), so its first request is
    usually there when the loop reads.  Should one of those calls fail (the kernel refusing
    one: nothing a request can cause), the gofer exits 2 with its line on stderr only.  A stop
    signal sent meanwhile waits, blocked, until the loop's receiver takes it (exit 0).
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
    p.add_argument(
        "--bundle",
        required=True,
        help="OCI bundle directory: holds config.json (with --spec-fd: only anchors a "
        "relative root.path or mount source)",
    )
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
    add_idmap_args(p)
    add_confine_args(p)
    add_record_args(p, inherited=True)
    add_fd_budget_arg(p)
    add_max_fids_arg(p)
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


def _open_recording(
    fd: int | None, headers_only: bool, socks: list[socket.socket]
) -> Recording | None:
    """``--record-fd``'s recording (None without it).  The inherited fd must be open for
    writing; the pcap file header is written to it now, before confinement, and the
    confined gofer only ever ``write``s to it.  On an error the io sockets are detached
    (left open, as :func:`check_io_fd` leaves them)."""
    if fd is None and not headers_only:
        return None
    try:
        if fd is None:
            raise DaemonError("--record-headers-only needs --record-fd")
        import fcntl

        from .recorder import Recording
        from .server import ServerConfig

        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                raise DaemonError(f"--record-fd: fd {fd} is not open for writing")
            return Recording(fd, headers_only=headers_only, max_frame=ServerConfig().max_msize)
        except OSError as e:
            raise DaemonError(f"--record-fd: fd {fd}: {e.strerror or e}") from None
    except DaemonError:
        for s in socks:
            s.detach()
        raise


def _open_attach_points(spec: Spec, panic_on_write: bool, tree: Tree) -> list[AttachPoint]:
    """One attach point per io fd: the root, then each 9P mount's destination as resolved
    (``tree``, :mod:`gofer9p.confine`), in spec order; takes the fds it uses out of ``tree``.

    A destination may be a regular file (managers bind-mount ``/etc/hosts``,
    ``/etc/resolv.conf`` ...): its attach root is the file itself, as in gVisor, and it
    takes its own fd like any other 9P mount.  Anything but a directory or a regular file
    is refused here, before serving.
    """
    points: list[AttachPoint] = []
    try:
        root_fd, tree.root_fd = tree.root_fd, -1  # handed over, closed if refused
        points.append(_attach_point("/", root_fd, spec.root_readonly, panic_on_write))
        for m, r in zip(spec.mounts, tree.mounts, strict=True):
            fd, r.fd = r.fd, -1
            parent = -1
            if stat.S_ISREG(os.fstat(fd).st_mode):  # a file root keeps its directory's fd
                parent, r.parent_fd = r.parent_fd, -1
            points.append(_attach_point(r.path, fd, m.readonly, panic_on_write, parent, r.name))
    except BaseException:
        for p in points:
            p.close()
        raise
    return points


def _attach_point(
    path: str, fd: int, ro: bool, panic_on_write: bool, parent_fd: int = -1, name: str = ""
) -> AttachPoint:
    """:class:`AttachPoint` on ``fd`` (closed, with ``parent_fd``, if it is refused)."""
    from .attach import AttachPoint

    try:
        return AttachPoint(
            path, fd, readonly=ro, panic_on_write=panic_on_write, parent_fd=parent_fd,
            name=os.fsencode(name),
        )
    except OSError as e:
        for f in (fd, parent_fd):
            if f >= 0:
                os.close(f)
        raise DaemonError(f"attach point {path!r}: {e.strerror or e}") from None


def _write_mounts(fd: int, spec: Spec, points: list[AttachPoint], io_fds: list[int]) -> None:
    """``--mounts-fd``: what each io fd serves, as resolved, as one JSON array; then close it.

    One object per io fd, in ``--io-fds`` order: ``index``, ``fd``, ``destination`` (inside
    the root, symlinks resolved), ``source`` (the host path the spec names; the rootfs for
    index 0), ``readonly``.
    """
    import json

    sources = [spec.root_path, *(m.source for m in spec.mounts)]
    doc = [
        {"index": i, "fd": io, "destination": p.path, "source": src, "readonly": p.readonly}
        for i, (io, p, src) in enumerate(zip(io_fds, points, sources, strict=True))
    ]
    data = memoryview(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError as e:
        raise DaemonError(f"--mounts-fd {fd}: {e.strerror}") from None
    finally:
        os.close(fd)


def _check_extra_fd(fd: int | None, flag: str, taken: list[int]) -> None:
    """An fd flag's fd must be open and not one of the io fds (or another flag's)."""
    if fd is None:
        return
    if fd in taken:
        raise DaemonError(f"{flag}: fd {fd} is also given to another flag")
    try:
        os.fstat(fd)
    except OSError:
        raise DaemonError(f"{flag}: fd {fd} is not open") from None
    taken.append(fd)


_preloaded: list[bool] = []


def _preload() -> None:
    """Import everything serving needs while the host's Python library is still reachable.

    Also make one user and one group lookup: glibc (2.33+) loads its NSS configuration and
    modules now, from the host, and after it notices the chroot it never reloads them.  Without
    this, the first Tattach by user name would read the *sandbox's* /etc/nsswitch.conf and could
    dlopen a library from the sandbox-controlled root into the gofer.  Later lookups still read
    the chroot's /etc/passwd (the "files" source), which is the right namespace for 9P unames.

    Done once per process image: a gofer forked by :mod:`gofer9p.forkserver` inherits the
    fork-server's loaded modules and NSS state (the server ran this before it forked), and
    glibc, seeing the child's chroot, keeps that state as it keeps a spawned gofer's
    (tests/escape/test_daemon_nss.py starts the gofer each way).
    """
    if _preloaded:
        return
    import grp
    import pwd
    import resource  # noqa: F401  (server.fd_budget imports it; a C extension)

    import trio  # noqa: F401

    from . import attach, server  # noqa: F401

    for lookup in (pwd.getpwnam, grp.getgrnam):
        try:
            lookup("root")
        except KeyError:
            pass
    _preloaded.append(True)


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
        start = _confined_start(argv, after_confine, report)
    except DaemonError as e:
        return _setup_failed(e, report)
    return await _serve_started(start)


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
    start = _confined_start(list(sys.argv[1:] if argv is None else argv), after_confine, report)

    import trio

    return trio.run(_serve_started, start)


async def _serve_started(start: _Started) -> int:
    """Serve what :func:`_confined_start` prepared; the exit status (an internal error: 1)."""
    fds, socks, points, config, ready_line, stats = start
    try:
        status = await _serve_all(fds, socks, points, config, ready_line, stats)
    except Exception:
        log.critical("internal error", exc_info=True)
        return EXIT_IO_ERROR
    log.info("exiting with status %d", status)
    return status


def _confined_start(
    argv: Sequence[str], after_confine: Callable[[], None] | None, report: StartReport | None
) -> _Started:
    """Everything before serving, in order: flags, logging, spec, fd checks, preloads, then
    confinement (not-dumpable, chroot, attach points, caps, no_new_privs, seccomp); ``ok`` on
    ``report`` before the caps, once what the request decides is done (:class:`StartReport`).
    Returns :func:`_serve_all`'s arguments; raises :class:`DaemonError` with the one line."""
    args = _parser().parse_args(list(argv))
    # Hold SIGTERM/SIGINT until the serving loop's receiver is installed (_serve_all unblocks
    # them): a stop request during start-up is then a clean exit 0, never a half-confined
    # death or a KeyboardInterrupt traceback.  SIGKILL still works, and stop() escalates to it.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    fds = parse_io_fds(args.io_fds)
    taken = list(fds)
    _check_extra_fd(args.spec_fd, "--spec-fd", taken)
    _check_extra_fd(args.mounts_fd, "--mounts-fd", taken)
    try:
        setup_logging(args.log_level, args.log_file)
    except OSError as e:
        raise DaemonError(f"--log-file {args.log_file!r}: {e.strerror}") from None
    # Only now: --help and flag errors answer without attrs (spec's classes) being imported.
    from . import confine, landlock, seccomp
    from .spec import SpecError, load_spec, load_spec_fd

    try:
        if args.spec_fd is not None:
            spec = load_spec_fd(args.spec_fd, args.bundle)
        else:
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
    record = _open_recording(args.record_fd, args.record_headers_only, socks)
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
        # equal share of the fd budget (server.fd_budget), so that one client that
        # exhausts its share leaves the others able to attach, walk and open
        from .server import fd_budget

        budget = fd_budget(len(socks), args.fd_budget)
        if stats is not None:
            stats.probe.fd_budget = budget  # published as gofer9p_fd_budget_*
        # The root: chroot into a private bind of the rootfs, or (--setup-root) pivot into
        # an empty tmpfs holding only the served binds; then the attach points, from the fds
        # the tree was resolved with (nothing is looked up by name again).
        tree = confine.pivot_tree(spec) if args.setup_root else confine.chroot_tree(spec)
        try:
            points = _open_attach_points(spec, args.panic_on_write, tree)
        finally:
            tree.close()
        if args.mounts_fd is not None:
            _write_mounts(args.mounts_fd, spec, points, fds)
        fence = [(p.fd, p.readonly, p.root_fmt == stat.S_IFDIR) for p in points]
        if report is not None:
            # What the request decides is done and checked: the requester may hand the
            # sockets out while the rest (kernel calls only) runs before any byte is read.
            if args.landlock != "off":
                landlock.unavailable(fence, args.landlock, landlock.abi())
            report.ready()
        if args.apply_caps:
            confine.drop_capabilities()
        confine.set_no_new_privs()
        # Landlock needs no_new_privs and the attach points' fds; seccomp comes last (its
        # whitelist has no landlock calls).
        fenced = landlock.restrict(fence, args.landlock)
        allowed = seccomp.install_seccomp(seccomp_mode)
    except (confine.ConfineError, seccomp.SeccompError, landlock.LandlockError) as e:
        raise DaemonError(str(e)) from None

    ready_line = (
        f"serving bundle {spec.bundle} root {spec.root_path}: {len(points)} attach points on "
        f"fds {','.join(map(str, fds))}; caps {'dropped' if args.apply_caps else 'kept'}, "
        f"seccomp {seccomp_mode}{f' ({allowed} syscalls)' if allowed else ''}, {fenced}"
        f"{', pivoted root' if args.setup_root else ''}"
        f"{', panic-on-write' if args.panic_on_write else ''}"
    )
    idmap = idmap_from_args(args)
    if idmap is not None:
        ready_line += f"; ids {idmap.describe()}"
    sys.meta_path.insert(0, _LateImportWarner())
    if after_confine is not None:
        after_confine()

    from .server import GUEST_MAX_FIDS, ServerConfig

    config = ServerConfig(
        poll_us=args.poll_us, connections=len(socks), fd_budget=budget,
        max_fids=args.max_fids or GUEST_MAX_FIDS, idmap=idmap, record=record,
    )
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
    stats: StatsEndpoint | None = None,
) -> int:
    """One server task per connection in one nursery; SIGTERM/SIGINT cancel them all.
    ``stats``: the statistics endpoint, served beside them until they end.

    ``ready_line`` is logged once the signal receiver is in place and
    the held stop signals are unblocked: from then on the daemon is serving and a stop request
    is handled cleanly (a signal that arrives before ``watch_signals`` first runs waits in the
    receiver).
    """
    import trio

    from .server import serve

    # (gofer9p.recorder was imported before the chroot when there is a recording)
    recording = nullcontext() if config.record is None else config.record.running()
    failed = False
    remaining = len(socks)

    # The stop signals' receiver is entered here, not in a task the nursery starts: the
    # gofer serves (and says so) without first waiting for trio to schedule that task.
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # pending ones arrive
        async with recording, trio.open_nursery() as nursery:
            if stats is not None:
                nursery.start_soon(stats.serve)  # cancelled with the nursery, below

            async def watch_signals() -> None:
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

            nursery.start_soon(watch_signals)
            log.info("%s", ready_line)
            for fd, sock, point in zip(fds, socks, points, strict=True):
                nursery.start_soon(serve_one, fd, sock, point)
    if stats is not None:
        stats.close()
    return EXIT_IO_ERROR if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
