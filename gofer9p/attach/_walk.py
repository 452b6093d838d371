"""Attach and walk: new fids from the attach root, from a walk of names, or as clones.

A walk is one ``openat(O_PATH|O_NOFOLLOW)`` per name relative to the fid's
held fd; ``..`` goes up through the kernel and never above the attach root
(see ``backend.py``); a mount crossed into a kernel pseudo file system is
EACCES.
"""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Sequence
from typing import Final

from gofer9p.attach._common import _DIR, _S_IFMT, _close, _err, _fstat
from gofer9p.attach._fids import _DirFd, _Fid, open_child
from gofer9p.attach._paths import Paths
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Qid

_NOBODY: Final = 65534  # the kernel's overflow uid


class Walk(Paths):
    """Tattach and Twalk on fids."""

    def attach(self, fid: int, n_uname: int, uname: bytes) -> Qid:
        """Attach ``fid`` to the root of this connection's attach point; its qid.

        The attach point is fixed per connection (the served directory, or one
        9P mount of the bundle), so Tattach's ``aname`` selects nothing: any
        aname attaches that root, as QEMU does.  diod-style clients (and p9bench)
        send the export's *host* path, which means nothing inside the sandbox,
        and a sandbox must not be able to pick a different starting point than
        the one its manager handed it.
        The uid (``n_uname``, else ``uname`` as a number, else a passwd name, else
        65534) becomes the owner of files created through this fid and fids
        walked from it.
        """
        uid = self._uid(n_uname, uname)
        point = self.point
        fmt = point.root_fmt
        # A file root's fid keeps its directory, as every non-directory fid does
        # (see _locate for why that directory, outside the tree, is trusted).
        fd, h = self._root_fds(fmt)
        root = _Fid(self, fd, h, (), uid, point.root_dev, point.root_ino, fmt, point.root_qid)
        self._install(fid, root, None)
        return root.qid

    @staticmethod
    def _uid(n_uname: int, uname: bytes) -> int:
        if n_uname != C.NONUNAME:
            return n_uname
        if uname.isdigit():
            # a uid is below 2**32 - 1: more than 10 digits is out of range
            # (and int() refuses over 4300 digits: never reach it)
            uid = int(uname) if len(uname) <= 10 else C.NONUNAME
            if uid < C.NONUNAME:
                return uid
            raise _err(errno.EINVAL)
        try:
            return pwd.getpwnam(uname.decode("utf-8", "surrogateescape")).pw_uid
        except (KeyError, ValueError, UnicodeError):
            # Linux v9fs's first attach of a mount sends n_uname = NONUNAME and
            # uname "nobody" (its default uname=), which a sandbox's passwd file
            # (the gofer's chroot) need not list: refusing it would make the
            # mount fail.  Such a fid owns nothing that matters (with
            # access=client the client attaches again per uid, with n_uname),
            # so it gets the overflow uid, as unmappable ids do in the kernel.
            return _NOBODY


    def walk(self, fid: int, newfid: int, names: Sequence[bytes] = ()) -> list[Qid]:
        """Walk ``fid`` into ``newfid`` along ``names``; the qids of the names walked.

        With no names into another fid number, a clone (the Linux client's
        commonest walk; the server calls this as ``clone_fid``): one pass under
        the table lock, where the fid cannot lose its fds while it is in the
        table (only ``dup`` runs under it), so no reference is taken, and
        ``fd``, ``dirh`` and the rest are read consistently.  A clone shares the
        fid's directory holder (see ``_fids``): a directory's clone holds no fd
        of its own, a file's one (a dup of the file's).
        Walking from an opened fid is allowed (QEMU allows it, and Linux walks
        from open fids of unlinked files); the new fid is not opened.
        ``newfid`` in use by another fid: EBADF.  A name after the first that
        fails ends the walk there (fewer qids, ``newfid`` not made).
        """
        if not names and newfid != fid:
            fids = self._fids
            with self._lock:
                f = fids.get(fid)
                if f is None or f.xmode or f.fd < 0 or newfid in fids:
                    if f is None or not f.idle:
                        raise _err(errno.EBADF)
                    # an idle fid: the general path below reopens it
                elif len(fids) >= self.max_fids:
                    raise _err(errno.EMFILE)
                else:
                    h = f.dirh
                    n = 0 if h is not None and h.fd == f.fd else 1
                    if self._fd_used + n <= self.fd_share:
                        fids[newfid] = g = self._dup_fid(f)
                        self._holders[g] = None
                        self._fd_used += n
                        f.used = True
                        return []
                    # the share is full: the general path reclaims (or makes it idle)
        if len(names) > C.MAXWELEM:
            raise _err(errno.E2BIG)
        f = self._ref(fid)
        try:  # not ``with``: a hot entry (see FidTable._ref)
            if f.xmode or f.fd < 0:
                raise _err(errno.EBADF)
            same = newfid == fid
            if not same and newfid in self._fids:
                raise _err(errno.EBADF)
            if not names:
                with self._lock:
                    nf: _Fid | None = self._dup_fid(f)
                qids: list[Qid] = []
            else:
                qids, nf = self._walk_names(f, names)
            if nf is not None:
                self._install(newfid, nf, f if same else None)
            return qids
        finally:
            self._put(f)

    def _walk_names(
        self, f: _Fid, names: Sequence[bytes], partial: bool = True
    ) -> tuple[list[Qid], _Fid | None]:
        """Walk ``names`` from ``f`` one component at a time.

        Returns the qids of the components walked and the new fid for the last
        one, or ``None`` when a component after the first failed (Twalk's
        partial result).  A failure of the first component, or of any one
        when not ``partial``, raises.
        """
        point = self.point
        rdev, rino = point.root_dev, point.root_ino
        qids: list[Qid] = []
        # cur is the file reached, prev the directory before it; curh/prevh their
        # holders while they are f's fds (shared with the new fid, not dup'ed).
        # A walk that never moves (only ".." at a file root) clones f, parent included.
        cur, cur_owned = f.fd, False
        h = f.dirh
        curh: _DirFd | None
        prevh: _DirFd | None
        if h is not None and h.fd == cur:
            curh, prevh, prev = h, None, -1
        else:
            curh, prevh, prev = None, h, -1 if h is None else h.fd
        prev_owned = False
        # prev's identity (pino -1: unknown), as (dev, ino) is cur's
        pdev, pino = (0, -1) if h is None else (h.dev, h.ino)
        dev, ino, fmt, qid = f.dev, f.ino, f.fmt, f.qid
        path = list(f.path)
        try:
            for i, name in enumerate(names):
                try:
                    if name == b"..":
                        if ino == rino and dev == rdev:
                            # The root, a directory or a file: ".." stays there.
                            path.clear()
                            qids.append(point.root_qid)
                            continue
                        if fmt != _DIR:
                            raise _err(errno.ENOTDIR)
                        nfd, ndev, nino, nmode = open_child(cur, b"..", dev)
                        try:
                            if not self._inside(nfd, ndev, nino):
                                # Only if the host moved us out of the tree: clamp.
                                _close(nfd)
                                nfd = -1
                                nfd = os.dup(point.fd)
                                st = _fstat(nfd)
                                ndev, nino, nmode = st.st_dev, st.st_ino, st.st_mode
                        except BaseException:
                            if nfd >= 0:
                                _close(nfd)
                            raise
                    else:
                        if fmt != _DIR:
                            raise _err(errno.ENOTDIR)
                        if not name or name == b"." or 0x2F in name or 0 in name:  # "/", NUL
                            raise _err(errno.EINVAL)
                        nfd, ndev, nino, nmode = open_child(cur, name, dev)
                except OSError:
                    if i == 0 or not partial:
                        raise
                    return qids, None
                if prev_owned:
                    _close(prev)
                prev, prev_owned, prevh = cur, cur_owned, curh
                pdev, pino = dev, ino
                cur, cur_owned, curh = nfd, True, None
                dev, ino, fmt = ndev, nino, nmode & _S_IFMT
                if name != b"..":
                    path.append(name)
                elif ino == rino and dev == rdev:
                    path.clear()
                elif path:
                    path.pop()
                qid = point.qid_of(nmode, ndev, nino)
                qids.append(qid)
            # Build the new fid.  A directory: its fd is its holder's, f's own if the
            # walk did not move.  Another file: its own fd (cur), and as its parent
            # (the last step was a name: ".." always yields a directory) the holder
            # of prev, the directory holding it: f's if prev is f's fd.
            if not cur_owned and (fmt != _DIR or curh is None):
                cur, cur_owned = os.dup(cur), True
            dh: _DirFd | None
            if fmt == _DIR:
                dh = _DirFd(cur, dev, ino) if cur_owned else curh
            elif prev_owned:
                dh, prev_owned = _DirFd(prev, pdev, pino), False
            else:
                dh = prevh
            if dh is not None and (dh is curh or dh is prevh):
                with self._lock:
                    dh.refs += 1
            nf = _Fid(self, cur, dh, tuple(path), f.uid, dev, ino, fmt, qid)
            cur_owned = False
            return qids, nf
        finally:
            if prev_owned:
                _close(prev)
            if cur_owned:
                _close(cur)

