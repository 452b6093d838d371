"""``--spec-fd`` and ``--mounts-fd`` (#15 items 1-2) on the real gofer.

The spec comes from an fd the manager passed (a pipe here, a sealed memfd through the API),
never from ``bundle/config.json`` (the tests leave a *different* config.json there, which
must not be read); the gofer writes back what each io fd serves, destinations resolved
inside the root (symlinks included), and that list must match what each socket serves.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, Gofer, gofer_env, make_bundle, run_daemon
from .ninep import NineP


def _doc(root: str = "rootfs", mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"ociVersion": "1.0.2", "root": {"path": root}, "mounts": mounts or []}


def _bind(dest: str, source: str, *opts: str) -> dict[str, Any]:
    return {"destination": dest, "type": "bind", "source": source, "options": ["rbind", *opts]}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A rootfs holding the mount points (no launcher here), two sources, and a config.json
    the gofer must ignore when it gets ``--spec-fd`` (its root does not exist)."""
    b = make_bundle(tmp_path)
    (b / "config.json").write_text(json.dumps(_doc(root="no-such-rootfs")))
    root = b / "rootfs"
    (root / "srv" / "data").mkdir(parents=True)
    (root / "srv" / "data" / "which").write_text("rootfs srv/data\n")
    (root / "data").symlink_to("srv/data")  # resolved inside the root: /srv/data
    (root / "etc").mkdir()
    (root / "etc" / "conf").symlink_to("/srv/data")  # absolute: from the sandbox's root
    return b


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def test_spec_read_from_a_pipe_fd(bundle: Path) -> None:
    """The CLI: the spec on a pipe; the bundle's own config.json (a bad root) is not read."""
    spec_r = _pipe_with(json.dumps(_doc()).encode())
    a, b = socket.socketpair()
    with a:
        argv = ["--bundle", str(bundle), "--io-fds", str(b.fileno()), "--spec-fd", str(spec_r)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gofer9p.daemon", *argv],
            pass_fds=[b.fileno(), spec_r],
            env=gofer_env(),
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        b.close()
        os.close(spec_r)
        c = NineP(a)
        c.version()
        c.attach(1)
        assert c.read_file(1, b"hello.txt") == b"hello from root\n"
    assert proc.wait(30) == 0  # a closed: every connection ended
    assert proc.stderr is not None
    assert "serving bundle" in proc.stderr.read()


def test_without_spec_fd_the_bundle_config_is_read(bundle: Path) -> None:
    """The control for the test above: the same daemon reading config.json fails."""
    a, b = socket.socketpair()
    with a, b:
        r = run_daemon(
            ["--bundle", str(bundle), "--io-fds", str(b.fileno())], pass_fds=[b.fileno()]
        )
    assert r.returncode == 2
    assert "no-such-rootfs" in r.stderr


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"{not json", "the spec on fd"),
        (b'{"root": {"path": "rootfs"}}' + b" " * (4 << 20), "larger than"),
        (json.dumps(_doc(root="relative")).encode(), "root.path"),
    ],
)
def test_bad_spec_on_fd_is_one_line(bundle: Path, data: bytes, needle: str) -> None:
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # a writer, so a spec larger than the pipe can be offered whole
        os.close(r_fd)
        try:
            os.write(w_fd, data)
        finally:
            os._exit(0)
    os.close(w_fd)
    a, b = socket.socketpair()
    with a, b:
        argv = ["--bundle", str(bundle), "--io-fds", str(b.fileno()), "--spec-fd", str(r_fd)]
        r = run_daemon(argv, pass_fds=[b.fileno(), r_fd])
    os.close(r_fd)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_spec_fd_must_be_open(bundle: Path) -> None:
    a, b = socket.socketpair()
    with a, b:
        argv = ["--bundle", str(bundle), "--io-fds", str(b.fileno()), "--spec-fd", "97"]
        r = run_daemon(argv, pass_fds=[b.fileno()])
    assert r.returncode == 2
    assert r.stderr.strip() == "gofer9p gofer: error: --spec-fd: fd 97 is not open"


MOUNTS = [_bind("/data", "host-a", "ro"), _bind("/etc/conf", "host-b")]


@pytest.fixture(params=["spawn", "pool", "fork"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gofer(tmp_path: Path, bundle: Path, via: str) -> Iterator[Gofer]:
    """Spec from the API (a sealed memfd), mounts reported; spawned or through a fork-server."""
    g = Gofer(tmp_path, bundle, via=via, spec=_doc(mounts=MOUNTS), report_mounts=True)
    yield g
    g.stop()


def test_mounts_json_matches_the_served_trees(gofer: Gofer, bundle: Path) -> None:
    got = gofer.gp.mounts()
    root = str(bundle / "rootfs")
    assert got == [
        {"index": 0, "fd": 3, "destination": "/", "source": root, "readonly": False},
        {
            "index": 1,
            "fd": 4,
            "destination": "/srv/data",
            "source": str(bundle / "host-a"),
            "readonly": True,
        },
        {
            "index": 2,
            "fd": 5,
            "destination": "/srv/data",
            "source": str(bundle / "host-b"),
            "readonly": False,
        },
    ]
    # Each socket serves what its entry says: the rootfs, and its resolved destination in it
    # (no launcher bound the sources here, so a mount's socket serves the rootfs's tree there).
    for entry, sock in zip(got, gofer.sockets, strict=True):
        c = NineP(sock)
        c.version()
        c.attach(1)
        if entry["destination"] == "/":
            assert c.read_file(1, b"hello.txt") == b"hello from root\n"
            assert c.read_file(1, b"srv", b"data", b"which") == b"rootfs srv/data\n"
        else:
            assert c.read_file(1, b"which") == b"rootfs srv/data\n"
    gofer.wait_log(r"serving bundle")


def test_mount_destination_symlinking_outside_the_root_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "outside").mkdir()
    (bundle / "rootfs" / "escape").symlink_to("../../outside")
    spec = json.dumps(_doc(mounts=[_bind("/escape", "host-a")])).encode()
    spec_r = _pipe_with(spec)
    mounts_r, mounts_w = os.pipe()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        fds = [b.fileno(), d.fileno(), spec_r, mounts_w]
        argv = ["--bundle", str(bundle), "--io-fds", f"{fds[0]},{fds[1]}"]
        argv += ["--spec-fd", str(spec_r), "--mounts-fd", str(mounts_w)]
        r = run_daemon(argv, pass_fds=fds)
    os.close(spec_r)
    os.close(mounts_w)
    with os.fdopen(mounts_r, "rb") as f:
        assert f.read() == b""  # nothing reported for a gofer that did not start
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "gofer9p gofer: error: attach point '/escape' resolves outside the root"
    ]
