"""Device nodes, FIFOs and sockets: reaching host devices through the file system.

Decision (design.md: mknod is allowed on read-write mounts, it is what the sandbox asked for):
the gofer may *create* device nodes if its capabilities allow (the confined daemon has no
CAP_MKNOD; these in-process tests run as root, so here it can), but it must never *open* one:
a real gofer's host mount is ``nodev``, and ``gofer9p serve DIR`` may serve a directory that is
not.  So Tlopen (and every path that re-opens a file: truncate, xattrs) of a character or block
device fails, whoever planted the node and however it got its name.

The worst case is checked for real: a block node with the major/minor of the disk that holds
the export.  If the server ever returns its bytes, that is the host disk.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from pathlib import Path

import pytest
import trio

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C

from .conftest import Esc, expect_error

DEVICE_REFUSALS = {errno.EPERM, errno.EACCES, errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV,
                   errno.EINVAL, errno.ESTALE}


def _disk_of(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev)


def _host_disk_bytes(major: int, minor: int, offset: int, n: int) -> bytes:
    """The host's own view of the device (a node in a private temp dir, read-only)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        node = os.path.join(d, "dev")
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
        fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)


async def test_block_node_of_host_disk_is_never_read(esc: Esc) -> None:
    """mknod the export's own disk, then open and read it: the server must refuse the open.

    Reads only (never a write), and only if the open was wrongly allowed.
    """
    c = esc.client
    major, minor = _disk_of(esc.export)
    try:
        await c.mknod(esc.root, b"disk", stat.S_IFBLK | 0o600, major, minor)
    except P9Error as e:
        # refusing to create the node is safe too (the confined daemon has no CAP_MKNOD)
        assert e.errno in (errno.EPERM, errno.EACCES), e
        esc.assert_contained()
        return
    assert stat.S_ISBLK(os.lstat(esc.export / "disk").st_mode)
    fid, _ = await c.walk(esc.root, [b"disk"])
    r = await c.getattr(fid)
    assert stat.S_ISBLK(r.mode)
    for flags in (C.L_O_RDONLY, C.L_O_RDONLY | C.L_O_NONBLOCK, C.L_O_RDWR, C.L_O_WRONLY):
        probe, _ = await c.walk(esc.root, [b"disk"])
        try:
            await c.lopen(probe, flags)
        except P9Error as e:
            assert e.errno in DEVICE_REFUSALS, e
            continue
        if flags != C.L_O_RDONLY:
            raise AssertionError(f"CRITICAL: host disk {major}:{minor} opened with flags {flags:#o}")
        data = await c.read(probe, 1024, 4096)
        host = _host_disk_bytes(major, minor, 1024, 4096)
        if data and data == host:
            raise AssertionError(f"CRITICAL: read host disk {major}:{minor} data through 9P")
        raise AssertionError(f"host disk {major}:{minor} opened read-only through 9P")
    # truncate and xattrs re-open files too
    await expect_error(c.setattr(fid, C.SETATTR_SIZE, size=0))
    with pytest.raises(P9Error):
        await c.setxattr(fid, b"user.x", b"1")
    esc.assert_contained()


CHAR_DEVICES = {
    "null": (1, 3),
    "mem": (1, 1),
    "zero": (1, 5),
    "random": (1, 8),
    "kmsg": (1, 11),
    "tty0": (4, 0),
    "console": (5, 1),
    "ptmx": (5, 2),
}


@pytest.mark.parametrize("dev", list(CHAR_DEVICES))
async def test_char_node_made_by_client_is_not_opened(esc: Esc, dev: str) -> None:
    c = esc.client
    major, minor = CHAR_DEVICES[dev]
    try:
        await c.mknod(esc.root, dev.encode(), stat.S_IFCHR | 0o666, major, minor)
    except P9Error as e:
        assert e.errno in (errno.EPERM, errno.EACCES), e
        return
    for flags in (C.L_O_RDONLY, C.L_O_RDWR | C.L_O_NONBLOCK, C.L_O_WRONLY):
        fid, _ = await c.walk(esc.root, [dev.encode()])
        err = await expect_error(c.lopen(fid, flags))
        assert err in DEVICE_REFUSALS, err
    esc.assert_contained()


