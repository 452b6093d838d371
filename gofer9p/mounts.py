"""Mount trees of a gofer's root: where a 9P mount lands inside the root, and checked binds.

Two jobs that the manager side (:func:`gofer9p.launch.setup_fs`) and the gofer itself
(``--setup-root``, ``--mounts-fd``: :mod:`gofer9p.confine`, :mod:`gofer9p.daemon`) share:

* :func:`resolve` walks a spec destination inside a root directory fd, one component at a
  time with ``O_NOFOLLOW`` (never a path the kernel walks for us), resolving each symlink it
  meets *as the sandbox sees it*: an absolute target starts again at the root, ``..`` goes up
  one resolved component.  A ``..`` above the root is refused (:class:`MountError`): such a
  destination names something outside the tree the sandbox lives in.  The result is the
  destination as resolved (no symlink left in it) and ``O_PATH`` fds of it and its directory,
  which the caller mounts on or serves, so nothing is resolved a second time.
* :func:`apply_flags` sets ro/nosuid/nodev/noexec on a new bind mount (recursively for an
  rbind) and reads them back with statvfs: a flag asked for and not in place is an error,
  never a silent downgrade.

The sandbox may be running and changing its rootfs while this runs: a component swapped for a
symlink after it was resolved is still never followed by the kernel (every open is
``O_NOFOLLOW`` relative to the fd of the previous component).
"""

from __future__ import annotations

import errno
import os
import re
import stat

import attrs

from . import syscalls
from .syscalls import (
    AT_EMPTY_PATH,
    AT_RECURSIVE,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
)

__all__ = [
    "FLAG_OF_OPTION",
    "MountError",
    "Resolved",
    "apply_flags",
    "option_flags",
    "resolve",
    "submounts",
]

#: The most symlinks one destination may go through (the kernel's own limit, MAXSYMLINKS).
MAX_SYMLINKS = 40

#: statvfs f_flag bits (ST_*) have the same values as the MS_* flags for these four.
FLAG_OF_OPTION = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

_O_STEP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class MountError(Exception):
    """A destination cannot be resolved inside its root, or a bind's flags are not in place;
    ``str(err)`` is one line."""


@attrs.define
class Resolved:
    """Where a destination landed: ``path`` (absolute inside the root, no symlink in it),
    ``fd`` (``O_PATH`` of it), ``parent_fd`` (``O_PATH`` of its directory) and ``name`` (its
    name there).  The caller owns both fds (:meth:`close`)."""

    path: str
    fd: int
    parent_fd: int
    name: str
    created: list[str] = attrs.field(factory=list)

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.parent_fd = -1


def resolve(rootfd: int, destination: str, *, create: str | None = None) -> Resolved:
    """Resolve ``destination`` inside the directory ``rootfd`` (see the module docstring).

    ``create`` ``None``: every component must exist; ``"dir"`` or ``"file"``: missing
    components are made (directories, mode 0755), the last one of that kind (a file empty,
    mode 0644), as a mount point; ``Resolved.created`` lists them (in-root paths, in order).
    A destination resolving to the root itself is refused: a mount there would hide it.
    """
    todo = [c for c in destination.split("/") if c]
    stack: list[tuple[str, int]] = []  # resolved components below the root and their fds
    created: list[str] = []
    links = 0

    def here() -> str:
        return "/" + "/".join(n for n, _ in stack)

    try:
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                if not stack:
                    raise MountError(f"attach point {destination!r} resolves outside the root")
                os.close(stack.pop()[1])
                continue
            parent = stack[-1][1] if stack else rootfd
            try:
                fd = os.open(name, _O_STEP, dir_fd=parent)
            except FileNotFoundError:
                if create is None:
                    where = os.path.join(here(), name)
                    raise MountError(
                        f"attach point {destination!r}: No such file or directory"
                        + ("" if where == destination else f" ({where!r} is missing)")
                    ) from None
                last = create if not todo else "dir"
                _make(parent, name, last)
                created.append(os.path.join(here(), name))
                fd = os.open(name, _O_STEP, dir_fd=parent)
            except OSError as e:
                where = os.path.join(here(), name)
                raise MountError(f"attach point {destination!r}: {where!r}: {e.strerror}") from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                try:
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                if links > MAX_SYMLINKS:
                    raise MountError(f"attach point {destination!r}: too many symlinks")
                if target.startswith("/"):  # absolute: from the root the sandbox sees
                    while stack:
                        os.close(stack.pop()[1])
                todo[:0] = [c for c in target.split("/") if c]
                continue
            stack.append((name, fd))
            if todo and not stat.S_ISDIR(st.st_mode):
                raise MountError(f"attach point {destination!r}: {here()!r} is not a directory")
        if not stack:
            raise MountError(f"attach point {destination!r} resolves to the root itself")
        path = here()
        name, fd = stack.pop()
        parent_fd = stack.pop()[1] if stack else os.open(".", _O_STEP, dir_fd=rootfd)
        return Resolved(path, fd, parent_fd, name, created)
    finally:
        for _, fd in stack:
            os.close(fd)


