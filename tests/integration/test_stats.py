"""Statistics (issue #16): exact counters through the client over a socketpair, the
histogram adding up, the OpenMetrics text, and the endpoint's protocol and bounds."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from gofer9p import control
from gofer9p.client import P9Error
from gofer9p.openmetrics import render
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode
from gofer9p.server import ServerConfig
from gofer9p.stats import BUCKETS, ConnStats, ProcessProbe, Registry
from gofer9p.top import fetch, table

from .conftest import ConnectFn


@pytest.fixture(autouse=True)
def _in_process(request: pytest.FixtureRequest) -> None:
    """These tests read the in-process server's registry (``ServerConfig(stats=...)``); the
    daemon plugin serves through a separate process, whose endpoint
    tests/daemon/test_stats_endpoint.py checks instead."""
    if request.config.pluginmanager.has_plugin("gofer9p.testing.daemon_plugin"):
        pytest.skip("statistics of an in-process server (the daemon's: tests/daemon)")


def _size(msg: M.Message) -> int:
    return len(encode(msg))


async def test_counters_after_a_known_sequence_are_exact(connect_export: ConnectFn) -> None:
    reg = Registry()
    async with connect_export(config=ServerConfig(stats=reg)) as s:
        c = s.client
        with pytest.raises(P9Error) as e:
            await c.walk(s.root, [b"missing"])
        assert e.value.errno == errno.ENOENT
        fid, _ = await c.walk(s.root, [])
        await c.lcreate(fid, b"f", C.L_O_RDWR, 0o644)
        assert await c.write(fid, 0, b"x" * 100) == 100
        assert await c.read(fid, 0, 4096) == b"x" * 100
        for _ in range(3):
            await c.getattr(s.root)
        with pytest.raises(P9Error):
            await c.getattr(12345)  # no such fid
        await c.clunk(fid)
        snap = reg.snapshot()

    ops = snap["ops"]
    assert {op: o["count"] for op, o in ops.items()} == {
        "Tversion": 1,
        "Tattach": 1,
        "Twalk": 2,
        "Tlcreate": 1,
        "Twrite": 1,
        "Tread": 1,
        "Tgetattr": 4,
        "Tclunk": 1,
    }
    assert {op: o["errors"] for op, o in ops.items() if o["errors"]} == {
        "Twalk": {"ENOENT": 1},
        "Tgetattr": {"EBADF": 1},
    }
    # bytes: each request's frame in, each reply's frame out
    assert ops["Twrite"]["bytes_in"] == 23 + 100
    assert ops["Twrite"]["bytes_out"] == 11
    assert ops["Tread"]["bytes_in"] == 23
    assert ops["Tread"]["bytes_out"] == 11 + 100
    assert ops["Tgetattr"]["bytes_in"] == 4 * 19
    assert ops["Tgetattr"]["bytes_out"] == 3 * 160 + 11  # three Rgetattr, one Rlerror
    assert ops["Tclunk"]["bytes_in"] == 11
    assert ops["Tclunk"]["bytes_out"] == 7
    walk = M.Twalk(tag=1, fid=0, newfid=1, wnames=[b"missing"])
    assert ops["Twalk"]["bytes_in"] == _size(walk) + 17
    assert ops["Twalk"]["bytes_out"] == 11 + 9  # Rlerror, Rwalk of no qids
    assert ops["Tversion"]["bytes_out"] == _size(M.Rversion(tag=0, msize=1 << 20, version=b"9P2000.L"))
    # the connection was live then: its gauges
    (conn,) = snap["connections"]
    assert conn["fids"] == 1 and conn["inflight"] == 0 and conn["host_fds"] >= 1
    # ... and its counts stay in the totals once it ended
    after = reg.snapshot()
    assert after["connections"] == [] and after["connections_ended"] == 1
    assert {op: o["count"] for op, o in after["ops"].items()} == {
        op: o["count"] for op, o in ops.items()
    }


async def test_histogram_buckets_add_up_to_the_count(connect_export: ConnectFn) -> None:
    reg = Registry()
    async with connect_export(config=ServerConfig(stats=reg)) as s:
        c = s.client
        fid, _ = await c.walk(s.root, [])
        await c.lcreate(fid, b"g", C.L_O_RDWR, 0o644)
        await c.fsync(fid)  # a worker thread's reply (counted by the trio task)

        async def bad() -> None:
            with pytest.raises(P9Error):
                await c.getattr(999)  # EBADF, in the same chunks

        async with trio.open_nursery() as n:  # pipelined: several replies per send
            for _ in range(20):
                n.start_soon(c.getattr, s.root)
                n.start_soon(bad)
        snap = reg.snapshot()
    ops = snap["ops"]
    assert ops["Tfsync"]["count"] == 1
    assert ops["Tgetattr"]["count"] == 40
    assert ops["Tgetattr"]["errors"] == {"EBADF": 20}
    assert "Tlerror" not in ops  # Rlerrors are counted under their requests' types
    assert len(snap["latency_bounds"]) == BUCKETS - 1
    for op, o in ops.items():
        assert len(o["latency"]) == BUCKETS
        assert sum(o["latency"]) == o["count"] > 0, op
        assert 0 < o["latency_sum"] < o["count"] * 10, op


async def test_openmetrics_text_parses(connect_export: ConnectFn) -> None:
    reg = Registry()
    async with connect_export(config=ServerConfig(stats=reg)) as s:
        for _ in range(5):
            await s.client.getattr(s.root)
        with pytest.raises(P9Error):
            await s.client.walk(s.root, [b"nope"])
        snap = reg.snapshot(ProcessProbe.open().read())
    text = render(snap)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    lat = families["gofer9p_request_latency_seconds"]
    assert lat.type == "histogram" and lat.unit == "seconds"
    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value for x in lat.samples}
    assert samples[("gofer9p_request_latency_seconds_count", (("op", "Tgetattr"),))] == 5
    inf = ("gofer9p_request_latency_seconds_bucket", (("le", "+Inf"), ("op", "Tgetattr")))
    assert samples[inf] == 5
    errs = families["gofer9p_request_errors"]
    assert [(x.labels, x.value) for x in errs.samples] == [({"op": "Twalk", "errno": "ENOENT"}, 1)]
    assert families["gofer9p_connections"].samples[0].value == 1
    conn = families["gofer9p_connection_fids"].samples[0]
    assert conn.labels == {"connection": "test"} and conn.value == 1
    assert families["gofer9p_process_resident_memory_bytes"].samples[0].value > 1 << 20
    assert families["gofer9p_process_threads"].samples[0].value >= 1
    assert "gofer9p_fd_budget_limit" not in families  # no budget given


def test_openmetrics_with_an_fd_budget_and_odd_names() -> None:
    class Budget:
        limit, in_use, reclaims, reopens = 1000, 10, 3, 2

    reg = Registry()
    cs = ProcessProbe(fd_budget=Budget())

    reg.add(ConnStats('a "quoted"\\name\n', lambda: (1, 2, 3)))
    families = {f.name: f for f in text_string_to_metric_families(render(reg.snapshot(cs.read())))}
    assert families["gofer9p_fd_budget_limit"].samples[0].value == 1000
    assert families["gofer9p_fd_budget_reclaims"].samples[0].value == 3
    assert families["gofer9p_connection_host_fds"].samples[0].labels == {
        "connection": 'a "quoted"\\name\n'
    }
    # no request yet: the families are there, empty
    assert families["gofer9p_request_latency_seconds"].samples == []


# ---------------------------------------------------------------- the endpoint


@asynccontextmanager
async def endpoint(tmp_path: Path, reg: Registry) -> AsyncIterator[str]:
    path = str(tmp_path / "stats.sock")
    ep = control.StatsEndpoint(control.bind_unix(path), reg)
    async with control.running(ep):
        yield path


def _raw(path: str, request: bytes, timeout: float = 5) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)  # blocking: waits while the listen backlog is full
        s.settimeout(timeout)
        s.sendall(request)
        out = b""
        while data := s.recv(65536):
            out += data
        return out


async def test_endpoint_answers_metrics_and_json(
    connect_export: ConnectFn, tmp_path: Path
) -> None:
    reg = Registry()
    async with connect_export(config=ServerConfig(stats=reg)) as s, endpoint(tmp_path, reg) as path:
        await s.client.getattr(s.root)
        snap = await trio.to_thread.run_sync(fetch, f"unix:{path}")
        assert snap["ops"]["Tgetattr"]["count"] == 1
        assert snap["process"]["workers"]["limit"] > 0
        raw = await trio.to_thread.run_sync(_raw, path, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"Content-Type: application/openmetrics-text; version=1.0.0" in head
        assert f"Content-Length: {len(body)}".encode() in head
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "gofer9p_request_latency_seconds" in names
        for request, status in (
            (b"GET /nothing HTTP/1.0\r\n\r\n", b"404"),
            (b"POST /metrics HTTP/1.0\r\n\r\n", b"405"),
            (b"hello\n\n", b"400"),
            (b"GET / HTTP/1.0\r\n\r\n", b"200"),
        ):
            raw = await trio.to_thread.run_sync(_raw, path, request)
            assert raw.split()[1] == status, request
        text = table(snap)
        assert "Tgetattr" in text and "CONNECTION" in text


async def test_endpoint_bounds_hostile_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle clients hold a slot for CLIENT_TIMEOUT at most; a request past MAX_REQUEST
    is refused after that many bytes; the endpoint still answers afterwards."""
    monkeypatch.setattr(control, "CLIENT_TIMEOUT", 0.5)
    reg = Registry()
    async with endpoint(tmp_path, reg) as path:
        idle = []
        for _ in range(control.MAX_CLIENTS + 2):
            s = socket.socket(socket.AF_UNIX)
            await trio.to_thread.run_sync(s.connect, path)  # the backlog may be full
            idle.append(s)
        big = await trio.to_thread.run_sync(
            _raw, path, b"GET /metrics HTTP/1.0\r\nX: ".ljust(control.MAX_REQUEST, b"a")
        )
        assert big.split()[1] == b"431"  # no end of the request within the bound
        t = trio.current_time()
        snap = await trio.to_thread.run_sync(fetch, f"unix:{path}")
        assert snap["ops"] == {}
        assert trio.current_time() - t < 5
        for s in idle:  # each was closed by the endpoint (EOF)
            s.settimeout(5)
            assert await trio.to_thread.run_sync(s.recv, 10) == b""
            s.close()


async def test_endpoint_never_waits_on_its_sockets_through_trio(
    tmp_path: Path, connect_export: ConnectFn
) -> None:
    """A task waiting for an fd the quiet wait cannot see would take every connection
    off its one-syscall wait: the endpoint polls instead (trio counts no reader of it)."""
    reg = Registry()
    async with connect_export(config=ServerConfig(stats=reg)) as s:
        await s.client.getattr(s.root)
        await trio.testing.wait_all_tasks_blocked()
        before = trio.lowlevel.current_statistics().io_statistics.tasks_waiting_read
        async with endpoint(tmp_path, reg) as path:
            await trio.sleep(0.1)
            await trio.testing.wait_all_tasks_blocked()
            during = trio.lowlevel.current_statistics().io_statistics.tasks_waiting_read
            snap = await trio.to_thread.run_sync(fetch, f"unix:{path}")
        assert during == before
        assert snap["ops"]["Tgetattr"]["count"] == 1


def test_json_snapshot_round_trips() -> None:
    reg = Registry()
    snap: dict[str, Any] = reg.snapshot(ProcessProbe.open().read())
    assert json.loads(json.dumps(snap)) == snap
    assert snap["process"]["pid"] == os.getpid()
