"""Daemon tier: the real gofer process (root only): bundles, spawning, /proc inspection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gofer9p.launch import ForkServer

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.daemon)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="daemon tests need root"))


@contextmanager
def client_beside(pid: int) -> Iterator[None]:
    """Pin the gofer ``pid`` and this process (its client) to two different CPUs for the block.

    The poll window turns itself off on a CPU that the gofer shares with its client
    (gofer9p/_quietwait.py), and an unpinned client is often woken on the gofer's CPU: a test
    of what the window catches needs the client beside the gofer."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("the poll window catches requests only with the client on another CPU")
    os.sched_setaffinity(pid, {cpus[1]})
    os.sched_setaffinity(0, {cpus[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def gofer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def make_bundle(
    tmp: Path,
    *,
    root_readonly: bool = False,
    mounts: Sequence[tuple[str, str, Sequence[str]]] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """A bundle at ``tmp/bundle`` with ``rootfs/`` holding ``hello.txt``; mounts are
    ``(destination, source, options)`` bind mounts (sources relative to the bundle)."""
    bundle = tmp / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    (rootfs / "hello.txt").write_text("hello from root\n")
    doc: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": root_readonly},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            *(
                {"destination": d, "type": "bind", "source": s, "options": list(o)}
                for d, s, o in mounts
            ),
        ],
    }
    doc.update(extra or {})
    (bundle / "config.json").write_text(json.dumps(doc))
    return bundle


def run_daemon(
    args: Sequence[str],
    *,
    pass_fds: Sequence[int] = (),
    module: str = "gofer9p.daemon",
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        pass_fds=pass_fds,
        env=gofer_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def proc_status(pid: int) -> dict[int, dict[str, str]]:
    """``/proc/<pid>/task/<tid>/status`` of every thread, parsed into ``{tid: {key: value}}``."""
    out: dict[int, dict[str, str]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                text = f.read()
        except FileNotFoundError:
            continue  # thread exited meanwhile
        fields = {}
        for line in text.splitlines():
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        out[int(tid)] = fields
    return out


_shared_forkservers: dict[int, ForkServer] = {}

#: The fork-server entry point that arms the same test hook as a spawned gofer's module.
_FORK_MODULES = {
    "gofer9p.daemon": "gofer9p.forkserver",
    "gofer9p.testing.gofer_with_hooks": "gofer9p.testing.forkserver_with_hooks",
}
#: ``via``: how a :class:`Gofer` starts; for a fork-server, how many children it pre-forks.
VIA_PREFORK = {"pool": 1, "fork": 0}


def shared_forkserver(prefork: int) -> ForkServer:
    """One fork-server (release entry point) per pool size for the session, started on use."""
    if prefork not in _shared_forkservers:
        from gofer9p.launch import ForkServer

        _shared_forkservers[prefork] = ForkServer.start(env=gofer_env(), prefork=prefork)
    return _shared_forkservers[prefork]


def pytest_sessionfinish() -> None:
    while _shared_forkservers:
        _shared_forkservers.popitem()[1].stop()


def is_pool_child(server: int, pid: int) -> bool:
    """Whether ``pid`` (a child of the fork-server ``server``) is a pre-forked child: not
    chrooted (a gofer is), and the server's own program.  A process the server runs (pyseccomp's
    ``ldconfig -p`` at import) is a child with root ``/`` too, for a moment: taking it for the
    pool child made test_prefork_pool_under_a_low_fd_limit fail under load."""
    try:
        return os.readlink(f"/proc/{pid}/root") == "/" and os.readlink(
            f"/proc/{pid}/exe"
        ) == os.readlink(f"/proc/{server}/exe")
    except OSError:
        return False


def wait_for_idle_child(fs: ForkServer, timeout: float = 15) -> None:
    """Until the fork-server has a pre-forked child (alive, not chrooted) waiting."""
    assert fs.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                if int(fields[1]) == fs.proc.pid and fields[0] != "Z":
                    if is_pool_child(fs.proc.pid, int(name)):
                        return
            except OSError:
                continue
        assert time.monotonic() < deadline, "the fork-server pre-forked no child"
        time.sleep(0.01)


class Gofer:
    """A gofer started with ``launch.start_gofer`` (``via="spawn"``) or through a fork-server:
    ``via="pool"`` hands the request to a pre-forked child (waiting until there is one),
    ``via="fork"`` forks on request; the shared fork-server, or one of its own when
    ``module``/``env`` arm a test hook.  Its stderr is captured to a file."""

    def __init__(self, tmp: Path, bundle: Path, *, via: str = "spawn", **kw: Any) -> None:
        from gofer9p.launch import ForkServer, start_gofer

        self.log_path = tmp / f"gofer-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.forkserver: ForkServer | None = None
        env = gofer_env()
        env.update(kw.pop("env", {}))
        if via == "spawn":
            self.gp = start_gofer(bundle, env=env, stderr=self._log, **kw)
        else:
            prefork = VIA_PREFORK[via]
            module = kw.pop("module", "gofer9p.daemon")
            if module != "gofer9p.daemon" or env != gofer_env():
                self.forkserver = ForkServer.start(
                    module=_FORK_MODULES[module], env=env, prefork=prefork
                )
            fs = self.forkserver or shared_forkserver(prefork)
            if prefork:
                wait_for_idle_child(fs)
            self.gp = fs.start_gofer(bundle, stderr=self._log, **kw)
        self.proc = self.gp.proc
        self.pid = self.gp.pid
        self.sockets = self.gp.sockets

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log(), re.M)
            if m:
                return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} not logged; rc={self.proc.poll()}:\n{self.log()}"
                )
            time.sleep(0.02)

    def wait(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        rc = self.gp.stop()
        self._log.close()
        if self.forkserver is not None:
            self.forkserver.stop()
        return rc