def _make(dirfd: int, name: str, kind: str) -> None:
    if kind == "dir":
        os.mkdir(name, 0o755, dir_fd=dirfd)
    else:
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(name, flags, 0o644, dir_fd=dirfd))


def option_flags(options: tuple[str, ...], readonly: bool) -> int:
    """The MS_RDONLY/NOSUID/NODEV/NOEXEC a 9P mount's options ask for (``readonly`` is the
    spec's last word on ro/rw: a later "rw" cancels "ro")."""
    wanted = 0
    for opt in options:
        wanted |= FLAG_OF_OPTION.get(opt, 0)
    return wanted if readonly else wanted & ~MS_RDONLY


def apply_flags(fd: int, wanted: int, target: str, *, recursive: bool, what: str) -> None:
    """Set ``wanted`` (MS_RDONLY/NOSUID/NODEV/NOEXEC) on the mount whose root ``fd`` is (an
    ``O_PATH`` fd; ``target`` is its path, for submounts and messages), and check them.

    With ``recursive`` the flags must cover every submount too (a read-only rbind whose tmpfs
    submount stays writable would be written through), so they are set with
    mount_setattr(AT_RECURSIVE); kernels without it (< 5.12) get one bind remount per
    submount.  Each mount's existing flags are kept: a bind remount sets the flag word whole,
    and clearing a locked flag fails in a user namespace.  ``what`` starts every error line.
    """
    if not wanted:
        return  # nothing to set, nothing to check (and no mount table to read)
    procpath = f"/proc/self/fd/{fd}"
    mounts = [target, *(submounts(target) if recursive else [])]
    try:
        at_flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
        syscalls.mount_setattr(fd, "", at_flags, wanted)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise MountError(f"{what}: {e.strerror}") from None
        for i, path in enumerate(mounts):
            where = procpath if i == 0 else path
            have = os.statvfs(where).f_flag & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            try:
                syscalls.mount(None, where, None, MS_REMOUNT | MS_BIND | wanted | have)
            except OSError as e2:
                raise MountError(f"{what}: remount {path}: {e2.strerror}") from None
    for i, path in enumerate(mounts):
        got = os.statvfs(procpath if i == 0 else path).f_flag
        if got & wanted != wanted:
            raise MountError(f"{what}: {path} has flags {got:#x}, lacking {wanted & ~got:#x}")


def submounts(target: str) -> list[str]:
    """Mount points strictly below ``target`` in this mount namespace, parents first."""
    prefix = target.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split()[4]
            path = re.sub(rb"\\([0-7]{3})", lambda mo: bytes([int(mo[1], 8)]), raw)
            p = os.fsdecode(path)
            if p.startswith(prefix):
                out.append(p)
    return sorted(set(out), key=lambda p: p.count("/"))
