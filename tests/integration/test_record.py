"""Session recordings of a live server (gofer9p.recorder, the server's two hooks), what tshark
makes of them, headers-only privacy, backpressure, and ``python -m fuzz replay`` of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from fuzz.recorded import replay_recording
from gofer9p.protocol import codec
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.record import read_frames, read_pcap
from gofer9p.recorder import Recording
from gofer9p.server import ServerConfig, serve

from .conftest import ConnectFn
from .helpers import create_file, list_dir, read_path

TSHARK = shutil.which("tshark")
SECRET_NAME = "zq-secret-name-4417"
SECRET_DATA = b"zq-secret-content-9931 " * 40
BIG = bytes(range(256)) * 1200  # 307200 bytes: an Rread of several TCP segments


@pytest.fixture(autouse=True)
def _served_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check what the in-process server records (``ServerConfig.record``), which
    ``gofer9p.testing.daemon_plugin`` does not pass to the daemon it serves through: they serve
    in-process under it too (the daemon's recording: tests/daemon/test_record_fd.py)."""
    from . import conftest

    monkeypatch.setattr(conftest, "serve", serve)


def _frames(path: Path) -> list[tuple[bool, M.Message]]:
    return [
        (f.from_client, codec.decode(f.data)) for f in read_frames(read_pcap(path.read_bytes()))
    ]


async def _workload(connect_export: ConnectFn, config: ServerConfig) -> tuple[int, int]:
    """Attach, walk, open and read (a large file), create and write, list, clunk; returns
    (root fid, the big file's fid)."""
    async with connect_export(config=config, msize=1 << 20) as s:
        c = s.client
        fid = await c.walk_to(s.root, "big")
        await c.lopen(fid, C.L_O_RDONLY)
        assert await c.read(fid, 0, len(BIG)) == BIG
        await c.clunk(fid)
        await create_file(c, s.root, SECRET_NAME, SECRET_DATA)
        assert await read_path(c, s.root, SECRET_NAME) == SECRET_DATA
        assert {e.name for e in await list_dir(c, s.root)} >= {b"big", SECRET_NAME.encode()}
        return s.root, fid


async def _record(
    tmp_path: Path, connect_export: ConnectFn, export: Path, *, headers_only: bool = False
) -> tuple[Path, int, int]:
    (export / "big").write_bytes(BIG)
    path = tmp_path / "rec.pcap"
    rec = Recording(
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), headers_only=headers_only
    )
    async with rec.running():
        root, fid = await _workload(connect_export, ServerConfig(record=rec))
    return path, root, fid


async def test_recording_holds_every_frame_both_ways(
    tmp_path: Path, connect_export: ConnectFn, export: Path
) -> None:
    path, root, fid = await _record(tmp_path, connect_export, export)
    frames = _frames(path)
    requests = [m for from_client, m in frames if from_client]
    replies = [m for from_client, m in frames if not from_client]
    assert len(requests) == len(replies) > 10
    assert isinstance(requests[0], M.Tversion) and isinstance(replies[0], M.Rversion)
    assert isinstance(requests[1], M.Tattach) and requests[1].fid == root
    # every reply answers the request before it (the client waits for each), same tag
    for (c, t), (s, r) in zip(frames[::2], frames[1::2], strict=True):
        assert c and not s and r.tag == t.tag and type(r).__name__[1:] == type(t).__name__[1:]
    reads = [(t, r) for t, r in zip(requests, replies, strict=True) if isinstance(t, M.Tread)]
    assert reads[0][0].fid == fid and bytes(reads[0][1].data) == BIG  # split and reassembled
    writes = [t for t in requests if isinstance(t, M.Twrite)]
    assert b"".join(bytes(w.data) for w in writes) == SECRET_DATA


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize("headers_only", [False, True])
async def test_tshark_dissects_the_recording_as_9p(
    tmp_path: Path, connect_export: ConnectFn, export: Path, headers_only: bool
) -> None:
    path, root, fid = await _record(tmp_path, connect_export, export, headers_only=headers_only)
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-Y", "9p", "-T", "fields",
         "-e", "9p.msgtype", "-e", "9p.tag", "-e", "9p.fid", "-e", "9p.count"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    want = []
    for f in read_frames(read_pcap(path.read_bytes())):
        mtype, tag = f.data[4], int.from_bytes(f.data[5:7], "little")
        fields = M.BY_TYPE[mtype].FIELDS.split()
        first = str(int.from_bytes(f.data[7:11], "little")) if fields[:1] == ["fid:d"] else ""
        want.append([str(mtype), str(tag), first])
    assert [r[:3] for r in rows] == want
    types = [int(r[0]) for r in rows]
    for t in (C.MsgType.TVERSION, C.MsgType.TATTACH, C.MsgType.TWALK, C.MsgType.TLOPEN,
              C.MsgType.TREAD, C.MsgType.RREAD, C.MsgType.TLCREATE, C.MsgType.TWRITE,
              C.MsgType.TREADDIR, C.MsgType.TCLUNK):  # fmt: skip
        assert t in types, t
    attach = rows[types.index(C.MsgType.TATTACH)]
    assert attach[2] == str(root)
    big_read = [r for r in rows if int(r[0]) == C.MsgType.RREAD and r[3] == str(len(BIG))]
    assert big_read, "the 300 KB Rread (several segments) is listed with its count"
    treads = [r[2] for r in rows if int(r[0]) == C.MsgType.TREAD]
    assert treads[0] == str(fid), (treads, fid)


