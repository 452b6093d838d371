"""Kernel pseudo file systems reachable inside the export: procfs, sysfs.

A sandbox cannot mount anything, but the tree it is given can contain such mounts: an ``rbind``
9P mount carries every submount of its source, and a host-prepared rootfs may have /proc or /sys
mounted.  Through them, files are not data but host kernel interfaces and other processes:
``/proc/sys/kernel/core_pattern`` (host code execution when written), ``/proc/<gofer pid>/mem``
(the gofer's own memory, read-write for root), ``/proc/<pid>/environ``, ``/sys/kernel/...``.
The gofer must not open files on these file systems for the sandbox (``statfs`` magic of the
opened fd: PROC_SUPER_MAGIC, SYSFS_MAGIC, ...), whatever the mount table looks like.

The tests only ever *read*, and open for writing only to see whether the gofer allows it: they
never write a byte to a pseudo file.

Setup: the gofer runs in its own private mount namespace (``unshare -m``) in which proc and sysfs
are mounted inside the export, so nothing is mounted on the host.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import decode, encode

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)"),
]


class Raw:
    """A blocking request/reply 9P client on a socket (one request at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(15)
        self.tag = 0
        self.fid = 10

    def rpc(self, msg: M.Message) -> M.Message:
        self.tag = (self.tag + 1) % 0xFFF0
        if not isinstance(msg, M.Tversion):
            msg.tag = self.tag  # type: ignore[misc]
        self.sock.sendall(encode(msg))
        hdr = self._exact(4)
        size = struct.unpack("<I", hdr)[0]
        return decode(hdr + self._exact(size - 4))

    def _exact(self, n: int) -> bytes:
        buf = b""
        for _ in range(1 << 16):
            if len(buf) >= n:
                break
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("gofer closed")
            buf += chunk
        return buf

    def walk(self, *names: bytes) -> int | None:
        """Full walk from the root fid 1 into a new fid, or None."""
        self.fid += 1
        r = self.rpc(M.Twalk(0, 1, self.fid, list(names)))
        if isinstance(r, M.Rwalk) and len(r.wqids) == len(names):
            return self.fid
        return None

    def open_read(self, names: tuple[bytes, ...], flags: int = C.L_O_RDONLY) -> str:
        """'unreachable', 'refused <errno>', or what a read of the opened file returned."""
        fid = self.walk(*names)
        if fid is None:
            return "unreachable"
        r = self.rpc(M.Tlopen(0, fid, flags))
        if isinstance(r, M.Rlerror):
            return f"refused {r.ecode}"
        if flags & C.L_O_ACCMODE != C.L_O_RDONLY:
            self.rpc(M.Tclunk(0, fid))
            return "OPENED FOR WRITING"
        r = self.rpc(M.Tread(0, fid, 0, 256))
        self.rpc(M.Tclunk(0, fid))
        if not isinstance(r, M.Rread):
            return f"opened, read failed {getattr(r, 'ecode', r)}"
        return "READ " + repr(bytes(r.data[:60]))


@pytest.fixture
def gofer_with_pseudo_fs(tmp_path: Path) -> Iterator[tuple[Raw, subprocess.Popen[bytes]]]:
    export = tmp_path / "export"
    (export / "proc").mkdir(parents=True)
    (export / "sys").mkdir()
    (export / "data").mkdir()
    a, b = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    script = (
        f"mount -t proc proc {export}/proc && mount -t sysfs sysfs {export}/sys && "
        f"exec {sys.executable} -m gofer9p serve {export} --fd {a.fileno()} --log-level warning"
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        pass_fds=(a.fileno(),), env=env,
    )
    a.close()
    c = Raw(b)
    try:
        assert isinstance(c.rpc(M.Tversion(C.NOTAG, 65536, C.VERSION_9P2000L)), M.Rversion)
        assert isinstance(c.rpc(M.Tattach(0, 1, C.NOFID, b"root", b"", 0)), M.Rattach)
        yield c, proc
    finally:
        b.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _gofer_pid(c: Raw, proc: subprocess.Popen[bytes]) -> bytes:
    """The gofer's pid as seen in its /proc (the sh exec'ed into python: same pid)."""
    return str(proc.pid).encode()


def test_procfs_inside_export_is_not_served(
    gofer_with_pseudo_fs: tuple[Raw, subprocess.Popen[bytes]],
) -> None:
    c, proc = gofer_with_pseudo_fs
    pid = _gofer_pid(c, proc)
    probes = {
        "proc/sys/kernel/core_pattern (read)": ((b"proc", b"sys", b"kernel", b"core_pattern"),
                                                C.L_O_RDONLY),
        "proc/sys/kernel/core_pattern (open rdwr)": ((b"proc", b"sys", b"kernel",
                                                      b"core_pattern"), C.L_O_RDWR),
        "proc/sysrq-trigger (open wronly)": ((b"proc", b"sysrq-trigger"), C.L_O_WRONLY),
        "proc/<gofer>/environ": ((b"proc", pid, b"environ"), C.L_O_RDONLY),
        "proc/<gofer>/maps": ((b"proc", pid, b"maps"), C.L_O_RDONLY),
        "proc/<gofer>/mem (open rdwr)": ((b"proc", pid, b"mem"), C.L_O_RDWR),
        "proc/1/cmdline": ((b"proc", b"1", b"cmdline"), C.L_O_RDONLY),
        "proc/kallsyms": ((b"proc", b"kallsyms"), C.L_O_RDONLY),
    }
    results = {name: c.open_read(names, flags) for name, (names, flags) in probes.items()}
    served = {k: v for k, v in results.items() if v.startswith(("READ", "OPENED", "opened"))}
    assert not served, "procfs files served to the sandbox:\n" + "\n".join(
        f"  {k}: {v}" for k, v in served.items()
    )


def test_sysfs_inside_export_is_not_served(
    gofer_with_pseudo_fs: tuple[Raw, subprocess.Popen[bytes]],
) -> None:
    c, _ = gofer_with_pseudo_fs
    probes = {
        "sys/kernel/uevent_helper (open rdwr)": ((b"sys", b"kernel", b"uevent_helper"),
                                                 C.L_O_RDWR),
        "sys/kernel/profiling": ((b"sys", b"kernel", b"profiling"), C.L_O_RDONLY),
        "sys/power/state": ((b"sys", b"power", b"state"), C.L_O_RDONLY),
    }
    results = {name: c.open_read(names, flags) for name, (names, flags) in probes.items()}
    served = {k: v for k, v in results.items() if v.startswith(("READ", "OPENED", "opened"))}
    assert not served, "sysfs files served to the sandbox:\n" + "\n".join(
        f"  {k}: {v}" for k, v in served.items()
    )


DAEMON_SCRIPT = r'''
import json, os, socket, struct, sys
sys.path.insert(0, sys.argv[3])
from gofer9p import launch, syscalls
from tests.escape.test_pseudo_fs import Raw
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M

bundle, src = sys.argv[1], sys.argv[2]
launch.enter_private_mount_namespace()
syscalls.mount("proc", os.path.join(src, "p"), "proc", 0)
syscalls.mount("sysfs", os.path.join(src, "s"), "sysfs", 0)
syscalls.mount("tmpfs", os.path.join(src, "t"), "tmpfs", 0)
gp = launch.start_gofer(bundle, setup_mounts=True, env=dict(os.environ),
                        stderr=open(os.devnull, "wb"))
out = {}
try:
    root, data = (Raw(s) for s in gp.sockets)
    for c in (root, data):
        assert isinstance(c.rpc(M.Tversion(C.NOTAG, 65536, C.VERSION_9P2000L)), M.Rversion)
        assert isinstance(c.rpc(M.Tattach(0, 1, C.NOFID, b"root", b"", 0)), M.Rattach)
    core = (b"p", b"sys", b"kernel", b"core_pattern")
    out["data: p/sys/kernel/core_pattern (read)"] = data.open_read(core)
    out["data: p/sys/kernel/core_pattern (open rdwr)"] = data.open_read(core, C.L_O_RDWR)
    out["root: data/p/sys/kernel/core_pattern (open rdwr)"] = root.open_read((b"data",) + core, C.L_O_RDWR)
    out["data: p/<gofer>/mem (open rdwr)"] = data.open_read((b"p", str(gp.pid).encode(), b"mem"), C.L_O_RDWR)
    out["data: p/1/environ"] = data.open_read((b"p", b"1", b"environ"))
    out["data: s/kernel/profiling"] = data.open_read((b"s", b"kernel", b"profiling"))
    # an ordinary submount (tmpfs) under the ro rbind mount, written through the rw root tree
    fid = root.walk(b"data", b"t")
    r = root.rpc(M.Tlcreate(0, fid, b"written-through-ro-mount", C.L_O_RDWR | C.L_O_CREAT, 0o644, 0))
    out["root: lcreate in data/t (tmpfs submount of the ro rbind)"] = (
        f"refused {r.ecode}" if isinstance(r, M.Rlerror) else "CREATED")
finally:
    print(json.dumps(out))
    sys.stdout.flush()
    gp.stop()
'''


@pytest.fixture(scope="module")
def daemon_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One confined gofer whose ``/data`` is an ``rbind,ro,nodev,nosuid`` mount of a source that
    has proc, sysfs and tmpfs submounts (mounted in the launcher's private namespace)."""
    import json

    tmp_path = tmp_path_factory.mktemp("pseudo")
    src = tmp_path / "src"
    for d in ("p", "s", "t"):
        (src / d).mkdir(parents=True)
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [{"destination": "/data", "type": "bind", "source": str(src),
                    "options": ["rbind", "ro", "nodev", "nosuid"]}],
    }))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-c", DAEMON_SCRIPT, str(bundle), str(src), str(REPO)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results: dict[str, str] = json.loads(r.stdout.strip().splitlines()[0])
    print(json.dumps(results, indent=1))
    return results


def test_pseudo_fs_under_an_rbind_mount_in_the_daemon(daemon_results: dict[str, str]) -> None:
    """The real path to this: a spec mount with ``rbind`` whose source has proc and sysfs
    submounts.  The launcher's bind carries them into the sandbox's tree."""
    served = {k: v for k, v in daemon_results.items()
              if "lcreate" not in k and v.startswith(("READ", "OPENED", "opened"))}
    assert not served, "pseudo-fs files served by the confined gofer:\n" + "\n".join(
        f"  {k}: {v}" for k, v in served.items()
    )


def test_ro_rbind_mount_is_read_only_in_its_submounts(daemon_results: dict[str, str]) -> None:
    """``ro`` on an ``rbind`` 9P mount must cover the submounts it carries (mount_setattr with
    AT_RECURSIVE, or a remount per submount); otherwise the sandbox writes them through the
    read-write root attach point's tree."""
    k = "root: lcreate in data/t (tmpfs submount of the ro rbind)"
    assert daemon_results[k] == "refused 30", f"{k}: {daemon_results[k]}"
