"""Where the server under fuzz runs, and how its health is measured.

The kinds, chosen with ``--target``:

* ``inproc`` (default): ``gofer9p.server.Connection`` in a trio loop on a
  background thread of this process, one socketpair per connection.  Fastest;
  the fid table is visible (``Session.fid_count()``), an exception escaping
  the connection task or an ``internal error`` log record is caught as a
  crash with its traceback.
* ``serve``: a spawned ``gofer9p serve DIR --listen unix:SOCK`` process, so
  the real process's fds (``/proc/PID/fd``) and VmRSS can be watched across
  many connections; its error log is scanned for crashes.
  ``serve-fd``: one ``gofer9p serve --fd N DIR`` process per connection, the
  way a sandbox manager runs a gofer: it must also exit 0 at EOF.
* ``daemon``: the confined ``gofer9p gofer`` (chroot, capabilities, seccomp in kill mode),
  started as a sandbox manager does; several connections of one daemon (see
  :class:`DaemonTarget`); a death by SIGSYS is a finding.
* ``fault``: the in-process server whose syscalls fail on a seeded schedule
  (:class:`FaultTarget`, :mod:`gofer9p.testing.faults`): the error and clean-up paths.
* ``unix:PATH``: an already running server.  The export directory is unknown
  (no host-side comparison); the process is found with ``SO_PEERCRED``.

The attach point is the export directory, read-write or read-only, or (``file_root``) a
regular file in it.

Every wait is bounded: starting a server, connecting, and the end of a
connection (``Link.finish``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]


def fd_count(pid: int) -> int | None:
    """Open fds of ``pid`` (None if /proc cannot tell)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_targets(pid: int) -> dict[int, str]:
    """``{fd: readlink target}`` of ``pid`` (empty if /proc cannot tell)."""
    out: dict[int, str] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for n in names:
        try:
            out[int(n)] = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            pass
    return out


def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None if /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (fuzzers leave odd modes behind)."""
    for entry in os.scandir(path):
        p = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            for root, dirs, _files in os.walk(p):
                for d in dirs:
                    sub = os.path.join(root, d)
                    if os.path.islink(sub):
                        # os.walk lists symlinks to directories in ``dirs``: chmod would
                        # follow one the fuzzer pointed at "/" (this chmod'ed / to 0700)
                        continue
                    try:
                        os.chmod(sub, 0o700)
                    except OSError:
                        pass
            try:
                os.chmod(p, 0o700)
            except OSError:
                pass
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                pass


class Link:
    """One connection to a target: a connected socket plus what the target can tell.

    ``prefix``: the names a client walks from this connection's attach root to the export
    (empty: the attach root is the export; ``None``: the export is not below it).  Only the
    daemon's extra connections have one (see :class:`DaemonTarget`).
    """

    faults = False
    """The server fails some of this connection's syscalls on purpose (:class:`FaultTarget`):
    its requests need a valid reply, not a success."""

    def __init__(self, sock: socket.socket, prefix: tuple[bytes, ...] | None = ()) -> None:
        self.sock = sock
        self.prefix = prefix

    def fid_count(self) -> int | None:
        """Fids the server holds for this connection, when visible (in-process)."""
        return None

    def pid(self) -> int | None:
        """The server process serving this connection, when known."""
        return None

    def finish(self, timeout: float) -> list[str]:
        """After our side closed: wait for the server side to end; return problems."""
        return []


class Target:
    """A server to fuzz.  ``start`` before use, ``stop`` after (both idempotent)."""

    name = "?"
    export: Path | None = None
    """The exported host directory, when the fuzzer may look at it."""
    per_connection_process = False
    file_root = False
    """The attach point is the regular file ``FILE_ROOT`` in the export (``--attach file``: a
    file bind mount, as a sandbox's /etc/resolv.conf), not the export directory itself."""

    @property
    def served(self) -> Path | None:
        """The host path the server is given: the export, or its file root."""
        if self.export is None or not self.file_root:
            return self.export
        return self.export / FILE_ROOT

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def open(self) -> Link:
        raise NotImplementedError

    def pid(self) -> int | None:
        """The long-lived server process (None: unknown or one per connection)."""
        return None

    def problems(self) -> list[str]:
        """Crash signals seen since the last call (exceptions, error logs, death)."""
        return []

    def alive(self) -> bool:
        return True

    def open_pair(self) -> tuple[Link, Link]:
        """Two connections to the same server process, both reaching the export: one to
        misbehave (or a second client of the export), one to probe latency."""
        return self.open(), self.open()

    def open_quiet(self) -> Link:
        """A connection for the harness's own checks (liveness, the warm-up): one no
        injected fault touches (see :class:`FaultTarget`); any other target's :meth:`open`."""
        return self.open()

    def open_more(self, n: int) -> list[Link]:
        """Up to ``n`` more connections to the process serving the last :meth:`open_pair`.

        For a server that takes any number of connections, ``n`` new ones (a refused connect,
        the listen backlog full, is retried for a few seconds, then the list ends short); for
        the daemon, its spare attach points; for one process per connection, none.
        """
        if self.per_connection_process:
            return []
        out: list[Link] = []
        for _ in range(n):
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    out.append(self.open())
                    break
                except (BlockingIOError, ConnectionRefusedError, TimeoutError):
                    if time.monotonic() > deadline:
                        return out
                    time.sleep(0.01)
        return out

    def restart(self) -> None:
        """Start over after the server died (unattended runs keep going)."""
        self.stop()
        self.start()

    def reset_export(self) -> None:
        """Empty the export between fuzz cases (only with no connection open).

        The root itself is reset too: a fuzz case may have changed its mode
        or set xattrs on it, and the next case's model starts from scratch.
        """
        root = self.served
        if root is None:
            return
        if self.file_root:
            # the server holds this very inode: reset it in place, never replace it
            with open(root, "r+b") as f:
                f.truncate(0)
                f.write(FILE_ROOT_DATA)
        else:
            empty_dir(root)
        os.chmod(root, 0o644 if self.file_root else 0o755)
        for name in os.listxattr(root):
            try:
                os.removexattr(root, name)
            except OSError:
                pass

    def __enter__(self) -> Target:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


FILE_ROOT = "root-file"
FILE_ROOT_DATA = b"a file served as the attach point\n" * 100


def _make_export(file_root: bool = False) -> tuple[Path, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="gofer9p-fuzz-"))
    export = tmp / "export"
    export.mkdir()
    export.chmod(0o755)
    if file_root:
        (export / FILE_ROOT).write_bytes(FILE_ROOT_DATA)
        (export / FILE_ROOT).chmod(0o644)
    return tmp, export


