"""pytest plugin: run the in-process suites against the real, confined gofer daemon.

    python -m pytest -p gofer9p.testing.daemon_plugin tests/integration tests/escape
    scripts/syscalls.sh -- python -m pytest -p gofer9p.testing.daemon_plugin tests/integration

The integration and escape suites serve an export in-process with ``gofer9p.server.serve``; this
plugin swaps that function (as imported by their conftest modules) for one that writes a
one-mount bundle for the same directory and runs ``python -m gofer9p.daemon`` on the same socket,
so every request goes through the chroot, the dropped capabilities and the seccomp whitelist.
A gofer killed by SIGSYS fails the test.  ``GOFER9P_DAEMON_SECCOMP=log|kill`` (default kill).

Expected differences (the confinement, not bugs): ``ServerConfig`` limits given by a test are
not passed on (the daemon uses its defaults), but for ``fd_budget`` (``--fd-budget``), a
``max_fids`` lowered below ``ServerConfig``'s default (``--max-fids``) and the id
map (``--map-uid``/... flags); device nodes cannot be created (no CAP_MKNOD);
user names resolve in the served root's /etc/passwd, not the host's.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

_exit_codes: collections.Counter[int] = collections.Counter()


async def daemon_serve(
    sock: socket.socket, point: Any, config: Any = None, *, name: str = ""
) -> None:
    """Drop-in for ``gofer9p.server.serve`` that serves through a confined daemon process."""
    import trio

    with tempfile.TemporaryDirectory(prefix="gofer9p-plugin-") as bundle:
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump({"root": {"path": point.path, "readonly": point.readonly}}, f)
        fd = sock.fileno()
        argv = [sys.executable, "-m", "gofer9p.daemon", "--bundle", bundle, "--io-fds", str(fd)]
        argv += ["--seccomp=" + os.environ.get("GOFER9P_DAEMON_SECCOMP", "kill")]
        argv += ["--log-level", "warning"]
        if point.panic_on_write:
            argv.append("--panic-on-write")
        idmap = getattr(config, "idmap", None)
        if idmap is not None:
            argv += idmap.describe().split()
        budget = getattr(config, "fd_budget", None)
        if budget is not None:  # the one limit passed on: the reclaim tests need the same budget
            argv += ["--fd-budget", str(budget.limit)]
        max_fids = getattr(config, "max_fids", None)
        if max_fids is not None and max_fids < type(config)().max_fids:  # a test's lower cap
            argv += ["--max-fids", str(max_fids)]
        proc = await trio.lowlevel.open_process(argv, pass_fds=[fd])
        try:
            rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    _exit_codes[rc] += 1
    if rc == -31:
        raise RuntimeError(f"{name}: the confined gofer was killed by SIGSYS (seccomp)")


@pytest.fixture(autouse=True)
def _serve_through_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for modname, mod in list(sys.modules.items()):
        if modname.endswith("conftest") and getattr(mod, "serve", None) is not None:
            monkeypatch.setattr(mod, "serve", daemon_serve)
    yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"gofer daemon exit codes: {dict(_exit_codes)}")
