"""Connection-level behaviour: version, msize, tags, flush, framing, limits."""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import trio

from gofer9p.client import ConnectionClosed, P9Error, open_client, stream_from_socket
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import decode, encode
from gofer9p.server import ServerConfig

from .conftest import ConnectFn, Served


async def _raw_reply(s: Served, frame: bytes) -> M.Message:
    """Send raw bytes on a fresh tag and read the reply with the client's machinery."""
    tag = frame[5] | (frame[6] << 8)
    from gofer9p.client import _Slot

    slot = _Slot()
    s.client._slots[tag] = slot
    await s.client.send_frame(frame)
    with trio.fail_after(5):
        await slot.event.wait()
    assert isinstance(slot.reply, M.Message), slot.reply
    return slot.reply


async def test_version_negotiates_msize_down(connect_export: ConnectFn) -> None:
    async with connect_export(config=ServerConfig(max_msize=128 * 1024), msize=8 << 20) as s:
        assert s.client.msize == 128 * 1024
        assert s.client.negotiated_version == b"9P2000.L"


async def test_version_keeps_smaller_client_msize(connect_export: ConnectFn) -> None:
    async with connect_export(msize=65536) as s:
        assert s.client.msize == 65536


async def test_unknown_version_answers_unknown(connect_export: ConnectFn) -> None:
    async with connect_export(attach=False) as s:
        r = await s.client.version(65536, b"9P2000.u")
        assert r.version == b"unknown"
        with pytest.raises(P9Error):
            await s.client.attach(uname=b"root", n_uname=0)
        r = await s.client.version(65536, b"9P2000.L")
        assert r.version == b"9P2000.L"
        await s.client.attach(uname=b"root", n_uname=0)


async def test_request_before_version_is_refused(export, nursery) -> None:  # type: ignore[no-untyped-def]
    from gofer9p.attach import AttachPoint
    from gofer9p.server import serve

    a, b = socket.socketpair()
    nursery.start_soon(serve, a, AttachPoint.open(str(export)))
    async with open_client(stream_from_socket(b), version=b"") as c:
        with pytest.raises(P9Error) as ei:
            await c.attach(uname=b"root", n_uname=0)
        assert ei.value.errno == errno.EPROTO


async def test_tversion_resets_fids(server: Served) -> None:
    c = server.client
    await c.getattr(server.root)
    await c.version(65536)
    with pytest.raises(P9Error) as ei:
        await c.getattr(server.root)
    assert ei.value.errno == errno.EBADF


async def test_auth_is_refused(server: Served) -> None:
    with pytest.raises(P9Error):
        await server.client.auth(77, b"root", b"")


async def test_any_aname_attaches_the_root(server: Served) -> None:
    c = server.client
    r1 = await c.getattr(server.root)
    fid = await c.attach(uname=b"root", aname=b"/some/export/path", n_uname=0)
    r2 = await c.getattr(fid)
    assert r1.qid == r2.qid


async def test_unknown_fid_is_ebadf(server: Served) -> None:
    with pytest.raises(P9Error) as ei:
        await server.client.getattr(999999)
    assert ei.value.errno == errno.EBADF


async def test_unknown_and_9p2000_types_get_rlerror(server: Served) -> None:
    for mtype in (112, 114, 124, 126, 106, 6, 200, 255, 0, 117):
        frame = struct.pack("<IBH", 7 + 4, mtype, 50) + b"\0\0\0\0"
        r = await _raw_reply(server, frame)
        assert isinstance(r, M.Rlerror), mtype
        assert r.tag == 50
    await server.client.getattr(server.root)  # connection still fine


async def test_malformed_body_gets_einval(server: Served) -> None:
    good = encode(M.Twalk(tag=60, fid=server.root, newfid=5, wnames=[b"a"]))
    bad = bytearray(good[:-1])
    struct.pack_into("<I", bad, 0, len(bad))
    r = await _raw_reply(server, bytes(bad))
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL
    # trailing garbage
    bad2 = bytearray(encode(M.Tclunk(tag=61, fid=1)) + b"xx")
    struct.pack_into("<I", bad2, 0, len(bad2))
    r = await _raw_reply(server, bytes(bad2))
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL
    await server.client.getattr(server.root)