# ------------------------------------------------------------------ in-process
class _ErrorCatcher(logging.Handler):
    """Keeps ERROR+ records of the gofer9p loggers: an ``internal error`` is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []
        self.mu = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        with self.mu:
            self.lines.append(text)


class _InprocLink(Link):
    def __init__(self, sock: socket.socket, conn: Any, done: threading.Event) -> None:
        super().__init__(sock)
        self.conn = conn
        self.done = done

    def fid_count(self) -> int | None:
        return int(self.conn.session.fid_count())

    def pid(self) -> int | None:
        return os.getpid()

    def finish(self, timeout: float) -> list[str]:
        if not self.done.wait(timeout):
            return [f"hang: server connection task still running {timeout:.0f}s after EOF"]
        n = self.conn.session.fid_count()
        return [f"leak: {n} fids left after the connection ended"] if n else []


class InprocTarget(Target):
    """The server in a trio loop on a thread of this process (see module doc)."""

    name = "inproc"

    def __init__(
        self,
        *,
        max_msize: int = 1 << 20,
        readonly: bool = False,
        plant: str = "",
        file_root: bool = False,
        fd_share: int = 0,
    ) -> None:
        self.max_msize = max_msize
        self.readonly = readonly
        self.plant = plant
        self.file_root = file_root
        self.fd_share = fd_share
        """Host fds each connection may hold (0: the server's default): a small share makes
        the server reclaim idle fids' fds and reopen them on use (``--fd-share``)."""
        self._unplant: Any = None
        self._thread: threading.Thread | None = None
        self._token: Any = None
        self._nursery: Any = None
        self._ready = threading.Event()
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._catcher = _ErrorCatcher()
        self._seen = 0
        self._old_level = logging.NOTSET
        self._old_umask: int | None = None
        self._tmp: Path | None = None
        self.point: Any = None
        self.count = 0
        self.config: dict[str, Any] = {"fd_share": fd_share} if fd_share else {}
        """More ServerConfig fields for every connection (``fd_share``; :class:`FaultTarget`'s)."""

    def start(self) -> None:
        if self._thread is not None:
            return
        from gofer9p.attach import AttachPoint

        # The daemon runs with umask 0 (confine.py: the client sends full
        # modes); so does this server, or a Tmkdir of 1777 comes out 1755 and
        # the stateful model, which expects the daemon's behaviour, disagrees.
        self._old_umask = os.umask(0)
        self._tmp, self.export = _make_export(self.file_root)
        # (no panic-on-write here: AttachPoint.panic would _exit the fuzzer; the daemon has it)
        self.point = AttachPoint.open(str(self.served), readonly=self.readonly)
        if self.plant:
            from gofer9p.testing.plant import apply

            self._unplant = apply(self.plant.split(","))
        logger = logging.getLogger("gofer9p")
        self._old_level = logger.level
        # warnings (one per malformed frame) would flood any log capture
        logger.setLevel(logging.ERROR)
        logger.addHandler(self._catcher)
        self._thread = threading.Thread(target=self._run, name="gofer9p-fuzz-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("in-process server did not start within 10s")

    def _run(self) -> None:
        import trio

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException:
            with self._lock:
                self._errors.append("crash: server loop died\n" + traceback.format_exc())

    def open(self) -> Link:
        return self._open_named("fuzz")

    def _open_named(self, prefix: str) -> Link:
        import trio

        from gofer9p.server import Connection, ServerConfig

        self.count += 1
        a, b = socket.socketpair()
        a = self._server_socket(a, prefix)
        config = ServerConfig(max_msize=self.max_msize, **self.config)
        conn = Connection(a, self.point, config, f"{prefix}{self.count}")
        done = threading.Event()

        async def serve_one() -> None:
            try:
                await conn.run()
            except OSError:
                pass  # the connection's socket failed: it ends alone (cli.py, daemon.py)
            except BaseException as e:
                if not isinstance(e, trio.Cancelled):
                    with self._lock:
                        self._errors.append(
                            f"crash: serve() raised {type(e).__name__}: {e}\n"
                            + "".join(traceback.format_exception(e))
                        )
                raise
            finally:
                a.close()
                done.set()

        def spawn() -> None:
            self._nursery.start_soon(serve_one)

        try:
            trio.from_thread.run_sync(spawn, trio_token=self._token)
        except trio.RunFinishedError:
            a.close()
            b.close()
            # (the loop died of an exception a connection raised: problems() has it, and
            # the fuzzer restarts the target as it would a dead server process)
            raise ConnectionRefusedError("the in-process server's loop has exited") from None
        return _InprocLink(b, conn, done)

    def _server_socket(self, sock: socket.socket, prefix: str) -> socket.socket:
        """The server's end of a new connection named ``prefix``N (see :class:`FaultTarget`)."""
        return sock

    def pid(self) -> int | None:
        return os.getpid()

    def problems(self) -> list[str]:
        with self._lock:
            out = self._errors[:]
            self._errors.clear()
        with self._catcher.mu:
            new = self._catcher.lines[self._seen :]
            self._seen = len(self._catcher.lines)
        return out + [f"crash: server logged {line}" for line in new]

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._thread is None:
            return
        import trio

        if self._thread.is_alive() and self._nursery is not None:
            try:
                trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._token)
            except (trio.RunFinishedError, RuntimeError):
                pass
            self._thread.join(10)
        self._thread = None
        logger = logging.getLogger("gofer9p")
        logger.removeHandler(self._catcher)
        logger.setLevel(self._old_level)
        if self.point is not None:
            self.point.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._old_umask is not None:
            os.umask(self._old_umask)
            self._old_umask = None
        if self._unplant is not None:
            self._unplant()
            self._unplant = None


class FaultTarget(InprocTarget):
    """The in-process server with its syscalls failing on a seeded schedule, and a host
    layout that reaches the rest of what a plain export never does.

    :mod:`gofer9p.testing.faults` makes the server's and the attach layer's syscalls fail
    (EMFILE from an open or a pipe, EIO from a read or a close, EINVAL from a splice, ENOSYS
    from fchmodat2, EPIPE or EAGAIN from the connection socket's send, ...) at ``rate`` per
    call, as a function of ``seed`` and of the request's
    bytes: replaying a finding's frames fails the same calls.  The error and clean-up paths a
    healthy host never runs are judged by the usual oracles: every reply is a valid reply
    (an injected errno is one the call can return), the connection ends cleanly, no
    internal error is logged, no fd is left behind once the connections closed, memory
    stays within its bounds.  The stateful model expects a healthy host: run the frames,
    pressure and race fuzzers against this target.  ``--target fault:SEED:RATE`` replays
    a finding with the schedule it was found with (its ``.json`` says which).

    Beside the faults, every connection has an id map (:data:`IDMAP`: guest root is host
    root, guest 1000.. are host 2000.., every other id unmapped) and a small fd share
    (:data:`FD_SHARE`: idle fids' fds are reclaimed and revived); as root, in a mount
    namespace of this process's own (the mounts go with it), the export's ``d1``,
    ``fz-dir`` and ``d2`` (names the race and frame fuzzers use) are tmpfs mount points,
    ``d2`` read-only, after :data:`OVERFLOW_MOUNTS` other tmpfs mounts were met, so their
    files' qids take the overflow path of a 256th device.
    """

    name = "fault"

    IDMAP = {"uids": [(0, 0, 1), (1000, 2000, 100)], "gids": [(0, 0, 1), (1000, 3000, 100)]}
    FD_SHARE = 40
    MOUNTED = ("d1", "fz-dir", "d2")
    READ_ONLY = ("d2",)
    """Of :data:`MOUNTED`, the read-only mounts (a sandbox's read-only bind mount inside a
    read-write export: a mode, owner or time change on them fails in the kernel, EROFS)."""
    OVERFLOW_MOUNTS = 255

    def __init__(self, *, seed: int = 1, rate: float | None = None, **kwargs: Any) -> None:
        from gofer9p.testing.faults import DEFAULT_RATE

        super().__init__(**kwargs)
        self.seed = seed
        self.rate = DEFAULT_RATE if rate is None else rate
        self.schedule: Any = None
        self._unfault: Any = None
        self.mounts: list[Path] = []
        """The tmpfs mount points in the export (empty: not root, or no mount namespace)."""

    @property
    def spec(self) -> str:
        """``fault:SEED:RATE``: the ``--target`` that replays this target's schedule."""
        return f"fault:{self.seed}:{self.rate:g}"

    def start(self) -> None:
        if self._thread is not None:
            return
        from gofer9p.attach import IdMap

        self.config = {"idmap": IdMap(**self.IDMAP),  # type: ignore[arg-type]
                       "fd_share": self.fd_share or self.FD_SHARE}
        # (before the server's threads start: they share the namespace of the thread that
        # starts them)
        private = os.geteuid() == 0 and not self.file_root and _private_mounts()
        super().start()
        if private:
            self._mount()
        from gofer9p.testing.faults import apply

        self.schedule, self._unfault = apply(self.seed, self.rate)

    def _mount(self) -> None:
        """The tmpfs mount points (see the class doc); nothing where mounting is refused."""
        assert self.export is not None and self._tmp is not None
        extra = self._tmp / "mounts"
        extra.mkdir()
        others = [extra / f"m{i}" for i in range(self.OVERFLOW_MOUNTS)]
        wanted = [*others, *(self.export / n for n in self.MOUNTED)]
        for p in wanted:
            p.mkdir()
            if not _mount_tmpfs(p, read_only=p.name in self.READ_ONLY and p.parent == self.export):
                break
            self.mounts.append(p)
        # the server meets every other device first (as a walk onto it would), so the
        # export's mount points are devices 256 and on; then the others go away
        for p in self.mounts:
            st = os.stat(p)
            self.point.qid_path(st.st_dev, st.st_ino)
        for p in others:
            if p in self.mounts:
                _umount(p)
                self.mounts.remove(p)
        # A file re-opened by handle needs one fd of its mount, kept by the attach point from
        # first use on (bounded: one per mount): made now, or a fuzzer would call it a leak.
        from gofer9p.attach._sys import file_handle

        for p in [self.export, *self.mounts]:
            fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
            try:
                self.point.mount_fd(file_handle(fd)[1], fd)
            finally:
                os.close(fd)

    def reset_export(self) -> None:
        super().reset_export()
        for p in self.mounts:
            try:
                os.chmod(p, 0o755)  # (a mount point's own mode survives the reset's removal)
            except OSError:
                pass  # (a read-only one)

    def open(self) -> Link:
        link = super().open()
        link.faults = True
        return link

    def _server_socket(self, sock: socket.socket, prefix: str) -> socket.socket:
        from gofer9p.testing.faults import QUIET, faulty_socket

        if prefix == QUIET or self.schedule is None:
            return sock
        return faulty_socket(self.schedule, sock)

    def open_quiet(self) -> Link:
        from gofer9p.testing.faults import QUIET

        return self._open_named(QUIET)

    def open_pair(self) -> tuple[Link, Link]:
        """The second connection (the latency probe, the race's second client) is quiet: a
        probe's round trips must succeed, and faults on it would be no finding."""
        return self.open(), self.open_quiet()

    def injected(self) -> dict[str, int]:
        """How many calls of each name were made to fail so far."""
        return dict(self.schedule.injected) if self.schedule is not None else {}

    def stop(self) -> None:
        if self._unfault is not None:
            self._unfault()
            self._unfault = None
        super().stop()
        for p in self.mounts:
            _umount(p)
        self.mounts = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)  # the mount points, now plain dirs


