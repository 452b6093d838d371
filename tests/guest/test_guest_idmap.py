"""A mapped export through the Linux v9fs client: ``gofer9p serve --fd --map-uid --map-gid``.

One light boot (about 10-25 s under TCG): the guest creates files as root and as another uid,
chowns, and lists the export with ``ls -ln``; the listing must show the guest's ids, the host's
``os.lstat`` the mapped host ids.  The maps leave the guest's "nobody" (65534) unmapped on
purpose: the mount's first Tattach (NONUNAME, "nobody") must still succeed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from . import guestvm
from .conftest import HERE, _session_dir
from .servers import REPO, _env

MAPS = ["--map-uid", "0:100000:1000", "--map-uid", "1000:5000:10",
        "--map-gid", "0:200000:1000", "--map-gid", "1000:6000:10"]

WORKLOAD = """#!/bin/sh
R=/mnt/rw
out() { echo "$*" >&9; }
touch $R/byroot && mkdir $R/dirbyroot && ln -s byroot $R/linkbyroot && mknod $R/fifobyroot p \\
    || out "ERR create as root"
g9tool mkmode file $R/byuser 644 1003 1002 >/dev/null 2>&1 || out "ERR create as 1003:1002"
chown 1005:1001 $R/chowned || out "ERR chown 1005:1001"
if chown 3000 $R/chowned 2>/tmp/e; then out "ERR chown 3000 succeeded"; else out "EPERM $(cat /tmp/e)"; fi
ls -ln $R | while read -r line; do out "LS $line"; done
"""


def _serve(
    socks: Sequence[socket.socket], mounts: Sequence[guestvm.Mount], workdir: Path
) -> list[subprocess.Popen[bytes]]:
    (s,), (m,) = socks, mounts
    argv = [sys.executable, "-m", "gofer9p", "serve", "--fd", str(s.fileno()), *MAPS,
            str(m.export)]
    return [guestvm.spawn_with_fd(argv, [s.fileno()], workdir / "server0.log", cwd=REPO,
                                  env=_env())]


def test_ls_shows_guest_ids_of_a_mapped_export() -> None:
    reason = guestvm.unavailable_reason()
    if reason:
        pytest.skip(f"guest tier unavailable: {reason}")
    kernel = guestvm.find_kernel()
    assert kernel is not None
    workdir = _session_dir() / "gofer9p-serve-idmap"
    rw = workdir / "export-rw"
    rw.mkdir(parents=True)
    rw.chmod(0o777)  # the guest's uid 1003 creates here; the guest sees the root as 65534's
    for name, ids in (("chowned", (100000, 200000)), ("foreign", (4242, 4242))):
        (rw / name).write_bytes(b"x")
        os.chown(rw / name, *ids)
    env = "CACHE='none'\nMSIZE='262144'\nEXTRA_OPTS=''\n"
    initrd = workdir / "initrd.gz"
    guestvm.build_initramfs(initrd, kernel, (HERE / "init.sh").read_text(), {
        "workload.sh": WORKLOAD.encode(),
        "etc/guest.env": env.encode(),
        "etc/mounts.conf": b"0 /mnt/rw rw -\n",
    }, tools_dir=_session_dir().parent / "tools")
    run = guestvm.run_guest(workdir, kernel, initrd, [guestvm.Mount(rw, "/mnt/rw")], _serve,
                            timeout=120)
    why = f"workdir {workdir}\n{run.diagnostics()}"
    assert not run.timed_out and "DONE" in run.results, why
    assert run.server_rcs == [0], why
    assert [ln for ln in run.results if ln.startswith("ERR")] == [], why
    eperm = [ln for ln in run.results if ln.startswith("EPERM")]
    assert len(eperm) == 1 and "Operation not permitted" in eperm[0], why
    listed = {}
    for ln in run.results:
        if ln.startswith("LS ") and not ln.startswith("LS total"):
            f = ln.split()
            name = f[-3] if f[-2] == "->" else f[-1]
            listed[name] = (int(f[3]), int(f[4]))
    assert listed == {
        "byroot": (0, 0), "dirbyroot": (0, 0), "linkbyroot": (0, 0), "fifobyroot": (0, 0),
        "byuser": (1003, 1002), "chowned": (1005, 1001), "foreign": (65534, 65534),
    }, why
    host = {n: (os.lstat(rw / n).st_uid, os.lstat(rw / n).st_gid) for n in listed}
    assert host == {
        "byroot": (100000, 200000), "dirbyroot": (100000, 200000),
        "linkbyroot": (100000, 200000), "fifobyroot": (100000, 200000),
        "byuser": (5003, 6002), "chowned": (5005, 6001), "foreign": (4242, 4242),
    }, why
