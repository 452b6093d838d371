"""``gofer9p serve --max-fids N``: the fids one connection may hold, lowered, never raised."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gofer9p.client import P9Error, open_client, stream_from_socket

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def test_serve_fd_max_fids_is_emfile_past_it(tmp_path: Path) -> None:
    """``serve --fd N --max-fids 3``: the attach and two walks; the next walk or attach is
    EMFILE, and a clunk makes room."""
    a, b = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofer9p", "serve", str(tmp_path), "--fd", str(a.fileno()),
         "--max-fids", "3"],
        pass_fds=(a.fileno(),), env=_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    a.close()
    try:
        async with open_client(stream_from_socket(b)) as c:
            root = await c.attach()
            f1, _ = await c.walk(root, [])
            await c.walk(root, [])
            for past in (c.walk(root, []), c.attach()):
                with pytest.raises(P9Error) as ei:
                    await past
                assert ei.value.errno == errno.EMFILE
            await c.clunk(f1)
            await c.getattr((await c.walk(root, []))[0])
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fd", "0", "--max-fids", "0"], "want 1 to 131072 fids"),
        (["--fd", "0", "--max-fids", "131073"], "want 1 to 131072 fids"),
        (["--listen", "unix:/nonexistent/s", "--max-fids", "16385"],
         "--max-fids 16385: at most 16384 with --listen"),
    ],
)  # fmt: skip
def test_serve_max_fids_out_of_range(tmp_path: Path, args: list[str], needle: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gofer9p", "serve", str(tmp_path), *args],
        env=_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr
