"""``gofer9p serve --stats unix:PATH`` (with --fd and --listen), ``gofer9p stats`` and
``gofer9p top --iterations N``: the real processes, the table they print."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from gofer9p.client import connect, open_client, stream_from_socket

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _gofer9p(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gofer9p", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, f"serve exited {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _op_row(table: str, op: str) -> list[str]:
    (row,) = [line.split() for line in table.splitlines() if line.startswith(op + " ")]
    return row


async def test_serve_fd_stats_and_top_print_the_table(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    stats = tmp_path / "stats.sock"
    a, b = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(export), "--fd", str(a.fileno()),
         "--stats", f"unix:{stats}"],
        pass_fds=[a.fileno()],
        env=_env(),
    )  # fmt: skip
    a.close()
    try:
        async with open_client(stream_from_socket(b)) as c:
            root = await c.attach()
            for _ in range(10):
                await c.getattr(root)
            _wait_for(stats, proc)
            # blocking here is fine: the server is another process and the client is idle
            out = _gofer9p("stats", f"unix:{stats}")
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines()[3].split()[:6] == [
                "OP", "COUNT", "OPS/S", "P50", "P99", "ERRORS"
            ]  # fmt: skip
            row = _op_row(out.stdout, "Tgetattr")
            assert row[1] == "10" and row[5] == "0"
            assert _op_row(out.stdout, "Tversion")[1] == "1"
            assert "CONNECTION" in out.stdout and "fd" in out.stdout
            top = _gofer9p("top", f"unix:{stats}", "--iterations", "2", "--delay", "0.1")
            assert top.returncode == 0, top.stderr
            assert "\x1b" not in top.stdout  # not a terminal: plain successive tables
            assert top.stdout.count("\nOP ") == 2
            assert top.stdout.count("since start") == 1 and top.stdout.count("over 0.") == 1
            # the second table covers the 0.1 s between them: no request, no percentile
            second = top.stdout.split("over 0.", 1)[1]
            assert _op_row(second, "Tgetattr")[2:5] == ["0.0", "-", "-"]
        assert proc.wait(timeout=30) == 0  # the endpoint ends with the connection
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_serve_listen_stats_json(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    stats = tmp_path / "stats.sock"
    listen = tmp_path / "9p.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(export), "--listen", f"unix:{listen}",
         "--stats", f"unix:{stats}", "--fd-budget", "777"],
        env=_env(),
    )  # fmt: skip
    try:
        _wait_for(listen, proc)
        _wait_for(stats, proc)
        for _ in range(2):
            async with connect(f"unix:{listen}") as c:
                await c.getattr(await c.attach())
        with trio.fail_after(30):
            while True:  # the second connection's end is counted once its task ends
                out = _gofer9p("stats", f"unix:{stats}", "--json")
                assert out.returncode == 0, out.stderr
                snap = json.loads(out.stdout)
                if snap["connections_ended"] == 2:
                    break
                await trio.sleep(0.05)
        assert snap["ops"]["Tgetattr"]["count"] == 2
        assert snap["ops"]["Tattach"]["count"] == 2
        assert snap["connections"] == []
        # the process's host-fd budget (#14) is published: --fd-budget's limit, none held now
        budget = snap["process"]["fd_budget"]
        assert budget is not None and budget["limit"] == 777 and budget["in_use"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_stats_reports_an_unreachable_endpoint(tmp_path: Path) -> None:
    out = _gofer9p("stats", f"unix:{tmp_path / 'nothing'}")
    assert out.returncode == 1
    assert out.stderr.startswith("gofer9p stats: unix:") and out.stdout == ""
