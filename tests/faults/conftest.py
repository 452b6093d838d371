"""Fault tests: the host file system fails, the peer misbehaves, the gofer is killed.

Fixtures:

* ``served`` / ``serve_dir``: an in-process server on a socketpair with a trio client (the
  server task is watched: it must end by returning, never by raising);
* ``tiny_fs``: a 1 MiB tmpfs with 64 inodes mounted on a temp dir for the test and unmounted
  after (root only; skipped cleanly when mount(2) is not allowed);
* :class:`GoferProc`: a real ``gofer9p serve --fd N DIR`` subprocess on a socketpair, with its
  VmRSS and fd count read from /proc.

Every async test body runs under ``trio.fail_after`` (see ``pytest_collection_modifyitems``).
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from gofer9p.attach import AttachPoint
from gofer9p.client import Client, open_client, stream_from_socket
from gofer9p.launch import reap
from gofer9p.server import ServerConfig, serve

REPO = Path(__file__).resolve().parents[2]
TEST_TIMEOUT = 90.0


def _bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(TEST_TIMEOUT):
            return await fn(*args, **kwargs)

    bounded._faults_bounded = 1  # type: ignore[attr-defined]
    return bounded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every async test of this directory in time (no pytest-timeout here)."""
    here = Path(__file__).parent
    for item in items:
        if not isinstance(item, pytest.Function) or Path(str(item.fspath)).parent != here:
            continue
        if inspect.iscoroutinefunction(item.obj) and not getattr(item.obj, "_faults_bounded", 0):
            item.obj = _bounded(item.obj)


@asynccontextmanager
async def open_versioned_client(stream: trio.abc.Stream, *, msize: int) -> AsyncIterator[Client]:
    """A Client with Tversion done (``gofer9p.client.open_client`` with our msize)."""
    async with open_client(stream, msize=msize) as client:
        yield client


@attrs.define
class ServerTask:
    """How the in-process server task ended: ``None`` while running, else "returned" or the
    exception it raised."""

    done: trio.Event = attrs.field(factory=trio.Event)
    outcome: str | BaseException | None = None


@attrs.define
class Served:
    client: Client
    root: int
    export: Path
    point: AttachPoint
    task: ServerTask


ServeFn = Callable[..., AbstractAsyncContextManager[Served]]


def start_server(
    nursery: trio.Nursery, sock: socket.socket, point: AttachPoint,
    config: ServerConfig | None = None,
) -> ServerTask:
    """Run ``serve`` on ``sock`` as a task; record whether it returned or raised."""
    st = ServerTask()

    async def run() -> None:
        try:
            await serve(sock, point, config, name="faults")
            st.outcome = "returned"
        except BaseException as e:  # recorded for the test to assert on
            st.outcome = e
            if not isinstance(e, Exception):
                raise
        finally:
            sock.close()
            st.done.set()

    nursery.start_soon(run)
    return st


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    return d


@pytest.fixture
def serve_dir(export: Path, nursery: trio.Nursery) -> ServeFn:
    """``async with serve_dir(path=None, config=None, msize=...) as s``."""

    @asynccontextmanager
    async def _serve(
        *, path: Path | None = None, config: ServerConfig | None = None, msize: int = 1 << 20
    ) -> AsyncIterator[Served]:
        point = AttachPoint.open(str(path or export))
        a, b = socket.socketpair()
        st = start_server(nursery, a, point, config)
        async with open_versioned_client(stream_from_socket(b), msize=msize) as c:
            root = await c.attach(uname=b"root", n_uname=0)
            yield Served(client=c, root=root, export=path or export, point=point, task=st)
        with trio.fail_after(10):
            await st.done.wait()
        assert st.outcome == "returned", st.outcome
        point.close()

    return _serve


@pytest.fixture
async def served(serve_dir: ServeFn) -> AsyncIterator[Served]:
    """msize 4 MiB, so that large reads take the server's worker-thread path."""
    async with serve_dir(msize=4 << 20) as s:
        yield s


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The gofer9p log records at ERROR or above (an internal error is a bug here)."""
    caplog.set_level(logging.INFO, logger="gofer9p")

    def errors() -> list[str]:
        return [
            f"{r.levelname} {r.name}: {r.getMessage()}"
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("gofer9p")
        ]

    return errors


# ------------------------------------------------------------------------------- tmpfs

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB, 64-inode tmpfs on ``tmp_path/tiny`` for this test only."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    rc = _libc.mount(b"tmpfs", str(d).encode(), b"tmpfs", 0, b"size=1m,nr_inodes=64,mode=0755")
    if rc != 0:
        pytest.skip(f"cannot mount a tmpfs: {os.strerror(ctypes.get_errno())}")
    try:
        yield d
    finally:
        _libc.umount2(str(d).encode(), _MNT_DETACH)


# ------------------------------------------------------------------- subprocess gofer


def gofer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class GoferProc:
    """``gofer9p serve DIR --fd N``: one connection, our end in ``sock``; stderr to a file."""

    def __init__(self, directory: Path, log: Path, *extra: str) -> None:
        a, self.sock = socket.socketpair()
        self.log_path = log
        self._log = open(log, "wb")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gofer9p", "serve", str(directory), "--fd", str(a.fileno()),
             "--log-level", "info", *extra],
            pass_fds=(a.fileno(),),
            env=gofer_env(),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        a.close()
        self.pid = self.proc.pid

    def rss_kib(self) -> int:
        return vm_rss_kib(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        self.sock.close()
        reap(self.proc, 10)
        self._log.close()


@pytest.fixture
def gofer_proc(export: Path, tmp_path: Path) -> Iterator[Callable[..., GoferProc]]:
    """Factory: ``gofer_proc(*extra_args, directory=export)``; all are closed at teardown."""
    made: list[GoferProc] = []

    def make(*extra: str, directory: Path | None = None) -> GoferProc:
        g = GoferProc(directory or export, tmp_path / f"gofer-{len(made)}.log", *extra)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def wait_for(pred: Callable[[], bool], timeout: float = 10, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