_MS_REC, _MS_PRIVATE, _CLONE_NEWNS, _MNT_DETACH = 0x4000, 0x40000, 0x20000, 2
_own_mount_ns: list[bool] = []


def _private_mounts() -> bool:
    """Move this process into a mount namespace of its own (once): mounts made for a fuzz
    target then vanish with the process, however it ends, and are seen by nobody else.
    Threads started later share it; false where the kernel refuses."""
    import ctypes

    if not _own_mount_ns:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.unshare(_CLONE_NEWNS) == 0 and libc.mount(
            None, b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
        _own_mount_ns.append(ok)
    return _own_mount_ns[0]


def _mount_tmpfs(path: Path, read_only: bool = False) -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.mount(b"gofer9p-fuzz", os.fsencode(path), b"tmpfs", 1 if read_only else 0,
                           b"size=4m,nr_inodes=4096,mode=0755") == 0)  # (1: MS_RDONLY)


def _umount(path: Path) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).umount2(os.fsencode(path), _MNT_DETACH)


# ------------------------------------------------------------------ processes
# Servers are started in their own session: a Ctrl-C (or a SIGTERM to our
# process group) must reach the fuzzer only, which then stops the server;
# a server killed under a running fuzz case would be reported as a crash.
def _gofer_cmd(plant: str = "") -> list[str]:
    """``python -m gofer9p``, or the planted-defect runner (gofer9p.testing.plant) for tests."""
    return [sys.executable, "-m", "gofer9p.testing.plant" if plant else "gofer9p"]