async def test_device_nodes_planted_by_host_are_not_opened(esc: Esc) -> None:
    """A rootfs copied from a real system can contain device nodes: same rule."""
    c = esc.client
    major, minor = _disk_of(esc.export)
    os.mknod(esc.export / "blk", stat.S_IFBLK | 0o644, os.makedev(major, minor))
    os.mknod(esc.export / "chr", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    for name in (b"blk", b"chr"):
        fid, _ = await c.walk(esc.root, [name])
        await expect_error(c.lopen(fid, C.L_O_RDONLY))
        await expect_error(c.setattr(fid, C.SETATTR_SIZE, size=0))
        try:
            names = await c.getxattr(fid, b"")
        except P9Error:
            names = b""
        assert names == b""
    esc.assert_contained()


async def test_lcreate_mode_type_bits_are_ignored(esc: Esc) -> None:
    """Tlcreate makes a regular file whatever type bits the mode carries."""
    c = esc.client
    for i, fmt in enumerate((stat.S_IFBLK, stat.S_IFCHR, stat.S_IFDIR, stat.S_IFLNK)):
        d, _ = await c.walk(esc.root, [])
        try:
            await c.lcreate(d, f"c{i}".encode(), C.L_O_RDWR | C.L_O_CREAT, fmt | 0o644)
        except P9Error:
            continue
        assert stat.S_ISREG(os.lstat(esc.export / f"c{i}").st_mode)
    esc.assert_contained()


# ------------------------------------------------------------- inotify: who opened what

_IN_OPEN = 0x20
_libc = ctypes.CDLL(None, use_errno=True)


class OpenWatch:
    """inotify IN_OPEN on files or directories (one inotify instance for all of them: the
    per-user instance limit is small).  ``opened()`` gives, per event, the watched path plus the
    name of the entry opened in it ("" when the watched file or directory itself was opened)."""

    def __init__(self, *paths: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.wds: dict[int, Path] = {}
        for p in paths:
            wd = _libc.inotify_add_watch(self.fd, str(p).encode(), _IN_OPEN)
            assert wd >= 0, (p, os.strerror(ctypes.get_errno()))
            self.wds[wd] = p

    def events(self) -> list[tuple[Path, str]]:
        out: list[tuple[Path, str]] = []
        for _ in range(1000):
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos + 16 <= len(buf):
                wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, pos)
                name = buf[pos + 16 : pos + 16 + ln].split(b"\0", 1)[0].decode()
                if mask & _IN_OPEN:
                    out.append((self.wds.get(wd, Path("?")), name))
                pos += 16 + ln
        return out

    def opened(self) -> list[str]:
        """Names opened (entries of a watched directory; "" for a watched file itself)."""
        return [name for _, name in self.events()]

    def close(self) -> None:
        os.close(self.fd)


async def test_device_swapped_in_under_a_file_fid_is_not_opened(esc: Esc) -> None:
    """The client walks regular file ``f``, then renames a device node over ``f`` and asks to
    open / truncate / read xattrs of the old fid.  Re-opening ``f`` by name would open the
    device (then notice the inode changed): the open itself must not happen, because opening
    a device has effects (a watchdog starts, a tape rewinds, a tty becomes the controlling
    terminal - the re-open has no O_NOCTTY)."""
    c = esc.client
    (esc.export / "f").write_bytes(b"regular")
    os.mknod(esc.export / "dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    fid_open, _ = await c.walk(esc.root, [b"f"])
    fid_trunc, _ = await c.walk(esc.root, [b"f"])
    fid_xattr, _ = await c.walk(esc.root, [b"f"])
    watch = OpenWatch(esc.export / "dev")  # the node's inode, whatever its name
    await c.renameat(esc.root, b"dev", esc.root, b"f")
    try:
        # Acting on the fid's own (now unlinked) regular file is fine, failing is fine.
        try:
            await c.lopen(fid_open, C.L_O_RDONLY)
        except P9Error:
            pass
        else:
            assert await c.read(fid_open, 0, 100) == b"regular"
        try:
            await c.setattr(fid_trunc, C.SETATTR_SIZE, size=0)
        except P9Error:
            pass
        try:
            await c.getxattr(fid_xattr, b"")
        except P9Error:
            pass
        await trio.sleep(0.05)
        opened = watch.opened()
    finally:
        watch.close()
    assert not opened, "the server opened the device node swapped in under the fid's name"
    assert stat.S_ISCHR(os.lstat(esc.export / "f").st_mode)
    esc.assert_contained()


async def test_fifo_and_socket_nodes_do_not_hang_the_server(esc: Esc) -> None:
    """Opening a FIFO with no peer would block forever in open(2); reading one would block
    in read(2).  The connection must keep answering meanwhile."""
    c = esc.client
    await c.mknod(esc.root, b"fifo", stat.S_IFIFO | 0o666)
    await c.mknod(esc.root, b"sock", stat.S_IFSOCK | 0o666)
    for name, flags in ((b"fifo", C.L_O_RDONLY), (b"fifo", C.L_O_WRONLY), (b"fifo", C.L_O_RDWR),
                        (b"sock", C.L_O_RDONLY)):
        fid, _ = await c.walk(esc.root, [name])
        with trio.fail_after(3):
            try:
                await c.lopen(fid, flags)
            except P9Error:
                continue
            if flags != C.L_O_WRONLY:
                try:
                    await c.read(fid, 0, 100)
                except P9Error:
                    pass
            await c.getattr(esc.root)
            await c.clunk(fid)
    esc.assert_contained()


async def test_device_swapped_in_race_is_never_opened(esc: Esc) -> None:
    """Race version of the test above: the host exchanges regular file ``f`` and a char node
    (1:3) ``f_dev`` in a tight loop while the client walks ``f`` and opens / truncates it.

    An inotify watch on the *device node's inode* sees every open of it, whatever its name at
    that instant.  A re-open by name that checks the inode before open(2) still has a window;
    only a check after an open that cannot have effects (or no re-open by name) closes it.
    (The confined daemon serves from a nodev mount, where such an open fails with EACCES.)
    """
    from .test_race import RACE_SECONDS, Swapper

    MIN_ATTEMPTS = 150

    c = esc.client
    ex = esc.export
    (ex / "f").write_bytes(b"regular")
    os.mknod(ex / "f_dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    watch = OpenWatch(ex / "f_dev")  # watches the node's inode, wherever it is renamed
    # The race runs for RACE_SECONDS and at least MIN_ATTEMPTS attempts: on a loaded machine
    # 2 s held ~50 attempts, so a fixed window made the test's own precondition fail.
    sw = Swapper(ex / "f", ex / "f_dev", RACE_SECONDS + 120)
    attempts = opened_regular = 0
    try:
        deadline = trio.current_time() + RACE_SECONDS
        for _ in range(1_000_000):
            if trio.current_time() >= deadline and attempts >= MIN_ATTEMPTS:
                break
            fid, _ = await c.walk(esc.root, [b"f"])
            attempts += 1
            try:
                await c.lopen(fid, C.L_O_RDONLY)
                opened_regular += 1
            except P9Error:
                pass
            try:
                await c.setattr(fid, C.SETATTR_SIZE, size=7)
            except P9Error:
                pass
            await c.clunk(fid)
    finally:
        swaps, _ = sw.finish()
        device_opens = len(watch.opened())
        watch.close()
    assert swaps > 1000 and attempts >= MIN_ATTEMPTS and opened_regular > 0, (swaps, attempts)
    assert device_opens == 0, (
        f"the server opened the device node {device_opens} times in {attempts} attempts"
    )
    esc.assert_contained()
