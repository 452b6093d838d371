"""A trio 9P2000.L client: one async method per operation.

Used by the tests, by ``fuzz/`` and by people poking at a server.  Requests
are multiplexed on one connection: every call takes a free tag, sends its
frame and waits for the reply with that tag, so many calls may be in flight
at once from different tasks (``nursery.start_soon(client.getattr, fid)``).

Errors come back as :class:`P9Error` (an ``OSError`` whose ``errno`` is the
``Rlerror`` code), so ``except FileNotFoundError`` works as it does for local
files.

Usage::

    async with open_client(stream) as c:          # Tversion done
        root = await c.attach(0, uname="root", n_uname=0)
        fid, qids = await c.walk(root, [b"etc", b"hostname"])
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import trio

from .protocol import constants as C
from .protocol import messages as M
from .protocol.codec import Dirent, decode_dirents, encode
from .protocol.codec import decode as decode_frame
from .protocol.framing import FRAMING_ERROR, next_frame

T = TypeVar("T", bound=M.Message)

_MAX_REPLY = 0xFFFFFFFF
"""Largest reply frame accepted: any size field (the client trusts its server's
msize; it checks only that frames are at least a header long)."""

Name = str | bytes


def _b(name: Name) -> bytes:
    return name.encode() if isinstance(name, str) else name


class P9Error(OSError):
    """An Rlerror reply: ``errno`` is the server's Linux errno."""

    def __new__(cls, err: int, request: str = "") -> P9Error:
        # OSError.__new__ maps errno to a subclass (FileNotFoundError, ...)
        # only for OSError itself; build the matching subclass by hand so that
        # ``except FileNotFoundError`` catches a P9Error for ENOENT.
        base = _ERRNO_CLASSES.get(err)
        klass = cls
        if base is not None:
            klass = _SUBCLASSES.setdefault(base, type(f"P9{base.__name__}", (cls, base), {}))
        return OSError.__new__(klass, err, os.strerror(err))

    def __init__(self, err: int, request: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.request = request

    def __str__(self) -> str:
        name = errno_mod.errorcode.get(self.errno or 0, str(self.errno))
        where = f" ({self.request})" if self.request else ""
        return f"[{name}] {self.strerror}{where}"


_ERRNO_CLASSES: dict[int, type[OSError]] = {
    errno_mod.ENOENT: FileNotFoundError,
    errno_mod.EEXIST: FileExistsError,
    errno_mod.ENOTDIR: NotADirectoryError,
    errno_mod.EISDIR: IsADirectoryError,
    errno_mod.EACCES: PermissionError,
    errno_mod.EPERM: PermissionError,
}
_SUBCLASSES: dict[type[OSError], type[P9Error]] = {}


class ConnectionClosed(Exception):
    """The server closed the connection (or it broke) while a call waited."""


class _Slot:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: M.Message | BaseException | None = None


class Client:
    """A 9P2000.L client over a trio stream; create with :func:`open_client`."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.msize = 8192
        self.negotiated_version = b""
        self._slots: dict[int, _Slot] = {}
        self._free_tags = list(range(0xFFFE, -1, -1))
        self._send_lock = trio.StrictFIFOLock()
        self._closed: BaseException | None = None
        self._next_fid = 1

    # ------------------------------------------------------------ plumbing
    def new_fid(self) -> int:
        """A fid number not handed out before by this client."""
        fid = self._next_fid
        self._next_fid += 1
        return fid

    async def _reader(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    break
                buf += data
                start, end = 0, len(buf)
                while True:
                    size, mtype, tag = next_frame(buf, start, end, _MAX_REPLY)
                    if mtype < 0:
                        if mtype == FRAMING_ERROR:
                            raise ConnectionClosed(f"server sent a frame of size {size}")
                        break
                    frame = bytes(buf[start : start + size])
                    start += size
                    slot = self._slots.pop(tag, None)
                    if slot is None:
                        continue  # reply to a flushed or unknown tag
                    try:
                        slot.reply = decode_frame(frame)
                    except Exception as e:  # a bad reply fails only its caller
                        slot.reply = e
                    slot.event.set()
                del buf[:start]
            self._fail(ConnectionClosed("server closed the connection"))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._fail(ConnectionClosed(f"connection broken: {e}"))
        except ConnectionClosed as e:
            self._fail(e)

    def _fail(self, exc: BaseException) -> None:
        self._closed = exc
        for slot in self._slots.values():
            slot.reply = exc
            slot.event.set()
        self._slots.clear()

    async def send_frame(self, frame: bytes) -> None:
        """Send raw bytes (for fuzzing and protocol tests)."""
        async with self._send_lock:
            await self.stream.send_all(frame)

    def _take_tag(self) -> int:
        if not self._free_tags:
            raise RuntimeError("no free 9P tags")
        return self._free_tags.pop()

    async def request(self, msg: M.Message, expect: type[T] | None = None) -> T:
        """Send ``msg`` (its tag is assigned here) and wait for its reply.

        Raises :class:`P9Error` for Rlerror and :class:`ConnectionClosed` if
        the connection ends first.  On cancellation a Tflush is sent so the
        server forgets the request, as the Linux client does.
        """
        if self._closed is not None:
            raise ConnectionClosed(str(self._closed))
        tag = C.NOTAG if isinstance(msg, M.Tversion) else self._take_tag()
        msg.tag = tag  # type: ignore[misc]  # the slot is on each concrete class
        slot = _Slot()
        self._slots[tag] = slot
        try:
            try:
                await self.send_frame(encode(msg))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise ConnectionClosed(f"connection broken: {e}") from e
            await slot.event.wait()
        except trio.Cancelled:
            if tag in self._slots and self._closed is None:
                with trio.CancelScope(shield=True):
                    await self._flush_tag(tag)
            raise
        finally:
            self._slots.pop(tag, None)
            if tag != C.NOTAG:
                self._free_tags.append(tag)
        reply = slot.reply
        if isinstance(reply, BaseException):
            raise reply
        assert reply is not None
        if isinstance(reply, M.Rlerror):
            raise P9Error(reply.ecode, type(msg).__name__)
        if expect is not None and not isinstance(reply, expect):
            raise ConnectionClosed(f"{type(msg).__name__} answered with {type(reply).__name__}")
        return cast(T, reply)

    async def _flush_tag(self, oldtag: int) -> None:
        try:
            with trio.move_on_after(5):
                await self.request(M.Tflush(tag=0, oldtag=oldtag), M.Rflush)
        except (P9Error, ConnectionClosed):
            pass

    # ---------------------------------------------------------- operations
    async def version(self, msize: int = 1 << 20, version: bytes = C.VERSION_9P2000L) -> M.Rversion:
        r = await self.request(M.Tversion(tag=0, msize=msize, version=version), M.Rversion)
        self.msize = r.msize
        self.negotiated_version = r.version
        return r

    async def auth(
        self, afid: int, uname: Name = b"", aname: Name = b"", n_uname: int = C.NONUNAME
    ) -> M.Qid:
        r = await self.request(
            M.Tauth(tag=0, afid=afid, uname=_b(uname), aname=_b(aname), n_uname=n_uname), M.Rauth
        )
        return r.aqid

    async def attach(
        self,
        fid: int | None = None,
        *,
        uname: Name = b"root",
        aname: Name = b"",
        n_uname: int = 0,
        afid: int = C.NOFID,
    ) -> int:
        """Attach and return the root fid."""
        fid = self.new_fid() if fid is None else fid
        await self.request(
            M.Tattach(tag=0, fid=fid, afid=afid, uname=_b(uname), aname=_b(aname), n_uname=n_uname),
            M.Rattach,
        )
        return fid

    async def walk(
        self, fid: int, names: Sequence[Name], newfid: int | None = None
    ) -> tuple[int, list[M.Qid]]:
        """Walk; returns (newfid, qids).  A partial walk returns fewer qids."""
        newfid = self.new_fid() if newfid is None else newfid
        r = await self.request(
            M.Twalk(tag=0, fid=fid, newfid=newfid, wnames=[_b(n) for n in names]), M.Rwalk
        )
        return newfid, r.wqids

    async def walk_to(self, fid: int, path: str | bytes) -> int:
        """Walk a slash-separated relative path fully; ENOENT if it stops short."""
        p = _b(path)
        names = [n for n in p.split(b"/") if n]
        newfid = self.new_fid()
        first = True
        cur = fid
        while first or names:
            chunk, names = names[:16], names[16:]
            _, qids = await self.walk(cur, chunk, newfid)
            if len(qids) != len(chunk):
                if not first:
                    await self.clunk(newfid)
                raise P9Error(errno_mod.ENOENT, "walk")
            cur = newfid
            first = False
        return newfid

    async def lopen(self, fid: int, flags: int) -> tuple[M.Qid, int]:
        r = await self.request(M.Tlopen(tag=0, fid=fid, flags=flags), M.Rlopen)
        return r.qid, r.iounit

    async def lcreate(
        self, fid: int, name: Name, flags: int, mode: int, gid: int = 0
    ) -> tuple[M.Qid, int]:
        r = await self.request(
            M.Tlcreate(tag=0, fid=fid, name=_b(name), flags=flags, mode=mode, gid=gid), M.Rlcreate
        )
        return r.qid, r.iounit

    async def symlink(self, fid: int, name: Name, target: Name, gid: int = 0) -> M.Qid:
        r = await self.request(
            M.Tsymlink(tag=0, fid=fid, name=_b(name), symtgt=_b(target), gid=gid), M.Rsymlink
        )
        return r.qid

    async def mknod(
        self, dfid: int, name: Name, mode: int, major: int = 0, minor: int = 0, gid: int = 0
    ) -> M.Qid:
        r = await self.request(
            M.Tmknod(tag=0, dfid=dfid, name=_b(name), mode=mode, major=major, minor=minor, gid=gid),
            M.Rmknod,
        )
        return r.qid

    async def rename(self, fid: int, dfid: int, name: Name) -> None:
        await self.request(M.Trename(tag=0, fid=fid, dfid=dfid, name=_b(name)), M.Rrename)

    async def readlink(self, fid: int) -> bytes:
        r = await self.request(M.Treadlink(tag=0, fid=fid), M.Rreadlink)
        return r.target

    async def getattr(self, fid: int, mask: int = C.GETATTR_ALL) -> M.Rgetattr:
        return await self.request(M.Tgetattr(tag=0, fid=fid, request_mask=mask), M.Rgetattr)

    async def setattr(
        self,
        fid: int,
        valid: int,
        *,
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        atime: tuple[int, int] = (0, 0),
        mtime: tuple[int, int] = (0, 0),
    ) -> None:
        await self.request(
            M.Tsetattr(
                tag=0,
                fid=fid,
                valid=valid,
                mode=mode,
                uid=uid,
                gid=gid,
                size=size,
                atime_sec=atime[0],
                atime_nsec=atime[1],
                mtime_sec=mtime[0],
                mtime_nsec=mtime[1],
            ),
            M.Rsetattr,
        )

    async def xattrwalk(self, fid: int, name: Name, newfid: int | None = None) -> tuple[int, int]:
        """Returns (newfid, size); read the value from newfid."""
        newfid = self.new_fid() if newfid is None else newfid
        r = await self.request(
            M.Txattrwalk(tag=0, fid=fid, newfid=newfid, name=_b(name)), M.Rxattrwalk
        )
        return newfid, r.size

    async def xattrcreate(self, fid: int, name: Name, size: int, flags: int = 0) -> None:
        await self.request(
            M.Txattrcreate(tag=0, fid=fid, name=_b(name), attr_size=size, flags=flags),
            M.Rxattrcreate,
        )

    async def getxattr(self, fid: int, name: Name) -> bytes:
        """xattrwalk + read + clunk: the value of one attribute (or the name list for b"")."""
        xfid, size = await self.xattrwalk(fid, name)
        try:
            return await self.read_all(xfid, size)
        finally:
            await self.clunk(xfid)

    async def setxattr(self, fid: int, name: Name, value: bytes, flags: int = 0) -> None:
        """Clone fid, xattrcreate + write + clunk (the clunk commits)."""
        xfid, _ = await self.walk(fid, [])
        await self.xattrcreate(xfid, name, len(value), flags)
        if value:
            await self.write(xfid, 0, value)
        await self.clunk(xfid)

    async def readdir(self, fid: int, offset: int = 0, count: int | None = None) -> list[Dirent]:
        if count is None:
            count = self.msize - C.READDIRHDRSZ
        r = await self.request(M.Treaddir(tag=0, fid=fid, offset=offset, count=count), M.Rreaddir)
        return decode_dirents(r.data)

    async def readdir_all(self, fid: int, count: int | None = None) -> list[Dirent]:
        out: list[Dirent] = []
        offset = 0
        while True:
            ents = await self.readdir(fid, offset, count)
            if not ents:
                return out
            out.extend(ents)
            offset = ents[-1].offset

    async def fsync(self, fid: int, datasync: int = 0) -> None:
        await self.request(M.Tfsync(tag=0, fid=fid, datasync=datasync), M.Rfsync)

    async def lock(
        self,
        fid: int,
        type: int,
        start: int = 0,
        length: int = 0,
        *,
        flags: int = 0,
        proc_id: int = 1,
        client_id: Name = b"gofer9p-client",
    ) -> int:
        r = await self.request(
            M.Tlock(
                tag=0,
                fid=fid,
                type=type,
                flags=flags,
                start=start,
                length=length,
                proc_id=proc_id,
                client_id=_b(client_id),
            ),
            M.Rlock,
        )
        return r.status

    async def getlock(
        self,
        fid: int,
        type: int,
        start: int = 0,
        length: int = 0,
        *,
        proc_id: int = 1,
        client_id: Name = b"gofer9p-client",
    ) -> M.Rgetlock:
        return await self.request(
            M.Tgetlock(
                tag=0,
                fid=fid,
                type=type,
                start=start,
                length=length,
                proc_id=proc_id,
                client_id=_b(client_id),
            ),
            M.Rgetlock,
        )

    async def link(self, dfid: int, fid: int, name: Name) -> None:
        await self.request(M.Tlink(tag=0, dfid=dfid, fid=fid, name=_b(name)), M.Rlink)

    async def mkdir(self, dfid: int, name: Name, mode: int = 0o755, gid: int = 0) -> M.Qid:
        r = await self.request(
            M.Tmkdir(tag=0, dfid=dfid, name=_b(name), mode=mode, gid=gid), M.Rmkdir
        )
        return r.qid

    async def renameat(self, olddirfid: int, oldname: Name, newdirfid: int, newname: Name) -> None:
        await self.request(
            M.Trenameat(
                tag=0,
                olddirfid=olddirfid,
                oldname=_b(oldname),
                newdirfid=newdirfid,
                newname=_b(newname),
            ),
            M.Rrenameat,
        )

    async def unlinkat(self, dirfid: int, name: Name, flags: int = 0) -> None:
        await self.request(
            M.Tunlinkat(tag=0, dirfid=dirfid, name=_b(name), flags=flags), M.Runlinkat
        )

    async def read(self, fid: int, offset: int, count: int) -> bytes:
        r = await self.request(M.Tread(tag=0, fid=fid, offset=offset, count=count), M.Rread)
        return bytes(r.data)

    async def read_all(self, fid: int, limit: int | None = None) -> bytes:
        """Read from offset 0 until a short (empty) read or ``limit`` bytes."""
        out = bytearray()
        chunk = self.msize - C.IOHDRSZ
        while limit is None or len(out) < limit:
            want = chunk if limit is None else min(chunk, limit - len(out))
            data = await self.read(fid, len(out), want)
            if not data:
                break
            out += data
        return bytes(out)

    async def write(self, fid: int, offset: int, data: bytes) -> int:
        r = await self.request(M.Twrite(tag=0, fid=fid, offset=offset, data=data), M.Rwrite)
        return r.count

    async def write_all(self, fid: int, data: bytes, offset: int = 0) -> None:
        chunk = self.msize - C.IOHDRSZ
        pos = 0
        while pos < len(data):
            n = await self.write(fid, offset + pos, data[pos : pos + chunk])
            if n <= 0:
                raise P9Error(errno_mod.EIO, "short write")
            pos += n

    async def clunk(self, fid: int) -> None:
        await self.request(M.Tclunk(tag=0, fid=fid), M.Rclunk)

    async def remove(self, fid: int) -> None:
        await self.request(M.Tremove(tag=0, fid=fid), M.Rremove)

    async def statfs(self, fid: int) -> M.Rstatfs:
        return await self.request(M.Tstatfs(tag=0, fid=fid), M.Rstatfs)

    async def flush(self, oldtag: int) -> None:
        await self.request(M.Tflush(tag=0, oldtag=oldtag), M.Rflush)

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def open_client(
    stream: trio.abc.Stream, *, msize: int = 1 << 20, version: bytes = C.VERSION_9P2000L
) -> AsyncIterator[Client]:
    """A connected client with Tversion done; closes the stream on exit."""
    client = Client(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._reader)
        try:
            if version:
                await client.version(msize, version)
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.stream.aclose()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(address: str, **kw: Any) -> AsyncIterator[Client]:
    """Connect to ``unix:PATH`` or ``tcp:HOST:PORT`` and open a client."""
    if address.startswith("unix:"):
        stream: trio.abc.Stream = await trio.open_unix_socket(address[5:])
    elif address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
    else:
        raise ValueError(f"address must be unix:PATH or tcp:HOST:PORT, not {address!r}")
    async with open_client(stream, **kw) as c:
        yield c


def stream_from_socket(sock: socket.socket) -> trio.SocketStream:
    """Wrap a connected stdlib socket (e.g. one end of a socketpair)."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