def _env(plant: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GOFER9P_TEST_PLANT", None)
    if plant:
        env["GOFER9P_TEST_PLANT"] = plant
    return env


AS_LIMIT = 6 << 30
"""Address-space limit put on every server process we spawn: a memory finding must end in a
report (the memory oracle stops sending long before this), never in the host's OOM killer."""


def _limit(pid: int) -> None:
    import resource

    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    except (OSError, ValueError):
        pass


class _LogScanner:
    """Reads new records of a server log file; ERROR/CRITICAL records are crashes.

    A record is a timestamped line plus its continuation lines (a logged
    traceback), so one ``internal error`` with its traceback is one problem.
    A ``Traceback`` that is not part of a logged record (an uncaught
    exception printed to stderr) starts a record of its own.  The logging
    module writes each record with one write, so a chunk ending in a newline
    ends on a record boundary.
    """

    _START = re.compile(r"^\d{4}-\d\d-\d\dT")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0

    def new_problems(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1  # consume whole lines only
        self.pos += cut
        records: list[list[str]] = []
        for line in data[:cut].decode(errors="replace").splitlines():
            bad_head = bool(records) and (
                " ERROR " in records[-1][0] or " CRITICAL " in records[-1][0]
            )
            if (
                self._START.match(line)
                or not records
                or (line.startswith("Traceback") and not bad_head)
            ):
                records.append([line])
            else:
                records[-1].append(line)
        out = []
        for rec in records:
            head = rec[0]
            if " ERROR " in head or " CRITICAL " in head or head.startswith("Traceback"):
                out.append("crash: server logged " + "\n".join(rec).strip())
        return out


def _shell_fd_limit() -> None:
    """In a spawned server, before it runs: the soft fd limit a login shell gives (1024), which
    the server raises itself (``server.raise_fd_limit``), as it does when a person starts it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft > 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


class ServeTarget(Target):
    """``gofer9p serve DIR --listen unix:SOCK`` spawned once, many connections (started as from
    a login shell: umask 022, soft fd limit 1024, which it raises).  ``record``: with ``--record`` (every
    connection's frames written to ``session.pcap`` in the target's directory; splicing off)."""

    name = "serve"

    def __init__(
        self,
        *,
        max_msize: int = 1 << 20,
        readonly: bool = False,
        plant: str = "",
        file_root: bool = False,
        record: bool = False,
    ) -> None:
        self.max_msize = max_msize
        self.readonly = readonly
        self.plant = plant
        self.file_root = file_root
        self.record = record
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self.sock_path: Path | None = None
        self.log_path: Path | None = None
        self._scanner: _LogScanner | None = None
        self._reported_death = False

    def start(self) -> None:
        if self.proc is not None:
            return
        self._tmp, self.export = _make_export(self.file_root)
        self.sock_path = self._tmp / "gofer.sock"
        self.log_path = self._tmp / "gofer.log"
        cmd = [
            *_gofer_cmd(self.plant),
            "serve",
            str(self.served),
            "--listen",
            f"unix:{self.sock_path}",
            "--msize",
            str(self.max_msize),
            "--log-level",
            "error",
            "--log-file",
            str(self.log_path),
        ]
        if self.readonly:
            cmd.append("--read-only")
        if self.record:
            cmd += ["--record", str(self._tmp / "session.pcap")]
        with open(self.log_path, "ab") as log:
            # a login shell's umask (022): the client sends full modes and the server must
            # give new files exactly those whatever its umask (the stateful model checks)
            self.proc = subprocess.Popen(
                cmd,
                env=_env(self.plant),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                stderr=log,
                umask=0o022,
                preexec_fn=_shell_fd_limit,
            )
        _limit(self.proc.pid)
        self._reported_death = False
        self._scanner = _LogScanner(self.log_path)
        deadline = time.monotonic() + 15
        while not self._accepting():
            # (the path exists from bind(), a connect is refused until listen())
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"gofer9p serve did not start: {self.log_path.read_text(errors='replace')}"
                )
            time.sleep(0.02)

    def _accepting(self) -> bool:
        assert self.sock_path is not None
        if not self.sock_path.exists():
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(self.sock_path))
        except OSError:
            return False
        finally:
            s.close()
        return True

    def open(self) -> Link:
        assert self.sock_path is not None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(self.sock_path))
        return _ProcLink(s, self.pid())

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def problems(self) -> list[str]:
        out = self._scanner.new_problems() if self._scanner else []
        if self.proc is not None and self.proc.poll() is not None and not self._reported_death:
            self._reported_death = True
            out.append(f"crash: server process exited with status {self.proc.returncode}")
        return out

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class _ProcLink(Link):
    def __init__(
        self, sock: socket.socket, pid: int | None, proc: subprocess.Popen[bytes] | None = None
    ) -> None:
        super().__init__(sock)
        self._pid = pid
        self.proc = proc

    def pid(self) -> int | None:
        return self._pid

    def finish(self, timeout: float) -> list[str]:
        if self.proc is None:
            return []
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return [f"hang: gofer9p serve --fd did not exit {timeout:.0f}s after EOF"]
        if rc != 0:
            return [f"crash: gofer9p serve --fd exited with status {rc} after EOF"]
        return []


class ServeFdTarget(Target):
    """One ``gofer9p serve --fd N DIR`` process per connection (how a sandbox runs it)."""

    name = "serve-fd"
    per_connection_process = True

    def __init__(
        self,
        *,
        max_msize: int = 1 << 20,
        readonly: bool = False,
        plant: str = "",
        file_root: bool = False,
    ) -> None:
        self.max_msize = max_msize
        self.readonly = readonly
        self.plant = plant
        self.file_root = file_root
        self._tmp: Path | None = None
        self.log_path: Path | None = None
        self._scanner: _LogScanner | None = None
        self.current: list[_ProcLink] = []
        """The processes of the last :meth:`open` (one) or :meth:`open_pair` (two)."""

    def start(self) -> None:
        if self._tmp is None:
            self._tmp, self.export = _make_export(self.file_root)
            self.log_path = self._tmp / "gofer.log"
            self.log_path.touch()
            self._scanner = _LogScanner(self.log_path)

    def open(self) -> Link:
        self._end_current()
        self.current = [self._spawn()]
        return self.current[0]

    def open_pair(self) -> tuple[Link, Link]:
        """Two processes serving the same export, as two sandboxes sharing a directory (one
        process serves one connection: a second ``open`` would end the first)."""
        self._end_current()
        self.current = [self._spawn(), self._spawn()]
        return self.current[0], self.current[1]

    def _end_current(self) -> None:
        """Kill what is left of the last connections' processes (they exit at EOF)."""
        for link in self.current:
            if link.proc is not None and link.proc.poll() is None:
                link.proc.kill()
                link.proc.wait(10)
        self.current = []

    def _spawn(self) -> _ProcLink:
        assert self.log_path is not None
        a, b = socket.socketpair()
        cmd = [
            *_gofer_cmd(self.plant),
            "serve",
            str(self.served),
            "--fd",
            str(a.fileno()),
            "--msize",
            str(self.max_msize),
            "--log-level",
            "error",
            "--log-file",
            str(self.log_path),
        ]
        if self.readonly:
            cmd.append("--read-only")
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                env=_env(self.plant),
                pass_fds=(a.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                stderr=log,
                umask=0,
            )
        _limit(proc.pid)
        a.close()
        return _ProcLink(b, proc.pid, proc)

    def problems(self) -> list[str]:
        return self._scanner.new_problems() if self._scanner else []

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        self._end_current()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class UnixTarget(Target):
    """An existing server listening on ``unix:PATH`` (export unknown)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"unix:{path}"
        self._pid: int | None = None

    def start(self) -> None:
        link = self.open()
        try:
            cred = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pid = struct.unpack("3i", cred)[0]
            self._pid = pid if pid > 0 and fd_count(pid) is not None else None
        finally:
            link.sock.close()

    def open(self) -> Link:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path)
        return _ProcLink(s, self._pid)

    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        if self._pid is None:
            return True
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def problems(self) -> list[str]:
        return [] if self.alive() else ["crash: server process is gone"]

    def reset_export(self) -> None:
        pass


CONFINE_WAIT_S = 60.0
"""How long a daemon may take to start and confine itself (python's start, a loaded machine,
coverage's tracing) before the fuzzer's first request is timed."""


class _Polled(Protocol):
    """A child process as launch gives it (``Popen`` or a fork server's ``PidfdProcess``)."""

    def poll(self) -> int | None: ...


def _wait_confined(pid: int, proc: _Polled) -> None:
    """Wait until the daemon installed its seccomp filter (its last step before serving), so
    that ``--timeout`` times the server's replies, not the process's start."""
    deadline = time.monotonic() + CONFINE_WAIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.split() == ["Seccomp:", "2"] for line in f):
                    return
        except OSError:
            return
        time.sleep(0.01)


def _coverage_data_dir() -> Path | None:
    """The data file's directory of a ``python -m fuzz coverage`` run (None: not measured).

    A measured daemon starts coverage before it chroots and writes its data when it exits,
    inside the chroot: the same absolute path made inside the bundle's rootfs receives it.
    """
    rc = os.environ.get("COVERAGE_PROCESS_START")
    if not rc:
        return None
    import configparser

    cp = configparser.ConfigParser()
    cp.read(rc)
    data_file = cp.get("run", "data_file", fallback="")
    return Path(data_file).parent if data_file.startswith("/") else None


class _DaemonLink(Link):
    def __init__(self, sock: socket.socket, target: DaemonTarget, gp: Any) -> None:
        super().__init__(sock)
        self.target = target
        self.gp = gp

    def pid(self) -> int | None:
        return int(self.gp.pid)

    def finish(self, timeout: float) -> list[str]:
        return self.target._retire(self.gp, timeout)


SIGSYS_STATUS = -31


class DaemonTarget(Target):
    """The confined daemon: ``gofer9p gofer --bundle B --io-fds ... --seccomp=kill``.

    Started with :func:`gofer9p.launch.start_gofer`, as a sandbox manager does: chroot into the
    bundle root, capabilities dropped, no_new_privs, the seccomp whitelist in kill mode.  The
    bundle has ``2 + SPARE`` attach points, one connection each: the root, ``/export`` (the fuzz
    connection; ``self.export`` is its host directory) and ``/c1`` ... (spare connections, each
    its own empty directory).  A daemon serves each attach point on one connection only, so
    every :meth:`open` or :meth:`open_pair` starts a fresh daemon; the previous one is retired:
    every socket closed, its exit status judged (0 is right; a death by SIGSYS is a seccomp
    whitelist gap reached by the requests just sent; 70 is ``--panic-on-write`` doing its job).

    :meth:`open` gives the export's connection alone (the others get EOF at once, so the daemon
    closes it at our EOF, as the other targets do).  :meth:`open_pair` gives the export's and
    the root's (prefix ``export``: a second client of the same files, and the latency probe),
    and keeps the spare ones for :meth:`open_more`: several connections of one confined
    process, for the pressure cases that need them.
    """

    SPARE = 6

    name = "daemon"
    per_connection_process = True

    def __init__(
        self,
        *,
        max_msize: int = 1 << 20,
        readonly: bool = False,
        panic_on_write: bool = False,
        plant: str = "",
        seccomp: str = "kill",
    ) -> None:
        self.max_msize = max_msize
        self.readonly = readonly or panic_on_write
        self.panic_on_write = panic_on_write
        self.plant = plant
        self.seccomp = seccomp
        self._tmp: Path | None = None
        self.bundle: Path | None = None
        self.log_path: Path | None = None
        self._scanner: _LogScanner | None = None
        self.gp: Any = None
        self.last_status: int | None = None
        self.exit_counts: dict[int | None, int] = {}
        """How the daemons ended (exit status or -signal), for reports and tests."""
        self._judged: set[int] = set()
        self._pending: list[str] = []
        self._spare: list[socket.socket] = []
        self._cov_dir: Path | None = None
        self.started = 0

    def start(self) -> None:
        if self._tmp is not None:
            return
        import json

        self._tmp = Path(tempfile.mkdtemp(prefix="gofer9p-fuzz-daemon-"))
        self.bundle = self._tmp / "bundle"
        rootfs = self.bundle / "rootfs"
        spares = [f"c{i}" for i in range(1, self.SPARE + 1)]
        for d in ("export", *spares):
            (rootfs / d).mkdir(parents=True)
        rootfs.chmod(0o755)
        self.export = rootfs / "export"
        self.export.chmod(0o755)
        doc = {
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": self.readonly},
            "mounts": [
                {
                    "destination": "/export",
                    "type": "bind",
                    "source": "rootfs/export",
                    "options": ["ro" if self.readonly else "rw"],
                },
                *(
                    {"destination": f"/{d}", "type": "bind", "source": f"rootfs/{d}"}
                    for d in spares
                ),
            ],
        }
        (self.bundle / "config.json").write_text(json.dumps(doc))
        self._cov_dir = _coverage_data_dir()
        if self._cov_dir is not None:
            # the data file's directory, at the same path inside the chroot (see _collect)
            (rootfs / self._cov_dir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        self.log_path = self._tmp / "gofer.log"
        self.log_path.touch()
        self._scanner = _LogScanner(self.log_path)

    def _spawn(self) -> Any:
        from gofer9p.launch import start_gofer

        assert self.bundle is not None and self.log_path is not None
        env = _env(self.plant)
        seccomp = self.seccomp
        if self._cov_dir is not None:
            seccomp = "log"  # coverage's own writes at exit are not on the whitelist
        else:
            env.pop("COVERAGE_PROCESS_START", None)
        with open(self.log_path, "ab") as log:
            gp = start_gofer(
                self.bundle,
                seccomp=seccomp,
                panic_on_write=self.panic_on_write,
                module="gofer9p.testing.plant" if self.plant else "gofer9p.daemon",
                extra_args=["--log-level", "error", "--log-file", str(self.log_path)],
                env=env,
                stderr=log,
            )
        _limit(gp.pid)
        self.started += 1
        if seccomp != "off":
            _wait_confined(gp.pid, gp.proc)
        return gp

    def _retire(self, gp: Any, timeout: float) -> list[str]:
        """Close every socket of ``gp``, wait for its exit, judge the status."""
        if gp is None or gp.pid in self._judged:
            return []
        self._judged.add(gp.pid)
        for sk in gp.sockets:
            try:
                sk.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        try:
            rc = gp.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            gp.stop(1.0)
            return [f"hang: the confined gofer did not exit {timeout:.0f}s after EOF on every fd"]
        finally:
            for sk in gp.sockets:
                sk.close()
        return self._judge(rc)

    def _judge(self, rc: int | None) -> list[str]:
        self.last_status = rc
        self.exit_counts[rc] = self.exit_counts.get(rc, 0) + 1
        if rc is None or rc == 0:
            return []
        if rc == SIGSYS_STATUS:
            return [
                "crash: the confined gofer was killed by SIGSYS (seccomp): a request reached "
                "a syscall off the whitelist"
            ]
        if rc == 70 and self.panic_on_write:
            return []  # --panic-on-write stopped on a mutating request: its job
        if rc < 0:
            return [f"crash: the confined gofer was killed by signal {-rc}"]
        return [f"crash: the confined gofer exited with status {rc}"]

    def _fresh(self, pair: bool) -> Any:
        if self.gp is not None:
            self._pending += self._retire(self.gp, 10.0)
            self.gp = None
        self.gp = gp = self._spawn()
        # The daemon owns its sockets until it exits (server.serve does not close them), and it
        # exits once every connection ended.  A lone connection (open): the other attach
        # points get EOF now, so our EOF on it is answered by a close, as with the other
        # targets.  A pair: the spares wait for open_more; _retire ends them all.
        self._spare = list(gp.sockets[2:]) if pair else []
        if not pair:
            for sk in [gp.sockets[0], *gp.sockets[2:]]:
                sk.shutdown(socket.SHUT_WR)
        return gp

    def open(self) -> Link:
        gp = self._fresh(pair=False)
        return _DaemonLink(gp.sockets[1], self, gp)

    def open_pair(self) -> tuple[Link, Link]:
        gp = self._fresh(pair=True)
        return _DaemonLink(gp.sockets[1], self, gp), Link(gp.sockets[0], prefix=(b"export",))

    def open_more(self, n: int) -> list[Link]:
        out = [Link(sk, prefix=None) for sk in self._spare[:n]]
        del self._spare[:n]
        return out

    def pid(self) -> int | None:
        if self.gp is None or self.gp.proc.poll() is not None:
            return None
        return int(self.gp.pid)

    def alive(self) -> bool:
        return self.gp is None or self.gp.proc.poll() is None

    def problems(self) -> list[str]:
        out, self._pending = self._pending, []
        if self._scanner is not None:
            for p in self._scanner.new_problems():
                if self.panic_on_write and " CRITICAL panic on " in p.split("\n")[0]:
                    continue  # --panic-on-write saying why it stopped: its job
                out.append(p)
        gp = self.gp
        if gp is not None and gp.pid not in self._judged:
            rc = gp.proc.poll()
            if rc is not None:
                self._judged.add(gp.pid)
                out += self._judge(rc)
        return out

    def restart(self) -> None:
        if self.gp is not None:
            self.gp.stop(2.0)
            self.gp = None

    def stop(self) -> None:
        if self.gp is not None:
            self.gp.stop(5.0)
            self.gp = None
        if self._tmp is not None:
            self._collect()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _collect(self) -> None:
        """Move the daemons' coverage data out of the chroot, to where ``coverage combine``
        looks (``python -m fuzz coverage``)."""
        if self._cov_dir is None or self.bundle is None:
            return
        inside = self.bundle / "rootfs" / self._cov_dir.relative_to("/")
        for f in inside.glob(".coverage*"):
            shutil.move(str(f), str(self._cov_dir / f.name))


TARGETS = ("inproc", "serve", "serve-fd", "daemon", "fault", "unix:PATH")
ATTACH = ("rw", "ro", "panic", "file")
"""``--attach``: read-write, read-only, panic-on-write (daemon), a file as the root."""


def make_target(
    spec: str,
    *,
    max_msize: int = 1 << 20,
    plant: str = "",
    attach: str = "rw",
    seed: int = 1,
    fd_share: int = 0,
    record: bool = False,
) -> Target:
    """``inproc`` | ``serve`` | ``serve-fd`` | ``daemon`` | ``fault[:SEED[:RATE]]`` |
    ``unix:PATH``.

    ``fault``: the in-process server with failing syscalls (:class:`FaultTarget`), its
    schedule seeded with ``seed`` unless the spec names one.

    ``attach``: ``rw`` (default), ``ro`` (a read-only attach point: every mutating request must
    get EROFS), ``panic`` (daemon only: ``--panic-on-write``, the daemon exits 70 on the first
    mutating request) or ``file`` (a regular file is the attach point; not the daemon).
    ``plant`` names test-only defects (gofer9p.testing.plant).  ``fd_share`` (in-process
    targets only): the host fds each connection may hold, so that a small one makes the server
    reclaim and reopen idle fids' fds all the time.  ``record`` (serve only): the server records
    its connections (``--record``).
    """
    if attach not in ATTACH:
        raise ValueError(f"--attach must be one of {', '.join(ATTACH)}, not {attach!r}")
    ro = attach in ("ro", "panic")
    if attach == "panic" and spec != "daemon":
        raise ValueError("--attach panic needs --target daemon (it ends the server process)")
    if attach == "file" and spec not in ("inproc", "serve", "serve-fd"):
        raise ValueError("--attach file needs --target inproc, serve or serve-fd")
    if fd_share and spec != "inproc" and spec.split(":")[0] != "fault":
        raise ValueError("--fd-share needs an in-process target (inproc or fault)")
    if record and spec != "serve":
        raise ValueError("--record needs --target serve")
    if spec == "fault" or spec.startswith("fault:"):
        parts = spec.split(":")
        if len(parts) > 3:
            raise ValueError(f"--target fault[:SEED[:RATE]], not {spec!r}")
        return FaultTarget(
            seed=int(parts[1]) if len(parts) > 1 else seed,
            rate=float(parts[2]) if len(parts) > 2 else None,
            max_msize=max_msize, readonly=ro, plant=plant, fd_share=fd_share,
        )
    kinds: dict[str, type[ServeFdTarget]] = {"serve-fd": ServeFdTarget}
    if spec == "inproc":
        return InprocTarget(max_msize=max_msize, readonly=ro, plant=plant,
                            file_root=attach == "file", fd_share=fd_share)
    if spec == "serve":
        return ServeTarget(max_msize=max_msize, readonly=ro, plant=plant,
                           file_root=attach == "file", record=record)
    if spec in kinds:
        return kinds[spec](
            max_msize=max_msize, readonly=ro, plant=plant, file_root=attach == "file"
        )
    if spec == "daemon":
        return DaemonTarget(
            max_msize=max_msize, readonly=ro, panic_on_write=attach == "panic", plant=plant
        )
    if spec.startswith("unix:"):
        return UnixTarget(spec[5:])
    raise ValueError(
        f"--target must be inproc, serve, serve-fd, daemon, fault or unix:PATH, not {spec!r}"
    )
