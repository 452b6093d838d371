"""The 1,000,000-fid walk within a budget of 4,096 host fds (#14): by hand, ``-m slow``.

    python -m pytest -q -s -m slow tests/integration/test_fd_budget_long.py

One connection walks 1,000,000 distinct fids (100,000 files by name, each cloned 9 times) and
getattr's each: no error, the host fds the process holds beyond its baseline never pass the
budget, and the memory of an idle fid is measured two ways and printed: the RSS growth of the
process per fid over the whole run (server and client in this process), and tracemalloc of a
``Backend`` alone holding 100,000 idle fids.  Takes several minutes (2,000,000 requests).
"""

from __future__ import annotations

import os
import resource
import time
import tracemalloc
from pathlib import Path

import pytest
import trio

from gofer9p.attach import AttachPoint, Backend, FdBudget
from gofer9p.protocol import constants as C
from gofer9p.server import ServerConfig, fd_budget

from .conftest import ConnectFn

pytestmark = pytest.mark.slow

BUDGET = 4096
DIRS = 100
FILES = 1000  # per directory: 100,000 files
CLONES = 9  # each file's fid cloned 9 times: 1,000,000 fids
INFLIGHT = 32


def _host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _tree(export: Path) -> None:
    for d in range(DIRS):
        sub = export / f"d{d}"
        sub.mkdir()
        for i in range(FILES):
            os.close(os.open(sub / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))


async def test_million_fids_within_4096_fds(connect_export: ConnectFn, export: Path) -> None:
    _tree(export)
    budget = fd_budget(1, BUDGET)
    config = ServerConfig(fd_budget=budget, max_fids=1_100_000)
    async with connect_export(config=config) as s:
        c = s.client
        base_fds = _host_fds() - budget.in_use
        rss0 = _rss()
        peak = 0
        t0 = time.monotonic()
        sem = trio.Semaphore(INFLIGHT)

        async def one(file_no: int) -> None:
            nonlocal peak
            async with sem:
                d, i = divmod(file_no, FILES)
                fid = 10 + file_no * (CLONES + 1)
                await c.walk(s.root, [f"d{d}".encode(), f"f{i}".encode()], fid)
                await c.getattr(fid)
                for k in range(1, CLONES + 1):
                    await c.walk(fid, [], fid + k)
                    await c.getattr(fid + k)
                if file_no % 997 == 0:
                    peak = max(peak, _host_fds() - base_fds)

        for start in range(0, DIRS * FILES, 10_000):
            async with trio.open_nursery() as n:
                for file_no in range(start, start + 10_000):
                    n.start_soon(one, file_no)
            peak = max(peak, _host_fds() - base_fds)
        elapsed = time.monotonic() - t0
        fids = DIRS * FILES * (CLONES + 1)
        rss_per_fid = (_rss() - rss0) / fids
        print(
            f"\n{fids} fids in {elapsed:.0f} s: host fds peak {peak} (budget {BUDGET}), "
            f"in use {budget.in_use}, reclaims {budget.reclaims}, reopens {budget.reopens}, "
            f"RSS growth {rss_per_fid:.0f} bytes/fid (server and client)"
        )
        assert peak <= BUDGET
        assert budget.reclaims >= fids - BUDGET


def test_idle_fid_memory(tmp_path: Path) -> None:
    """tracemalloc of a Backend holding 100,000 idle (reclaimed) fids of distinct files."""
    (tmp_path / "d").mkdir()
    for i in range(1000):
        (tmp_path / "d" / f"f{i}").write_bytes(b"")
    p = AttachPoint.open(str(tmp_path))
    try:
        b = Backend(p, max_fids=200_000, fd_budget=FdBudget(256))
        b.attach(0, 0, b"")
        tracemalloc.start()
        m0 = tracemalloc.get_traced_memory()[0]
        for n in range(1, 100_001):
            b.walk(0, n, [b"d", b"f%d" % (n % 1000)])
            b.getattr(n, C.GETATTR_BASIC)
        m1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        per = (m1 - m0) / 100_000
        print(f"\nidle fid: {per:.0f} bytes (tracemalloc, 100,000 fids, "
              f"{b.fd_budget.reclaims} reclaims)")
        assert b.fds_charged() <= 256
        assert per < 1024
        b.reset()
    finally:
        p.close()
