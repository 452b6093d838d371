"""Use-after-clunk across connections: an fd closed under an in-flight request and reused.

Two connections share the gofer process (in the daemon: the root attach point and a 9P mount, or
two sandboxes' mounts).  Connection A pipelines requests that run in worker threads (truncate,
fsync, FIFO reads) together with a Tclunk of the same fid; connection B meanwhile opens and reads
its own files in a tight loop, so freed fd numbers are reused at once.  If A's threaded request
ran on an fd number after the clunk closed it, it would truncate or read one of B's files.
Afterwards: B's files are intact and none of B's data ever appeared in A's replies.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import trio

from gofer9p.client import Client, P9Error
from gofer9p.protocol import constants as C

from .conftest import ConnectFn, World

SECONDS = 2.0
B_FILES = 32
B_DATA = b"CONNECTION-B-DATA-" * 200


async def _quiet(coro: object) -> None:
    try:
        await coro  # type: ignore[misc]
    except P9Error:
        pass


async def test_clunk_under_threaded_requests_never_hits_another_connection(
    world: World, connect: ConnectFn
) -> None:
    a_dir = world.export / "A"
    b_dir = world.export / "B"
    a_dir.mkdir()
    b_dir.mkdir()
    (a_dir / "a").write_bytes(b"a" * 4096)
    os.mkfifo(a_dir / "p")
    pipe_w = os.open(a_dir / "p", os.O_RDWR | os.O_NONBLOCK)  # keeps the FIFO readable-empty
    for i in range(B_FILES):
        (b_dir / f"b{i}").write_bytes(B_DATA)
    rounds: Counter[str] = Counter()
    try:
        async with connect(path=a_dir) as ea, connect(path=b_dir) as eb:
            ea.stream.markers = (*ea.stream.markers, B_DATA[:40])
            ea.stream.keep = max(ea.stream.keep, 40)
            deadline = time.monotonic() + SECONDS

            async def a_round(c: Client, root: int) -> None:
                fid, _ = await c.walk(root, [b"a"])
                pfid, _ = await c.walk(root, [b"p"])
                await c.lopen(fid, C.L_O_RDWR)
                await c.lopen(pfid, C.L_O_RDONLY)
                async with trio.open_nursery() as n:
                    n.start_soon(_quiet, c.setattr(fid, C.SETATTR_SIZE, size=4096))
                    n.start_soon(_quiet, c.fsync(fid))
                    n.start_soon(_quiet, c.read(pfid, 0, 4096))
                    n.start_soon(_quiet, c.read(fid, 0, 4096))
                    n.start_soon(_quiet, c.clunk(fid))
                    n.start_soon(_quiet, c.clunk(pfid))

            async def a_loop(w: int) -> None:
                for _ in range(1_000_000):
                    if time.monotonic() >= deadline:
                        return
                    await a_round(ea.client, ea.root)
                    rounds["a"] += 1

            async def b_loop() -> None:
                c = eb.client
                for i in range(1_000_000):
                    if time.monotonic() >= deadline:
                        return
                    fid, _ = await c.walk(eb.root, [f"b{i % B_FILES}".encode()])
                    await c.lopen(fid, C.L_O_RDONLY)
                    data = await c.read(fid, 0, 64)
                    assert data == B_DATA[:64]
                    await c.clunk(fid)
                    rounds["b"] += 1

            async with trio.open_nursery() as n:
                for w in range(4):
                    n.start_soon(a_loop, w)
                n.start_soon(b_loop)
                n.start_soon(b_loop)
            assert not ea.stream.leaks, f"connection A received B's data: {ea.stream.leaks}"
    finally:
        os.close(pipe_w)
    print(f"rounds: {dict(rounds)}")
    assert rounds["a"] > 10 and rounds["b"] > 10, rounds
    bad = [i for i in range(B_FILES) if (b_dir / f"b{i}").read_bytes() != B_DATA]
    assert not bad, f"connection A's requests truncated/changed B's files {bad}"
    assert (a_dir / "a").read_bytes() == b"a" * 4096
    world.assert_contained()
