"""Memory a client can make the gofer hold without ever finishing a request.

``Txattrcreate`` announces a value of up to 64 KiB that later Twrites fill and the Tclunk
commits.  Every fid of a connection (16384 by default) can be an xattr fid at once, so a client
that creates them and never clunks pins up to 1 GiB per connection (in practice the fd limit
stops it near 10k fids, ~640 MiB), and ``serve --listen`` accepts any number of connections.  The gofer must bound what it holds for uncommitted xattrs
(per connection) and refuse beyond that with a clean Rlerror.
"""

from __future__ import annotations

import errno
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode

from .conftest import GoferProc
from .test_peer import _handshake, _recv_frame

FIDS = 8_000  # each holds two fds: stays under the usual 20k RLIMIT_NOFILE
VALUE = 64 * 1024
BUDGET_KIB = 256 * 1024


def _pipeline(g: GoferProc, frames: list[bytes], replies: int) -> Counter[int]:
    """Send ``frames`` while a thread reads ``replies`` replies; count reply types / errnos."""
    seen: Counter[int] = Counter()

    def reader() -> None:
        for _ in range(replies):
            mtype, _tag, body = _recv_frame(g.sock, 60)
            if mtype == C.MsgType.RLERROR:
                seen[-int.from_bytes(body[:4], "little")] += 1
            else:
                seen[mtype] += 1

    t = threading.Thread(target=reader)
    t.start()
    g.sock.sendall(b"".join(frames))
    t.join(120)
    assert not t.is_alive()
    return seen


def test_uncommitted_xattrs_are_bounded(
    export: Path, gofer_proc: Callable[..., GoferProc]
) -> None:
    """8000 fids each Txattrcreate'd for 64 KiB and filled with Twrites, none clunked: the
    gofer's VmRSS must stay within a fixed budget (refusing with ENOSPC/E2BIG/ENOMEM/EMFILE
    past its cap is fine)."""
    (export / "f").write_bytes(b"f")
    g = gofer_proc()
    _handshake(g.sock, 1 << 20)
    rss0 = g.rss_kib()
    value = b"v" * VALUE
    frames = []
    for i in range(FIDS):
        fid = 100 + i
        frames.append(encode(M.Twalk(tag=1, fid=1, newfid=fid, wnames=[b"f"])))
        frames.append(encode(M.Txattrcreate(tag=2, fid=fid, name=b"user.big", attr_size=VALUE,
                                            flags=0)))
        frames.append(encode(M.Twrite(tag=3, fid=fid, offset=0, data=value)))
    seen = _pipeline(g, frames, 3 * FIDS)
    growth = g.rss_kib() - rss0
    refusals = {k: v for k, v in seen.items() if k < 0}
    # a capped Txattrcreate leaves no xattr fid, so its Twrite is EBADF
    assert set(refusals) <= {-errno.ENOSPC, -errno.E2BIG, -errno.ENOMEM, -errno.EMFILE,
                             -errno.EDQUOT, -errno.EBADF}, seen
    assert growth < BUDGET_KIB, (
        f"VmRSS grew {growth // 1024} MiB holding {FIDS} uncommitted 64 KiB xattrs "
        f"(replies {dict(seen)})"
    )
    g.sock.close()
    assert g.wait(30) == 0


def test_xattrcreate_alone_reserves_nothing_big(
    export: Path, gofer_proc: Callable[..., GoferProc]
) -> None:
    """Announcing 8000 x 64 KiB values without sending them must not cost 1 GiB up front."""
    (export / "f").write_bytes(b"f")
    g = gofer_proc()
    _handshake(g.sock, 1 << 20)
    rss0 = g.rss_kib()
    frames = []
    for i in range(FIDS):
        fid = 100 + i
        frames.append(encode(M.Twalk(tag=1, fid=1, newfid=fid, wnames=[b"f"])))
        frames.append(encode(M.Txattrcreate(tag=2, fid=fid, name=b"user.big", attr_size=VALUE,
                                            flags=0)))
    seen = _pipeline(g, frames, 2 * FIDS)
    growth = g.rss_kib() - rss0
    assert growth < BUDGET_KIB, (
        f"VmRSS grew {growth // 1024} MiB for {FIDS} announced (unsent) 64 KiB xattr values "
        f"(replies {dict(seen)})"
    )
    g.sock.close()
    assert g.wait(30) == 0


@pytest.mark.parametrize("what", ["4MiB-Twrite", "4MiB-Tread"])
def test_idle_connections_do_not_pin_max_msize_buffers(tmp_path: Path, what: str) -> None:
    """``gofer9p serve --listen`` takes any number of connections.  Each one that sent a single
    max-size (4 MiB) frame, or read 4 MiB once, and then went idle must not keep a 4 MiB
    receive buffer or read buffer: with a few thousand such connections the gofer would hold
    gigabytes.  50 connections: VmRSS growth under 64 MiB (about 1 MiB each)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from .conftest import gofer_env, vm_rss_kib, wait_for

    export = tmp_path / "export"
    export.mkdir()
    (export / "big").write_bytes(b"r" * (4 << 20))
    path = str(tmp_path / "g.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(export), "--listen", f"unix:{path}",
         "--msize", str(4 << 20), "--log-level", "warning"],  # --listen grants 1 MiB by default
        env=gofer_env(),
    )
    socks: list[socket.socket] = []
    try:
        assert wait_for(lambda: os.path.exists(path), 20)
        time.sleep(0.2)
        rss0 = vm_rss_kib(proc.pid)
        msize = 4 << 20
        big = encode(M.Twrite(tag=5, fid=999, offset=0, data=b"x" * (msize - 100)))
        for _ in range(50):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            socks.append(s)
            _handshake(s, msize)
            if what == "4MiB-Twrite":
                s.sendall(big)
                mtype, _tag, _body = _recv_frame(s)
                assert mtype == C.MsgType.RLERROR  # fid 999 does not exist: EBADF
            else:
                s.sendall(encode(M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"big"]))
                          + encode(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
                          + encode(M.Tread(tag=4, fid=2, offset=0, count=msize - C.IOHDRSZ)))
                for _ in range(3):
                    mtype, _tag, _body = _recv_frame(s)
                assert mtype == C.MsgType.RREAD
        time.sleep(0.5)
        growth = vm_rss_kib(proc.pid) - rss0
        assert growth < 64 * 1024, (
            f"50 idle connections that each did one {what} hold {growth // 1024} MiB"
        )
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
