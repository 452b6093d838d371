"""Escape suite fixtures: a hostile client next to a host tree that must stay untouched.

Layout, per test (``tmp_path``)::

    export/             the attach root the client gets
    outside/secret      SECRET, mode 0600, xattr user.g9leak<token> = XATTR_VALUE
    outside/LISTME-...  a name that must never be listed to the client
    outside/dir/x       OUTSIDE_X (target of directory symlinks and of the rename race)
    outside/dir/victim  a file an escaping unlink would remove

Containment is checked two ways, because an escape can be a read as well as a write:

* :class:`World` snapshots everything outside the export (type, mode, owner, size, link count,
  inode, all three timestamps, content, directory listing, xattrs) after pushing every atime far
  into the past, so that under ``relatime`` *any* read or listing of an outside file moves its
  atime.  Our own snapshot reads use ``O_NOATIME`` so they do not disturb it.  Anything
  created, written, chmodded, renamed, linked, read or listed outside shows up as a difference.
* :class:`ScanningStream` sits between the client and the socket and records every reply byte
  that contains a marker (the secret, the outside file contents, the hidden name, the hidden
  xattr, the first line of the host's ``/etc/passwd``).

Every test body runs under a ``trio.fail_after`` (see :func:`pytest_collection_modifyitems`), so a
server that hangs fails the test instead of hanging the run.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import secrets
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from gofer9p.attach import AttachPoint
from gofer9p.client import Client, P9Error, open_client, stream_from_socket
from gofer9p.server import ServerConfig, serve

TEST_TIMEOUT = 60.0
"""Seconds any one escape test may run (they take well under a second, the races ~2 s)."""

TOKEN = secrets.token_hex(8)
SECRET = b"TOP-SECRET-" + TOKEN.encode() + b"\n"
OUTSIDE_X = b"OUTSIDE-X-" + TOKEN.encode()
VICTIM = b"OUTSIDE-VICTIM-" + TOKEN.encode()
LISTME = "LISTME-" + TOKEN
XATTR_NAME = "user.g9leak" + TOKEN[:8]
XATTR_VALUE = b"XATTR-SECRET-" + TOKEN.encode()
PWN = "pwn-" + TOKEN
"""Every name an attack tries to create outside contains this; it is searched for host-wide."""

OLD_ATIME_NS = 1_000_000_000 * 1_000_000_000  # 2001: older than any relatime window


def _passwd_line() -> bytes:
    try:
        with open("/etc/passwd", "rb") as f:
            return f.readline().rstrip(b"\n")
    except OSError:
        return b""


PASSWD_LINE = _passwd_line()


def _wrap_with_timeout(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(TEST_TIMEOUT):
            return await fn(*args, **kwargs)

    return bounded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every async test of this directory in time (no pytest-timeout here)."""
    here = Path(__file__).parent
    for item in items:
        if not isinstance(item, pytest.Function) or Path(str(item.fspath)).parent != here:
            continue
        if inspect.iscoroutinefunction(item.obj) and not getattr(item.obj, "_escape_bounded", 0):
            wrapped = _wrap_with_timeout(item.obj)
            wrapped._escape_bounded = 1  # type: ignore[attr-defined]
            item.obj = wrapped


# --------------------------------------------------------------------------- host state


