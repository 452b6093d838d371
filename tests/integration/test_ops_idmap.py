"""Id mapping through the client over a socketpair: ``--map-uid``/``--map-gid`` ranges and
``--squash-ids`` (ServerConfig.idmap).

Every test checks both sides: the host's ``os.lstat`` shows the host ids, the client's
Tgetattr the guest's.  The maps (guest -> host):

- uids 0..999 -> 100000..100999, 1000..1009 -> 5000..5009
- gids 0..999 -> 200000..200999, 1000..1009 -> 6000..6009
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gofer9p.attach import AttachPoint, IdMap, Session
from gofer9p.client import P9Error
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.server import ServerConfig

from .conftest import ConnectFn, Served

UIDS = [(0, 100000, 1000), (1000, 5000, 10)]
GIDS = [(0, 200000, 1000), (1000, 6000, 10)]
MAPPED = IdMap(UIDS, GIDS)

RDWR_CREAT = C.L_O_RDWR | C.L_O_CREAT


@pytest.fixture
async def mapped(connect_export: ConnectFn) -> AsyncIterator[Served]:
    """A connection with MAPPED, attached (by the fixture) as guest root."""
    async with connect_export(config=ServerConfig(idmap=MAPPED)) as s:
        yield s


async def _attach(s: Served, uid: int) -> int:
    return await s.client.attach(uname=b"", n_uname=uid)


async def _create(s: Served, kind: str, dfid: int, name: str, gid: int) -> None:
    """Create ``name`` of ``kind`` in ``dfid`` through the client, with ``gid``."""
    c = s.client
    if kind == "file":
        f, _ = await c.walk(dfid, [])
        await c.lcreate(f, name, RDWR_CREAT, 0o640, gid)
        await c.clunk(f)
    elif kind == "dir":
        await c.mkdir(dfid, name, 0o750, gid)
    elif kind == "symlink":
        await c.symlink(dfid, name, "target", gid)
    else:
        await c.mknod(dfid, name, stat.S_IFIFO | 0o640, 0, 0, gid)


async def _guest_ids(s: Served, fid: int, name: str) -> tuple[int, int]:
    f = await s.client.walk_to(fid, name)
    try:
        r = await s.client.getattr(f)
    finally:
        await s.client.clunk(f)
    return r.uid, r.gid


KINDS = ["file", "dir", "symlink", "fifo"]


@pytest.mark.parametrize("kind", KINDS)
async def test_create_gets_the_host_owner_and_reports_the_guests(
    mapped: Served, kind: str
) -> None:
    u = await _attach(mapped, 1003)
    await _create(mapped, kind, u, "new", 1002)
    st = os.lstat(mapped.export / "new")
    assert (st.st_uid, st.st_gid) == (5003, 6002)
    assert await _guest_ids(mapped, u, "new") == (1003, 1002)


@pytest.mark.parametrize("kind", KINDS)
async def test_create_with_a_gid_outside_every_range_is_eperm(mapped: Served, kind: str) -> None:
    u = await _attach(mapped, 1003)
    with pytest.raises(P9Error) as e:
        await _create(mapped, kind, u, "new", 1010)  # just past 1000..1009
    assert e.value.errno == errno.EPERM
    assert not os.path.lexists(mapped.export / "new")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_uid_outside_every_range_attaches_but_creates_nothing(
    mapped: Served, kind: str
) -> None:
    """v9fs's first attach of a mount (NONUNAME, "nobody") must succeed whatever the map; a
    fid of an unmapped uid reads, but cannot own anything."""
    u = await _attach(mapped, 3000)
    assert (await mapped.client.getattr(u)).qid.type == C.QidType.DIR
    with pytest.raises(P9Error) as e:
        await _create(mapped, kind, u, "new", 1002)
    assert e.value.errno == errno.EPERM
    assert not os.path.lexists(mapped.export / "new")
    anon = await mapped.client.attach(uname=b"nobody-nowhere", n_uname=C.NONUNAME)
    await mapped.client.getattr(anon)


async def test_attach_by_name_maps_the_resolved_guest_uid(mapped: Served) -> None:
    """A numeric uname is the guest's uid too."""
    u = await mapped.client.attach(uname=b"1004", n_uname=C.NONUNAME)
    await mapped.client.mkdir(u, "d", 0o755, 1000)
    st = os.lstat(mapped.export / "d")
    assert (st.st_uid, st.st_gid) == (5004, 6000)


