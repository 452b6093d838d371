"""``--setup-root`` (#15 item 3): the gofer's own mount namespace holds a tmpfs root and the
served binds, nothing of the host; a chroot escape that works under plain chroot finds nothing.

The escape is :mod:`gofer9p.testing.gofer_with_hooks`' ``GOFER9P_TEST_ESCAPE`` hook: a dup of
the root attach point's fd kept from before confinement, then ``chroot(sub)`` with the
CAP_SYS_CHROOT the gofer keeps, ``fchdir`` to the kept fd and ``..`` 64 times.  seccomp is the
layer that refuses chroot(2) (tests/daemon/test_confine.py); it is off here so the test
measures the mount layout alone (and Landlock off for the same reason, except where Landlock's
own answer is checked).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Gofer, make_bundle
from .ninep import NineP

MOUNTS = [
    ("/data", "host-data", ["rbind", "ro", "noexec"]),
    ("/etc/hosts", "host-hosts", ["bind", "ro"]),  # missing in the rootfs: made, as runc does
    ("/lnk/rw", "host-rw", ["rbind", "rw"]),  # through a symlink in the rootfs: /real/rw
]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    b = make_bundle(tmp_path, mounts=MOUNTS)
    (b / "host-data").mkdir()
    (b / "host-data" / "f").write_text("data\n")
    (b / "host-hosts").write_text("127.0.0.1 localhost\n")
    (b / "host-rw").mkdir()
    (b / "rootfs" / "real").mkdir()
    (b / "rootfs" / "lnk").symlink_to("real")
    (b / "rootfs" / "sub").mkdir()
    return b


def _mountinfo(text: str) -> list[tuple[str, str, str, str]]:
    """(root within its file system, mount point, per-mount options, fs type) per line."""
    out = []
    for line in text.splitlines():
        f = line.split()
        sep = f.index("-")
        out.append((f[3], f[4], f[5], f[sep + 1]))
    return out


_NS_VIEW = """
import ctypes, os, sys
proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
ns = os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY)
# setns(CLONE_NEWNS): our root and cwd become that namespace's root (os.setns: Python 3.12)
assert ctypes.CDLL(None, use_errno=True).setns(ns, 0x20000) == 0, ctypes.get_errno()
fd = os.open("self/mountinfo", os.O_RDONLY, dir_fd=proc)
sys.stdout.write(os.read(fd, 1 << 20).decode())
"""


def _namespace_view(pid: int) -> list[tuple[str, str, str, str]]:
    """The gofer's whole mount namespace, seen from its root (not from its chroot)."""
    r = subprocess.run(
        [sys.executable, "-c", _NS_VIEW, str(pid)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    return _mountinfo(r.stdout)


@pytest.fixture(params=["spawn", "pool", "fork"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gofer(tmp_path: Path, bundle: Path, via: str) -> Iterator[Gofer]:
    g = Gofer(tmp_path, bundle, via=via, setup_root=True, report_mounts=True)
    yield g
    g.stop()


def test_mountinfo_lists_only_the_tmpfs_root_and_the_served_binds(
    gofer: Gofer, bundle: Path
) -> None:
    gofer.wait_log(r"serving bundle .*pivoted root")
    # the gofer's own view (relative to its root, the rootfs): the served binds, nothing else
    with open(f"/proc/{gofer.pid}/mountinfo") as f:
        own = _mountinfo(f.read())
    assert [(src, at) for src, at, _, _ in own] == [
        (str(bundle / "rootfs"), "/"),
        (str(bundle / "host-data"), "/data"),
        (str(bundle / "host-hosts"), "/etc/hosts"),
        (str(bundle / "host-rw"), "/real/rw"),
    ]
    opts = {at: set(o.split(",")) for _, at, o, _ in own}
    for at in opts:
        assert {"nosuid", "nodev", "nosymfollow"} <= opts[at], (at, opts[at])
    assert {"ro", "noexec"} <= opts["/data"] and "ro" in opts["/etc/hosts"]
    assert "rw" in opts["/real/rw"] and "rw" in opts["/"]
    # the whole namespace: a read-only tmpfs at /, the rootfs at /root, the binds in it
    ns = _namespace_view(gofer.pid)
    assert [(at, fs) for _, at, _, fs in ns] == [
        ("/", "tmpfs"),
        ("/root", own[0][3]),
        ("/root/data", own[1][3]),
        ("/root/etc/hosts", own[2][3]),
        ("/root/real/rw", own[3][3]),
    ]
    assert "ro" in ns[0][2].split(",")
    # the mounts report names the same trees, and each socket serves its own
    assert [(m["destination"], m["source"], m["readonly"]) for m in gofer.gp.mounts()] == [
        ("/", str(bundle / "rootfs"), False),
        ("/data", str(bundle / "host-data"), True),
        ("/etc/hosts", str(bundle / "host-hosts"), True),
        ("/real/rw", str(bundle / "host-rw"), False),
    ]
    root, data, hosts, rw = (NineP(s) for s in gofer.sockets)
    for c in (root, data, hosts, rw):
        c.version()
        c.attach(1)
    assert root.read_file(1, b"hello.txt") == b"hello from root\n"
    assert root.read_file(1, b"data", b"f") == b"data\n"  # the bind, at its destination
    assert data.read_file(1, b"f") == b"data\n"
    assert hosts.read_file(1) == b"127.0.0.1 localhost\n"
    rw.write_file(1, (), b"new", b"through the bind")
    assert (bundle / "host-rw" / "new").read_bytes() == b"through the bind"


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """Root only (no mounts, so plain chroot needs no launcher), with a directory to chroot to."""
    b = make_bundle(tmp_path)
    (b / "rootfs" / "sub").mkdir()
    return b


def test_chroot_namespace_still_has_the_host_mounts(tmp_path: Path, plain: Path) -> None:
    """The control: without --setup-root the gofer's namespace is a copy of the host's."""
    g = Gofer(tmp_path, plain)
    try:
        g.wait_log(r"serving bundle")
        points = [at for _, at, _, _ in _namespace_view(g.pid)]
        assert "/proc" in points and str(plain / "rootfs") in points
    finally:
        g.stop()


@pytest.mark.parametrize(
    ("setup_root", "landlock"), [(False, "off"), (True, "off"), (False, "auto"), (True, "auto")]
)
def test_escape_with_a_kept_directory_fd(
    tmp_path: Path, plain: Path, setup_root: bool, landlock: str
) -> None:
    g = Gofer(
        tmp_path,
        plain,
        module="gofer9p.testing.gofer_with_hooks",
        env={"GOFER9P_TEST_ESCAPE": "sub"},
        seccomp="off",
        landlock=landlock,
        setup_root=setup_root,
    )
    try:
        g.wait_log(r"serving bundle")
        os.kill(g.pid, signal.SIGUSR1)
        got = g.wait_log(r"^hook: escape survived (.*)$").group(1)
    finally:
        g.stop()
    if landlock == "auto":  # wherever the climb ends, nothing there may be listed
        assert got == f"error {errno.errorcode[errno.EACCES]}"
    elif setup_root:
        assert got == 'reached ["root"]'  # the tmpfs root: the rootfs's mount point, no more
    else:  # plain chroot: the hook reached the host's own root directory
        assert got.startswith("reached ")
        assert json.loads(got[len("reached ") :]) == sorted(os.listdir("/"))


def test_setup_root_refuses_a_destination_outside_the_root(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, mounts=[("/out", "host", ["rbind"])])
    (bundle / "host").mkdir()
    (bundle / "rootfs" / "out").symlink_to("/../../..")
    g = Gofer(tmp_path, bundle, setup_root=True)
    try:
        assert g.wait() == 2
    finally:
        g.stop()
    line = "gofer9p gofer: error: attach point '/out' resolves outside the root"
    assert re.search(f"^{re.escape(line)}$", g.log(), re.M), g.log()
    assert sorted(os.listdir(bundle)) == ["config.json", "host", "rootfs"]


def test_nested_mounts_on_a_read_only_root(tmp_path: Path) -> None:
    """A mount inside another's destination lands in the bind the sandbox sees there (its
    mount point made in the outer mount's source); the read-only root takes only its own."""
    bundle = make_bundle(
        tmp_path,
        root_readonly=True,
        mounts=[("/data", "outer", ["rbind"]), ("/data/inner", "inner", ["rbind", "ro"])],
    )
    (bundle / "outer").mkdir()
    (bundle / "inner").mkdir()
    (bundle / "inner" / "f").write_text("inner\n")
    g = Gofer(tmp_path, bundle, setup_root=True, report_mounts=True)
    try:
        g.wait_log(r"serving bundle")
        assert [m["destination"] for m in g.gp.mounts()] == ["/", "/data", "/data/inner"]
        assert [at for _, at, _, _ in _namespace_view(g.pid)] == [
            "/", "/root", "/root/data", "/root/data/inner"
        ]
        root = NineP(g.sockets[0])
        root.version()
        root.attach(1)
        assert root.read_file(1, b"data", b"inner", b"f") == b"inner\n"
    finally:
        g.stop()
    assert (bundle / "outer" / "inner").is_dir()  # the mount point, in the outer source
    assert sorted(os.listdir(bundle / "rootfs")) == ["data", "hello.txt"]
