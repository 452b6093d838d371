"""Landlock on the real gofer (#15 item 4): the kernel refuses what gofer9p's own checks would.

``GOFER9P_TEST_BYPASS_READONLY`` (:mod:`gofer9p.testing.gofer_with_hooks`) marks every attach
point read-write after confinement, so the connection core's read-only policy lets a mutating
request reach the host: on a read-only root served under plain chroot (whose bind is not
read-only) only Landlock is left to refuse it.  With ``--landlock=off`` the same request
writes the file: the hook works, and the test would catch a Landlock that enforced nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Gofer, make_bundle
from .ninep import NineP

HOOKS = "gofer9p.testing.gofer_with_hooks"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path, root_readonly=True)


@pytest.fixture(params=["spawn", "pool", "fork"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _client(g: Gofer) -> NineP:
    c = NineP(g.sockets[0])
    c.version()
    c.attach(1)
    return c


def _create(c: NineP, name: bytes) -> int:
    """Tlcreate ``name`` in the root; 0 or the errno of the Rlerror."""
    c.walk(1, 2)
    try:
        c.lcreate(2, name)
    except OSError as e:
        return e.errno or -1
    finally:
        c.clunk(2)
    return 0


@pytest.mark.parametrize(("landlock", "want"), [("auto", errno.EACCES), ("off", 0)])
def test_kernel_refuses_a_write_that_bypasses_the_read_only_check(
    tmp_path: Path, bundle: Path, via: str, landlock: str, want: int
) -> None:
    g = Gofer(
        tmp_path,
        bundle,
        via=via,
        module=HOOKS,
        env={"GOFER9P_TEST_BYPASS_READONLY": "1"},
        landlock=landlock,
    )
    try:
        g.wait_log(r"serving bundle")
        c = _client(g)
        assert _create(c, b"planted") == want
        assert (bundle / "rootfs" / "planted").exists() == (want == 0)
        assert c.read_file(1, b"hello.txt") == b"hello from root\n"  # reads still work
    finally:
        g.stop()


def test_without_the_hook_the_read_only_check_answers_first(tmp_path: Path, bundle: Path) -> None:
    g = Gofer(tmp_path, bundle, landlock="require")
    try:
        g.wait_log(r"serving bundle .*, landlock ABI \d+ \(1 rules\)")
        assert _create(_client(g), b"planted") == errno.EROFS
    finally:
        g.stop()


@pytest.fixture
def rw_gofer(tmp_path: Path, via: str) -> Iterator[tuple[Gofer, Path]]:
    """A read-write root and a read-write 9P mount under --setup-root, Landlock required."""
    b = make_bundle(tmp_path, mounts=[("/data", "host-data", ["rbind"])])
    (b / "host-data").mkdir()
    g = Gofer(tmp_path, b, via=via, setup_root=True, landlock="require")
    yield g, b
    g.stop()


def test_read_write_points_keep_working_under_landlock(rw_gofer: tuple[Gofer, Path]) -> None:
    g, b = rw_gofer
    g.wait_log(r"landlock ABI \d+ \(2 rules\), pivoted root")
    root, data = (NineP(s) for s in g.sockets)
    for c in (root, data):
        c.version()
        c.attach(1)
    root.mkdir(1, b"d")
    root.write_file(1, (b"d",), b"f", b"in the root")
    data.write_file(1, (), b"g", b"in the mount")
    assert (b / "rootfs" / "d" / "f").read_bytes() == b"in the root"
    assert (b / "host-data" / "g").read_bytes() == b"in the mount"
