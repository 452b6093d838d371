"""Code execution in the gofer through a late Python import after the chroot.

After ``chroot(rootfs)`` every path in ``sys.path`` and every package's ``__path__`` (the host's
``/usr/lib/python3.X``, the repo, site-packages) now names a directory *inside the
sandbox-writable rootfs*.  If the gofer imports a module it had not imported before the chroot,
Python looks for it there, and the sandbox, which can plant ``.py`` files at those paths, runs
code in the gofer.

The test plants mirrors of all those directories in the rootfs, each with an ``evil`` module and
watched with inotify (IN_OPEN on the directory = it was listed by an import, or a file in it was
opened).  A control run (a chrooted Python that imports a new module) proves the trap fires.
Then the real daemon is driven through every operation, error path and log line we can provoke;
nothing in the planted tree may be opened.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import gofer9p.daemon  # so that the daemon's packages are in sys.modules below
import gofer9p.server  # noqa: F401
from gofer9p.client import Client, P9Error, stream_from_socket
from gofer9p.protocol import constants as C

from .conftest import open_scanned_client
from .test_devices import OpenWatch

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot)")

EVIL = "open('/PWNED-BY-IMPORT', 'w').write('pwned')\n"


def _import_dirs() -> list[str]:
    """sys.path directories and every loaded package's __path__ (a superset of the daemon's)."""
    dirs = {p for p in sys.path if p and os.path.isdir(p)}
    dirs.add(str(REPO))
    for mod in list(sys.modules.values()):
        for p in getattr(mod, "__path__", None) or []:
            if isinstance(p, str) and os.path.isdir(p):
                dirs.add(p)
    return sorted(dirs)


def _plant(rootfs: Path, dirs: list[str]) -> list[Path]:
    planted = []
    for d in dirs:
        m = rootfs / d.lstrip("/")
        m.mkdir(parents=True, exist_ok=True)
        (m / "g9evilmod.py").write_text(EVIL)
        planted.append(m)
    return planted


def _frame(mtype: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", 7 + len(body), mtype, tag) + body


async def test_no_import_from_the_sandbox_root_after_chroot(tmp_path: Path) -> None:
    from gofer9p.launch import start_gofer

    dirs = _import_dirs()
    control = tmp_path / "control"
    _plant(control, dirs)
    r = subprocess.run(
        [sys.executable, "-c",
         "import os, sys\nos.chroot(sys.argv[1]); os.chdir('/')\nimport g9evilmod\n",
         str(control)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert (control / "PWNED-BY-IMPORT").exists(), f"control import did not fire: {r.stderr}"

    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    (rootfs / "hello.txt").write_text("hi\n")
    planted = _plant(rootfs, dirs)
    (bundle / "config.json").write_text(json.dumps(
        {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": False}, "mounts": []}
    ))
    watch = OpenWatch(*planted)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    logf = tmp_path / "gofer.log"
    log = open(logf, "wb")  # closed below
    gp = start_gofer(bundle, env=env, stderr=log, extra_args=["--log-level", "debug"])
    try:
        async with open_scanned_client(stream_from_socket(gp.sockets[0]), msize=1 << 20) as c:
            await _workload(c)
        gp.sockets[0].close()
        rc = gp.proc.wait(15)
    finally:
        if gp.proc.poll() is None:
            gp.proc.kill()
            gp.proc.wait()
        log.close()
        events = watch.events()
        watch.close()
    touched: dict[str, list[str]] = {}
    for p, name in events:
        touched.setdefault(str(p), []).append(name)
    text = logf.read_text(errors="replace")
    assert not (rootfs / "PWNED-BY-IMPORT").exists(), "sandbox code ran in the gofer"
    assert not touched, f"the gofer looked for modules in the sandbox root: {touched}"
    assert "imported after the chroot" not in text, text[-2000:]
    assert rc == 0, text[-2000:]


async def _workload(c: Client) -> None:
    """Every operation, many error paths, and log lines at every level the gofer has."""
    for uname in (b"root", b"no-such-user"):  # name lookups (the rootfs has no /etc/passwd)
        try:
            await c.attach(uname=uname, n_uname=C.NONUNAME)
        except P9Error:
            pass
    root = await c.attach(uname=b"root", n_uname=0)
    await c.getattr(root)
    await c.statfs(root)
    d, _ = await c.walk(root, [])
    await c.lcreate(d, b"f", C.L_O_RDWR | C.L_O_CREAT, 0o644)
    await c.write(d, 0, b"x" * 200_000)
    await c.read(d, 0, 200_000)
    await c.fsync(d)
    await c.lock(d, C.LOCK_TYPE_WRLCK)
    await c.getlock(d, C.LOCK_TYPE_RDLCK)
    await c.setattr(d, C.SETATTR_MODE | C.SETATTR_SIZE | C.SETATTR_ATIME | C.SETATTR_MTIME,
                    mode=0o600, size=10)
    await c.setxattr(d, b"user.k", b"v")
    assert await c.getxattr(d, b"user.k") == b"v"
    await c.getxattr(d, b"")
    await c.mkdir(root, b"dir")
    await c.symlink(root, b"sl", b"/etc/passwd")
    sl, _ = await c.walk(root, [b"sl"])
    await c.readlink(sl)
    await c.mknod(root, b"fifo", stat.S_IFIFO | 0o644)
    await c.renameat(root, b"f", root, b"g")
    g, _ = await c.walk(root, [b"g"])
    await c.rename(g, root, b"h")
    await c.link(root, g, b"h2")
    dirfid, _ = await c.walk(root, [])
    await c.lopen(dirfid, C.L_O_RDONLY | C.L_O_DIRECTORY)
    await c.readdir_all(dirfid)
    for coro in (c.walk(root, [b"nope"]), c.lopen(sl, 0), c.getattr(99999), c.unlinkat(root, b"dir", 0),
                 c.mkdir(root, b"dir"), c.walk(root, [b"a/b"]), c.xattrwalk(g, b"trusted.x")):
        try:
            await coro
        except P9Error as e:
            assert e.errno != errno.EIO, e  # an internal error would be a bug of its own
    await c.unlinkat(root, b"h2", 0)
    await c.remove(g)
    # server-level paths: unknown types, malformed body, flush, version reset, 9P2000.u
    for mtype in (112, 124, 6, 200):
        await c.send_frame(_frame(mtype, 700 + mtype % 100, b"\0\0\0\0"))
    await c.send_frame(_frame(C.MsgType.TWALK, 801, b"\x01\x00"))
    await c.flush(12345)
    await trio.sleep(0.2)
    await c.getattr(root)
    await c.version(65536)
    await c.attach(uname=b"root", n_uname=0)