async def test_chown_maps_guest_ids_and_refuses_unmapped_ones(mapped: Served) -> None:
    c = mapped.client
    p = mapped.export / "f"
    p.write_bytes(b"x")
    os.chown(p, 5000, 6000)
    f = await c.walk_to(mapped.root, "f")
    await c.setattr(f, C.SETATTR_UID | C.SETATTR_GID, uid=1005, gid=7)
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid) == (5005, 200007)
    r = await c.getattr(f)
    assert (r.uid, r.gid) == (1005, 7)
    await c.setattr(f, C.SETATTR_GID, gid=1001)  # one of the two: the other stays
    assert (os.lstat(p).st_uid, os.lstat(p).st_gid) == (5005, 6001)
    for valid, uid, gid in ((C.SETATTR_UID, 2000, 0), (C.SETATTR_GID, 0, 5000),
                            (C.SETATTR_UID | C.SETATTR_GID, 1000, C.NONUNAME)):
        with pytest.raises(P9Error) as e:
            await c.setattr(f, valid, uid=uid, gid=gid)
        assert e.value.errno == errno.EPERM
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid) == (5005, 6001)


async def test_host_ids_outside_every_range_are_reported_as_overflow(mapped: Served) -> None:
    p = mapped.export / "f"
    p.write_bytes(b"x")
    for host, guest in (((777, 888), (65534, 65534)), ((5009, 888), (1009, 65534)),
                        ((5010, 6009), (65534, 1009)), ((100999, 200000), (999, 0))):
        os.chown(p, *host)
        assert await _guest_ids(mapped, mapped.root, "f") == guest


async def test_readdir_then_getattr_shows_guest_ids(mapped: Served) -> None:
    """What ``ls -ln`` does: Treaddir (dirents carry no ids), then Tgetattr per entry."""
    owners = {"a": (100000, 200000), "b": (5007, 6003), "c": (42, 43)}
    for name, ids in owners.items():
        (mapped.export / name).mkdir()
        os.chown(mapped.export / name, *ids)
    c = mapped.client
    d = await c.walk_to(mapped.root, "")
    await c.lopen(d, C.L_O_RDONLY)
    names = sorted(e.name.decode() for e in await c.readdir_all(d) if e.name not in (b".", b".."))
    assert names == ["a", "b", "c"]
    got = {n: await _guest_ids(mapped, mapped.root, n) for n in names}
    assert got == {"a": (0, 0), "b": (1007, 1003), "c": (65534, 65534)}


async def test_uid_map_alone_leaves_gids_unchanged(connect_export: ConnectFn) -> None:
    async with connect_export(config=ServerConfig(idmap=IdMap(UIDS))) as s:
        u = await _attach(s, 1001)
        await s.client.mkdir(u, "d", 0o755, 4321)
        st = os.lstat(s.export / "d")
        assert (st.st_uid, st.st_gid) == (5001, 4321)
        assert await _guest_ids(s, u, "d") == (1001, 4321)


# --- squash ------------------------------------------------------------------------------

SQUASH = (4000, 4100)


@pytest.mark.parametrize("kind", KINDS)
async def test_squash_gives_every_create_the_one_host_owner(
    connect_export: ConnectFn, kind: str
) -> None:
    """Whatever uid attaches (even one no map would hold) and whatever gid it asks for;
    getattr reports the real host ids (no map given)."""
    async with connect_export(config=ServerConfig(idmap=IdMap(squash=SQUASH))) as s:
        for n, (uid, gid) in enumerate(((0, 0), (1234, 99), (C.NONUNAME - 1, 7))):
            u = await _attach(s, uid)
            await _create(s, kind, u, f"new{n}", gid)
            st = os.lstat(s.export / f"new{n}")
            assert (st.st_uid, st.st_gid) == SQUASH
            assert await _guest_ids(s, u, f"new{n}") == SQUASH


async def test_squash_chown_gives_the_squash_owner(connect_export: ConnectFn) -> None:
    async with connect_export(config=ServerConfig(idmap=IdMap(squash=SQUASH))) as s:
        p = s.export / "f"
        p.write_bytes(b"x")
        os.chown(p, 1, 2)
        f = await s.client.walk_to(s.root, "f")
        await s.client.setattr(f, C.SETATTR_UID, uid=12345)
        assert (os.lstat(p).st_uid, os.lstat(p).st_gid) == (4000, 2)
        await s.client.setattr(f, C.SETATTR_GID, gid=0)
        assert (os.lstat(p).st_uid, os.lstat(p).st_gid) == SQUASH


