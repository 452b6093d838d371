"""SIGKILL of the gofer in the middle of writes: everything acknowledged by Rfsync survives.

Four client tasks each write a stream of files (create, several writes, fsync) through a real
``gofer9p serve --fd`` process; the test kills it with SIGKILL at a random moment while writes
are in flight (after at least eight files were fsynced, plus a random 0-0.4 s).  Every file whose Rfsync arrived before the kill must be on the host, complete and
byte-exact.  (A SIGKILL does not lose the page cache, so this checks that the gofer never
acknowledges a write or an fsync before the data is really in the kernel: no user-space write
buffering, no early replies.)
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from gofer9p.client import ConnectionClosed, P9Error, stream_from_socket
from gofer9p.protocol import constants as C

from .conftest import GoferProc, open_versioned_client

WRITERS = 4
CHUNK = 48 * 1024
CHUNKS_PER_FILE = 6


def _content(w: int, i: int) -> bytes:
    seed = hashlib.sha256(f"{w}/{i}".encode()).digest()
    return (seed * (CHUNK * CHUNKS_PER_FILE // len(seed) + 1))[: CHUNK * CHUNKS_PER_FILE]


async def test_sigkill_during_writes_keeps_fsynced_files(
    export: Path, gofer_proc: Callable[..., GoferProc]
) -> None:
    g = gofer_proc("--msize", str(1 << 20))
    durable: list[tuple[int, int]] = []
    in_flight: dict[int, int] = {}
    extra_delay = random.uniform(0.0, 0.4)
    killed = trio.Event()

    async with open_versioned_client(stream_from_socket(g.sock), msize=1 << 20) as c:
        root = await c.attach(uname=b"root", n_uname=0)

        async def writer(w: int) -> None:
            for i in range(100_000):  # bounded; ends when the gofer dies
                name = f"w{w}-{i:05d}".encode()
                data = _content(w, i)
                try:
                    fid, _ = await c.walk(root, [])
                    await c.lcreate(fid, name, C.L_O_WRONLY | C.L_O_CREAT, 0o644)
                    in_flight[w] = i
                    for k in range(CHUNKS_PER_FILE):
                        await c.write(fid, k * CHUNK, data[k * CHUNK : (k + 1) * CHUNK])
                    await c.fsync(fid)
                    if not killed.is_set():
                        durable.append((w, i))
                    await c.clunk(fid)
                except (ConnectionClosed, P9Error, trio.BrokenResourceError):
                    return

        async def killer() -> None:
            # once a few files are durable (however slow the machine is), a random moment
            with trio.move_on_after(30):
                while len(durable) < 2 * WRITERS:
                    await trio.sleep(0.01)
            await trio.sleep(extra_delay)
            os.kill(g.pid, signal.SIGKILL)
            killed.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for w in range(WRITERS):
                    n.start_soon(writer, w)
                n.start_soon(killer)
    assert g.wait(10) == -signal.SIGKILL
    assert len(durable) >= WRITERS, f"too few files finished before the kill: {durable}"
    bad = []
    for w, i in durable:
        p = export / f"w{w}-{i:05d}"
        if not p.exists() or p.read_bytes() != _content(w, i):
            bad.append((p.name, p.stat().st_size if p.exists() else None))
    assert not bad, f"fsynced files damaged after SIGKILL: {bad}"
    # a file in flight at the kill may be short, but what is there is a prefix of what was
    # sent (each writer's writes are sequential, so there are no holes)
    for w, i in in_flight.items():
        p = export / f"w{w}-{i:05d}"
        if p.exists():
            got = p.read_bytes()
            assert got == _content(w, i)[: len(got)], p.name
    print(f"SIGKILL {extra_delay:.2f}s after 8 durable files: {len(durable)} fsynced files intact, "
          f"in flight: {in_flight}")
