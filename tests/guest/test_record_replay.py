"""A recording of a real guest session (Linux v9fs through ``gofer9p serve --record``) replays
on a scratch export with the same replies (``python -m fuzz replay``, fuzz/recorded.py).

One light boot of its own (no 64 MiB file, no 10k-entry directory; a dozen workload checks:
data, truncation, the namespace, links, modes, times, xattrs), with cache=loose so the guest
pipelines: about 25-45 s under TCG.  Before the boot the rw export is copied: that copy is the
tree the recorded export started as, and the replay starts from it (``--export-from``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from .conftest import Combo, _guest_files, _prepare, _session_dir
from .guestvm import REPO, Mount, build_initramfs, find_kernel, run_guest, unavailable_reason
from .servers import SERVERS, _spawn_env

HERE = Path(__file__).resolve().parent
CHECKS = (
    "write_read append overwrite_middle truncate_shrink truncate_path ftruncate o_trunc "
    "mkdir_rmdir unlink enoent rename_same_dir rename_cross_dir rename_dir hardlink symlink "
    "chmod touch_date utimens_ns xattr ro_read"
)


def test_guest_session_recording_replays_with_the_same_replies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reason = unavailable_reason() or SERVERS["gofer9p-serve"].unavailable()
    if reason:
        pytest.skip(f"guest tier unavailable: {reason}")
    kernel = find_kernel()
    assert kernel is not None
    combo = Combo("gofer9p-serve", "loose", big=False, many=False)
    workdir = _session_dir() / "record-replay"
    mounts, rw, _, _ = _prepare(combo, workdir)
    start = workdir / "export-rw-start"  # what the recorded export started as
    shutil.rmtree(start, ignore_errors=True)
    subprocess.run(["cp", "-a", "--", str(rw), str(start)], check=True)
    rec = workdir / "rw.pcap"

    def start_servers(
        socks: Sequence[socket.socket], ms: Sequence[Mount], wd: Path
    ) -> list[subprocess.Popen[bytes]]:
        procs = []
        for i, (s, m) in enumerate(zip(socks, ms, strict=True)):
            argv = [sys.executable, "-m", "gofer9p", "serve", "--fd", str(s.fileno())]
            argv += ["--read-only"] if m.readonly else ["--record", str(rec)]
            procs.append(_spawn_env([*argv, str(m.export)], [s.fileno()], wd / f"server{i}.log"))
        return procs

    monkeypatch.setenv("GOFER9P_GUEST_ONLY", CHECKS)
    initrd = workdir / "initrd.gz"
    build_initramfs(
        initrd,
        kernel,
        (HERE / "init.sh").read_text(),
        _guest_files(combo, mounts, False, {}),
        tools_dir=_session_dir().parent / "tools",
    )
    run = run_guest(workdir, kernel, initrd, mounts, start_servers, timeout=300)
    results = run.result_map()
    failed = {k: v for k, v in results.items() if v[0] not in ("PASS", "SKIP")}
    assert "DONE" in run.results and not failed, f"{failed}\n{run.diagnostics()}"
    assert run.server_rcs == [0, 0], run.diagnostics()
    assert rec.stat().st_size > 10_000

    replay = [sys.executable, "-m", "fuzz", "replay", str(rec), "--timeout", "20"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run(
        [*replay, "--export-from", str(start)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the comparison is real: from a tree where the guest's first file already exists,
    # its create gets another reply
    other = workdir / "export-rw-other"
    shutil.rmtree(other, ignore_errors=True)
    subprocess.run(["cp", "-a", "--", str(start), str(other)], check=True)
    (other / "hello.txt").write_bytes(b"was there before\n")
    bad = subprocess.run(
        [*replay, "--export-from", str(other)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 1 and "first difference" in bad.stdout, bad.stdout + bad.stderr
