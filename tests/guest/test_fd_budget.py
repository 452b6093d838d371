"""The host-fd budget under the Linux client (#14): ``ls -l`` and a read of every file of a large
directory with ``cache=loose``, against ``gofer9p serve`` and ``gofer9p gofer --fd-budget N``.

With ``cache=loose`` the client keeps a fid per cached dentry, so listing a directory of E
entries holds E fids on one connection; before #14 each held host fds, and a directory of a few
thousand entries got EMFILE (tests/guest/README.md).  Here the server runs with a budget far
below that; a thread samples the server processes' host fds (/proc/PID/fd) all along, and the
largest sample must not exceed the budget.

- Default (in the guest tier): the confined gofer (three attach points in one process), 2,500
  entries, ``--fd-budget 256``: before #14 its fd share gave EMFILE at ~2,200 entries on the CI
  VMs (hard RLIMIT_NOFILE 20,000); here the budget is what limits the fds, not the listing.
- By hand, both servers: ``GOFER9P_GUEST_FDBUDGET_ENTRIES=100000 GOFER9P_GUEST_FDBUDGET=4096
  python -m pytest -m guest tests/guest/test_fd_budget.py -rxXfs -s`` (TCG: about a
  millisecond per 9P round trip; the timeouts grow with the entries).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from . import guestvm
from .conftest import Combo, run_boot
from .servers import SERVERS

_BY_HAND = int(os.environ.get("GOFER9P_GUEST_FDBUDGET_ENTRIES", "0"))
#: (server, entries, budget) of each boot
RUNS = (
    [(s, _BY_HAND, int(os.environ.get("GOFER9P_GUEST_FDBUDGET", "4096")))
     for s in ("gofer9p-serve", "gofer9p-gofer")]
    if _BY_HAND
    else [("gofer9p-gofer", 2500, 256)]
)


def _populate(entries: int) -> Callable[[Path], None]:
    def populate(rw: Path) -> None:
        d = rw / "fdd"
        d.mkdir()
        for i in range(entries):
            (d / f"f{i:06d}").write_bytes(b"%06d\n" % i)

    return populate


class FdSampler:
    """Samples the host fds of the server processes every 50 ms until stopped."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for pid in list(self.pids):
                try:
                    n = len(os.listdir(f"/proc/{pid}/fd"))
                except OSError:
                    continue
                self.peak = max(self.peak, n)
                self.samples += 1

    def wrap(self, start: guestvm.ServerStarter) -> guestvm.ServerStarter:
        def started(
            socks: Sequence[socket.socket], mounts: Sequence[guestvm.Mount], workdir: Path
        ) -> list[subprocess.Popen[bytes]]:
            procs = start(socks, mounts, workdir)
            self.pids += [p.pid for p in procs]
            self._thread.start()
            return procs

        return started

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@pytest.mark.parametrize(("server", "entries", "budget"), RUNS)
def test_large_listing_within_the_fd_budget(server: str, entries: int, budget: int) -> None:
    srv = dataclasses.replace(SERVERS[server], extra_args=("--fd-budget", str(budget)))
    sampler = FdSampler()
    # ~3 round trips per entry listed (walk, getattr, clunk at unmount) and 4 per file read,
    # ~1 ms each under TCG (measured: 10,000 entries took 174-238 s of guest workload on a
    # loaded 2-core VM), plus the boot: the timeouts grow with the entries, with room.
    check_timeout = 120 + entries * 0.05
    try:
        boot = run_boot(
            Combo(server, "loose", big=False, many=False),
            f"fdbudget-{server}-{entries}",
            server=srv,
            env={
                "ONLY": "fd_budget_dir",
                "FDDIR": str(entries),
                "CHECK_TIMEOUT": str(int(check_timeout)),
            },
            populate=_populate(entries),
            start=sampler.wrap(srv.start),
            timeout=check_timeout + 300 + entries * 0.02,
        )
    finally:
        sampler.stop()
    run = boot.run
    print(
        f"\n{server}: {entries} entries, --fd-budget {budget}: {run.seconds:.0f} s, "
        f"host fds peak {sampler.peak} over {sampler.samples} samples"
    )
    assert not run.timed_out, f"timed out after {run.seconds:.0f}s\n{boot.diagnostics()}"
    status, detail = run.result_map().get("fd_budget_dir", ("missing", ""))
    assert status == "PASS", f"{status}: {detail}\n{boot.diagnostics()}"
    assert run.server_rcs and all(rc == 0 for rc in run.server_rcs), boot.diagnostics()
    assert sampler.samples > 0
    assert sampler.peak <= budget, f"host fds peaked at {sampler.peak} > {budget}"
