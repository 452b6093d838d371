"""The sandbox-manager side: bind mounts, socketpairs, spawning the gofer (design.md §1).

A Python sandbox manager (and our own tests) starts a gofer like gVisor's ``createGoferProcess``:

1. :func:`setup_fs` bind-mounts each 9P mount's source onto ``rootfs/destination`` (ro, nosuid,
   nodev, noexec as the spec says), inside the *caller's* private mount namespace.  The caller
   arranges that namespace (:func:`enter_private_mount_namespace`, or run under ``unshare -m``):
   done in the host namespace the mounts would be visible, and propagated, host-wide.
2. :func:`start_gofer` makes one socketpair per attach point (root first, then the 9P mounts in
   spec order), hands the gofer ends to ``python -m gofer9p.daemon`` as fds 3, 4, ... and keeps the
   sandbox ends.  Optionally the gofer runs in a new user namespace with the spec's id mappings.

``gofer9p launch --bundle B`` (:func:`main`) does both, then serves each sandbox end on a unix
socket path it prints, so a person can point a 9P client (or ``mount -t 9p -o trans=unix``) at it,
one client after another (:class:`_Relay`).

mount(2), umount2(2), unshare(2) and mount_setattr(2) are called through :mod:`gofer9p.syscalls`
(ctypes): no shelling out, exact flags, and errors we can report per mount.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Protocol, TypedDict, Unpack

import attrs

from . import syscalls
from .forkproto import MAX_FDS, MAX_REQUEST, ROLE_FLAGS, parse_address, record
from .mounts import MountError, apply_flags, option_flags
from .options import add_confine_args, add_idmap_args
from .spec import IdMapping, NineMount, Spec, SpecError, load_spec, load_spec_bytes, read_spec_fd
from .syscalls import (
    CLONE_NEWNS,
    CLONE_NEWUSER,
    MS_BIND,
    MS_PRIVATE,
    MS_REC,
)

__all__ = [
    "ForkServer",
    "ForkServerLost",
    "GoferKwargs",
    "GoferOptions",
    "GoferProcess",
    "LaunchError",
    "PidfdProcess",
    "Undo",
    "enter_private_mount_namespace",
    "gofer_flags",
    "idmap_flags",
    "main",
    "setup_fs",
    "start_gofer",
]

#: How long the parent waits for a user-namespace child to report in before giving up.
_USERNS_TIMEOUT = 10.0


class LaunchError(Exception):
    """setup_fs / start_gofer failed; ``str(err)`` is one line for the user."""


def enter_private_mount_namespace() -> None:
    """unshare(CLONE_NEWNS) and make every mount private, so nothing we mount leaks to the host.

    Must be called while the process has one thread (unshare of the mount namespace shares the
    fs struct otherwise and fails with EINVAL).
    """
    try:
        syscalls.unshare(CLONE_NEWNS)
        syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        raise LaunchError(f"cannot enter a private mount namespace: {e.strerror}") from None


@attrs.define
class Undo:
    """Reverses :func:`setup_fs`: unmounts in reverse order, then removes created mount points.

    Calling it twice is harmless; errors are collected and raised together at the end so one stuck
    mount does not leave the others behind.
    """

    mounted: list[str] = attrs.field(factory=list)
    created: list[tuple[str, bool]] = attrs.field(factory=list)  # (path, is_dir)

    def __call__(self) -> None:
        errors: list[str] = []
        while self.mounted:
            target = self.mounted.pop()
            try:
                syscalls.umount(target)
            except OSError as e:
                errors.append(str(e.strerror))
        while self.created:
            path, is_dir = self.created.pop()
            try:
                if is_dir:
                    os.rmdir(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                errors.append(f"remove {path}: {e.strerror}")
        if errors:
            raise LaunchError("; ".join(errors))


def setup_fs(spec: Spec) -> Undo:
    """Bind-mount every 9P mount of ``spec`` into its rootfs; return the :class:`Undo`.

    Mount points are resolved one component at a time with ``O_NOFOLLOW`` from the rootfs, so a
    symlink planted in the (sandbox-writable) rootfs cannot redirect a bind mount onto the host;
    missing components are created (directories, or an empty file for a file source).  The mount
    itself targets ``/proc/self/fd/N`` of the resolved mount point (the runc way), and the
    requested ro/nosuid/nodev/noexec are applied by a bind remount that keeps any flag the source
    already had, then checked with statvfs.
    """
    undo = Undo()
    try:
        for m in spec.mounts:
            try:
                _bind_one(spec.root_path, m, undo)
            except OSError as e:
                raise LaunchError(f"mount {m.destination}: {e.strerror or e}") from None
    except BaseException:
        try:
            undo()
        except LaunchError:
            pass
        raise
    return undo


def _bind_one(rootfs: str, m: NineMount, undo: Undo) -> None:
    try:
        src_st = os.stat(m.source)
    except OSError as e:
        raise LaunchError(f"mount {m.destination}: source {m.source!r}: {e.strerror}") from None
    src_is_dir = stat.S_ISDIR(src_st.st_mode)
    if not src_is_dir and not stat.S_ISREG(src_st.st_mode):
        # The gofer serves directories and regular files only (it never opens device
        # nodes, FIFOs or sockets for a client): refuse now, with the mount's name.
        raise LaunchError(
            f"mount {m.destination}: source {m.source!r} is neither a directory nor a regular file"
        )
    parts = [p for p in m.destination.split("/") if p]
    target = os.path.join(rootfs, *parts)
    dirfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    try:
        path = rootfs
        for name in parts[:-1]:
            path = os.path.join(path, name)
            dirfd = _step_dir(dirfd, name, path, m, undo)
        last = parts[-1]
        _make_mount_point(dirfd, last, target, src_is_dir, m, undo)
        fd = os.open(last, os.O_PATH | os.O_NOFOLLOW, dir_fd=dirfd)
        try:
            flags = MS_BIND | (MS_REC if "rbind" in m.options else 0)
            syscalls.mount(m.source, f"/proc/self/fd/{fd}", None, flags)
        except OSError as e:
            raise LaunchError(f"mount {m.destination}: {e.strerror}") from None
        finally:
            os.close(fd)
        undo.mounted.append(target)
        # Re-open by name: now it resolves to the root of the new mount, not the mount point.
        fd = os.open(last, os.O_PATH | os.O_NOFOLLOW, dir_fd=dirfd)
        try:
            _apply_flags(fd, m, target)
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def _step_dir(dirfd: int, name: str, path: str, m: NineMount, undo: Undo) -> int:
    """Open (creating if missing) directory ``name`` under ``dirfd`` without following symlinks.

    On success ``dirfd`` is closed and the new fd returned; on error ``dirfd`` is left open.
    """
    try:
        nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
    except FileNotFoundError:
        os.mkdir(name, 0o755, dir_fd=dirfd)
        undo.created.append((path, True))
        nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
    except OSError as e:  # dirfd stays open: the caller's ``finally`` closes it
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            raise LaunchError(
                f"mount {m.destination}: {path!r} is a symlink or not a directory"
            ) from None
        raise LaunchError(f"mount {m.destination}: {path!r}: {e.strerror}") from None
    os.close(dirfd)
    return nfd


def _make_mount_point(
    dirfd: int, name: str, target: str, is_dir: bool, m: NineMount, undo: Undo
) -> None:
    """Make sure ``name`` in ``dirfd`` can take the bind mount: a directory for a directory
    source, a regular file for a file source (an empty one is created when missing, as runc
    does).  An existing file is fine whatever its content (the image's own ``/etc/hosts`` is
    hidden by the mount, not changed); a symlink, FIFO, socket or device node is refused: a
    bind mount over it would either follow it or hide a special file the image relies on."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=dirfd)
        else:
            os.close(
                os.open(
                    name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644, dir_fd=dirfd
                )
            )
        undo.created.append((target, is_dir))
        return
    if stat.S_ISLNK(st.st_mode):
        raise LaunchError(f"mount {m.destination}: {target!r} is a symlink")
    if stat.S_ISDIR(st.st_mode) != is_dir or not (is_dir or stat.S_ISREG(st.st_mode)):
        want = "a directory" if is_dir else "a regular file"
        raise LaunchError(f"mount {m.destination}: {target!r} must be {want} like its source")


