"""Re-open by file handle and mount flags: a read-only bind mount on the same file system.

The gofer re-opens a fid's file with ``open_by_handle_at(mount_fd, handle)``.  The new open file
belongs to ``mount_fd``'s *mount*, so its read-only/nodev/noexec flags are that mount's, not the
flags of the mount the fid was walked through.  A read-only 9P bind mount (``/data``) whose
source is on the same file system as the rootfs has the same ``st_dev`` as the rootfs; if the
mount fd is chosen per device, a file under ``/data`` walked through the *root* attach point's
tree can be re-opened through the rootfs's read-write mount and written.

Two orders, each in a fresh confined gofer: rootfs file opened first (the cached mount fd is the
read-write one; then ``data/f`` for writing must still be EROFS) and ``data/f`` opened first
(then a rootfs file must still be writable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, chroot)")

SCRIPT = r'''
import json, os, sys
sys.path.insert(0, sys.argv[3])
from gofer9p import launch
from tests.escape.test_pseudo_fs import Raw
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M

bundle, order = sys.argv[1], sys.argv[2]
launch.enter_private_mount_namespace()
gp = launch.start_gofer(bundle, setup_mounts=True, env=dict(os.environ),
                        stderr=open(os.devnull, "wb"))
out = {}

def open_(c, names, flags, label):
    fid = c.walk(*names)
    r = c.rpc(M.Tlopen(0, fid, flags))
    if isinstance(r, M.Rlerror):
        out[label] = f"refused {r.ecode}"
        return
    out[label] = "opened"
    if flags & C.L_O_ACCMODE:
        w = c.rpc(M.Twrite(0, fid, 0, b"PWNED-THROUGH-RO-MOUNT"))
        out[label] = "opened, write " + ("failed %d" % w.ecode if isinstance(w, M.Rlerror) else "OK")
    c.rpc(M.Tclunk(0, fid))

try:
    root = Raw(gp.sockets[0])
    assert isinstance(root.rpc(M.Tversion(C.NOTAG, 65536, C.VERSION_9P2000L)), M.Rversion)
    assert isinstance(root.rpc(M.Tattach(0, 1, C.NOFID, b"root", b"", 0)), M.Rattach)
    if order == "rootfs-first":
        open_(root, (b"hello.txt",), C.L_O_RDWR, "rootfs hello.txt rdwr")
        open_(root, (b"data", b"f"), C.L_O_RDWR, "data/f rdwr")
    else:
        open_(root, (b"data", b"f"), C.L_O_RDONLY, "data/f rdonly")
        open_(root, (b"hello.txt",), C.L_O_RDWR, "rootfs hello.txt rdwr")
finally:
    print(json.dumps(out))
    sys.stdout.flush()
    gp.stop()
'''


def _run(tmp_path: Path, order: str) -> tuple[dict[str, str], Path, Path]:
    src = tmp_path / "src-ro"
    src.mkdir()
    (src / "f").write_bytes(b"read-only mount file\n")
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "rootfs" / "hello.txt").write_bytes(b"hello\n")
    assert os.stat(src).st_dev == os.stat(bundle / "rootfs").st_dev  # same file system
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [{"destination": "/data", "type": "bind", "source": str(src),
                    "options": ["rbind", "ro"]}],
    }))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), order, str(REPO)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[0]), src / "f", bundle / "rootfs" / "hello.txt"


def test_ro_bind_mount_stays_ro_after_a_rootfs_open(tmp_path: Path) -> None:
    out, ro_file, _ = _run(tmp_path, "rootfs-first")
    print(out)
    assert ro_file.read_bytes() == b"read-only mount file\n", (
        f"CRITICAL: the read-only /data mount was written through the root tree: {out}"
    )
    assert out["data/f rdwr"] == "refused 30", out


def test_rootfs_stays_writable_after_a_ro_mount_open(tmp_path: Path) -> None:
    out, _, hello = _run(tmp_path, "data-first")
    print(out)
    assert out["rootfs hello.txt rdwr"] == "opened, write OK", out
    assert hello.read_bytes().startswith(b"PWNED-THROUGH-RO-MOUNT")


SERVE_SCRIPT = (
    "mount --bind {src} {ro} && mount -o remount,bind,ro {ro} && "
    "exec {python} -m gofer9p serve {export} --fd {fd} --log-level warning"
)


@pytest.mark.parametrize("order", ["rw-file-first", "ro-file-first"])
def test_ro_bind_mount_inside_a_served_dir_stays_ro(tmp_path: Path, order: str) -> None:
    """``gofer9p serve DIR`` (no seccomp, so file handles are used): DIR holds a read-only bind
    mount ``ro`` of ``DIR/src`` (same file system).  Writing ``ro/f`` must fail with EROFS,
    also after a read-write file of DIR was re-opened (which caches DIR's writable mount)."""
    import shutil
    import socket

    from gofer9p.protocol import constants as C
    from gofer9p.protocol import messages as M

    from .test_pseudo_fs import Raw

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    export = tmp_path / "export"
    (export / "src").mkdir(parents=True)
    (export / "ro").mkdir()
    (export / "src" / "f").write_bytes(b"read-only through ro/\n")
    (export / "rwfile").write_bytes(b"rw\n")
    a, b = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    script = SERVE_SCRIPT.format(src=export / "src", ro=export / "ro", python=sys.executable,
                                 export=export, fd=a.fileno())
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            pass_fds=(a.fileno(),), env=env)
    a.close()
    results = {}
    try:
        c = Raw(b)
        assert isinstance(c.rpc(M.Tversion(C.NOTAG, 65536, C.VERSION_9P2000L)), M.Rversion)
        assert isinstance(c.rpc(M.Tattach(0, 1, C.NOFID, b"root", b"", 0)), M.Rattach)
        seq = [(b"rwfile",), (b"ro", b"f")]
        if order == "ro-file-first":
            seq.reverse()
        for names in seq:
            fid = c.walk(*names)
            assert fid is not None
            r = c.rpc(M.Tlopen(0, fid, C.L_O_RDWR))
            if isinstance(r, M.Rlerror):
                results[b"/".join(names).decode()] = f"refused {r.ecode}"
                continue
            w = c.rpc(M.Twrite(0, fid, 0, b"PWNED"))
            results[b"/".join(names).decode()] = "written" if isinstance(w, M.Rwrite) else "open"
    finally:
        b.close()
        proc.wait(10)
    assert (export / "src" / "f").read_bytes() == b"read-only through ro/\n", (
        f"the read-only bind mount was written: {results}"
    )
    assert results == {"rwfile": "written", "ro/f": "refused 30"}, results
