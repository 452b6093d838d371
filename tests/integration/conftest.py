"""Client <-> server over a socketpair, in one trio run.

``server`` gives a connected, attached client on a fresh export directory;
``connect_export`` opens more connections (or read-only ones) to the same
export.  The server task runs in the test's nursery, so a server crash fails
the test: a handler that raises out of the connection task is a bug.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from gofer9p.attach import AttachPoint
from gofer9p.client import Client, open_client, stream_from_socket
from gofer9p.server import ServerConfig, serve


@attrs.define
class Served:
    client: Client
    root: int
    export: Path
    point: AttachPoint
    sock: socket.socket


ConnectFn = Callable[..., AbstractAsyncContextManager[Served]]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    d.chmod(0o755)
    return d


@pytest.fixture
def connect_export(export: Path, nursery: trio.Nursery) -> ConnectFn:
    """Factory: ``async with connect_export(readonly=False, config=None, msize=...) as s``."""

    @asynccontextmanager
    async def connect(
        *,
        readonly: bool = False,
        config: ServerConfig | None = None,
        msize: int = 1 << 20,
        attach: bool = True,
        path: Path | None = None,
    ) -> AsyncIterator[Served]:
        point = AttachPoint.open(str(path or export), readonly=readonly)
        a, b = socket.socketpair()
        done = trio.Event()

        async def run_server() -> None:
            try:
                await serve(a, point, config, name="test")
            finally:
                a.close()
                done.set()

        nursery.start_soon(run_server)
        async with open_client(stream_from_socket(b), msize=msize) as c:
            root = await c.attach(uname=b"root", n_uname=0) if attach else -1
            yield Served(client=c, root=root, export=path or export, point=point, sock=b)
        with trio.fail_after(10):
            await done.wait()  # server ends cleanly at EOF
        point.close()

    return connect


@pytest.fixture
async def server(connect_export: ConnectFn) -> AsyncIterator[Served]:
    async with connect_export() as s:
        yield s