def _apply_flags(fd: int, m: NineMount, target: str) -> None:
    """Apply the mount's ro/nosuid/nodev/noexec to the new bind mount, and check them
    (:func:`gofer9p.mounts.apply_flags`; recursively for an ``rbind``)."""
    wanted = option_flags(m.options, m.readonly)
    try:
        apply_flags(fd, wanted, target, recursive="rbind" in m.options, what=f"mount {m.destination}")
    except MountError as e:
        raise LaunchError(str(e)) from None


# --- spawning the gofer ----------------------------------------------------------------------


class _Reapable(Protocol):
    """What :func:`reap` needs of a child: ``Popen`` and :class:`PidfdProcess` have it."""

    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


def reap(proc: _Reapable, timeout: float | None) -> int:
    """Wait at most ``timeout`` seconds for ``proc`` (a ``Popen`` or a
    :class:`PidfdProcess`) to exit, then SIGKILL it; its exit status.

    A stopped gofer, fork-server or test server that hangs is killed, never
    waited for forever; stop paths call this rather than write the wait, kill
    and wait again."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@attrs.define(eq=False)
class GoferProcess:
    """A running gofer: the process, the sandbox ends (attach-point order), the fs undo.

    ``proc`` is a :class:`subprocess.Popen` for a spawned gofer, a
    :class:`PidfdProcess` (same methods) for one a fork-server started.
    """

    proc: subprocess.Popen[bytes] | PidfdProcess
    sockets: list[socket.socket]
    undo: Undo = attrs.field(factory=Undo)
    #: The read end of the gofer's ``--mounts-fd`` (``report_mounts=True``), until read.
    mounts_fd: int = -1
    _mounts: list[dict[str, Any]] | None = attrs.field(default=None, init=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def mounts(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """What each socket serves, as the gofer resolved it (``report_mounts=True``): one
        dict per socket, in order, with ``index``, ``fd`` (the gofer's), ``destination``
        (inside the root, symlinks resolved), ``source`` and ``readonly``.

        The gofer writes it once, before it serves; this waits for it (at most ``timeout``
        seconds) the first time and keeps it.  :class:`LaunchError` if the gofer wrote
        nothing (it did not get that far: its exit status and stderr say why).
        """
        if self._mounts is None:
            if self.mounts_fd < 0:
                raise LaunchError("the gofer was not asked for its mounts (report_mounts)")
            try:
                text = _read_to_eof(self.mounts_fd, timeout)
            finally:
                os.close(self.mounts_fd)
                self.mounts_fd = -1
            if not text:
                why = "did not report" if text is None else "wrote none of"
                raise LaunchError(f"the gofer {why} its mounts (did it start?)")
            self._mounts = json.loads(text)
        return self._mounts

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM; SIGKILL after ``timeout``; reap; close the sandbox ends; undo the mounts.

        Returns the gofer's exit status (negative: killed by that signal).
        """
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return reap(self.proc, timeout)
        finally:  # also when a fork-server died and the status is lost (ForkServerLost)
            for s in self.sockets:
                s.close()
            if self.mounts_fd >= 0:
                os.close(self.mounts_fd)
                self.mounts_fd = -1
            self.undo()

    def __enter__(self) -> GoferProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gofer_flags(
    bundle: str,
    *,
    panic_on_write: bool,
    seccomp: str,
    apply_caps: bool,
    extra_args: Sequence[str],
    setup_root: bool = False,
    landlock: str = "auto",
) -> list[str]:
    """``gofer9p gofer``'s flags for these options, all but those naming fds (``--io-fds``,
    ``--spec-fd``, ``--mounts-fd``, ``--stats-fd``, ``--record-fd``: the spawn and
    fork-server paths place fds differently)."""
    argv = ["--bundle", bundle]
    if panic_on_write:
        argv.append("--panic-on-write")
    argv += [f"--seccomp={seccomp}", f"--apply-caps={'true' if apply_caps else 'false'}"]
    if setup_root:
        argv.append("--setup-root")
    argv.append(f"--landlock={landlock}")
    argv += list(extra_args)
    return argv


IdRanges = Sequence[tuple[int, int, int]]
"""``map_uids``/``map_gids`` of :func:`start_gofer`: (guest, host, count) ranges."""


def idmap_flags(
    map_uids: IdRanges = (), map_gids: IdRanges = (), squash_ids: tuple[int, int] | None = None
) -> list[str]:
    """The gofer flags of an id mapping (``--map-uid``, ``--map-gid``, ``--squash-ids``),
    checked here (overlaps, ranges) so that a bad one is a ``LaunchError`` before anything
    is spawned."""
    if not map_uids and not map_gids and squash_ids is None:
        return []  # no mapping: nothing to check (and attach's import spared)
    from .attach import IdMap

    try:
        IdMap.build(map_uids, map_gids, squash_ids)
    except ValueError as e:
        raise LaunchError(str(e)) from None
    argv = [f"--map-uid={g}:{h}:{n}" for g, h, n in map_uids]
    argv += [f"--map-gid={g}:{h}:{n}" for g, h, n in map_gids]
    if squash_ids is not None:
        argv.append(f"--squash-ids={squash_ids[0]}:{squash_ids[1]}")
    return argv
#: A spec a manager passes itself (``start_gofer(spec=...)``): the document, or its JSON bytes.
SpecDoc = Mapping[str, Any] | bytes

_F_ADD_SEALS, _F_SETPIPE_SZ = 1033, 1031
_F_SEAL_ALL = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL | SHRINK | GROW | WRITE


#: ``start_gofer(stats_socket=...)``: a bound, listening unix stream socket, or its fd.
StatsSocket = socket.socket | int


class GoferKwargs(TypedDict, total=False):
    """:class:`GoferOptions`'s fields as keyword arguments: :func:`start_gofer` and
    :meth:`ForkServer.start_gofer` take them beside (or instead of) a ``GoferOptions``."""

    panic_on_write: bool
    userns: bool | None
    seccomp: str
    apply_caps: bool
    extra_args: Sequence[str]
    setup_mounts: bool
    stdout: int | IO[Any] | None
    stderr: int | IO[Any] | None
    map_uids: IdRanges
    map_gids: IdRanges
    squash_ids: tuple[int, int] | None
    spec: SpecDoc | None
    report_mounts: bool
    setup_root: bool
    landlock: str
    stats_socket: StatsSocket | None
    record_fd: int | None
    record_headers_only: bool
    max_fids: int


def _strings(v: Sequence[str]) -> tuple[str, ...]:
    return tuple(v)


def _ranges(v: IdRanges) -> tuple[tuple[int, int, int], ...]:
    return tuple((g, h, n) for g, h, n in v)


@attrs.frozen(kw_only=True)
class GoferOptions:
    """How to start a gofer, spawned (:func:`start_gofer`) or forked
    (:meth:`ForkServer.start_gofer`): both take one, or its fields as keyword arguments
    (which build one), and it renders the gofer's flags (:meth:`flags`).

    ``userns``: True runs the gofer in a new user namespace with the spec's
    ``linux.uidMappings``/``gidMappings`` (written by the starting process, which must be
    privileged); None means "if the spec has mappings".  ``setup_mounts`` runs :func:`setup_fs`
    first (the caller must already be in a private mount namespace) and makes ``stop()`` undo
    it.  ``map_uids``, ``map_gids``, ``squash_ids``: the gofer's id mapping for a guest
    without a user namespace (``--map-uid``, ``--map-gid``, ``--squash-ids``;
    :func:`idmap_flags`).  ``stdout``/``stderr``: the gofer's (default: the caller's).

    ``spec``: the manager's own spec document (or its JSON bytes), passed to the gofer on a
    sealed memfd (``--spec-fd``) instead of it reading ``bundle/config.json``; ``bundle`` then
    only anchors relative paths.  ``report_mounts``: the gofer writes what each socket serves,
    as resolved (``--mounts-fd``), read with :meth:`GoferProcess.mounts`.  ``setup_root``:
    the gofer builds its own root and binds the mounts itself (``--setup-root``; not with
    ``setup_mounts``).  ``landlock``: ``auto``, ``require`` or ``off`` (``--landlock``).

    ``stats_socket``: a bound, listening unix stream socket (or its fd) on which the gofer
    answers statistics (``--stats-fd``; ``gofer9p stats``/``top``, :func:`gofer9p.top.fetch`).
    ``record_fd``: an fd open for writing to which the gofer records its connections as pcap
    (``--record-fd``; ``record_headers_only``: ``--record-headers-only``).  Both stay the
    caller's: the gofer gets its own copy, starting it never closes them, and the caller
    may close its copy as soon as the start returns (the gofer's stays open until it exits;
    the recording is complete then).  The socket's path, if any, is the caller's to unlink.
    ``max_fids``: fids one connection may hold (``--max-fids``; 0: the gofer's default, which
    is also the most), the fid term of the memory bound in docs/RESOURCES.md.

    Building one makes the checks due before anything is opened or spawned, each a
    :class:`LaunchError`: ``record_headers_only`` needs ``record_fd``, ``setup_root``
    excludes ``setup_mounts``, and the id map must be valid (:func:`idmap_flags`).
    """

    panic_on_write: bool = False
    userns: bool | None = None
    seccomp: str = "kill"
    apply_caps: bool = True
    extra_args: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    setup_mounts: bool = False
    stdout: int | IO[Any] | None = None
    stderr: int | IO[Any] | None = None
    map_uids: tuple[tuple[int, int, int], ...] = attrs.field(default=(), converter=_ranges)
    map_gids: tuple[tuple[int, int, int], ...] = attrs.field(default=(), converter=_ranges)
    squash_ids: tuple[int, int] | None = None
    spec: SpecDoc | None = None
    report_mounts: bool = False
    setup_root: bool = False
    landlock: str = "auto"
    stats_socket: StatsSocket | None = None
    record_fd: int | None = None
    record_headers_only: bool = False
    max_fids: int = 0
    #: the id map's flags, rendered (and so checked) once, when the options are built
    _idmap: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.record_headers_only and self.record_fd is None:
            raise LaunchError("record_headers_only needs record_fd")
        if self.setup_root and self.setup_mounts:
            raise LaunchError("setup_root binds the mounts in the gofer: leave setup_mounts off")
        if self.max_fids < 0:  # too many is the gofer's to refuse (its one error line)
            raise LaunchError(f"max_fids: {self.max_fids}: want a count, or 0 for the default")
        idmap = tuple(idmap_flags(self.map_uids, self.map_gids, self.squash_ids))
        object.__setattr__(self, "_idmap", idmap)  # frozen: set once, here

    def flags(self, bundle: str) -> list[str]:
        """``gofer9p gofer``'s flags for ``bundle`` with these options: :func:`gofer_flags`
        with the id map and ``--record-headers-only`` before ``extra_args`` (so all but the
        flags naming fds, which the spawn and the fork-server place differently)."""
        return gofer_flags(
            bundle,
            panic_on_write=self.panic_on_write,
            seccomp=self.seccomp,
            apply_caps=self.apply_caps,
            extra_args=[
                *self._idmap,
                *(["--record-headers-only"] if self.record_headers_only else []),
                *([f"--max-fids={self.max_fids}"] if self.max_fids else []),
                *self.extra_args,
            ],
            setup_root=self.setup_root,
            landlock=self.landlock,
        )


def _options(options: GoferOptions | None, kwargs: GoferKwargs) -> GoferOptions:
    """``options`` with ``kwargs`` over it (a keyword given beside the object wins)."""
    if options is None:
        return GoferOptions(**kwargs)
    return attrs.evolve(options, **kwargs) if kwargs else options


def _lent_fd(role: str, fd: int | None) -> list[tuple[str, int]]:
    """``[(role, fd)]`` for an fd the manager lends the gofer (``[]`` for None), once it is
    known to be open: a closed one is a :class:`LaunchError` here, not an ``OSError`` from a
    ``dup`` or ``sendmsg``.  What else is wrong with it (not listening, read-only) the gofer
    says in its one error line, as it does for ``--stats-fd``/``--record-fd`` on its command
    line."""
    if fd is None:
        return []
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        raise LaunchError(f"{ROLE_FLAGS[role]}: fd {fd} is not open") from None
    return [(role, fd)]


@attrs.define
class _FdFlags:
    """The manager's side of the fd-taking gofer flags (``--spec-fd``, ``--mounts-fd``,
    ``--stats-fd``, ``--record-fd``) for one gofer start.

    ``spec_fd``: a sealed memfd holding the spec bytes the manager parsed (the gofer reads
    exactly those; nobody can change them after).  ``mounts_w``/``mounts_r``: a pipe whose
    write end the gofer gets (made 1 MiB large where allowed, so a gofer with many mounts does
    not wait for a reader before it serves).  -1: not asked for.  ``lent``: ``(role, fd)``
    of the manager's own fds (the stats socket, the recording), which the gofer gets a copy
    of and this class never closes: they stay the manager's.
    """

    spec: Spec | None
    spec_fd: int = -1
    mounts_r: int = -1
    mounts_w: int = -1
    lent: list[tuple[str, int]] = attrs.Factory(list)

    @classmethod
    def make(
        cls,
        bundle: str | os.PathLike[str],
        doc: SpecDoc | None,
        report_mounts: bool,
        lenient: bool = False,
        *,
        stats_socket: StatsSocket | None = None,
        record_fd: int | None = None,
        specs: _SpecCache | None = None,
    ) -> _FdFlags:
        """Read (``doc`` None: ``bundle/config.json``, through ``specs`` if given) and parse
        the spec; make the fds.

        ``lenient``: a bundle whose config.json is unusable gives ``spec`` None (the gofer
        will say what is wrong with it in its own words) instead of :class:`LaunchError`.
        """
        if isinstance(stats_socket, socket.socket):
            stats_socket = stats_socket.fileno()
        lent = _lent_fd("stats", stats_socket) + _lent_fd("record", record_fd)
        try:
            parsed: Spec | None = (
                specs.load(os.fspath(bundle))
                if specs is not None and doc is None
                else _parse_spec(bundle, doc)
            )
        except LaunchError:
            if not lenient or doc is not None:
                raise
            parsed = None
        out = cls(parsed, lent=lent)
        try:
            if doc is not None:
                raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                out.spec_fd = os.memfd_create("gofer9p-spec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                view = memoryview(raw)
                while view:
                    view = view[os.write(out.spec_fd, view) :]
                fcntl.fcntl(out.spec_fd, _F_ADD_SEALS, _F_SEAL_ALL)
            if report_mounts:
                out.mounts_r, out.mounts_w = os.pipe2(os.O_CLOEXEC)
                with contextlib.suppress(OSError):  # EPERM past /proc/sys/fs/pipe-max-size
                    fcntl.fcntl(out.mounts_w, _F_SETPIPE_SZ, 1 << 20)
        except BaseException:
            out.close(keep_reader=False)
            raise
        return out

    def roles(self) -> list[tuple[str, int]]:
        """``(role, fd)`` of each fd the gofer gets (the fork-server's role names)."""
        made = [(r, fd) for r, fd in (("spec", self.spec_fd), ("mounts", self.mounts_w)) if fd >= 0]
        return made + self.lent

    def close(self, keep_reader: bool = True) -> None:
        """Close what the gofer now holds (after the spawn or the request); the mounts pipe's
        read end too unless ``keep_reader`` (it goes to :attr:`GoferProcess.mounts_fd`).
        Never the ``lent`` fds: the manager owns those."""
        for name in ("spec_fd", "mounts_w", *(() if keep_reader else ("mounts_r",))):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


#: Bundles whose parsed spec a :class:`ForkServer` keeps (the least recently read goes first).
_SPEC_CACHE_SIZE = 64


@attrs.define
class _SpecCache:
    """A :class:`ForkServer`'s parsed ``config.json`` per bundle path, kept while the file's
    identity (device, inode, size, mtime, ctime) is unchanged: starting another gofer for a
    bundle costs one ``stat`` instead of reading and parsing the spec again.

    The manager reads the spec only for what it needs before the request (how many sockets,
    the id maps of a user-namespace gofer, the mounts of ``setup_mounts``); the gofer reads
    the bundle itself.  A file rewritten with the same size inside one timestamp tick would
    go unseen: the gofer, reading the new one, then refuses a wrong socket count in its one
    error line.  Errors are never kept: a bundle that cannot be read is read again next time.
    """

    entries: dict[str, tuple[tuple[int, ...], Spec]] = attrs.Factory(dict)
    lock: threading.Lock = attrs.Factory(threading.Lock)

    def load(self, bundle: str) -> Spec:
        """:func:`_parse_spec` of ``bundle`` (absolute), or the kept one if still current."""
        try:
            st = os.stat(os.path.join(bundle, "config.json"))
        except OSError:
            return _parse_spec(bundle, None)  # it says what is wrong, in its words
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self.lock:
            kept = self.entries.get(bundle)
        if kept is not None and kept[0] == key:
            spec = kept[1]
        else:
            spec = _parse_spec(bundle, None)
        with self.lock:
            self.entries.pop(bundle, None)
            self.entries[bundle] = (key, spec)  # now the most recently read
            while len(self.entries) > _SPEC_CACHE_SIZE:
                del self.entries[next(iter(self.entries))]
        return spec


def _read_to_eof(fd: int, timeout: float) -> bytes | None:
    """All of a pipe up to EOF, or None if it is not there within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _parse_spec(bundle: str | os.PathLike[str], doc: SpecDoc | None) -> Spec:
    """The spec as the manager reads it: ``bundle/config.json``, or ``doc`` (relative paths
    anchored at ``bundle``); :class:`LaunchError` with its one line."""
    try:
        if doc is None:
            return load_spec(bundle)
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return load_spec_bytes(raw, bundle)
    except SpecError as e:
        raise LaunchError(str(e)) from None


def _gofer_argv(
    python: str, module: str, flags: list[str], n: int, fd_flags: Sequence[str]
) -> list[str]:
    """A spawned gofer's command line: ``flags`` (:meth:`GoferOptions.flags`, ``--bundle B``
    first) with the io fds 3 .. 3 + n - 1 and ``fd_flags`` after the bundle."""
    io = [arg for i in range(n) for arg in ("--io-fds", str(3 + i))]
    return [python, "-m", module, *flags[:2], *io, *fd_flags, *flags[2:]]


def _write_map(path: str, maps: Sequence[IdMapping]) -> None:
    text = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        name = os.path.basename(path)
        raise LaunchError(f"writing the gofer's {name} ({text.strip()!r}): {e.strerror}") from None


def start_gofer(
    bundle: str | os.PathLike[str],
    options: GoferOptions | None = None,
    *,
    python: str = sys.executable,
    module: str = "gofer9p.daemon",
    env: dict[str, str] | None = None,
    **kwargs: Unpack[GoferKwargs],
) -> GoferProcess:
    """Spawn a gofer for ``bundle`` with ``options`` (:class:`GoferOptions`, or its fields as
    keyword arguments: they build one, or change the one given); return it with the sandbox
    ends of its connections.

    The gofer ends of the socketpairs become fds 3, 4, ... in the child (``--io-fds 3 --io-fds 4
    ...``): they are first duplicated above that range in the parent, so the child-side ``dup2``
    can never overwrite one with another, and the target numbers are held open in the parent while
    spawning so subprocess's own error pipe cannot land on them.

    ``python -m module`` runs it (``module`` lets tests run
    :mod:`gofer9p.testing.gofer_with_hooks` instead of the daemon), with ``env``.
    """
    opts = _options(options, kwargs)
    flags = opts.flags(os.path.abspath(os.fspath(bundle)))
    extra = _FdFlags.make(
        bundle, opts.spec, opts.report_mounts, stats_socket=opts.stats_socket,
        record_fd=opts.record_fd,
    )
    try:
        return _spawn_gofer(extra, opts, flags, python, module, env)
    except BaseException:
        extra.close(keep_reader=False)
        raise


def _spawn_gofer(
    extra: _FdFlags,
    opts: GoferOptions,
    flags: list[str],
    python: str,
    module: str,
    env: dict[str, str] | None,
) -> GoferProcess:
    """:func:`start_gofer` once the spec is read, the flags rendered and the extra fds made."""
    spec = extra.spec
    assert spec is not None  # not lenient
    userns = opts.userns
    if userns is None:
        userns = bool(spec.uid_mappings or spec.gid_mappings)
    if userns and not (spec.uid_mappings and spec.gid_mappings):
        raise LaunchError("userns needs both linux.uidMappings and linux.gidMappings in the spec")
    undo = setup_fs(spec) if opts.setup_mounts else Undo()

    n = spec.attach_count
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n)]
    targets = list(range(3, 3 + n))
    high = [fcntl.fcntl(g.fileno(), fcntl.F_DUPFD_CLOEXEC, 3 + n) for _, g in pairs]
    # --spec-fd/--mounts-fd/--stats-fd/--record-fd: above the io targets too (copies: the
    # caller's own fds stay where they are), kept at that number in the child
    fd_flags: list[str] = []
    for role, fd in extra.roles():
        high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + n))
        fd_flags += [ROLE_FLAGS[role], str(high[-1])]
    kept = high[n:]
    placeholders: list[int] = []
    for t in targets:
        try:
            fcntl.fcntl(t, fcntl.F_GETFD)
        except OSError:
            ph = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if ph != t:
                os.dup2(ph, t, inheritable=False)
                os.close(ph)
            placeholders.append(t)
    sync_r, sync_w = os.pipe()
    go_r, go_w = os.pipe()
    syscalls.libc()  # loaded in the parent: the child must not dlopen between fork and exec

    def child_setup() -> None:
        # Runs in the child between fork and exec: only async-signal-safe-ish system calls.
        for h, t in zip(high[:n], targets, strict=True):
            os.dup2(h, t)  # the new fd is inheritable: it survives the exec
        if userns:
            # Close our copies of the parent's ends: a parent that gives up must give us EOF.
            os.close(go_w)
            os.close(sync_r)
            try:
                syscalls.unshare(CLONE_NEWUSER)
            except OSError:
                os.write(sync_w, b"x")
                os._exit(126)
            os.write(sync_w, b"u" + os.getpid().to_bytes(4, "little"))
            if os.read(go_r, 1) != b"g":
                os._exit(126)
            # Become root of the new namespace, so the exec keeps the namespace's capabilities.
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)

    argv = _gofer_argv(python, module, flags, n, fd_flags)
    result: list[subprocess.Popen[bytes] | BaseException] = []

    def spawn() -> None:
        try:
            result.append(
                subprocess.Popen(
                    argv,
                    pass_fds=[*targets, *kept],
                    close_fds=True,
                    preexec_fn=child_setup,
                    env=env,
                    stdout=opts.stdout,
                    stderr=opts.stderr,
                    stdin=subprocess.DEVNULL,
                )
            )
        except BaseException as e:
            result.append(e)
            if userns:
                os.write(sync_w, b"x")  # unblock the main thread's read: no child to map

    mapped = False
    try:
        if userns:
            # Popen blocks until the exec, but the child waits for us to write its id maps first:
            # spawn from a helper thread and do the maps here.
            spawner = threading.Thread(target=spawn, name="gofer9p-spawn")
            spawner.start()
            try:
                ready, _, _ = select.select([sync_r], [], [], _USERNS_TIMEOUT)
                msg = os.read(sync_r, 5) if ready else b""
                if msg[:1] == b"u" and len(msg) == 5:
                    pid = int.from_bytes(msg[1:], "little")
                    _write_map(f"/proc/{pid}/uid_map", spec.uid_mappings)
                    _write_map(f"/proc/{pid}/gid_map", spec.gid_mappings)
                    os.write(go_w, b"g")
                    mapped = True
            finally:
                os.close(go_w)  # without the "g" the child exits 126 instead of exec'ing
                go_w = -1
                spawner.join()
        else:
            spawn()
        if userns and not mapped and not isinstance(result[0], BaseException):
            result[0].wait()  # it exited 126 without exec'ing: reap it
            raise LaunchError("the gofer's user namespace could not be set up")
    except BaseException:
        for a, g in pairs:
            a.close()
            g.close()
        for r in result:
            if isinstance(r, subprocess.Popen) and r.poll() is None:
                r.kill()
                r.wait()
        undo()
        raise
    finally:
        for fd in (*high, *placeholders, sync_r, sync_w, go_r, go_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
    for _, g in pairs:
        g.close()
    out = result[0]
    if isinstance(out, BaseException):
        for a, _ in pairs:
            a.close()
        undo()
        raise LaunchError(f"cannot start the gofer: {out}") from out
    extra.close()  # the gofer has its copies; the mounts pipe's read end is the caller's now
    gp = GoferProcess(proc=out, sockets=[a for a, _ in pairs], undo=undo, mounts_fd=extra.mounts_r)
    extra.mounts_r = -1
    return gp


# --- starting a gofer through a fork-server (gofer9p.forkserver) ----------------------------------------------------------------------


class ForkServerLost(Exception):
    """The fork-server's connection ended: exit statuses of gofers it started are unknown."""


class PidfdProcess:
    """A gofer started by a fork-server: :class:`subprocess.Popen`'s surface over a pidfd.

    The fork-server is the gofer's parent and reports its exit status on the control
    connection; ``wait``/``poll``/``returncode`` read it there, exactly as Popen reports a
    direct child (negative: killed by that signal).  Signals go through the pidfd, so they
    can never reach a process that reused the pid.  ``pidfd`` is pollable (readable once the
    gofer has exited) for managers with their own event loop.

    If the fork-server dies first, the gofer keeps serving but nobody reports its status:
    ``wait`` then waits for the pidfd and raises :class:`ForkServerLost`.
    """

    stdin: IO[bytes] | None = None
    stdout: IO[bytes] | None = None
    stderr: IO[bytes] | None = None

    def __init__(self, server: ForkServer, pid: int, pidfd: int, args: list[str]) -> None:
        self._server = server
        self.pid = pid
        self.pidfd = pidfd
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self._settle(self._server._exit_of(self.pid, 0.0))
            except ForkServerLost:
                if not select.select([self.pidfd], [], [], 0)[0]:
                    return None  # still running; only its status will be unknown
                raise
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                rc = self._server._exit_of(self.pid, left)
            except ForkServerLost:
                if not select.select([self.pidfd], [], [], left)[0]:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0) from None
                raise
            self._settle(rc)
            if rc is None and deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.returncode

    def _settle(self, rc: int | None) -> None:
        if rc is not None and self.returncode is None:
            self.returncode = rc
            self.close()

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None or self.pidfd < 0:
            return
        with contextlib.suppress(ProcessLookupError):  # exited, status not read yet
            signal.pidfd_send_signal(self.pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Close the pidfd (done when the exit status arrives)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __del__(self) -> None:
        self.close()


def _fileno(f: int | IO[Any] | None) -> int | None:
    if f is None or isinstance(f, int):
        return f
    return f.fileno()


class _Claim:
    """A pre-forked child the fork-server handed to this connection for its next start: its
    pid, a pidfd, and the socket its request goes to (the server kept no end of it)."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket) -> None:
        self.pid, self.pidfd, self.sock = pid, pidfd, sock

    def close(self) -> None:
        """Close both; the child sees EOF and exits (its status comes from the server)."""
        self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class ForkServer:
    """A connection to a fork-server, which it may also own (:meth:`start`).

    ``start_gofer`` takes :func:`gofer9p.launch.start_gofer`'s arguments and returns the same
    :class:`~gofer9p.launch.GoferProcess`, its ``proc`` a :class:`PidfdProcess`; it returns once
    the gofer has set up what its request decides (it is confined before it reads a byte), and
    raises :class:`~gofer9p.launch.LaunchError` with the gofer's one error
    line when it could not start (after the child has exited and been reaped).  Thread-safe.

    With ``claim`` (the default) the connection keeps one of the server's pre-forked children
    claimed ahead of its next start (``{"op": "claim"}``, see :mod:`gofer9p.forkserver`): a
    start sends its request straight to that child, not through the server (one process hop
    less on the way to the gofer's ``ok``), then claims the next.  A server without a pool
    (``--prefork 0``), or one that predates claims, answers that it has none, and every start
    goes through it as with ``claim=False``.  A claimed child costs an idle child's memory
    (~5 MiB private) until it is used or :meth:`stop` closes it.
    """

    def __init__(
        self, sock: socket.socket, proc: subprocess.Popen[bytes] | None = None, *, claim: bool = True
    ) -> None:
        self.sock = sock
        self.proc = proc
        # One thread at a time reads the socket, for every waiter: the exit statuses and
        # replies it reads are stored for whoever waits for them (_pump).
        self._cond = threading.Condition()
        self._reading = False
        self._exits: dict[int, int] = {}
        # Children whose exit nobody will ask for (a claimed child that died before its
        # start): their exit records are dropped as they come, not kept in _exits forever.
        self._unwanted: set[int] = set()
        self._replies: collections.deque[tuple[dict[str, Any], list[int]]] = collections.deque()
        # One start request in flight per connection: the server answers in order.
        self._request_lock = threading.Lock()
        self._lost = False
        self._specs = _SpecCache()
        # Claims (under _cond): the child held for the next start; None until the server
        # answered the first claim, False once it said it hands out none; a claim sent and not
        # answered yet (the server answers each at once); answered "later" (a child follows
        # once its pool has one).
        self._claim: _Claim | None = None
        self._claims: bool | None = None if claim else False
        self._asked = False
        self._later = False

    @classmethod
    def start(
        cls,
        *,
        allow_uids: Sequence[int] = (),
        python: str = sys.executable,
        module: str = "gofer9p.forkserver",
        env: dict[str, str] | None = None,
        stderr: int | IO[Any] | None = None,
        prefork: int = 1,
        claim: bool = True,
    ) -> ForkServer:
        """Spawn a fork-server on one end of a socketpair; it exits when :meth:`stop` closes it.

        ``prefork``: children kept forked and warm ahead of requests; ``claim``: see the class.
        ``module`` lets tests run :mod:`gofer9p.testing.forkserver_with_hooks`.
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [python, "-m", module, "--fd", str(theirs.fileno()), f"--prefork={prefork}"]
        for uid in allow_uids:
            argv += ["--allow-uid", str(uid)]
        try:
            proc = subprocess.Popen(
                argv,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
                stderr=stderr,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return cls(mine, proc, claim=claim)

    @classmethod
    def connect(cls, address: str, *, claim: bool = True) -> ForkServer:
        """Connect to a running ``gofer9p forkserver --socket unix:PATH``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(parse_address(address))
        except BaseException:
            sock.close()
            raise
        return cls(sock, claim=claim)

    # --- records ----------------------------------------------------------------------------

    def _recv(self, timeout: float | None) -> tuple[dict[str, Any], list[int]] | None:
        """One record, or None on timeout; :class:`ForkServerLost` at EOF.  Only the thread
        that set ``_reading`` calls it."""
        if not select.select([self.sock], [], [], timeout)[0]:
            return None
        data, fds, _flags, _ = socket.recv_fds(self.sock, MAX_REQUEST, 2, socket.MSG_CMSG_CLOEXEC)
        if not data:
            for fd in fds:
                os.close(fd)
            self._lost = True
            raise ForkServerLost("the fork-server closed the connection")
        rec: dict[str, Any] = json.loads(data)
        return rec, fds

    def _pump(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Read records until ``done()`` (checked under ``_cond``); False after ``timeout``.
        With ``timeout`` 0, read only what is there already (if no other thread reads)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        drained = False  # a read found nothing waiting
        with self._cond:
            while not done():
                if self._lost:
                    raise ForkServerLost("the fork-server connection is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    if drained or self._reading:
                        return False
                    left = 0.0
                if self._reading:
                    self._cond.wait(left)  # the reader notifies after each record
                    continue
                self._reading = True
                self._cond.release()
                try:
                    got = self._recv(left)
                finally:
                    self._cond.acquire()
                    self._reading = False
                    self._cond.notify_all()
                if got is None:
                    drained = True
                    continue
                rec, fds = got
                if "exit" in rec:
                    pid = int(rec["pid"])
                    if pid in self._unwanted:
                        self._unwanted.discard(pid)
                    else:
                        self._exits[pid] = int(rec["exit"])
                    for fd in fds:
                        os.close(fd)
                elif "claim" in rec:
                    self._on_claim(rec, fds)
                else:
                    self._replies.append(got)
            return True

    def _on_claim(self, rec: dict[str, Any], fds: list[int]) -> None:
        """File the server's answer to a claim (under ``_cond``)."""
        pid = rec["claim"]
        self._asked = False
        self._later = pid is None and bool(rec.get("later"))
        self._claims = pid is not None or self._later
        if pid is None or len(fds) != 2 or self._claim is not None:
            for fd in fds:
                os.close(fd)
            return
        self._claim = _Claim(int(pid), fds[0], socket.socket(fileno=fds[1]))

    def _ask(self) -> None:
        """Claim a pre-forked child for the next start; the answer is read with other records."""
        with self._cond:
            self._asked = True
            try:
                self.sock.send(record({"op": "claim"}))
            except OSError:
                self._asked = False
                self._lost = True  # the next start says so; a gofer started now still is

    def _next_claim(self, timeout: float) -> _Claim | None:
        """The claimed child for this start (under ``_request_lock``), or None: then the
        request goes through the server.  Asks for the first claim of the connection; reads
        what has arrived and waits only for an answer the server still owes."""
        if self._claims is False:
            return None
        if self._claims is None and not self._asked:
            self._ask()
        if self._asked:
            # Answered at once; by the server of an older version with an error reply (nothing
            # else can be a reply now: no start is in flight).
            if not self._pump(lambda: not self._asked or bool(self._replies), timeout):
                self._lost = True
                raise ForkServerLost(f"the fork-server did not answer within {timeout} s")
        elif self._later and self._claim is None:
            self._pump(lambda: not self._later, 0.0)  # it may have come since
        with self._cond:
            if self._asked and self._replies:
                for fd in self._replies.popleft()[1]:
                    os.close(fd)
                self._asked = False
                self._claims = False
            claim, self._claim = self._claim, None
        return claim

    def _start_claimed(
        self, claim: _Claim, req: bytes, fds: list[int]
    ) -> tuple[dict[str, Any], list[int]] | None:
        """Send the request straight to ``claim``: the server's reply it stands for (its pid;
        its pidfd and the start pipe's read end), or None if the child is gone."""
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            socket.send_fds(claim.sock, [req], [*fds, status_w])
        except OSError:  # it died before its request (the server reports its exit)
            os.close(status_r)
            claim.close()
            with self._cond:  # nobody waits for that exit: not kept once it is read
                if self._exits.pop(claim.pid, None) is None:
                    self._unwanted.add(claim.pid)
            return None
        finally:
            os.close(status_w)
            claim.sock.close()
        self._ask()  # the next start's child, while this one starts
        return {"pid": claim.pid}, [claim.pidfd, status_r]

    def _exit_of(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s exit status once the server reported it; None if not within ``timeout``."""
        if not self._pump(lambda: pid in self._exits, timeout):
            return None
        with self._cond:
            return self._exits.pop(pid)

    def _request(
        self, args: list[str], roles: list[str], fds: list[int], timeout: float
    ) -> tuple[dict[str, Any], list[int]]:
        with self._request_lock:
            if self._lost:
                raise ForkServerLost("the fork-server connection is closed")
            req = record({"op": "start", "args": args, "fds": roles})
            claim = None
            if len(req) <= MAX_REQUEST and len(fds) <= MAX_FDS:  # else the server says why
                claim = self._next_claim(timeout)
            if claim is not None:
                got = self._start_claimed(claim, req, fds)
                if got is not None:
                    return got
            try:
                socket.send_fds(self.sock, [req], fds)
            except OSError as e:
                self._lost = True
                raise ForkServerLost(f"the fork-server is gone: {e.strerror or e}") from None
            if not self._pump(lambda: bool(self._replies), timeout):
                self._lost = True  # a late reply could no longer be told from the next one
                raise ForkServerLost(f"the fork-server did not answer within {timeout} s")
            with self._cond:
                return self._replies.popleft()

    # --- the API ----------------------------------------------------------------------------

    def start_gofer(
        self,
        bundle: str | os.PathLike[str],
        options: GoferOptions | None = None,
        *,
        timeout: float = 30.0,
        **kwargs: Unpack[GoferKwargs],
    ) -> GoferProcess:
        """Fork a gofer for ``bundle`` with ``options`` (or its fields as keyword arguments),
        as :func:`gofer9p.launch.start_gofer` spawns one, but it returns once the gofer has
        checked and set up everything the request decides (bundle, fds, root, attach points:
        it then only drops its capabilities and loads its filters, before it reads a byte;
        :class:`gofer9p.daemon.StartReport`), or raises ``LaunchError`` with its one error
        line; each wait for the fork-server or the gofer lasts at most ``timeout`` seconds.

        The bundle is read here only for what the manager needs (how many sockets; the mounts
        when ``setup_mounts``, the id maps of a ``userns`` gofer, which this process writes as
        :func:`~gofer9p.launch.start_gofer` does), and kept for the next start of the same
        bundle while its config.json is unchanged (:class:`_SpecCache`); the gofer reads it
        itself (or the ``spec`` given here, on a sealed memfd), the fork-server never does.
        The fds of ``spec``, ``report_mounts``, ``stats_socket`` and ``record_fd`` go to the
        fork-server as the ``spec``, ``mounts``, ``stats`` and ``record`` roles (SCM_RIGHTS
        copies: the stats socket and the record fd stay the caller's, never closed here).
        """
        opts = _options(options, kwargs)
        path = os.path.abspath(os.fspath(bundle))
        args = opts.flags(path)
        extra = _FdFlags.make(
            path, opts.spec, opts.report_mounts, lenient=not opts.setup_mounts,
            stats_socket=opts.stats_socket, record_fd=opts.record_fd, specs=self._specs,
        )
        try:
            return self._start_gofer(extra, opts, args, timeout)
        finally:
            extra.close(keep_reader=False)  # _start_gofer took the reader if it served

    def _start_gofer(
        self, extra: _FdFlags, opts: GoferOptions, args: list[str], timeout: float
    ) -> GoferProcess:
        """:meth:`start_gofer` once the spec is read, the flags rendered and the extra fds
        made."""
        spec = extra.spec
        userns = opts.userns
        n = 1  # a bundle we cannot read: the gofer reports its fault itself, in its own words
        if spec is not None:
            n = spec.attach_count
            if userns is None:
                userns = bool(spec.uid_mappings or spec.gid_mappings)
            if userns and not (spec.uid_mappings and spec.gid_mappings):
                raise LaunchError(
                    "userns needs both linux.uidMappings and linux.gidMappings in the spec"
                )
        undo = setup_fs(spec) if opts.setup_mounts and spec is not None else Undo()
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n)]
        ours = [a for a, _ in pairs]
        fds = [g.fileno() for _, g in pairs]
        roles = ["io"] * n
        for role, efd in extra.roles():
            fds.append(efd)
            roles.append(role)
        for role, f in (("stdout", opts.stdout), ("stderr", opts.stderr)):
            fd = _fileno(f)
            if fd is not None:
                fds.append(fd)
                roles.append(role)
        go_r = go_w = -1
        if userns:
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            fds.append(go_r)
            roles.append("userns")
        proc: PidfdProcess | None = None
        try:
            try:
                rec, got = self._request(args, roles, fds, timeout)
            finally:
                for _, g in pairs:
                    g.close()
                if go_r >= 0:
                    os.close(go_r)
                extra.close()  # the child has the spec and the mounts pipe's write end
            if "error" in rec:
                raise LaunchError(f"fork-server: {rec['error']}")
            pidfd, start_r = got
            proc = PidfdProcess(self, int(rec["pid"]), pidfd, args)
            lines = _Lines(start_r)
            try:
                line = lines.next(timeout)
                if userns and line == "userns" and spec is not None:
                    try:  # as start_gofer's parent: the child waits for its maps
                        _write_map(f"/proc/{proc.pid}/uid_map", spec.uid_mappings)
                        _write_map(f"/proc/{proc.pid}/gid_map", spec.gid_mappings)
                        os.write(go_w, b"g")
                    finally:
                        os.close(go_w)  # without the "g" the child exits 126
                        go_w = -1
                    line = lines.next(timeout)
            finally:
                os.close(start_r)
            if line != "ok":
                if line is None:
                    proc.kill()
                    raise LaunchError(f"the gofer did not report within {timeout} s")
                rc = proc.wait(timeout)
                raise LaunchError(line or f"the gofer exited with status {rc} before serving")
        except BaseException:
            if go_w >= 0:
                os.close(go_w)
            for a in ours:
                a.close()
            if proc is not None and proc.returncode is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(timeout)
            undo()
            raise
        gp = GoferProcess(proc=proc, sockets=ours, undo=undo, mounts_fd=extra.mounts_r)
        extra.mounts_r = -1
        return gp

    def stop(self, timeout: float = 5.0) -> int | None:
        """Close the connection; a fork-server we started then exits (its gofers keep serving).

        Returns its exit status (None for one we only connected to).
        """
        self.sock.close()
        with self._cond:
            self._lost = True
            claim, self._claim = self._claim, None
        if claim is not None:
            claim.close()  # its child exits
        if self.proc is None:
            return None
        return reap(self.proc, timeout)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Lines:
    """The start pipe's lines: ``userns``, ``ok`` or an error line; ``""`` at EOF."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next(self, timeout: float) -> str | None:
        """The next line, ``""`` at EOF, None if none within ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf and len(self.buf) <= 65536:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            try:
                chunk = os.read(self.fd, 4096)
            except InterruptedError:
                continue
            if not chunk:
                line, self.buf = self.buf, b""
                return line.decode(errors="replace").strip()
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")


# --- the ``gofer9p launch`` front --------------------------------------------------------------


def _build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Set up a bundle's 9P mounts in a private mount namespace, start a gofer "
        "and serve each attach point on a unix socket until Ctrl-C. Each socket takes one "
        "client at a time (a 9P connection, as a sandbox has per attach point); when it "
        "disconnects, its 9P session is reset (every fid clunked) and the next client that "
        "connects to the same socket reaches the same attach point. A client that connects "
        "while another one is connected waits until that one leaves (a line says so).",
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--socket-dir", help="where to create the sockets (default: a new temp dir)")
    p.add_argument("--panic-on-write", action="store_true")
    p.add_argument("--seccomp", choices=("kill", "log", "off"), default="kill")
    p.add_argument(
        "--userns",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the gofer in a user namespace with the spec's id mappings "
        "(default: when the spec has mappings)",
    )
    p.add_argument("--log-level", default="info")
    add_idmap_args(p)
    add_confine_args(p)
    return p


def _sock_name(i: int, dest: str) -> str:
    slug = dest.strip("/").replace("/", "_") or "root"
    return f"{i}-{slug}.sock"


def main(argv: Sequence[str] | None = None, *, prog: str = "gofer9p launch") -> int:
    """``gofer9p launch --bundle B``: prints ``attach <dest> unix:<path>`` lines, then ``ready``.

    Each path serves its attach point to one client at a time, as many clients in turn as
    connect (e.g. ``mount -t 9p -o trans=unix,version=9p2000.L,access=client PATH /mnt``, or
    ``gofer9p client unix:PATH ls /`` again and again): see :class:`_Relay`.  Ctrl-C or
    SIGTERM stops the gofer, removes the mounts and the sockets.
    """
    args = _build_parser(prog).parse_args(argv)
    try:
        doc = None if args.spec_fd is None else read_spec_fd(args.spec_fd)
        spec = _parse_spec(args.bundle, doc)
        if not args.setup_root:
            enter_private_mount_namespace()
        gofer = start_gofer(
            args.bundle,
            panic_on_write=args.panic_on_write,
            seccomp=args.seccomp,
            userns=args.userns,
            setup_mounts=not args.setup_root,
            extra_args=["--log-level", args.log_level],
            map_uids=args.map_uid,
            map_gids=args.map_gid,
            squash_ids=args.squash_ids,
            spec=doc,
            report_mounts=args.mounts_fd is not None,
            setup_root=args.setup_root,
            landlock=args.landlock,
        )
    except (SpecError, LaunchError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    if args.mounts_fd is not None:
        try:
            _relay_mounts(gofer, args.mounts_fd)
        except (LaunchError, OSError) as e:
            print(f"{prog}: error: --mounts-fd: {e}", file=sys.stderr, flush=True)
            gofer.stop()
            return 2
    sock_dir = args.socket_dir or tempfile.mkdtemp(prefix="gofer9p-launch-")
    dests = ["/", *(m.destination for m in spec.mounts)]
    paths = [os.path.join(sock_dir, _sock_name(i, d)) for i, d in enumerate(dests)]
    try:
        import trio

        trio.run(_serve_paths, gofer, dests, paths)
    finally:
        status = gofer.stop()
        for p in paths:
            try:
                os.unlink(p)
            except OSError:
                pass
        if not args.socket_dir:
            try:
                os.rmdir(sock_dir)
            except OSError:
                pass
    print(f"gofer exited with status {status}", flush=True)
    return 0


def _relay_mounts(gofer: GoferProcess, fd: int) -> None:
    """``gofer9p launch --mounts-fd N``: the gofer's resolved mounts, as it wrote them, to N."""
    try:
        data = memoryview(json.dumps(gofer.mounts(), separators=(",", ":")).encode() + b"\n")
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


async def _serve_paths(gofer: GoferProcess, dests: list[str], paths: list[str]) -> None:
    """Listen on each path and relay its clients, in turn, to the matching sandbox end."""
    import trio

    async with trio.open_nursery() as nursery:
        for dest, path, sand in zip(dests, paths, gofer.sockets, strict=True):
            lsock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await lsock.bind(path)
            lsock.listen(8)
            print(f"attach {dest} unix:{path}", flush=True)
            relay = _Relay(dest, path, sand)
            nursery.start_soon(relay.run, lsock)
        print(f"gofer pid {gofer.pid}", flush=True)
        print("ready", flush=True)

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                async for _ in sigs:
                    nursery.cancel_scope.cancel()
                    return

        async def gofer_exit() -> None:
            await trio.to_thread.run_sync(gofer.proc.wait, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(gofer_exit)


_HEADER = struct.Struct("<IBH")
_TVERSION, _RVERSION, _NOTAG = 100, 101, 0xFFFF
_VERSION_9P2000L = b"9P2000.L"
#: What a client may send before it negotiated anything (a Tversion is a few dozen bytes),
#: and the largest msize the gofer grants by default (ServerConfig.max_msize).
_FIRST_FRAME_MAX = 8192
_GOFER_MSIZE = 4 << 20
#: How many clients may wait for their turn on one socket; more are refused (closed).
_WAITING_MAX = 4


class _BadFrame(Exception):
    """A client sent a frame the relay will not forward (see :class:`_Relay`)."""


class _Frames:
    """Whole 9P frames from a stream: what is buffered is at most one frame plus one read."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def next(self, limit: int) -> bytes | None:
        """The next frame (``size[4]`` included), or None at EOF (a partial frame is dropped).

        Raises :class:`_BadFrame` for a size below 7 or above ``limit``.
        """
        buf = self.buf
        while True:
            if len(buf) >= 4:
                size = int.from_bytes(buf[:4], "little")
                if size < 7 or size > limit:
                    raise _BadFrame(f"a frame of {size} bytes, outside [7, {limit}]")
                if len(buf) >= size:
                    frame = bytes(buf[:size])
                    del buf[:size]
                    return frame
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            buf += data


def _tversion(msize: int) -> bytes:
    body = struct.pack("<IH", msize, len(_VERSION_9P2000L)) + _VERSION_9P2000L
    return _HEADER.pack(7 + len(body), _TVERSION, _NOTAG) + body


class _Relay:
    """One attach point: its sandbox end, lent to one unix-socket client at a time.

    The daemon serves exactly one connection per attach point, for its whole life (the
    sandbox's, in a real sandbox).  A person trying ``gofer9p launch`` and a manager that
    reconnects both open new connections, so the relay keeps the gofer connection and starts
    a new 9P session on it for each client, the way 9P itself does on one stream: a
    ``Tversion`` "aborts all outstanding I/O and clunks all fids".  When a client leaves,
    the relay sends its own Tversion and drops whatever the gofer still answers until that
    Tversion's Rversion (the gofer answers frames in order, and a Tversion only after every
    earlier request is done); the next client then finds a session with no fid and nothing
    in flight, and its own Tversion starts its session.

    To keep the gofer connection sound whatever a client does, only whole frames are
    forwarded (a client that leaves mid-frame never leaves half a request behind), a frame
    larger than the negotiated msize closes the client, not the gofer connection (the
    gofer would close it), and so does a malformed Tversion or another request tagged NOTAG
    (the relay counts Tversions to find the end of a session: each valid one gets exactly
    one Rversion).
    """

    def __init__(self, dest: str, path: str, sand: socket.socket) -> None:
        import trio

        self.dest = dest
        self.path = path
        self.gofer = trio.SocketStream(trio.socket.from_stdlib_socket(sand))
        self.client: Any = None  # the trio.SocketStream replies go to, or None: dropped
        self.limit = _FIRST_FRAME_MAX  # largest client frame the gofer accepts now
        self.biggest = _GOFER_MSIZE  # largest frame the gofer may send
        self.versions_sent = 0
        self.versions_seen = 0
        self.caught_up = trio.Event()
        self.caught_up.set()
        self.gone = ""  # why the gofer connection ended, once it did
        self.busy = False
        self.served = 0

    def say(self, msg: str) -> None:
        print(f"attach {self.dest}: {msg}", flush=True)

    async def run(self, lsock: Any) -> None:
        import trio

        send, recv = trio.open_memory_channel[Any](_WAITING_MAX)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._from_gofer)
            nursery.start_soon(self._clients, recv)
            with lsock:
                while True:
                    conn, _ = await lsock.accept()
                    if self.gone:
                        conn.close()
                        continue
                    try:
                        send.send_nowait(conn)
                    except trio.WouldBlock:
                        self.say(f"{_WAITING_MAX} clients wait already: one more refused")
                        conn.close()
                        continue
                    if self.busy:
                        self.say("a client is connected: the new one waits until it leaves "
                                 "(one 9P session per attach point)")

    async def _clients(self, recv: Any) -> None:
        import trio

        async for conn in recv:
            if self.gone:
                conn.close()
                continue
            await self.caught_up.wait()
            self.busy = True
            stream = trio.SocketStream(conn)
            self.client = stream
            self.served += 1
            why = await self._from_client(stream)
            self.client = None
            self.busy = False
            await stream.aclose()
            if self.gone:
                continue
            # A new session for the next client (this one's fids and requests go away).
            self.limit = _FIRST_FRAME_MAX
            self.caught_up = trio.Event()
            self.versions_sent += 1
            try:
                await self.gofer.send_all(_tversion(1 << 16))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._end("the gofer connection broke")
                continue
            self.say(f"client {self.served} {why}; session reset, the next client on "
                     f"unix:{self.path} reaches the same attach point")

    async def _from_client(self, stream: Any) -> str:
        """Forward the client's frames to the gofer; returns why it stopped."""
        import trio

        frames = _Frames(stream)
        try:
            while True:
                frame = await frames.next(self.limit)
                if frame is None:
                    return "disconnected"
                _, mtype, tag = _HEADER.unpack_from(frame)
                if mtype == _TVERSION:
                    vlen = int.from_bytes(frame[11:13], "little") if len(frame) >= 13 else -1
                    if 13 + vlen != len(frame):
                        return "sent a malformed Tversion: disconnected"
                    self.versions_sent += 1
                elif tag == _NOTAG:
                    return f"tagged a type {mtype} request NOTAG: disconnected"
                await self.gofer.send_all(frame)
        except _BadFrame as e:
            return f"sent {e}: disconnected"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return "disconnected (connection error)"

    async def _from_gofer(self) -> None:
        """Every frame the gofer sends: to the current client, else dropped."""
        import trio

        frames = _Frames(self.gofer)
        while True:
            try:
                frame = await frames.next(self.biggest)
            except (_BadFrame, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._end(f"the gofer connection failed ({e})")
                return
            if frame is None:
                self._end("the gofer closed this attach point's connection")
                return
            if frame[4] == _RVERSION:
                self.versions_seen += 1
                msize = int.from_bytes(frame[7:11], "little")
                if frame[13:] == _VERSION_9P2000L and msize >= 7:
                    self.limit = msize
                    self.biggest = max(self.biggest, msize)
                if self.versions_seen >= self.versions_sent:
                    self.caught_up.set()
            client = self.client
            if client is not None:
                try:
                    await client.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # it left: _from_client sees that too

    def _end(self, why: str) -> None:
        if not self.gone:
            self.gone = why
            self.say(f"{why}: this socket serves no more clients")
        self.caught_up.set()
        if self.client is not None:
            self.client.socket.close()


if __name__ == "__main__":
    sys.exit(main())
