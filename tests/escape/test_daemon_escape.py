"""Escapes against the real confined gofer, with the launcher's real bind mounts.

The launcher (``gofer9p.launch.start_gofer(setup_mounts=True)``) runs in a throwaway process in
a private mount namespace: it bind-mounts ``/data`` (read-only, nodev) and ``/rw`` into the
rootfs and spawns the chrooted, capability-dropped, seccomp-filtered gofer with one socket per
attach point (root, /data, /rw).  The same process then plays the hostile sandbox over the three
sockets and prints what every attack got back; this test checks those answers and the host.

What is attacked here and nowhere else: a read-only 9P mount reached through the *root* attach
point's tree (the kernel's ro bind must hold), ``..`` from a mount's root towards the rootfs,
rename across attach points, and device nodes under the daemon's real capability set.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import World, make_world

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, chroot)")

SCRIPT = r'''
import errno, json, os, socket, stat, struct, sys
from gofer9p import launch
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import decode, encode

bundle, outside_secret, disk_major, disk_minor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
launch.enter_private_mount_namespace()
env = dict(os.environ)
gp = launch.start_gofer(bundle, setup_mounts=True, env=env, stderr=open(sys.argv[5], "wb"))
out = {}

class C:
    def __init__(self, s):
        self.s = s
        s.settimeout(10)
        self.tag = 0
        self.fid = 100

    def rpc(self, msg):
        self.tag = (self.tag + 1) % 0xFFFF
        if not isinstance(msg, M.Tversion):
            msg.tag = self.tag
        self.s.sendall(encode(msg))
        hdr = b""
        while len(hdr) < 4:
            chunk = self.s.recv(4 - len(hdr))
            if not chunk:
                raise EOFError
            hdr += chunk
        size = struct.unpack("<I", hdr)[0]
        body = b""
        while len(body) < size - 4:
            chunk = self.s.recv(size - 4 - len(body))
            if not chunk:
                raise EOFError
            body += chunk
        r = decode(hdr + body)
        return r

    def try_(self, msg):
        r = self.rpc(msg)
        if isinstance(r, M.Rlerror):
            return errno.errorcode.get(r.ecode, str(r.ecode))
        return r

    def nf(self):
        self.fid += 1
        return self.fid

    def walk(self, fid, *names):
        n = self.nf()
        r = self.try_(M.Twalk(0, fid, n, list(names)))
        if isinstance(r, str):
            return r, None
        return [q.path for q in r.wqids], (n if len(r.wqids) == len(names) else None)

root, data, rw = (C(s) for s in gp.sockets)
for c in (root, data, rw):
    assert isinstance(c.rpc(M.Tversion(0xFFFF, 65536, b"9P2000.L")), M.Rversion)
    c.root_qid = c.rpc(M.Tattach(0, 1, 0xFFFFFFFF, b"root", b"", 0)).qid.path

def res(r):
    return r if isinstance(r, str) else "ok"

# 1. the read-only /data reached through the root attach point's tree
_, f = root.walk(1, b"data", b"f")
out["root:data/f:lopen-rdwr"] = res(root.try_(M.Tlopen(0, f, 2)))
_, f = root.walk(1, b"data", b"f")
out["root:data/f:lopen-trunc"] = res(root.try_(M.Tlopen(0, f, 0o1001)))
out["root:data/f:chmod"] = res(root.try_(M.Tsetattr(0, f, 1, 0o777, 0, 0, 0, 0, 0, 0, 0)))
out["root:data/f:truncate"] = res(root.try_(M.Tsetattr(0, f, 8, 0, 0, 0, 0, 0, 0, 0, 0)))
x = root.nf()
root.rpc(M.Twalk(0, f, x, []))
r = root.try_(M.Txattrcreate(0, x, b"user.pwn", 1, 0))
if not isinstance(r, str):
    root.try_(M.Twrite(0, x, 0, b"1"))
    r = root.try_(M.Tclunk(0, x))
out["root:data/f:setxattr"] = res(r)
_, d = root.walk(1, b"data")
out["root:data:lcreate"] = res(root.try_(M.Tlcreate(0, d, b"new", 0o102, 0o644, 0)))
_, d = root.walk(1, b"data")
out["root:data:mkdir"] = res(root.try_(M.Tmkdir(0, d, b"newdir", 0o755, 0)))
out["root:data:unlinkat"] = res(root.try_(M.Tunlinkat(0, d, b"f", 0)))
out["root:data:renameat-out"] = res(root.try_(M.Trenameat(0, d, b"f", 1, b"stolen")))
out["root:data:symlink"] = res(root.try_(M.Tsymlink(0, d, b"sl", b"/", 0)))

# 2. the read-write /rw through the root tree: renames across the mount boundary
_, d = root.walk(1, b"rw")
out["root:rw:renameat-into-root"] = res(root.try_(M.Trenameat(0, d, b"g", 1, b"g-moved")))
_, g = root.walk(1, b"rw", b"g")
out["root:rw/g:rename-into-root"] = res(root.try_(M.Trename(0, g, 1, b"g-moved2")))
out["root:rw/g:link-into-root"] = res(root.try_(M.Tlink(0, 1, g, b"g-linked")))

# 3. ".." from each mount's root, and anames
for name, c in (("data", data), ("rw", rw)):
    qids, _ = c.walk(1, b"..")
    out[f"{name}:dotdot-is-root"] = qids == [c.root_qid]
    qids, fid = c.walk(1, b"..", b"hello.txt")
    out[f"{name}:dotdot-hello"] = "reached" if fid else "stopped"
    qids, fid = c.walk(1, b"..", b"..", b"..", b"data")
    out[f"{name}:dotdot-data"] = "reached" if fid else "stopped"
    r = c.try_(M.Tattach(0, c.nf(), 0xFFFFFFFF, b"root", b"../..", 0))
    out[f"{name}:aname-up"] = r if isinstance(r, str) else (r.qid.path == c.root_qid)
qids, _ = root.walk(1, b"..")
out["root:dotdot-is-root"] = qids == [root.root_qid]
qids, fid = root.walk(1, *([b".."] * 10), b"outside")
out["root:dotdot-outside"] = "reached" if fid else "stopped"

# 4. fids of one attach point mean nothing on another
_, hello = root.walk(1, b"hello.txt")
out["data:root-fid"] = res(data.try_(M.Tgetattr(0, hello, 0x7FF)))

# 5. host symlinks planted in the rootfs
for link in (b"abs-secret", b"rel-secret", b"abs-src"):
    _, fid = root.walk(1, link)
    out[f"root:{link.decode()}:lopen"] = res(root.try_(M.Tlopen(0, fid, 0)))
    qids, fid = root.walk(1, link, b"f")
    out[f"root:{link.decode()}:walk-through"] = "reached" if fid else "stopped"

# 6. device nodes under the daemon's capabilities
_, d = root.walk(1)
out["root:mknod-disk"] = res(root.try_(M.Tmknod(0, 1, b"disk", stat.S_IFBLK | 0o600, disk_major, disk_minor, 0)))
out["root:mknod-null"] = res(root.try_(M.Tmknod(0, 1, b"null", stat.S_IFCHR | 0o666, 1, 3, 0)))
_, fid = root.walk(1, b"planted-disk")
out["root:planted-disk:lopen"] = res(root.try_(M.Tlopen(0, fid, 0)))
r = root.try_(M.Tread(0, fid, 1024, 512))
out["root:planted-disk:read"] = r if isinstance(r, str) else ("DATA" if r.data else "empty")
out["alive"] = all(isinstance(c.try_(M.Tgetattr(0, 1, 0x7FF)), M.Rgetattr) for c in (root, data, rw))
print(json.dumps(out))
sys.stdout.flush()
out_rc = gp.stop()
print(json.dumps({"rc": out_rc}))
'''


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _bundle(w: World) -> tuple[Path, Path, Path]:
    """rootfs, /data and /rw sources all live under the world's export (legitimately reachable);
    the world's ``outside`` is what must stay untouched."""
    bundle = w.export / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    (rootfs / "hello.txt").write_bytes(b"hello from root\n")
    src_ro = w.export / "src-ro"
    src_rw = w.export / "src-rw"
    src_ro.mkdir()
    src_rw.mkdir()
    (src_ro / "f").write_bytes(b"read-only mount file\n")
    (src_rw / "g").write_bytes(b"read-write mount file\n")
    (rootfs / "abs-secret").symlink_to(w.secret)
    (rootfs / "rel-secret").symlink_to("../../../outside/secret")
    (rootfs / "abs-src").symlink_to(src_ro)
    st = os.stat(w.export)
    os.mknod(rootfs / "planted-disk", stat.S_IFBLK | 0o600, st.st_dev)
    doc: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": str(src_ro),
             "options": ["rbind", "ro", "nodev", "nosuid"]},
            {"destination": "/rw", "type": "bind", "source": str(src_rw), "options": ["rbind"]},
        ],
    }
    (bundle / "config.json").write_text(json.dumps(doc))
    return bundle, src_ro, src_rw


