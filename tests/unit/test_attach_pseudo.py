"""Kernel pseudo file systems mounted inside an export are never served.

The mounts are made in a private mount namespace of a child process (``unshare -m``), which
drives a Session directly and prints what happened; nothing is mounted on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)"),
]

SCRIPT = r"""
import errno, json, os, subprocess, sys
sys.path.insert(0, sys.argv[2])
from gofer9p.attach import AttachPoint, Session
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Tattach, Tlopen, Twalk

export = sys.argv[1]
for d in ("proc", "sys", "bound", "sub"):
    os.mkdir(os.path.join(export, d))
subprocess.run(["mount", "-t", "proc", "proc", os.path.join(export, "proc")], check=True)
subprocess.run(["mount", "-t", "sysfs", "sysfs", os.path.join(export, "sys")], check=True)
subprocess.run(["mount", "--bind", "/proc", os.path.join(export, "bound")], check=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.path.join(export, "sub")], check=True)
open(os.path.join(export, "sub", "f"), "w").write("data")
out = {}
p = AttachPoint.open(export)
s = Session(p)
s.attach(Tattach(1, 0, C.NOFID, b"", b"", 0))

def walk(label, names):
    try:
        r = s.walk(Twalk(1, 0, 1, names))
        out[label] = "partial %d/%d" % (len(r.wqids), len(names)) if len(r.wqids) < len(names) else "walked"
        if len(r.wqids) == len(names):
            try:
                s.lopen(Tlopen(1, 1, 0))
                out[label] += ", opened"
            except OSError as e:
                out[label] += ", open " + errno.errorcode[e.errno]
            s.reset()
            s.attach(Tattach(1, 0, C.NOFID, b"", b"", 0))
    except OSError as e:
        out[label] = errno.errorcode[e.errno]

walk("proc", [b"proc"])
walk("proc/self/environ", [b"proc", b"self", b"environ"])
walk("sys/kernel", [b"sys", b"kernel"])
walk("bound/sys/kernel/core_pattern", [b"bound", b"sys", b"kernel", b"core_pattern"])
walk("sub/f", [b"sub", b"f"])
walk("sub/../proc", [b"sub", b"..", b"proc"])
try:
    AttachPoint.open(os.path.join(export, "proc"))
    out["attach point on proc"] = "opened"
except OSError as e:
    out["attach point on proc"] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


def test_pseudo_file_systems_are_not_walked_into(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT,
         str(export), str(REPO)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {
        "proc": "EACCES",
        "proc/self/environ": "EACCES",
        "sys/kernel": "EACCES",
        "bound/sys/kernel/core_pattern": "EACCES",
        "sub/f": "walked, opened",  # an ordinary file system mounted inside is served
        "sub/../proc": "partial 2/3",
        "attach point on proc": "EACCES",
    }, out


RO_BIND_SCRIPT = r"""
import errno, json, os, subprocess, sys
sys.path.insert(0, sys.argv[2])
from gofer9p.attach import AttachPoint, Session
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Tattach, Tlopen, Tsetattr, Twalk

export = sys.argv[1]
subprocess.run(["mount", "--bind", os.path.join(export, "src"), os.path.join(export, "ro")], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", os.path.join(export, "ro")], check=True)
out = {}
s = Session(AttachPoint.open(export))
s.attach(Tattach(1, 0, C.NOFID, b"", b"", 0))
fid = 1
def try_(label, names, flags):
    global fid
    fid += 1
    s.walk(Twalk(1, 0, fid, names))
    try:
        s.lopen(Tlopen(1, fid, flags))
        out[label] = "opened"
    except OSError as e:
        out[label] = errno.errorcode[e.errno]
try_("rwfile rdwr", [b"rwfile"], C.L_O_RDWR)  # caches a mount fd of the export's (rw) mount
try_("ro/f rdwr", [b"ro", b"f"], C.L_O_RDWR)
try_("ro/f rdonly", [b"ro", b"f"], C.L_O_RDONLY)
fid += 1
s.walk(Twalk(1, 0, fid, [b"ro", b"f"]))
try:
    s.setattr(Tsetattr(1, fid, C.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0))
    out["ro/f truncate"] = "truncated"
except OSError as e:
    out["ro/f truncate"] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


def test_reopen_keeps_the_mount_flags_of_a_ro_bind_mount(tmp_path: Path) -> None:
    """A read-only bind mount of the export's own file system (same st_dev) stays read-only
    when files under it are re-opened by file handle after a read-write one was."""
    export = tmp_path / "export"
    (export / "src").mkdir(parents=True)
    (export / "ro").mkdir()
    (export / "src" / "f").write_bytes(b"keep")
    (export / "rwfile").write_bytes(b"rw")
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", RO_BIND_SCRIPT,
         str(export), str(REPO)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {
        "rwfile rdwr": "opened",
        "ro/f rdwr": "EROFS",
        "ro/f rdonly": "opened",
        "ro/f truncate": "EROFS",
    }, out
    assert (export / "src" / "f").read_bytes() == b"keep"
