"""``gofer9p gofer --map-uid/--map-gid/--squash-ids``: the confined gofer (chroot, caps, seccomp
kill) started by ``start_gofer``/``ForkServer.start_gofer`` with ``map_uids``/``map_gids``/
``squash_ids``, checked byte by byte from outside (ninep.py) and on the host's files."""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, Gofer, gofer_env, make_bundle, run_daemon
from .ninep import O_RDWR, NineP
from .test_launch_cli import launch_rw

NONUNAME = 0xFFFFFFFF


@pytest.fixture(params=["spawn", "pool", "fork"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _bundle(tmp_path: Path) -> Path:
    b = make_bundle(tmp_path)
    etc = b / "rootfs" / "etc"
    etc.mkdir()
    # the sandbox's passwd: a user name attaches as its *guest* uid, which is then mapped
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n")
    return b


def _symlink(c: NineP, dfid: int, name: bytes, target: bytes, gid: int) -> None:
    c.rpc(16, struct.pack("<I", dfid) + c.s(name) + c.s(target) + struct.pack("<I", gid))


def _setattr_owner(c: NineP, fid: int, uid: int, gid: int) -> None:
    valid = 0x2 | 0x4  # UID | GID
    c.rpc(26, struct.pack("<IIIIIQQQQQ", fid, valid, 0, uid, gid, 0, 0, 0, 0, 0))


def test_mapped_gofer(tmp_path: Path, via: str) -> None:
    b = _bundle(tmp_path)
    root = b / "rootfs"
    g = Gofer(tmp_path, b, via=via, map_uids=[(0, 100000, 65536)],
              map_gids=[(0, 200000, 1000), (1000, 7000, 10)])
    try:
        g.wait_log(r"ids --map-uid 0:100000:65536 --map-gid 0:200000:1000 --map-gid 1000:7000:10")
        (c,) = [NineP(s) for s in g.sockets]
        c.version()
        c.attach(1, uname=b"bob", n_uname=NONUNAME)  # guest 1000 by the sandbox's passwd
        c.walk(1, 2)
        c.lcreate(2, b"made", O_RDWR, 0o644, gid=1003)
        c.mkdir(1, b"dir", 0o755, gid=5)
        _symlink(c, 1, b"link", b"made", 1009)
        for name, ids in ((b"made", (101000, 7003)), (b"dir", (101000, 200005)),
                          (b"link", (101000, 7009))):
            st = (root / name.decode()).lstat()
            assert (st.st_uid, st.st_gid) == ids, name
        c.walk(1, 3, b"made")
        a = c.getattr(3)
        assert (a["uid"], a["gid"]) == (1000, 1003)
        _setattr_owner(c, 3, 7, 1001)
        assert ((root / "made").stat().st_uid, (root / "made").stat().st_gid) == (100007, 7001)
        for uid, gid in ((70000, 0), (0, 1010)):  # one id outside every range: nothing changes
            with pytest.raises(OSError) as e:
                _setattr_owner(c, 3, uid, gid)
            assert e.value.errno == errno.EPERM
        assert ((root / "made").stat().st_uid, (root / "made").stat().st_gid) == (100007, 7001)
        with pytest.raises(OSError) as e:
            c.mkdir(1, b"bad", 0o755, gid=2000)
        assert e.value.errno == errno.EPERM
        # host ids no range holds (the root's, root:root) read as the overflow id
        a = c.getattr(1)
        assert (a["uid"], a["gid"]) == (65534, 65534)
        # an unmapped uid attaches (a mount's first attach) but creates nothing
        c.attach(4, uname=b"", n_uname=70000)
        with pytest.raises(OSError) as e:
            c.mkdir(4, b"nobody", 0o755, gid=0)
        assert e.value.errno == errno.EPERM
        assert not (root / "nobody").exists()
        assert g.proc.poll() is None
    finally:
        g.stop()


def test_squashed_gofer(tmp_path: Path, via: str) -> None:
    b = _bundle(tmp_path)
    root = b / "rootfs"
    g = Gofer(tmp_path, b, via=via, squash_ids=(4000, 4100))
    try:
        (c,) = [NineP(s) for s in g.sockets]
        c.version()
        c.attach(1, uname=b"bob", n_uname=NONUNAME)
        c.attach(2, uname=b"", n_uname=123456)
        c.mkdir(1, b"d1", 0o755, gid=1000)
        c.mkdir(2, b"d2", 0o755, gid=77)
        for name in ("d1", "d2"):
            st = (root / name).stat()
            assert (st.st_uid, st.st_gid) == (4000, 4100)
        c.walk(1, 3, b"hello.txt")
        _setattr_owner(c, 3, 0, 0)
        assert ((root / "hello.txt").stat().st_uid, (root / "hello.txt").stat().st_gid) == (
            4000, 4100)
        a = c.getattr(3)  # no map: the real host ids
        assert (a["uid"], a["gid"]) == (4000, 4100)
    finally:
        g.stop()


def test_overlapping_ranges_are_one_error_line(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    r = run_daemon(["--bundle", str(b), "--io-fds", "0", "--map-uid", "0:1000:100",
                    "--map-uid", "200:1050:1"])
    assert r.returncode == 2
    assert r.stderr == (
        "gofer9p gofer: error: argument --map-uid: --map-uid 0:1000:100 and --map-uid "
        "200:1050:1 overlap on the host side (ids 1050)\n")


def test_launch_cli_passes_the_maps(tmp_path: Path) -> None:
    """``gofer9p launch --map-uid ... --map-gid ...``: the launched gofer creates with the host
    owner and reports the guest's; overlapping ranges are a usage error."""
    with launch_rw(tmp_path, "--map-uid", "0:300000:1000", "--map-gid", "0:400000:1000") as (
            _, paths, src):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(paths["/srv/rw"])
        c = NineP(s)
        c.version()
        c.attach(1, uname=b"", n_uname=12)
        c.mkdir(1, b"d", 0o755, gid=34)
        st = (src / "d").stat()
        assert (st.st_uid, st.st_gid) == (300012, 400034)
        c.walk(1, 2, b"d")
        a = c.getattr(2)
        assert (a["uid"], a["gid"]) == (12, 34)
        s.close()
    r = subprocess.run(
        [sys.executable, "-m", "gofer9p", "launch", "--bundle", str(tmp_path / "bundle"),
         "--map-gid", "0:1:5", "--map-gid", "2:9:1"],
        cwd=REPO, env=gofer_env(), capture_output=True, text=True, timeout=20,
    )
    assert r.returncode == 2
    assert "--map-gid 0:1:5 and --map-gid 2:9:1 overlap on the guest side (ids 2)" in r.stderr


@pytest.mark.parametrize("where", ["--listen", "--fd"])
def test_serve_with_maps(tmp_path: Path, where: str) -> None:
    """``gofer9p serve DIR --listen|--fd ... --map-uid ... --map-gid ...``."""
    export = tmp_path / "export"
    export.mkdir()
    path = tmp_path / "p9.sock"
    ours, theirs = socket.socketpair()
    argv = [sys.executable, "-m", "gofer9p", "serve", str(export), "--map-uid", "0:300000:10",
            "--map-gid", "0:400000:10"]
    argv += ["--listen", f"unix:{path}"] if where == "--listen" else ["--fd", str(theirs.fileno())]
    proc = subprocess.Popen(argv, cwd=REPO, env=gofer_env(), pass_fds=[theirs.fileno()],
                            stderr=subprocess.PIPE)
    theirs.close()
    try:
        if where == "--listen":
            ours.close()
            ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            deadline = time.monotonic() + 15
            while not path.exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            ours.connect(str(path))
        c = NineP(ours)
        c.version()
        c.attach(1, uname=b"", n_uname=3)
        c.mkdir(1, b"d", 0o755, gid=4)
        st = (export / "d").stat()
        assert (st.st_uid, st.st_gid) == (300003, 400004)
        c.walk(1, 2, b"d")
        a = c.getattr(2)
        assert (a["uid"], a["gid"]) == (3, 4)
    finally:
        ours.close()
        if where == "--listen":
            proc.terminate()
        proc.wait(15)