def _read_noatime(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        out = bytearray()
        for _ in range(1 << 16):  # bounded: test files are tiny
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def _list_noatime(path: str) -> list[str]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            out[n] = b"<unreadable>"
    return out


@attrs.frozen
class Entry:
    """Everything about one host file that an escape could change (or a read could touch)."""

    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    ino: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    content: str  # sha256 of a regular file, the target of a symlink, the listing of a directory
    xattrs: tuple[tuple[str, bytes], ...]


def _entry(path: str) -> Entry:
    st = os.lstat(path)
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        content = hashlib.sha256(_read_noatime(path)).hexdigest()
    elif fmt == stat.S_IFDIR:
        content = "\0".join(_list_noatime(path))
    elif fmt == stat.S_IFLNK:
        content = "-> (not read: readlink moves atime)"
    else:
        content = ""
    # lstat again: the timestamps after our own O_NOATIME reads (which must not move them)
    st = os.lstat(path)
    return Entry(
        st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_ino,
        st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, content,
        tuple(sorted(_xattrs(path).items())),
    )


@attrs.define
class World:
    """The host side of a test: the export, the outside tree and its baseline snapshot."""

    base: Path
    export: Path
    outside: Path
    secret: Path
    outdir: Path
    baseline: dict[str, Entry] = attrs.field(factory=dict)

    def _paths(self) -> Iterator[str]:
        yield str(self.base)
        stack = [str(self.base)]
        for _ in range(10_000):  # bounded walk of a small tree
            if not stack:
                return
            d = stack.pop()
            for name in _list_noatime(d):
                p = os.path.join(d, name)
                if p == str(self.export):
                    continue
                yield p
                if stat.S_ISDIR(os.lstat(p).st_mode):
                    stack.append(p)

    def snapshot(self) -> dict[str, Entry]:
        return {p: _entry(p) for p in self._paths()}

    def age_and_freeze(self) -> None:
        """Push every outside atime into the past, then take the baseline."""
        for p in self._paths():
            st = os.lstat(p)
            os.utime(p, ns=(OLD_ATIME_NS, st.st_mtime_ns), follow_symlinks=False)
        self.baseline = self.snapshot()

    def diff(self) -> list[str]:
        now = self.snapshot()
        out = []
        for p in sorted(set(now) | set(self.baseline)):
            a, b = self.baseline.get(p), now.get(p)
            if a is None:
                out.append(f"created outside the export: {p}")
            elif b is None:
                out.append(f"removed/renamed outside the export: {p}")
            elif a != b:
                fields = [f.name for f in attrs.fields(Entry) if getattr(a, f.name) != getattr(b, f.name)]
                what = {
                    "atime_ns": "READ or LISTED (atime moved)",
                    "content": "WRITTEN / directory changed",
                    "mode": "CHMODDED",
                    "nlink": "LINKED/UNLINKED",
                    "size": "WRITTEN/TRUNCATED",
                    "xattrs": "XATTR CHANGED",
                }
                labels = sorted({what.get(f, f) for f in fields})
                out.append(f"changed outside the export: {p}: {', '.join(labels)} ({fields})")
        for d in ("/", "/tmp", "/etc", str(self.base.parent)):
            try:
                hits = [n for n in os.listdir(d) if TOKEN in n]
            except OSError:
                continue
            out += [f"created outside: {os.path.join(d, n)}" for n in hits]
        return out

    def assert_contained(self) -> None:
        problems = self.diff()
        assert not problems, "ESCAPE:\n  " + "\n  ".join(problems)


def make_world(base: Path) -> World:
    export = base / "export"
    export.mkdir()
    export.chmod(0o755)
    outside = base / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    os.setxattr(secret, XATTR_NAME, XATTR_VALUE)
    (outside / LISTME).write_bytes(b"")
    outdir = outside / "dir"
    outdir.mkdir()
    (outdir / "x").write_bytes(OUTSIDE_X)
    (outdir / "victim").write_bytes(VICTIM)
    return World(base=base, export=export, outside=outside, secret=secret, outdir=outdir)


@pytest.fixture
def world(tmp_path: Path) -> World:
    """The host tree; tests add their host-side fixtures to ``export`` then call
    ``world.age_and_freeze()`` (the ``esc`` fixture does it when it connects)."""
    return make_world(tmp_path)


# --------------------------------------------------------------------------- client side


MARKERS: tuple[bytes, ...] = tuple(
    m
    for m in (SECRET.rstrip(b"\n"), OUTSIDE_X, VICTIM, LISTME.encode(), XATTR_NAME.encode(),
              XATTR_VALUE, PASSWD_LINE)
    if m
)


class ScanningStream(trio.abc.Stream):
    """A stream that records every received marker (a leak, even if no test looked at it)."""

    def __init__(self, inner: trio.abc.Stream, markers: tuple[bytes, ...] = MARKERS) -> None:
        self.inner = inner
        self.markers = markers
        self.keep = max(len(m) for m in markers)
        self.tail = b""
        self.leaks: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        window = self.tail + bytes(data)
        for m in self.markers:
            if m in window and m not in self.leaks:
                self.leaks.append(m)
        self.tail = window[-self.keep :]
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class Esc:
    """One connected, attached client plus the host world it must not escape."""

    client: Client
    root: int
    world: World
    point: AttachPoint
    stream: ScanningStream
    sock: socket.socket

    @property
    def export(self) -> Path:
        return self.world.export

    def assert_contained(self) -> None:
        """Nothing outside changed or was read, and no reply carried a marker."""
        self.world.assert_contained()
        assert not self.stream.leaks, f"ESCAPE: replies carried host data: {self.stream.leaks!r}"


ConnectFn = Callable[..., AbstractAsyncContextManager[Esc]]


@asynccontextmanager
async def open_scanned_client(stream: trio.abc.Stream, *, msize: int) -> AsyncIterator[Client]:
    """A Client with Tversion done on ``stream`` (which may be a :class:`ScanningStream`)."""
    async with open_client(stream, msize=msize) as client:
        yield client


@pytest.fixture
def connect(world: World, nursery: trio.Nursery) -> ConnectFn:
    """``async with connect(path=None, readonly=False, config=None) as esc``: a scanned
    connection to ``path`` (default the export) served in-process over a socketpair."""

    @asynccontextmanager
    async def _connect(
        *,
        path: Path | None = None,
        readonly: bool = False,
        config: ServerConfig | None = None,
        msize: int = 1 << 20,
        freeze: bool = True,
    ) -> AsyncIterator[Esc]:
        if freeze and not world.baseline:
            world.age_and_freeze()
        point = AttachPoint.open(str(path or world.export), readonly=readonly)
        a, b = socket.socketpair()
        done = trio.Event()

        async def run_server() -> None:
            try:
                await serve(a, point, config, name="escape")
            finally:
                a.close()
                done.set()

        nursery.start_soon(run_server)
        stream = ScanningStream(stream_from_socket(b))
        async with open_scanned_client(stream, msize=msize) as c:
            root = await c.attach(uname=b"root", n_uname=0)
            yield Esc(client=c, root=root, world=world, point=point, stream=stream, sock=b)
        with trio.fail_after(10):
            await done.wait()
        point.close()

    return _connect


@pytest.fixture
async def esc(connect: ConnectFn) -> AsyncIterator[Esc]:
    """A connection to a frozen world; containment is re-checked at teardown as a safety net."""
    async with connect() as e:
        yield e
    e.assert_contained()


async def expect_error(coro: Any) -> int:
    """Await ``coro``; it must fail with an Rlerror.  Returns the errno."""
    try:
        await coro
    except P9Error as e:
        assert e.errno, e
        return int(e.errno)
    raise AssertionError("the server accepted a request that had to fail")