async def test_squash_with_maps_reports_through_the_maps(connect_export: ConnectFn) -> None:
    """``--squash-ids 4000:4100 --map-uid 0:4000:1 --map-gid 0:4100:1``: the guest sees its
    files as root's; host files of anyone else are 65534."""
    idmap = IdMap([(0, 4000, 1)], [(0, 4100, 1)], SQUASH)
    async with connect_export(config=ServerConfig(idmap=idmap)) as s:
        u = await _attach(s, 1000)  # no map holds it: the squash does
        await s.client.mkdir(u, "mine", 0o755, 1000)
        assert (os.lstat(s.export / "mine").st_uid, os.lstat(s.export / "mine").st_gid) == SQUASH
        assert await _guest_ids(s, u, "mine") == (0, 0)
        (s.export / "theirs").mkdir()
        os.chown(s.export / "theirs", 1000, 1000)
        assert await _guest_ids(s, u, "theirs") == (65534, 65534)


# --- set-id rules see host ids ---------------------------------------------------------------


@pytest.mark.parametrize(("uids", "kept"), [([(0, 100000, 1000)], False), ([(0, 0, 1)], True)])
async def test_setid_clearing_judges_the_host_uid(
    connect_export: ConnectFn, uids: list[tuple[int, int, int]], kept: bool
) -> None:
    """A write by guest root clears S_ISUID when guest root is an unprivileged host uid (as
    the host kernel would for that uid), and keeps it when it is host root."""
    async with connect_export(config=ServerConfig(idmap=IdMap(uids))) as s:
        p = s.export / "suid"
        p.write_bytes(b"0123")
        os.chmod(p, 0o4755)
        f = await s.client.walk_to(s.root, "suid")  # the fixture attached as guest 0
        await s.client.lopen(f, C.L_O_WRONLY)
        await s.client.write(f, 0, b"x")
        assert bool(os.lstat(p).st_mode & stat.S_ISUID) is kept


async def test_mkdir_in_a_setgid_directory_keeps_the_host_group(mapped: Served) -> None:
    """The client sends the parent's (guest) gid for a set-gid parent; the new directory gets
    that group's host gid and inherits S_ISGID."""
    parent = mapped.export / "shared"
    parent.mkdir()
    os.chown(parent, 5000, 6004)
    os.chmod(parent, 0o2775)
    u = await _attach(mapped, 1000)
    pf = await mapped.client.walk_to(u, "shared")
    assert (await mapped.client.getattr(pf)).gid == 1004
    await mapped.client.mkdir(pf, "sub", 0o755, 1004)
    st = os.lstat(parent / "sub")
    assert (st.st_uid, st.st_gid) == (5000, 6004)
    assert st.st_mode & stat.S_ISGID


# --- the session's paths ----------------------------------------------------------------------


def test_without_a_map_getattr_frame_is_the_backends_own_method(export: Path) -> None:
    """Mapping off costs nothing per Tgetattr: the server's fast entry is the backend's
    method itself (also with a squash alone, which changes no reply)."""
    point = AttachPoint.open(str(export))
    try:
        for idmap in (None, IdMap(squash=SQUASH)):
            s = Session(point, idmap=idmap)
            assert s.getattr_frame == s.backend.getattr_frame
        s = Session(point, idmap=MAPPED)
        assert s.getattr_frame != s.backend.getattr_frame
    finally:
        point.close()


def test_the_general_getattr_handler_maps_too(export: Path) -> None:
    """Session.getattr (the handler table's Tgetattr, beside the fast entry) answers the
    same guest ids."""
    os.chown(export, 5002, 6003)
    point = AttachPoint.open(str(export))
    try:
        s = Session(point, idmap=MAPPED)
        s.attach(M.Tattach(1, 0, C.NOFID, b"", b"", 1002))
        r = s.getattr(M.Tgetattr(2, 0, C.GETATTR_ALL))
        assert (r.uid, r.gid) == (1002, 1003)
        s.reset()
    finally:
        point.close()
