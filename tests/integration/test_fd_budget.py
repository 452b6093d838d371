"""The host-fd budget (#14): idle fids' fds are reclaimed and reopened, pinned ones refused.

Every test serves with a budget of 64 host fds (``server.fd_budget(1, 64)``: 31 of them for
the connection's fids after the process's own reserve), far below the fids the client holds.
In-process the host fds the server holds are counted in /proc/self/fd; through the confined
daemon (``-p gofer9p.testing.daemon_plugin``, which passes ``--fd-budget``) everything else is
checked the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C
from gofer9p.server import ServerConfig, fd_budget

from .conftest import ConnectFn

BUDGET = 64
PUSH = 80  # fids of one fd each that push every older idle fid out of a share of 31


def _config() -> ServerConfig:
    return ServerConfig(fd_budget=fd_budget(1, BUDGET))


def _in_process(request: pytest.FixtureRequest) -> bool:
    return not request.config.pluginmanager.hasplugin("gofer9p.testing.daemon_plugin")


def _host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _push_out(c: Client, root: int, base: int = 50_000) -> None:
    """Walk PUSH fids to a directory "push" (made first) and clunk them: every fid idle
    before is reclaimed.  Each such walk holds one fd of its own; clones of the root would
    hold none (they share the root's fd)."""
    with contextlib.suppress(P9Error):
        await c.mkdir(root, b"push")
    for i in range(PUSH):
        await c.walk(root, [b"push"], base + i)
        await c.getattr(base + i)
    for i in range(PUSH):
        await c.clunk(base + i)


async def _errno(coro: object) -> int:
    try:
        await coro  # type: ignore[misc]
    except P9Error as e:
        return int(e.errno or 0)
    raise AssertionError("the request had to fail")


async def test_many_fids_within_the_budget(
    connect_export: ConnectFn, export: Path, request: pytest.FixtureRequest
) -> None:
    """2,000 fids (names and clones) each getattr'd, twice: no error, each answers its own
    file, and the fds the server holds never pass the budget."""
    for d in range(10):
        (export / f"d{d}").mkdir()
        for i in range(100):
            (export / f"d{d}" / f"f{i}").write_bytes(b"x" * (d * 100 + i))
    config = _config()
    assert config.fd_budget is not None
    async with connect_export(config=config) as s:
        c = s.client
        base = _host_fds() - config.fd_budget.in_use
        peak = 0
        want: dict[int, int] = {}
        fid = 1000
        for d in range(10):
            for i in range(100):
                await c.walk(s.root, [f"d{d}".encode(), f"f{i}".encode()], fid)
                await c.walk(fid, [], fid + 1)  # a clone of it
                for f in (fid, fid + 1):
                    r = await c.getattr(f)
                    assert r.size == d * 100 + i
                    want[f] = r.size
                fid += 2
            peak = max(peak, _host_fds() - base)
        for f, size in want.items():  # every one reopened (most were reclaimed)
            assert (await c.getattr(f)).size == size
        peak = max(peak, _host_fds() - base)
        if _in_process(request):
            b = config.fd_budget
            assert peak <= BUDGET, peak
            assert b.in_use <= b.pool
            assert b.reclaims >= 1900 and b.reopens >= 1900, (b.reclaims, b.reopens)


async def test_open_files_past_the_budget_are_emfile(
    connect_export: ConnectFn, export: Path
) -> None:
    """Open files are never reclaimed: past the share an open is a clean EMFILE, the
    connection keeps working, and a clunk makes room again."""
    for i in range(40):
        (export / f"f{i}").write_bytes(b"data%d" % i)
    async with connect_export(config=_config()) as s:
        c = s.client
        opened: list[int] = []
        refused = 0
        for i in range(40):
            fid = 100 + i
            await c.walk(s.root, [f"f{i}".encode()], fid)
            try:
                await c.lopen(fid, C.L_O_RDONLY)
                opened.append(fid)
            except P9Error as e:
                assert e.errno == errno.EMFILE, e
                refused += 1
                await c.clunk(fid)
        assert refused and 5 <= len(opened) < 40, (len(opened), refused)
        for fid in opened:  # every open file still reads its own data
            assert await c.read(fid, 0, 100) == b"data%d" % (fid - 100)
        await c.getattr(s.root)
        await c.clunk(opened.pop())
        await c.walk(s.root, [b"f39"], 500)
        await c.lopen(500, C.L_O_RDONLY)
        assert await c.read(500, 0, 100) == b"data39"


async def test_reopen_after_a_rename_through_the_session(
    connect_export: ConnectFn, export: Path
) -> None:
    """A rename by the client updates the reclaimed fid's path: it reopens the same file."""
    (export / "d").mkdir()
    (export / "d" / "f").write_bytes(b"mine")
    async with connect_export(config=_config()) as s:
        c = s.client
        await c.walk(s.root, [b"d", b"f"], 10)
        await c.walk(s.root, [b"d"], 11)
        q = (await c.getattr(10)).qid
        await _push_out(c, s.root)
        await c.renameat(11, b"f", s.root, b"g")
        await _push_out(c, s.root)
        assert (await c.getattr(10)).qid == q
        await c.lopen(10, C.L_O_RDONLY)
        assert await c.read(10, 0, 10) == b"mine"


@pytest.mark.parametrize("change", ["rename", "unlink", "replace", "replace_dir"])
async def test_host_changes_while_reclaimed_are_estale(
    connect_export: ConnectFn, export: Path, change: str
) -> None:
    """A file renamed, unlinked or replaced on the host (or its directory replaced) while its
    fid was reclaimed: that fid is ESTALE, never another file; a new walk finds the new one."""
    (export / "d").mkdir()
    (export / "d" / "f").write_bytes(b"old")
    async with connect_export(config=_config()) as s:
        c = s.client
        await c.walk(s.root, [b"d", b"f"], 10)
        q = (await c.getattr(10)).qid
        await _push_out(c, s.root)
        if change == "rename":
            os.rename(export / "d" / "f", export / "d" / "g")
        elif change == "unlink":
            os.unlink(export / "d" / "f")
        elif change == "replace":
            (export / "d" / "new").write_bytes(b"new")
            os.rename(export / "d" / "new", export / "d" / "f")
        else:
            os.rename(export / "d", export / "old")
            (export / "d").mkdir()
            (export / "d" / "f").write_bytes(b"new")
        assert await _errno(c.getattr(10)) == errno.ESTALE
        assert await _errno(c.lopen(10, C.L_O_RDONLY)) == errno.ESTALE
        await c.clunk(10)
        if change in ("replace", "replace_dir"):
            await c.walk(s.root, [b"d", b"f"], 11)
            assert (await c.getattr(11)).qid != q
            await c.lopen(11, C.L_O_RDONLY)
            assert await c.read(11, 0, 10) == b"new"


async def test_reopen_through_a_held_directory_checks_the_file(
    connect_export: ConnectFn, export: Path
) -> None:
    """A reclaimed file fid whose directory's fd is still held (by an open fid) is reopened
    by its name in that directory, no walk from the root: the same file (a host rename of the
    directory changes nothing) and a file replaced on the host under its name is ESTALE."""
    (export / "d").mkdir()
    (export / "d" / "f").write_bytes(b"old")
    (export / "d" / "g").write_bytes(b"g")
    (export / "d" / "keep").write_bytes(b"")
    async with connect_export(config=_config()) as s:
        c = s.client
        await c.walk(s.root, [b"d"], 9)
        await c.walk(9, [b"keep"], 8)
        await c.lopen(8, C.L_O_RDONLY)  # never reclaimed: it keeps d's fd open
        await c.walk(9, [b"f"], 10)
        await c.walk(9, [b"g"], 11)
        q = (await c.getattr(10)).qid
        await _push_out(c, s.root)
        os.rename(export / "d", export / "d2")  # the held fd follows the directory
        assert (await c.getattr(11)).size == 1
        (export / "d2" / "new").write_bytes(b"new")
        os.rename(export / "d2" / "new", export / "d2" / "f")
        assert await _errno(c.getattr(10)) == errno.ESTALE
        assert await _errno(c.lopen(10, C.L_O_RDONLY)) == errno.ESTALE
        await c.walk(9, [b"f"], 12)
        assert (await c.getattr(12)).qid != q


async def test_open_unlinked_file_is_never_reclaimed(
    connect_export: ConnectFn, export: Path
) -> None:
    """An open file unlinked on the host keeps its fds through any pressure."""
    (export / "f").write_bytes(b"still here")
    async with connect_export(config=_config()) as s:
        c = s.client
        await c.walk(s.root, [b"f"], 10)
        await c.lopen(10, C.L_O_RDONLY)
        os.unlink(export / "f")
        await _push_out(c, s.root)
        assert await c.read(10, 0, 100) == b"still here"
        assert (await c.getattr(10)).nlink == 0


async def test_a_later_connection_gets_its_share(
    connect_export: ConnectFn, export: Path
) -> None:
    """One budget per process, split between the connections it expects (here 2): a
    connection that opened all it may before the other came cannot pin the other's share;
    the later one opens as many files."""
    for i in range(40):
        (export / f"f{i}").write_bytes(b"x")
    config = ServerConfig(fd_budget=fd_budget(2, BUDGET))

    async def open_all(c: Client, root: int) -> int:
        for i in range(40):
            await c.walk(root, [f"f{i}".encode()], 100 + i)
            try:
                await c.lopen(100 + i, C.L_O_RDONLY)
            except P9Error as e:
                assert e.errno == errno.EMFILE
                return i
        return 40

    async with connect_export(config=config) as a:
        first = await open_all(a.client, a.root)
        async with connect_export(config=config) as b:
            second = await open_all(b.client, b.root)
            await a.client.getattr(a.root)  # both keep working
            await b.client.getattr(b.root)
    assert first >= 3 and second >= 3, (first, second)
    assert abs(first - second) <= 1, (first, second)
