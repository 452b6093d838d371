"""Code execution in the gofer through the sandbox's own root: glibc NSS after the chroot.

The gofer chroots into the sandbox-writable rootfs.  A Tattach by user *name* makes it look the
name up (``pwd.getpwnam``); if glibc first reads NSS configuration at that point, it reads the
sandbox's ``/etc/nsswitch.conf`` and dlopens ``libnss_<service>.so.2`` from the sandbox's
``/lib``: the sandbox runs code inside the gofer, with its capabilities and its host fds.

The planted module's constructor creates ``/PWNED-BY-NSS``.  A control run (a plain chrooted
Python doing the same lookup) proves the module really loads when nothing prevents it; the real
daemon must never open it: spawned, forked by a fork-server on request, or handed the request
as a pre-forked child (the forked ones make no lookup of their own before the chroot: they
inherit the fork-server's loaded NSS state, and this shows glibc keeps using it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gofer9p.client import P9Error, stream_from_socket
from gofer9p.protocol import constants as C
from tests.daemon.conftest import wait_for_idle_child

from .conftest import open_scanned_client
from .test_devices import OpenWatch

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot)"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the module"),
]

EVIL_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    int fd = open("/PWNED-BY-NSS", O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) { write(fd, "pwned\n", 6); close(fd); }
}
int _nss_evil_getpwnam_r(const char *n, void *p, char *b, unsigned long l, int *e) { return 0; }
int _nss_evil_getpwuid_r(unsigned u, void *p, char *b, unsigned long l, int *e) { return 0; }
int _nss_evil_getgrnam_r(const char *n, void *g, char *b, unsigned long l, int *e) { return 0; }
int _nss_evil_getgrgid_r(unsigned g, void *p, char *b, unsigned long l, int *e) { return 0; }
"""

LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib", "lib",
            "lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"]


def _plant(rootfs: Path, so: Path) -> list[Path]:
    (rootfs / "etc").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "nsswitch.conf").write_text(
        "passwd: evil files\ngroup: evil files\nshadow: evil files\n"
    )
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    copies = []
    for d in LIB_DIRS:
        (rootfs / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(so, rootfs / d / "libnss_evil.so.2")
        copies.append(rootfs / d / "libnss_evil.so.2")
    return copies


def _build(tmp: Path) -> Path:
    src = tmp / "evil.c"
    src.write_text(EVIL_C)
    so = tmp / "libnss_evil.so.2"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True,
                   capture_output=True, timeout=60)
    return so


@pytest.mark.parametrize("via", ["spawn", "fork", "pool"])
async def test_sandbox_nss_module_never_loads_in_the_gofer(tmp_path: Path, via: str) -> None:
    from gofer9p.launch import ForkServer, start_gofer

    so = _build(tmp_path)
    # control: a naive chrooted lookup loads the sandbox's module
    control = tmp_path / "control"
    _plant(control, so)
    r = subprocess.run(
        [sys.executable, "-c",
         "import os, pwd, sys\nos.chroot(sys.argv[1]); os.chdir('/')\n"
         "try:\n    pwd.getpwnam('nobody-here')\nexcept KeyError:\n    pass\n",
         str(control)],
        capture_output=True, text=True, timeout=30,
    )
    if not (control / "PWNED-BY-NSS").exists():
        pytest.skip(f"the planted NSS module does not load here (control): {r.stderr[-500:]}")

    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    (rootfs / "hello.txt").write_text("hi\n")
    copies = _plant(rootfs, so)
    (bundle / "config.json").write_text(json.dumps(
        {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": False}, "mounts": []}
    ))
    watch = OpenWatch(*copies)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(tmp_path / "gofer.log", "wb")  # closed below
    fs = None
    if via == "spawn":
        gp = start_gofer(bundle, env=env, stderr=log)
    else:
        fs = ForkServer.start(env=env, prefork=1 if via == "pool" else 0)
        if via == "pool":
            wait_for_idle_child(fs)
        gp = fs.start_gofer(bundle, stderr=log)
    try:
        async with open_scanned_client(stream_from_socket(gp.sockets[0]), msize=65536) as c:
            for uname in (b"root", b"nobody-here", b"daemon", b"1000", b"evil"):
                try:
                    fid = await c.attach(uname=uname, n_uname=C.NONUNAME)
                except P9Error as e:
                    assert e.errno == errno.EINVAL, e
                    continue
                d, _ = await c.walk(fid, [])
                try:
                    await c.lcreate(d, b"made-by-" + uname, C.L_O_RDWR | C.L_O_CREAT, 0o644)
                except P9Error:
                    pass
            await c.getattr(await c.attach(uname=b"root", n_uname=0))
            await trio.sleep(0.1)
        gp.sockets[0].close()
        rc = gp.proc.wait(15)
    finally:
        if gp.proc.poll() is None:
            gp.proc.kill()
            gp.proc.wait()
        if fs is not None:
            fs.stop()
        log.close()
        events = watch.events()
        watch.close()
    opened = sorted({str(p) for p, _ in events})
    assert not (rootfs / "PWNED-BY-NSS").exists(), "the sandbox's NSS module ran inside the gofer"
    assert not opened, f"the gofer opened the sandbox's NSS module: {opened}"
    assert rc == 0, (tmp_path / "gofer.log").read_text(errors="replace")[-2000:]