async def test_headers_only_keeps_no_name_and_no_data(
    tmp_path: Path, connect_export: ConnectFn, export: Path
) -> None:
    path, _, _ = await _record(tmp_path, connect_export, export, headers_only=True)
    blob = path.read_bytes()
    assert SECRET_NAME.encode() not in blob
    assert b"zq-secret" not in blob and BIG[:64] not in blob
    assert len(blob) < 20_000  # the 300 KB read and the writes are not in it
    frames = read_frames(read_pcap(blob))
    kinds = [f.data[4] for f in frames]
    assert C.MsgType.TLCREATE in kinds and C.MsgType.RREAD in kinds
    lcreate = codec.decode(frames[kinds.index(C.MsgType.TLCREATE)].data)
    assert isinstance(lcreate, M.Tlcreate) and lcreate.name == b"" and lcreate.mode == 0o640
    rread = [f for f in frames if f.data[4] == C.MsgType.RREAD and f.size == len(BIG) + 11]
    assert rread and len(rread[0].data) == 11  # size and count kept, data not captured
    # the same secrets are in a full recording: the test can see them when they are there
    (tmp_path / "full").mkdir()
    (export / SECRET_NAME).unlink()
    full, _, _ = await _record(tmp_path / "full", connect_export, export)
    assert SECRET_NAME.encode() in full.read_bytes()


async def test_replay_of_a_recording_matches_and_finds_a_difference(
    tmp_path: Path, connect_export: ConnectFn, export: Path
) -> None:
    (export / "sub").mkdir()
    (export / "sub" / "f").write_bytes(b"hello")
    start = tmp_path / "start"
    shutil.copytree(export, start, symlinks=True)
    path, _, _ = await _record(tmp_path, connect_export, export)
    (start / "big").write_bytes(BIG)  # the tree the recorded export started as
    assert await trio.to_thread.run_sync(lambda: replay_recording(path, export_from=start)) is None
    (start / "big").write_bytes(BIG[::-1])
    diff = await trio.to_thread.run_sync(lambda: replay_recording(path, export_from=start))
    assert diff is not None and "Tread" in diff and "Rread" in diff


def test_fuzz_replay_command_says_pass_and_fail(tmp_path: Path) -> None:
    """``python -m fuzz replay REC.pcap``, exit status 0 / 1 / 2 (through the CLI, with a
    recording made by ``gofer9p serve --record`` and finished by SIGTERM)."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(b"one")
    start = tmp_path / "start"
    shutil.copytree(export, start)
    rec = tmp_path / "serve.pcap"
    sock = tmp_path / "s.sock"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    server = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(export), "--listen", f"unix:{sock}",
         "--record", str(rec), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        client = [sys.executable, "-m", "gofer9p", "client", f"unix:{sock}"]
        got = subprocess.run([*client, "cat", "f"], env=env, capture_output=True, timeout=30)
        assert got.stdout == b"one"
        subprocess.run([*client, "mkdir", "d"], env=env, check=True, timeout=30)
    finally:
        server.terminate()  # SIGTERM: the recording is finished and closed
        assert server.wait(timeout=30) == 0
    replay = [sys.executable, "-m", "fuzz", "replay", str(rec), "--export-from", str(start)]
    ok = subprocess.run(replay, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stdout + ok.stderr
    (start / "f").write_bytes(b"two")
    bad = subprocess.run(replay, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "first difference" in bad.stdout, bad.stdout + bad.stderr
    assert "Rread" in bad.stdout
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(rec.read_bytes()[:24])  # a pcap with no 9P in it
    none = subprocess.run([*replay[:4], str(empty)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert none.returncode == 2 and "no 9P request" in none.stdout, none.stdout + none.stderr


async def test_a_slow_sink_applies_backpressure_and_loses_nothing(
    connect_export: ConnectFn, export: Path
) -> None:
    """A recording to a pipe nobody reads: unwritten bytes stop at the bound plus one hook
    call's worth, and the connection waits; once the pipe is read, everything arrives."""
    (export / "big").write_bytes(BIG)
    r, w = os.pipe()
    rec = Recording(w, bound=64 * 1024)
    head = os.read(r, 24)  # the file header went out at once
    drained = bytearray()
    high = 0

    async def watch() -> None:
        nonlocal high
        while True:
            high = max(high, rec.pending)
            await trio.sleep(0.001)

    async def read_pipe() -> None:
        while chunk := await trio.to_thread.run_sync(os.read, r, 1 << 20):
            drained.extend(chunk)

    async with trio.open_nursery() as outer:
        outer.start_soon(watch)
        async with rec.running(), connect_export(config=ServerConfig(record=rec)) as s:
            c = s.client
            fid = await c.walk_to(s.root, "big")
            await c.lopen(fid, C.L_O_RDONLY)
            # this reply is sent, then its recording passes the bound: the writer is stuck
            assert await c.read(fid, 0, len(BIG)) == BIG
            done = trio.Event()

            async def second() -> None:
                assert await c.read(fid, 0, len(BIG)) == BIG
                done.set()

            async with trio.open_nursery() as inner:
                inner.start_soon(second)
                await trio.sleep(0.5)
                assert not done.is_set(), "the next request waits for the recording's writer"
                assert rec.bound < high <= rec.bound + len(BIG) + 64 * 1024
                outer.start_soon(read_pipe)
            await c.clunk(fid)
        outer.cancel_scope.deadline = trio.current_time() + 10
        while not outer.cancel_scope.cancel_called and len(drained) < 2 * len(BIG):
            await trio.sleep(0.01)
        watch_done = outer.cancel_scope
        watch_done.cancel()
    os.close(r)
    frames = read_frames(read_pcap(head + bytes(drained)))
    rreads = [f for f in frames if f.data[4] == C.MsgType.RREAD]
    assert len(rreads) == 2 and all(f.data[11:] == BIG for f in rreads)
    assert frames[-1].data[4] == C.MsgType.RCLUNK  # to the last reply
