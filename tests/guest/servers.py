"""The 9P servers the guest tier runs against, and how each is started on inherited fds.

Why a table: the same guest workload must run against diod (the reference: it tells us whether a
failure is the test's or the server's) and against gofer9p, both as ``gofer9p serve --fd`` (one
process per mount) and as the real ``gofer9p gofer`` daemon (one process, one fd per attach
point, chroot + caps + seccomp). Each server kind knows how to start itself and which checks it is
known to fail (diod has a few long-standing gaps; they are xfail there, never for gofer9p).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .guestvm import REPO, Mount, spawn_with_fd


def _env() -> dict[str, str]:
    """Environment for gofer9p children: the repo importable even when not pip-installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _ro_bind_wrapper(export: Path) -> list[str]:
    """argv prefix: run the rest in a private mount namespace where `export` is a ro bind mount.

    Used for servers that have no read-only switch of their own (diod's ``-o ro`` does not
    stop creates), so the read-only export is read-only on the host side instead.
    """
    script = (
        'mount --make-rprivate / && mount --bind "$1" "$1" && '
        'mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    )
    return ["unshare", "--mount", "sh", "-c", script, "sh", str(export)]


@functools.cache
def _help(*args: str) -> str | None:
    """``python -m gofer9p ARGS --help`` output, or None when it does not work (not written yet)."""
    try:
        p = subprocess.run(
            [sys.executable, "-m", "gofer9p", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            cwd=REPO,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


@dataclass(frozen=True)
class Server:
    """One kind of 9P server under test."""

    name: str
    #: checks this server is known to fail: name -> reason (xfail, non-strict).
    known_failures: dict[str, str] = field(default_factory=dict)
    #: the guest mounts the gofer's root attach point too (gofer daemon only).
    has_root: bool = False
    #: whether mknod of a device node must work (the confined gofer has no CAP_MKNOD).
    device_nodes: bool = True
    #: more command-line flags for the server (gofer9p only; e.g. --fd-budget N).
    extra_args: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this server cannot run here, or None."""
        raise NotImplementedError

    def aname(self, export: Path) -> str:
        """What the guest puts in Tattach's aname for this export."""
        return ""

    def mount_options(self) -> str:
        """Extra v9fs mount options this server needs (comma list, may be empty)."""
        return ""

    def start(
        self, socks: Sequence[socket.socket], mounts: Sequence[Mount], workdir: Path
    ) -> list[subprocess.Popen[bytes]]:
        """Start serving `socks` (one per mount, same order); return the processes."""
        raise NotImplementedError


@dataclass(frozen=True)
class Diod(Server):
    """diod on an inherited fd: ``diod -f -n -r FD -w FD -e EXPORT -L stderr``."""

    def unavailable(self) -> str | None:
        if shutil.which("diod") is None:
            return "diod not installed (apt-get install diod, or scripts/guest/setup.sh)"
        return None

    def aname(self, export: Path) -> str:
        return str(export)  # diod serves the export named by aname

    def mount_options(self) -> str:
        # With access=client the mount's first Tattach is uname "nobody"; diod then runs the
        # root's Tgetattr as uid 65534, which fails with EACCES whenever a directory above the
        # export is not searchable by others (a 077 umask, or "/" itself at 0700 as seen on a
        # shared CI VM). Attaching as root keeps the reference server independent of that.
        return "uname=root"

    def start(
        self, socks: Sequence[socket.socket], mounts: Sequence[Mount], workdir: Path
    ) -> list[subprocess.Popen[bytes]]:
        procs = []
        for i, (s, m) in enumerate(zip(socks, mounts, strict=True)):
            fd = s.fileno()
            argv = ["diod", "-f", "-n", "-r", str(fd), "-w", str(fd), "-e", str(m.export)]
            argv += ["-L", "stderr"]
            if m.readonly:
                argv = _ro_bind_wrapper(m.export) + argv
            procs.append(spawn_with_fd(argv, [fd], workdir / f"server{i}.log"))
        return procs


@dataclass(frozen=True)
class GoferServe(Server):
    """``gofer9p serve --fd FD [--read-only] EXPORT``: one process per mount."""

    def unavailable(self) -> str | None:
        h = _help("serve")
        if h is None or "--fd" not in h:
            return "`python -m gofer9p serve --fd` does not work yet (server not written?)"
        return None

    def start(
        self, socks: Sequence[socket.socket], mounts: Sequence[Mount], workdir: Path
    ) -> list[subprocess.Popen[bytes]]:
        h = _help("serve") or ""
        procs = []
        for i, (s, m) in enumerate(zip(socks, mounts, strict=True)):
            fd = s.fileno()
            argv = [sys.executable, "-m", "gofer9p", "serve", "--fd", str(fd), *self.extra_args]
            if m.readonly:
                if "--read-only" in h:
                    argv.append("--read-only")
                else:
                    argv = _ro_bind_wrapper(m.export) + argv
            argv.append(str(m.export))
            procs.append(_spawn_env(argv, [fd], workdir / f"server{i}.log"))
        return procs


def _spawn_env(argv: list[str], fds: list[int], log: Path) -> subprocess.Popen[bytes]:
    """spawn_with_fd with the repo on PYTHONPATH (gofer9p may not be pip-installed)."""
    return spawn_with_fd(argv, fds, log, cwd=REPO, env=_env())


#: Destinations of the bundle's two 9P mounts (and the guest mount points they get).
GOFER_RO_DEST = "/data-ro"
GOFER_RW_DEST = "/data-rw"


def write_bundle(bundle: Path, ro_src: Path, rw_src: Path) -> Path:
    """An OCI bundle: rw root "rootfs" + a ro and a rw bind mount. Returns the rootfs path."""
    rootfs = bundle / "rootfs"
    for d in (GOFER_RO_DEST, GOFER_RW_DEST):
        (rootfs / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    config = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": False},
        "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": GOFER_RO_DEST,
                "type": "bind",
                "source": str(ro_src),
                "options": ["ro", "rbind"],
            },
            {
                "destination": GOFER_RW_DEST,
                "type": "bind",
                "source": str(rw_src),
                "options": ["rbind", "rw"],
            },
        ],
    }
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return rootfs


@dataclass(frozen=True)
class GoferDaemon(Server):
    """``gofer9p gofer --bundle B --io-fds R --io-fds RO --io-fds RW``: the real daemon.

    Mounts are (root, ro, rw) in that order: the root attach point first, then the bundle's 9P
    mounts in spec order. The gofer serves its mounts from inside its chroot, so each source is
    bind-mounted onto rootfs/destination in a private mount namespace (``unshare --mount``)
    first, as a sandbox manager would. The ro bind is *not* remounted read-only: the gofer's own
    read-only policy is what the guest's EROFS checks test.
    """

    has_root: bool = True
    device_nodes: bool = False

    def unavailable(self) -> str | None:
        h = _help("gofer")
        if h is None or "--io-fds" not in h:
            return "`python -m gofer9p gofer --io-fds` does not work yet (daemon not written?)"
        if shutil.which("unshare") is None:
            return "unshare (util-linux) not found"
        return None

    def start(
        self, socks: Sequence[socket.socket], mounts: Sequence[Mount], workdir: Path
    ) -> list[subprocess.Popen[bytes]]:
        root, ro, rw = mounts
        bundle = root.export.parent
        fds = [s.fileno() for s in socks]
        gofer = [sys.executable, "-m", "gofer9p", "gofer", "--bundle", str(bundle)]
        gofer += self.extra_args
        for fd in fds:
            gofer += ["--io-fds", str(fd)]
        binds = " && ".join(
            f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(root.export / dst.lstrip('/')))}"
            for src, dst in ((ro.export, GOFER_RO_DEST), (rw.export, GOFER_RW_DEST))
        )
        script = f'mount --make-rprivate / && {binds} && exec "$@"'
        argv = ["unshare", "--mount", "sh", "-c", script, "sh", *gofer]
        return [_spawn_env(argv, fds, workdir / "server0.log")]


DIOD_KNOWN = {
    "fcntl_lock": "diod answers Tgetlock with EINVAL (diod_getlock), so F_GETLK fails",
}

SERVERS: dict[str, Server] = {
    "diod": Diod("diod", known_failures=DIOD_KNOWN),
    "gofer9p-serve": GoferServe("gofer9p-serve"),
    "gofer9p-gofer": GoferDaemon("gofer9p-gofer"),
}