async def test_walk_of_17_names_is_rejected(server: Served) -> None:
    body = struct.pack("<IIH", server.root, 77, 17) + b"".join(
        struct.pack("<H", 1) + b"a" for _ in range(17)
    )
    r = await _raw_reply(server, struct.pack("<IBH", 7 + len(body), C.MsgType.TWALK, 70) + body)
    assert isinstance(r, M.Rlerror)
    await server.client.getattr(server.root)


async def test_oversized_frame_closes_connection_cleanly(connect_export: ConnectFn) -> None:
    async with connect_export(msize=65536) as s:
        async with connect_export() as other:
            await s.client.send_frame(struct.pack("<IBH", 65537, C.MsgType.TREAD, 1) + b"\0" * 16)
            with pytest.raises(ConnectionClosed), trio.fail_after(5):
                await s.client.getattr(s.root)
            # the other connection keeps working
            await other.client.getattr(other.root)


@pytest.mark.parametrize("size", [0, 3, 6])
async def test_undersized_frame_closes_connection(connect_export: ConnectFn, size: int) -> None:
    async with connect_export() as s:
        await s.client.send_frame(struct.pack("<I", size) + b"\0" * 8)
        with pytest.raises(ConnectionClosed), trio.fail_after(5):
            await s.client.getattr(s.root)


async def test_truncated_stream_then_eof(connect_export: ConnectFn) -> None:
    async with connect_export() as s:
        await s.client.send_frame(encode(M.Tgetattr(tag=9, fid=s.root, request_mask=1))[:10])
        s.sock.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionClosed), trio.fail_after(5):
            await s.client.getattr(s.root)


async def test_flush_of_idle_tag_is_answered(server: Served) -> None:
    await server.client.flush(1234)


async def test_ten_thousand_fids(connect_export: ConnectFn) -> None:
    """10k fids on one connection: each walk succeeds or is a clean EMFILE, and another
    connection keeps working throughout.  Unopened fids beyond the connection's share of the
    fd budget are not refused: their fds are reclaimed and reopened on demand (#14)."""

    async with connect_export() as s, connect_export() as other:
        c = s.client
        ok: list[int] = []
        refused: list[int] = []

        async def one(fid: int) -> None:
            try:
                await c.walk(s.root, [], fid)
                ok.append(fid)
            except P9Error as e:
                assert e.errno == errno.EMFILE, e
                refused.append(fid)

        async with trio.open_nursery() as n:
            for i in range(10000):
                n.start_soon(one, 1000 + i)
        assert len(ok) + len(refused) == 10000
        assert len(ok) == 10000  # unopened fids past the share are reclaimed, not refused
        r = await c.getattr(ok[-1])
        assert r.qid.type & C.QidType.DIR
        fid, _ = await other.client.walk(other.root, [])
        await other.client.getattr(fid)
        for fid in ok:
            await c.clunk(fid)
        await c.walk(s.root, [], 999)


async def test_fid_limit_is_emfile(connect_export: ConnectFn) -> None:
    async with connect_export(config=ServerConfig(max_fids=10)) as s:
        c = s.client
        got = []
        with pytest.raises(P9Error) as ei:
            for _ in range(20):
                fid, _ = await c.walk(s.root, [])
                got.append(fid)
        assert ei.value.errno == errno.EMFILE
        assert len(got) == 9  # the root fid counts too
        await c.clunk(got[0])
        await c.walk(s.root, [])


async def test_concurrent_requests_all_answered(server: Served) -> None:
    c = server.client
    results = []

    async def one() -> None:
        results.append(await c.getattr(server.root))

    async with trio.open_nursery() as n:
        for _ in range(500):
            n.start_soon(one)
    assert len(results) == 500


async def test_second_connection_survives_garbage(connect_export: ConnectFn) -> None:
    async with connect_export() as good:
        for junk in (b"\xff" * 64, struct.pack("<IBH", 7, 100, 0xFFFF), b"\x10\x00\x00\x00" + b"\x00" * 12):
            async with connect_export(attach=False) as bad:
                try:
                    await bad.client.send_frame(junk)
                    with trio.move_on_after(0.2):
                        await bad.client.getattr(1)
                except (P9Error, ConnectionClosed):
                    pass
        await good.client.getattr(good.root)


