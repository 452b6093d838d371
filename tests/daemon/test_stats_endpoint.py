"""``gofer9p gofer --stats-fd N``: the statistics endpoint of the confined daemon (chroot,
capabilities dropped, seccomp in kill mode) on a listening socket its manager bound."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from .conftest import REPO, gofer_env, make_bundle, run_daemon
from .ninep import O_RDWR, NineP


def _get(path: Path, target: str) -> tuple[bytes, bytes]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.settimeout(15)
        s.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        out = b""
        while data := s.recv(65536):
            out += data
    head, _, body = out.partition(b"\r\n\r\n")
    return head, body


def test_stats_endpoint_in_the_confined_daemon(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    io, client = socket.socketpair()
    stats_path = tmp_path / "stats.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stats_path))
    listener.listen(4)
    log = tmp_path / "gofer.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gofer9p.daemon", "--bundle", str(bundle),
             "--io-fds", str(io.fileno()), "--stats-fd", str(listener.fileno()),
             "--seccomp", "kill"],
            pass_fds=[io.fileno(), listener.fileno()],
            env=gofer_env(),
            cwd=REPO,
            stderr=logf,
        )  # fmt: skip
    io.close()
    listener.close()
    try:
        deadline = time.monotonic() + 30
        while "serving bundle" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        assert "seccomp kill" in log.read_text()
        n = NineP(client)
        n.version()
        root = 1
        n.attach(root)
        for _ in range(3):
            n.getattr(root)
        assert n.read_file(root, b"hello.txt") == b"hello from root\n"
        n.walk(root, 2, b"hello.txt")
        n.lopen(2, O_RDWR)
        n.fsync(2)  # a worker thread's request, counted by the trio task
        n.clunk(2)

        head, body = _get(stats_path, "/metrics")
        assert head.startswith(b"HTTP/1.0 200 OK"), head
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        counts = {
            s.labels["op"]: s.value
            for s in families["gofer9p_request_latency_seconds"].samples
            if s.name.endswith("_count")
        }
        assert counts["Tgetattr"] == 3 and counts["Tversion"] == 1 and counts["Tattach"] == 1
        assert counts["Tread"] >= 1 and counts["Tfsync"] == 1
        # the process numbers work inside the chroot: /proc/self/status opened before it
        rss = families["gofer9p_process_resident_memory_bytes"].samples[0].value
        assert rss > 1 << 20
        assert families["gofer9p_process_threads"].samples[0].value >= 1

        head, body = _get(stats_path, "/json")
        snap = json.loads(body)
        assert snap["ops"]["Tgetattr"]["count"] == 3
        (conn,) = snap["connections"]
        assert conn["name"] == f"fd{conn['name'][2:]}" and conn["fids"] == 1
        assert proc.poll() is None  # no SIGSYS: accept4, pread64 ... are in the policy
        client.close()
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "imported after the chroot" not in text, text


def test_stats_fd_must_be_a_listening_unix_socket(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    io, _peer = socket.socketpair()
    other, _other_peer = socket.socketpair()  # connected, not listening
    r = run_daemon(
        ["--bundle", str(bundle), "--io-fds", str(io.fileno()), "--stats-fd", str(other.fileno())],
        pass_fds=[io.fileno(), other.fileno()],
    )
    assert r.returncode == 2
    assert re.fullmatch(
        rf"gofer9p gofer: error: --stats-fd: fd {other.fileno()} is not listening\n", r.stderr
    ), r.stderr
