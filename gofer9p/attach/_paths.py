"""Where a fid's file is: inside the attach root or not, and under which name now.

``_inside`` tells whether a directory is the attach root or below it (walking
its parents through the kernel); ``_locate`` finds the directory and name a
fid's file is linked under now (its name is a hint, verified by inode, found
again by scanning when stale); ``_renamed`` updates the hints after a rename
through this session.  See ``backend.py`` for the security model these serve.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from gofer9p.attach._common import _DIR, _O_DIR_READ, _O_PATH_DIR, _close, _err, _fstat
from gofer9p.attach._dirs import Dirs
from gofer9p.attach._fids import _DirFd, _Fid
from gofer9p.attach._stat import ident_at

_UP: Final = tuple(b"/".join([b".."] * k) for k in range(1, 33))  # "..", "../..", ... (see _inside)
_UP_RUNS: Final = 4096 // len(_UP)  # runs of _UP before _inside gives up (4096 levels)


class Paths(Dirs):
    """Attach-root containment and name lookup of fids (no operation of its own)."""

    def _inside(self, dfd: int, dev: int = 0, ino: int = -1) -> bool:
        """Whether directory ``dfd`` is the attach root or below it.

        Walks up the chain of parents until it meets the root (True) or the
        top of the file system (False).  Only needed where a directory was
        reached by going *up* or could have been moved by someone else: a
        sandbox alone cannot move anything out of its tree (renames are
        relative to fds inside it), but the host can, and a directory moved
        out must not become a way to list, walk or change what is outside.
        More than 4096 levels up without meeting the root counts as outside.

        The k-th parent is looked at with one ``fstatat(dfd, "../" * k)``
        (up to 32 levels, then the walk goes on from an fd of the 32nd
        parent): each ``..`` of that lookup is the kernel's same step as an
        ``openat(fd, "..")`` (mounts and the chroot included), and a lookup
        that ends at the root's inode has followed an actual chain of
        parents from ``dfd`` to the root at that moment, so the answer is as
        strong as walking up with an fd per level, for one system call per
        level instead of three (open, fstat, close).

        ``dev``/``ino``: ``dfd``'s identity when known (a ``_DirFd``'s; ``ino``
        -1: unknown), which spares its fstat.
        """
        rdev, rino = self.point.root_dev, self.point.root_ino
        if ino < 0:
            st = _fstat(dfd)
            dev, ino = st.st_dev, st.st_ino
        if ino == rino and dev == rdev:
            return True
        cur, owned = dfd, False
        try:
            for _ in range(_UP_RUNS):
                for up in _UP:
                    sdev, sino = ident_at(cur, up)
                    if sino == rino and sdev == rdev:
                        return True
                    if sino == ino and sdev == dev:
                        return False  # "/" (or the chroot's root) is its own parent
                    dev, ino = sdev, sino
                # Neither within len(_UP) levels: go on from that directory's fd.
                nfd = os.open(_UP[-1], _O_PATH_DIR, dir_fd=cur)
                if owned:
                    _close(cur)
                cur, owned = nfd, True
                st = _fstat(nfd)
                dev, ino = st.st_dev, st.st_ino
                if ino == rino and dev == rdev:
                    return True
            return False
        finally:
            if owned:
                _close(cur)

    def _locate(
        self, f: _Fid, mutating: bool = False, inode: bool = False
    ) -> tuple[int, bytes, bool]:
        """The directory fd and name under which ``f``'s file is linked now.

        Returns ``(dirfd, name, owned)``; the caller closes ``dirfd`` when
        ``owned``.  EBUSY for the attach root (it has no name we may touch),
        ENOENT when the file has no name left in that directory, or when that
        directory is no longer inside the attach root (checked for
        directories, whose parent is found by going up; before scanning a
        directory; and when the caller is going to change the directory
        entry, ``mutating``).  Re-opening a verified name of a non-directory
        needs no such check: it is the very inode the fid already holds.

        ``inode``: the caller only acts on the file through the name (re-open,
        set times), never on the entry.  Then a *file* root is located too:
        in its directory, which is outside the tree and legitimate for the
        root fid only (trusted configuration: the sandbox manager put the
        file there, so no ``_inside`` check), by the attach point's name and
        no other (no scan of a host directory), verified to still be the
        root's inode: ESTALE if the host swapped the entry (a symlink, another
        file), so a mutation is never redirected.
        """
        # f.parent and self._is_root(f), written out (Tremove's hot path: two calls)
        h = f.dirh
        parent = -1 if h is None or h.fd == f.fd else h.fd
        point = self.point
        if f.ino == point.root_ino and f.dev == point.root_dev:
            if not inode or parent < 0:
                raise _err(errno.EBUSY)
            name = point.name
            try:
                sdev, sino = ident_at(parent, name)
            except OSError:
                raise _err(errno.ESTALE) from None
            if sino != f.ino or sdev != f.dev:
                raise _err(errno.ESTALE)
            return parent, name, False
        pdev, pino = 0, -1
        if h is not None and parent >= 0:
            pfd, owned, pdev, pino = parent, False, h.dev, h.ino
        elif f.fmt == _DIR and f.fd >= 0:
            pfd, owned = os.open(b"..", _O_PATH_DIR, dir_fd=f.fd), True
        else:
            raise _err(errno.EBADF)
        try:
            checked = owned or mutating
            if checked and not self._inside(pfd, pdev, pino):
                raise _err(errno.ENOENT)
            name = f.path[-1] if f.path else b""
            if name:
                try:
                    sdev, sino = ident_at(pfd, name)
                    if sino == f.ino and sdev == f.dev:
                        return pfd, name, owned
                except OSError:
                    pass
            if not checked and not self._inside(pfd, pdev, pino):
                raise _err(errno.ENOENT)
            name = self._find_name(pfd, f)
            f.path = (*f.path[:-1], name)
            return pfd, name, owned
        except BaseException:
            if owned:
                _close(pfd)
            raise

    @staticmethod
    def _find_name(pfd: int, f: _Fid) -> bytes:
        """Scan directory ``pfd`` for a name linked to ``f``'s inode."""
        dfd = os.open(b".", _O_DIR_READ, dir_fd=pfd)
        try:
            with os.scandir(dfd) as it:
                for e in it:
                    if e.inode() == f.ino:
                        name = os.fsencode(e.name)
                        try:
                            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                        except OSError:
                            continue
                        if st.st_ino == f.ino and st.st_dev == f.dev:
                            return name
        finally:
            _close(dfd)
        raise _err(errno.ENOENT)

    def _renamed(
        self, old: tuple[bytes, ...], new: tuple[bytes, ...], dev: int, ino: int,
        newdir: _DirFd | None,
    ) -> None:
        """Update the path hints (and non-directories' parent holders) after a rename
        into the directory fid whose holder is ``newdir``: a non-directory fid of the
        renamed file shares ``newdir`` from now on.  The holder it had is let go when
        no request uses the fid any more (retired until then)."""
        n = len(old)
        stale: list[int] = []
        with self._lock:
            for g in self._fids.values():
                p = g.path
                if len(p) >= n and p[:n] == old:
                    g.path = new + p[n:]
                    h = g.dirh
                    if (len(p) == n and g.ino == ino and g.dev == dev and newdir is not None
                            and h is not None and h.fd != g.fd and h is not newdir):
                        newdir.refs += 1
                        g.dirh = newdir
                        if g.refs:
                            g.retired = (*g.retired, h)  # in use: let go of at the last reference
                        else:
                            self._unshare(h, stale)
        for fd in stale:
            _close(fd)