async def test_reply_tag_and_type_match(server: Served) -> None:
    frame = encode(M.Tgetattr(tag=4321, fid=server.root, request_mask=C.GETATTR_BASIC))
    r = await _raw_reply(server, frame)
    assert isinstance(r, M.Rgetattr) and r.tag == 4321
    assert decode(encode(r)) == r



async def _frames_until(sock: socket.socket, want_tags: set[int]) -> list[M.Message]:
    """Raw replies read off ``sock`` until every tag in ``want_tags`` was answered."""
    got: list[M.Message] = []
    buf = b""
    with trio.fail_after(10):
        while want_tags - {m.tag for m in got}:
            await trio.lowlevel.wait_readable(sock)
            buf += sock.recv(65536)
            while len(buf) >= 4 and len(buf) >= struct.unpack_from("<I", buf)[0]:
                size = struct.unpack_from("<I", buf)[0]
                got.append(decode(buf[:size]))
                buf = buf[size:]
    return got


async def _raw_session(
    export: Path, nursery: trio.Nursery, msize: int = 65536, name: bytes | None = None
) -> socket.socket:
    """A server on a socketpair, versioned, fid 1 attached and fid 2 an opened clone
    (of the root, or walked to ``name``)."""
    from gofer9p.attach import AttachPoint
    from gofer9p.server import serve

    a, b = socket.socketpair()
    nursery.start_soon(serve, a, AttachPoint.open(str(export)))
    b.setblocking(False)
    b.sendall(
        encode(M.Tversion(tag=C.NOTAG, msize=msize, version=b"9P2000.L"))
        + encode(M.Tattach(tag=1, fid=1, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0))
        + encode(M.Twalk(tag=2, fid=1, newfid=2, wnames=[name] if name else []))
        + encode(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
    )
    got = await _frames_until(b, {C.NOTAG, 1, 2, 3})
    assert not any(isinstance(m, M.Rlerror) for m in got), got
    return b


def _count_decodes(monkeypatch: pytest.MonkeyPatch, *types: int) -> list[int]:
    """Tags of the frames of these types the server decodes into message objects
    (its fast paths do not) on connections made from now on."""
    from gofer9p.protocol import codec  # the dispatch table reads it per connection

    tags: list[int] = []
    for t in types:

        def counting(b: Any, tag: int, dec: Any = codec.DECODERS[t]) -> Any:
            tags.append(tag)
            return dec(b, tag)

        monkeypatch.setitem(codec.DECODERS, t, counting)
    return tags


async def test_replies_before_a_framing_error_are_sent_then_closed(
    export: Path, nursery: trio.Nursery
) -> None:
    """Frames in the same chunk before a bad size field are answered, then the connection ends."""
    b = await _raw_session(export, nursery)
    b.sendall(
        encode(M.Tgetattr(tag=10, fid=1, request_mask=C.GETATTR_BASIC))
        + encode(M.Tclunk(tag=11, fid=2))
        + struct.pack("<IBH", 3, C.MsgType.TCLUNK, 12)
    )
    got = await _frames_until(b, {10, 11})
    assert [(type(m), m.tag) for m in got] == [(M.Rgetattr, 10), (M.Rclunk, 11)]
    with trio.fail_after(5):
        while True:
            await trio.lowlevel.wait_readable(b)
            if not b.recv(65536):
                break
    b.close()


async def test_twrite_fast_path_only_for_open_regular_files(
    export: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twrite to an open regular file skips the message objects; every other
    Twrite (unopened fid, bad count) is decoded and answered as before.
    (In-process server: the check counts decoder calls.)"""
    decoded = _count_decodes(monkeypatch, C.MsgType.TWRITE)
    b = await _raw_session(export, nursery)
    b.sendall(
        encode(M.Twalk(tag=10, fid=1, newfid=3, wnames=[]))
        + encode(M.Tlcreate(tag=11, fid=3, name=b"fast.bin", flags=C.L_O_RDWR, mode=0o644, gid=0))
        + encode(M.Twrite(tag=12, fid=3, offset=3, data=b"hello"))
        + encode(M.Twalk(tag=13, fid=1, newfid=4, wnames=[]))
        + encode(M.Twrite(tag=14, fid=4, offset=0, data=b"x"))  # not opened
        + encode(M.Twrite(tag=15, fid=4242, offset=0, data=b"x"))  # unknown fid
    )
    got = {m.tag: m for m in await _frames_until(b, set(range(10, 16)))}
    assert isinstance(got[12], M.Rwrite) and got[12].count == 5
    assert (export / "fast.bin").read_bytes() == b"\0\0\0hello"
    for tag in (14, 15):
        r = got[tag]
        assert isinstance(r, M.Rlerror) and r.ecode == errno.EBADF, r
    assert decoded == [14]  # the unknown fid was answered by the fast path itself
    bad = bytearray(encode(M.Twrite(tag=16, fid=3, offset=0, data=b"abc")))
    struct.pack_into("<I", bad, 19, 2)  # count 2, three bytes of data
    b.sendall(bytes(bad))
    (r,) = await _frames_until(b, {16})
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL and decoded == [14, 16]
    assert (export / "fast.bin").read_bytes() == b"\0\0\0hello"
    b.close()


async def test_clone_clunk_remove_fast_paths(
    export: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twalk clones, Tclunk and Tremove skip the message objects and answer as the
    general path does (errors included); a walk of two names is decoded as before."""
    decoded = _count_decodes(monkeypatch, C.MsgType.TWALK, C.MsgType.TCLUNK, C.MsgType.TREMOVE)
    (export / "gone").write_bytes(b"x")
    (export / "d").mkdir()
    (export / "d" / "e").write_bytes(b"")
    b = await _raw_session(export, nursery)
    b.sendall(
        encode(M.Twalk(tag=10, fid=1, newfid=3, wnames=[]))  # clone
        + encode(M.Twalk(tag=11, fid=1, newfid=3, wnames=[]))  # newfid in use: EBADF
        + encode(M.Twalk(tag=12, fid=99, newfid=4, wnames=[]))  # unknown fid: EBADF
        + encode(M.Tclunk(tag=13, fid=3))
        + encode(M.Tclunk(tag=14, fid=3))  # already clunked: EBADF
        + encode(M.Twalk(tag=15, fid=1, newfid=5, wnames=[b"gone"]))  # one name: fast too
        + encode(M.Tremove(tag=16, fid=5))
        + encode(M.Tremove(tag=17, fid=5))  # already gone: EBADF
        + encode(M.Tgetattr(tag=18, fid=1, request_mask=C.GETATTR_BASIC))
        + encode(M.Twalk(tag=19, fid=1, newfid=6, wnames=[b"d", b"e"]))  # decoded
    )
    got = {m.tag: m for m in await _frames_until(b, set(range(10, 20)))}
    assert isinstance(got[10], M.Rwalk) and got[10].wqids == []
    assert isinstance(got[13], M.Rclunk) and isinstance(got[16], M.Rremove)
    assert isinstance(got[15], M.Rwalk) and len(got[15].wqids) == 1
    assert isinstance(got[19], M.Rwalk) and len(got[19].wqids) == 2
    for tag in (11, 12, 14, 17):
        r = got[tag]
        assert isinstance(r, M.Rlerror) and r.ecode == errno.EBADF, (tag, r)
    assert not (export / "gone").exists()
    assert decoded == [19]
    b.close()


async def test_one_name_walk_and_lcreate_fast_paths(
    export: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Twalk of one name and a Tlcreate whose name fills the frame skip the message
    objects and answer as the general path does: the same qids, the same errors; a
    frame whose name length does not fit it goes to the decoder (EINVAL)."""
    decoded = _count_decodes(monkeypatch, C.MsgType.TWALK, C.MsgType.TLCREATE)
    (export / "d").mkdir()
    b = await _raw_session(export, nursery)
    flags = C.L_O_RDWR | C.L_O_CREAT
    b.sendall(
        encode(M.Twalk(tag=10, fid=1, newfid=3, wnames=[b"d"]))
        + encode(M.Tlcreate(tag=11, fid=3, name=b"new", flags=flags, mode=0o640, gid=0))
        + encode(M.Tlcreate(tag=12, fid=3, name=b"again", flags=flags, mode=0o640, gid=0))
        + encode(M.Twalk(tag=13, fid=1, newfid=4, wnames=[b"nothere"]))  # ENOENT
        + encode(M.Twalk(tag=14, fid=1, newfid=4, wnames=[b"d"]))
        + encode(M.Tlcreate(tag=15, fid=4, name=b"a/b", flags=flags, mode=0o640, gid=0))
        + encode(M.Twalk(tag=16, fid=4, newfid=5, wnames=[b"new"]))
        + encode(M.Tgetattr(tag=17, fid=5, request_mask=C.GETATTR_BASIC))
    )
    got = {m.tag: m for m in await _frames_until(b, set(range(10, 18)))}
    walked, created, new, attr = got[10], got[11], got[16], got[17]
    assert isinstance(walked, M.Rwalk) and len(walked.wqids) == 1
    assert walked.wqids[0].type == C.QidType.DIR
    assert isinstance(created, M.Rlcreate) and created.iounit == 0
    assert isinstance(new, M.Rwalk) and new.wqids == [created.qid]
    assert isinstance(attr, M.Rgetattr) and attr.qid == created.qid and attr.mode & 0o7777 == 0o640
    for tag, code in ((12, errno.EINVAL), (13, errno.ENOENT), (15, errno.EINVAL)):
        r = got[tag]
        assert isinstance(r, M.Rlerror) and r.ecode == code, (tag, r)
    assert decoded == []
    bad = bytearray(encode(M.Tlcreate(tag=18, fid=5, name=b"xy", flags=flags, mode=0o640, gid=0)))
    struct.pack_into("<H", bad, 11, 1)  # name length 1: a trailing byte
    walk = bytearray(encode(M.Twalk(tag=19, fid=1, newfid=6, wnames=[b"d"])))
    struct.pack_into("<H", walk, 17, 2)  # name length 2, one byte there
    b.sendall(bytes(bad) + bytes(walk))
    got = {m.tag: m for m in await _frames_until(b, {18, 19})}
    for tag in (18, 19):
        r = got[tag]
        assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL, (tag, r)
    assert decoded == [18, 19]
    assert sorted(p.name for p in (export / "d").iterdir()) == ["new"]
    b.close()


async def test_flush_of_a_threaded_request_answers_after_it(
    export: Path, nursery: trio.Nursery
) -> None:
    """Tfsync runs in a worker thread; a Tflush right behind it is answered only after the
    fsync's reply was sent or dropped, and the connection carries on."""
    b = await _raw_session(export, nursery)
    b.sendall(encode(M.Tfsync(tag=10, fid=2, datasync=0)) + encode(M.Tflush(tag=11, oldtag=10)))
    got = await _frames_until(b, {11})
    assert isinstance(got[-1], M.Rflush)
    assert all(m.tag == 10 for m in got[:-1])  # an Rfsync, if any, came before the Rflush
    b.sendall(encode(M.Tgetattr(tag=12, fid=2, request_mask=C.GETATTR_BASIC)))
    (r,) = await _frames_until(b, {12})
    assert isinstance(r, M.Rgetattr)
    b.close()


async def test_version_mid_session_waits_for_threaded_requests(
    export: Path, nursery: trio.Nursery
) -> None:
    """Tversion behind a threaded Tfsync: the fsync is answered or dropped, then Rversion, and
    every fid of the old session is gone."""
    b = await _raw_session(export, nursery)
    b.sendall(
        encode(M.Tfsync(tag=20, fid=2, datasync=0))
        + encode(M.Tversion(tag=C.NOTAG, msize=65536, version=b"9P2000.L"))
    )
    got = await _frames_until(b, {C.NOTAG})
    assert isinstance(got[-1], M.Rversion) and got[-1].version == b"9P2000.L"
    assert all(m.tag == 20 for m in got[:-1])
    b.sendall(encode(M.Tgetattr(tag=21, fid=2, request_mask=1)))
    (r,) = await _frames_until(b, {21})
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EBADF
    b.close()


async def _big_read_session(export: Path, nursery: trio.Nursery) -> tuple[socket.socket, bytes]:
    data = bytes(range(256)) * (8 << 10)  # 2 MiB
    (export / "big").write_bytes(data)
    return await _raw_session(export, nursery, msize=4 << 20, name=b"big"), data


async def test_small_reply_overtakes_a_large_read(export: Path, nursery: trio.Nursery) -> None:
    """A Tgetattr pipelined behind a 2 MiB Tread is answered before the read's reply
    crosses the socket (design target: it waits for the read's syscall, not its transfer)."""
    b, data = await _big_read_session(export, nursery)
    b.sendall(
        encode(M.Tread(tag=10, fid=2, offset=0, count=len(data)))
        + encode(M.Tgetattr(tag=11, fid=1, request_mask=C.GETATTR_BASIC))
        + encode(M.Tclunk(tag=12, fid=2))
    )
    got = await _frames_until(b, {10, 11, 12})
    assert [m.tag for m in got] == [11, 12, 10]
    assert isinstance(got[2], M.Rread) and got[2].data == data
    b.close()


async def test_large_reads_keep_one_held_reply_and_flush_follows_its_request(
    export: Path, nursery: trio.Nursery
) -> None:
    """Behind a held large reply, another Tread, a Tflush or a Tversion sends it first:
    one large buffer at a time, and an Rflush/Rversion after the replies it concerns."""
    b, data = await _big_read_session(export, nursery)
    b.sendall(
        encode(M.Tread(tag=20, fid=2, offset=0, count=len(data)))
        + encode(M.Tgetattr(tag=21, fid=1, request_mask=C.GETATTR_BASIC))
        + encode(M.Tread(tag=22, fid=2, offset=1 << 20, count=len(data)))
        + encode(M.Tgetattr(tag=23, fid=1, request_mask=C.GETATTR_BASIC))
        + encode(M.Tflush(tag=24, oldtag=22))
    )
    got = await _frames_until(b, {20, 21, 22, 23, 24})
    assert [m.tag for m in got] == [21, 20, 23, 22, 24]
    assert got[1].data == data and got[3].data == data[1 << 20 :]  # type: ignore[union-attr]
    b.sendall(
        encode(M.Tread(tag=30, fid=2, offset=0, count=len(data)))
        + encode(M.Tversion(tag=C.NOTAG, msize=65536, version=b"9P2000.L"))
    )
    got = await _frames_until(b, {30, C.NOTAG})
    assert [m.tag for m in got] == [30, C.NOTAG]
    b.close()


async def test_flushes_of_one_request_are_answered_in_order(
    export: Path, nursery: trio.Nursery
) -> None:
    """Two Tflushes of one threaded request and a Tflush of the first Tflush: each is
    answered after what it flushes (the old reply, if any, first), in the order sent; a
    flush's tag is in flight until answered (a request reusing it is refused)."""
    b = await _raw_session(export, nursery)
    for _ in range(20):
        b.sendall(
            encode(M.Tfsync(tag=10, fid=2, datasync=0))
            + encode(M.Tflush(tag=11, oldtag=10))
            + encode(M.Tflush(tag=12, oldtag=10))
            + encode(M.Tflush(tag=13, oldtag=11))
        )
        got = await _frames_until(b, {11, 12, 13})
        assert [m.tag for m in got if m.tag != 10] == [11, 12, 13], got
        assert all(isinstance(m, M.Rflush) for m in got if m.tag != 10)
        assert [m.tag for m in got].index(11) > max(
            [i for i, m in enumerate(got) if m.tag == 10], default=-1
        )
    b.sendall(encode(M.Tflush(tag=14, oldtag=99)))  # nothing in flight: at once
    (r,) = await _frames_until(b, {14})
    assert isinstance(r, M.Rflush)
    b.close()