def test_confined_gofer_with_bind_mounts(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    bundle, src_ro, src_rw = _bundle(w)
    before = (_sha(src_ro / "f"), os.stat(src_ro / "f").st_mode, sorted(os.listdir(src_ro)))
    w.age_and_freeze()
    st = os.stat(w.export)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    log = tmp_path.parent / f"{tmp_path.name}-gofer.log"  # not beside the export
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), str(w.secret), str(os.major(st.st_dev)),
         str(os.minor(st.st_dev)), str(log)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    gofer_log = log.read_text(errors="replace") if log.exists() else ""
    assert r.returncode == 0, f"{r.stderr[-3000:]}\ngofer log:\n{gofer_log[-3000:]}"
    lines = r.stdout.strip().splitlines()
    out = json.loads(lines[0])
    print(json.dumps(out, indent=1))
    erofs = {"EROFS"}
    refused = {"EROFS", "EXDEV", "EPERM", "EACCES"}
    problems = []
    expect: dict[str, set[Any]] = {
        "root:data/f:lopen-rdwr": erofs,
        "root:data/f:lopen-trunc": erofs,
        "root:data/f:chmod": erofs,
        "root:data/f:truncate": erofs,
        "root:data/f:setxattr": erofs | {"EOPNOTSUPP", "EPERM"},
        "root:data:lcreate": erofs,
        "root:data:mkdir": erofs,
        "root:data:unlinkat": erofs,
        "root:data:renameat-out": refused,
        "root:data:symlink": erofs,
        "root:rw:renameat-into-root": {"EXDEV"},
        "root:rw/g:rename-into-root": {"EXDEV"},
        "root:rw/g:link-into-root": {"EXDEV"},
        "data:dotdot-is-root": {True},
        "rw:dotdot-is-root": {True},
        "root:dotdot-is-root": {True},
        "data:dotdot-hello": {"stopped"},
        "rw:dotdot-hello": {"stopped"},
        "data:dotdot-data": {"stopped"},
        "rw:dotdot-data": {"stopped"},
        "data:aname-up": {True, "ENOENT"},
        "rw:aname-up": {True, "ENOENT"},
        "root:dotdot-outside": {"stopped"},
        "data:root-fid": {"EBADF"},
        "root:abs-secret:lopen": {"ELOOP"},
        "root:rel-secret:lopen": {"ELOOP"},
        "root:abs-src:lopen": {"ELOOP"},
        "root:abs-secret:walk-through": {"stopped"},
        "root:rel-secret:walk-through": {"stopped"},
        "root:abs-src:walk-through": {"stopped"},
        "root:mknod-disk": {"EPERM"},
        "root:planted-disk:lopen": {"EPERM", "EACCES"},
        "root:planted-disk:read": {"EBADF", "EPERM", "EACCES"},
        "alive": {True},
    }
    for k, allowed in expect.items():
        if out.get(k) not in allowed:
            problems.append(f"{k}: got {out.get(k)!r}, expected one of {sorted(map(str, allowed))}")
    assert not problems, "\n".join(problems)
    assert (_sha(src_ro / "f"), os.stat(src_ro / "f").st_mode, sorted(os.listdir(src_ro))) == before
    assert sorted(os.listdir(src_rw)) == ["g"]
    w.assert_contained()
    log.unlink(missing_ok=True)
