"""When a forked gofer says ``ok`` (#18): once what its request decides is done and checked,
before the rest of its confinement (``daemon.StartReport``); it still reads no client byte
before it is confined, and a request-dependent failure is still its one error line.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p.launch import ForkServer, LaunchError

from .conftest import REPO, gofer_env, make_bundle, proc_status
from .ninep import NineP

#: How long each gofer of the fork-server below sleeps at the end of its confinement.
_SLOW = 2.0


@pytest.fixture(params=[0, 1], ids=["fork", "pool"])
def slow_fs(request: pytest.FixtureRequest) -> Iterator[ForkServer]:
    """A fork-server whose gofers sleep ``_SLOW`` s once confined, before they serve (the
    ``after_confine`` hook, passed in code: no release entry point takes one)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    code = (
        "import sys, time; from gofer9p import forkserver; "
        f"sys.exit(forkserver.run(sys.argv[1:], after_confine=lambda: time.sleep({_SLOW})))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--fd", str(theirs.fileno()), f"--prefork={request.param}"],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
        env=gofer_env(),
        cwd=REPO,
    )
    theirs.close()
    fs = ForkServer(mine, proc)
    yield fs
    fs.stop()


def test_ok_comes_before_the_end_of_confinement(tmp_path: Path, slow_fs: ForkServer) -> None:
    """start_gofer returns before the gofer's confinement has ended (here: it sleeps at its
    end); a Tversion sent at once is answered only after it, by a confined gofer."""
    b = make_bundle(tmp_path)
    slow_fs.start_gofer(b).stop()  # the fork-server's first start (imports, pool)
    t0 = time.monotonic()
    gp = slow_fs.start_gofer(b)
    try:
        returned = time.monotonic() - t0
        assert returned < _SLOW * 0.75, returned
        c = NineP(gp.sockets[0])
        assert c.version() == (65536, b"9P2000.L")
        assert time.monotonic() - t0 >= _SLOW  # read once confined (the hook's sleep over)
        st = proc_status(gp.pid)[gp.pid]
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
    finally:
        assert gp.stop() == 0


def test_a_bad_mount_is_still_one_error_line(tmp_path: Path, slow_fs: ForkServer) -> None:
    """A bundle whose mount destination is missing in its root fails at the attach points,
    before ``ok``: ``LaunchError`` with the gofer's line."""
    b = make_bundle(tmp_path, mounts=[("/missing", "m", ["rbind"])])
    with pytest.raises(LaunchError) as ei:
        slow_fs.start_gofer(b)
    assert str(ei.value).startswith("gofer9p gofer: error: "), ei.value
    assert "/missing" in str(ei.value)
