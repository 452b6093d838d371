"""Directory entries: create (a file opened at once, a directory, a node, a symlink),
link, rename and remove.

Every entry is named by one component relative to a held directory fd
(``_check_name``); a new entry is given to the fid's uid and the request's gid,
then exactly the requested mode (see ``_exact_mode``), and removed again if
that fails, so a failed request leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from gofer9p.attach import _sys
from gofer9p.attach._attrs import Attrs
from gofer9p.attach._common import (
    _DIR,
    _LNK,
    _O_PATH,
    _REG,
    _S_IFMT,
    _check_name,
    _close,
    _err,
    _fstat,
    _gid,
)
from gofer9p.attach._fids import _XREAD, _Fid
from gofer9p.attach._stat import fstat_ids
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Qid

_O_CREATE: Final = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_DIRECTORY: Final = ~os.O_DIRECTORY  # Tlcreate's host flags drop O_DIRECTORY

#: The mode bits a create asks the kernel for: permissions and sticky.  Set-id bits are set
#: after the chown to the client's ids (a chown strips them, even as root; and a new file of
#: root's with them must not exist, even for a moment).
_CREATE_BITS: Final = 0o1777

_SETID: Final = stat.S_ISUID | stat.S_ISGID
_ACCMODE: Final = C.L_O_ACCMODE
_WRITERS: Final = (C.L_O_WRONLY, C.L_O_RDWR)  # the 9P access modes that write


def _exact_mode(fmt: int, mode: int, got: int) -> int:
    """The mode a new entry must end with: exactly the client's (``mode & 0o7777``), whatever
    the process umask (it is process-wide: a library user's ``serve()`` has its own), plus
    S_ISGID on a directory that inherited it from a set-gid parent, as a local mkdir(2) does
    (``got`` is the mode it was created with, which a umask only narrows: an extra bit can
    only be inherited).  QEMU's 9p passthrough backend sets modes the same way: create, chown,
    chmod.  A client's kernel applies its own umask and create rules before it sends a mode
    (Linux v9fs does: a set-gid file made by a non-member in a set-gid directory already comes
    without S_ISGID), so the server does what it is asked."""
    if fmt == _DIR:
        return mode | (got & stat.S_ISGID)
    return mode


def _owner(d: _Fid) -> None:
    """EPERM for a fid that may own nothing: attached with a uid the export's id map
    does not hold (uid -1, see ``session.Session.attach``)."""
    if d.uid < 0:
        raise _err(errno.EPERM)


class Entries(Attrs):
    """Tlcreate, Tmkdir, Tmknod, Tsymlink, Tlink, Trename, Trenameat, Tunlinkat, Tremove."""

    def _new_entry(self, d: _Fid, name: bytes, uid: int, gid: int, mode: int) -> Qid:
        """After creating ``name`` in directory fid ``d``: give it to (uid, gid), give it
        exactly ``mode`` (see :func:`_exact_mode`), return its qid.

        Ownership is applied only when the gofer may chown; if anything fails the
        new entry is removed again, so a failed request leaves nothing behind.  The one
        mode that cannot be set is a socket's or device node's on a kernel without
        fchmodat2 (< 6.6; see :meth:`_chmod`): EOPNOTSUPP then, when the mode mknod made
        (under the process umask, after the chown) is not the one asked for.
        """
        dfd = d.fd
        nfd = os.open(name, _O_PATH, dir_fd=dfd)
        try:
            try:
                if self.point.can_chown:
                    _sys.fchown_empty(nfd, uid, gid)
                st = _fstat(nfd)
                fmt = st.st_mode & _S_IFMT
                if fmt != _LNK:  # Linux symlinks have no mode of their own
                    want = _exact_mode(fmt, mode, st.st_mode)
                    if stat.S_IMODE(st.st_mode) != want:
                        # d's holder without a reference: nf is dropped unreleased
                        nf = _Fid(self, nfd, d.dirh if fmt != _DIR else None, (*d.path, name),
                                  uid, st.st_dev, st.st_ino, fmt, self.point.qid(st))
                        self._chmod(nf, want)
            except OSError:
                try:
                    if stat.S_ISDIR(_fstat(nfd).st_mode):
                        os.rmdir(name, dir_fd=dfd)
                    else:
                        os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass
                raise
            return self.point.qid(st)
        finally:
            _close(nfd)

    def lcreate(self, fid: int, name: bytes, flags: int, mode: int, gid: int) -> Qid:
        """Create and open a regular file in the fid's directory; the fid becomes it.

        ``flags`` are 9P open flags: O_CREAT|O_EXCL|O_NOFOLLOW are forced, the file
        is given to (fid uid, gid), then its mode is exactly ``mode & 0o7777``
        whatever the process umask (see ``_exact_mode``).
        """
        _check_name(name)
        hflags = (_sys.host_open_flags(flags) & _NOT_DIRECTORY) | _O_CREATE
        # A hot entry: the reference and the fd charge (the new file's fd; the directory's
        # holder becomes its parent) are taken in one lock section, and given back with the
        # fid's update in another (see below), for a directory fid in the table that may
        # create and a share with room.  Every other case (an error, an idle fid to reopen,
        # a full share to reclaim in) takes the general path, _create_ref.
        pin = -1
        with self._lock:
            g = self._fids.get(fid)
            if (g is not None and not g.idle and not g.xmode and g.ofd < 0 and g.fmt == _DIR
                    and g.uid >= 0):
                pin = self._charge_held(g, 1)
                if pin >= 0:
                    g.refs += 1
                    g.used = True
        if pin >= 0 and g is not None:
            f = g
        else:
            f, pin = self._create_ref(fid)
        released = False
        try:
            dfd = f.fd
            try:
                ofd = os.open(name, hflags, mode & _CREATE_BITS, dir_fd=dfd)
            except BaseException:
                self._uncharge_fid(f, 1, pin)
                raise
            point = self.point
            try:
                dev, ino, smode, suid, sgid = fstat_ids(ofd)  # (no stat_result: _stat.py)
                if point.can_chown:
                    uid, ngid = f.uid, _gid(gid)
                    # Skipped when the kernel already gave the file those ids: a
                    # chown to the same ids changes nothing but the ctime.
                    if suid != uid or (ngid != -1 and sgid != ngid):
                        os.fchown(ofd, uid, ngid)
                want = mode & 0o7777
                if smode & 0o7777 != want:  # set-id bits, or the umask narrowed it
                    os.fchmod(ofd, want)
            except BaseException:
                _close(ofd)
                self._uncharge_fid(f, 1, pin)
                try:
                    os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass
                raise
            qid = Qid(0, 0, point.qid_path(dev, ino))  # a new regular file
            oacc = flags & _ACCMODE
            # a later write by this uid clears set-id bits the mode gives
            killpriv = (want & _SETID) != 0 and f.uid != 0 and oacc in _WRITERS
            with self._lock:
                ok = f.ofd < 0 and f.fmt == _DIR and f.fd == dfd
                if ok:
                    # f.dirh, the holder of dfd, stays: from now on the file's parent
                    f.fd = f.ofd = ofd  # one fd for both (see _Fid): no dup, no extra close
                    f.oacc = oacc
                    f.killpriv = killpriv
                    f.path = (*f.path, name)
                    f.dev, f.ino, f.fmt, f.qid = dev, ino, _REG, qid
                    # The reference dropped here too: FidTable._put's common case (not
                    # the last one, or the last of a fid with nothing to let go of); the
                    # rest is _put's, in the finally below.
                    f.refs -= 1
                    released = f.refs > 0 or not (f.dead or f.retired)
                    if not released:
                        f.refs += 1
            if not ok:  # the fid changed meanwhile (a concurrent request): undo the create
                _close(ofd)
                self._uncharge_fid(f, 1, pin)
                try:
                    os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass
                raise _err(errno.EINVAL)
            return qid
        finally:
            if not released:
                self._put(f)

    def _create_ref(self, fid: int) -> tuple[_Fid, int]:
        """Tlcreate's reference to ``fid`` and its fd charge, the general way (see
        :meth:`lcreate`): EBADF for an unknown fid, an idle one reopened, EINVAL for an
        xattr or opened fid, ENOTDIR, EPERM (``_owner``), EMFILE for a full share after
        reclaiming.  Returns the reference and the pin taken (``_charge_fid``)."""
        f = self._ref(fid)
        try:
            if f.xmode or f.ofd >= 0:
                raise _err(errno.EINVAL)
            if f.fmt != _DIR:
                raise _err(errno.ENOTDIR)
            _owner(f)
            return f, self._charge_fid(f, 1)
        except BaseException:
            self._put(f)
            raise

    def mkdir(self, dfid: int, name: bytes, mode: int, gid: int) -> Qid:
        _check_name(name)
        with self._ref(dfid) as d:
            _owner(d)
            os.mkdir(name, mode & _CREATE_BITS, dir_fd=d.fd)
            return self._new_entry(d, name, d.uid, _gid(gid), mode & 0o7777)

    def mknod(self, dfid: int, name: bytes, mode: int, major: int, minor: int, gid: int) -> Qid:
        """mknod as requested (regular, FIFO, socket, char, block); whether device
        nodes can be made is up to the gofer's capabilities (the daemon has no
        CAP_MKNOD), and they are never opened (see ``_reopen``)."""
        _check_name(name)
        with self._ref(dfid) as d:
            fmt = mode & _S_IFMT
            # Linux dev_t: 12-bit major, 20-bit minor (32-bit with the high parts);
            # larger numbers cannot name a device (makedev would overflow).
            if major > 0xFFFFFFF or minor > 0xFFFFFFF:
                raise _err(errno.EINVAL)
            _owner(d)
            os.mknod(name, fmt | (mode & _CREATE_BITS), os.makedev(major, minor), dir_fd=d.fd)
            return self._new_entry(d, name, d.uid, _gid(gid), mode & 0o7777)

    def symlink(self, fid: int, name: bytes, target: bytes, gid: int) -> Qid:
        _check_name(name)
        if b"\0" in target:
            raise _err(errno.EINVAL)
        with self._ref(fid) as d:
            _owner(d)
            os.symlink(target, name, dir_fd=d.fd)
            return self._new_entry(d, name, d.uid, _gid(gid), 0)

    def link(self, dfid: int, fid: int, name: bytes) -> None:
        """Hard-link fid's file into dfid as ``name`` (linkat without following)."""
        _check_name(name)
        with self._ref(dfid) as d, self._ref(fid) as f:
            if f.fmt == _DIR:
                raise _err(errno.EPERM)
            pfd, oname, owned = self._locate(f, mutating=True)
            try:
                os.link(oname, name, src_dir_fd=pfd, dst_dir_fd=d.fd, follow_symlinks=False)
            finally:
                if owned:
                    _close(pfd)

    def rename(self, fid: int, dfid: int, name: bytes) -> None:
        """Rename fid's file into dfid as ``name``; fids keep working (they hold fds)."""
        _check_name(name)
        with self._ref(dfid) as d, self._ref(fid) as f:
            pfd, oname, owned = self._locate(f, mutating=True)
            try:
                os.rename(oname, name, src_dir_fd=pfd, dst_dir_fd=d.fd)
            finally:
                if owned:
                    _close(pfd)
            self._renamed(f.path, (*d.path, name), f.dev, f.ino, d.dirh)

    def renameat(self, olddirfid: int, oldname: bytes, newdirfid: int, newname: bytes) -> None:
        _check_name(oldname)
        _check_name(newname)
        with self._ref(olddirfid) as od, self._ref(newdirfid) as nd:
            os.rename(oldname, newname, src_dir_fd=od.fd, dst_dir_fd=nd.fd)
            try:
                st = os.stat(newname, dir_fd=nd.fd, follow_symlinks=False)
            except OSError:
                pass
            else:
                self._renamed(
                    (*od.path, oldname), (*nd.path, newname), st.st_dev, st.st_ino, nd.dirh
                )

    def unlinkat(self, dirfid: int, name: bytes, flags: int) -> None:
        """unlink, or rmdir with AT_REMOVEDIR (any other flag: EINVAL)."""
        _check_name(name)
        if flags & ~C.AT_REMOVEDIR:
            raise _err(errno.EINVAL)
        with self._ref(dirfid) as d:
            if flags & C.AT_REMOVEDIR:
                os.rmdir(name, dir_fd=d.fd)
            else:
                os.unlink(name, dir_fd=d.fd)

    def remove(self, fid: int) -> None:
        """Unlink (or rmdir) the fid's file; the fid is clunked in every case
        (the server calls this as ``remove_fid``)."""
        f = self._take(fid)
        try:  # not ``with``: a hot entry (see FidTable._ref)
            if f.xmode == _XREAD:
                raise _err(errno.EBADF)
            if f.idle:
                self._revive(f)
            pfd, name, owned = self._locate(f, mutating=True)
            try:
                if f.fmt == _DIR:
                    os.rmdir(name, dir_fd=pfd)
                else:
                    os.unlink(name, dir_fd=pfd)
            finally:
                if owned:
                    _close(pfd)
        finally:
            self._put(f)
