"""Guest tier fixtures: one qemu boot per (server, cache mode), shared by all tests of that combo.

Why one boot per combo: a TCG boot plus the workload takes tens of seconds to minutes, so the
guest runs every check in one go and reports ``RESULT`` lines; the tests then assert on those
lines (one test per guest check) and inspect the host export after the guest powered off (one
test per host-side check). A session-scoped, parametrized fixture gives exactly that grouping.

Everything skips with the reason when the tier cannot run here (no qemu, no cached kernel, ...):
``scripts/guest/setup.sh`` is the fix, and the skip message says so.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import guestvm
from .servers import SERVERS, Server, write_bundle

HERE = Path(__file__).resolve().parent

#: Content of the read-only export, checked in the guest (ro_read) and on the host afterwards.
RO_FILES = {"readme.txt": b"read-only export\n", "sub/nested.txt": b"nested\n"}


@dataclass(frozen=True)
class Combo:
    """One boot: a server kind, a v9fs cache mode, and whether the slow checks run."""

    server: str
    cache: str
    big: bool = True  # the 64 MiB file
    many: bool = True  # the 10k-entry directory

    @property
    def id(self) -> str:
        return f"{self.server}-{self.cache}"


#: Under TCG every 9P round trip costs about a millisecond of guest time, so the two slow checks
#: (64 MiB file ~20-50 s, 10k-entry listing ~80 s: a lookup per entry) run in one boot per
#: gofer9p server kind, and not against diod (they were validated against diod by hand: set
#: GOFER9P_GUEST_FULL=1 to run them in every boot). Everything else runs in every boot.
_FULL = os.environ.get("GOFER9P_GUEST_FULL", "") not in ("", "0")
COMBOS = [
    Combo("diod", "none", big=_FULL, many=_FULL),
    Combo("diod", "loose", big=_FULL, many=_FULL),
    Combo("gofer9p-serve", "none"),
    Combo("gofer9p-serve", "loose", big=_FULL, many=_FULL),
    # cache=mmap: read-write shared mappings go through the page cache, the rest is uncached
    # (the fsx check's mapped writes run here and with cache=loose).
    Combo("gofer9p-serve", "mmap", big=_FULL, many=_FULL),
    # The 10k-entry listing runs with cache=none here (a cache=loose listing of a large
    # directory under an fd budget is test_fd_budget.py's). See tests/guest/README.md.
    Combo("gofer9p-gofer", "loose", many=_FULL),
    Combo("gofer9p-gofer", "none", big=False),
]


@dataclass
class Boot:
    """A finished guest run and where its exports are on the host."""

    combo: Combo
    run: guestvm.GuestRun
    workdir: Path
    rw: Path
    ro: Path
    root: Path | None

    def known_failure(self, check: str) -> str | None:
        return SERVERS[self.combo.server].known_failures.get(check)

    def diagnostics(self) -> str:
        return f"workdir {self.workdir}\n{self.run.diagnostics()}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "guest: Linux v9fs client in a qemu guest (slow; run with -m guest)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            item.add_marker(pytest.mark.guest)


_TIMINGS: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how long each boot took: the tier's budget is what it is (TCG, 2 cores)."""
    if _TIMINGS:
        terminalreporter.section("guest boots")
        for cid, line in _TIMINGS.items():
            terminalreporter.write_line(f"{cid}: {line}")


@functools.cache
def _session_dir() -> Path:
    """This session's work dir under $GOFER9P_GUEST_WORKDIR (default /tmp/gofer9p-guest).

    Not pytest's tmp_path: other test sessions on the machine rotate those away, and the console
    logs and exports are what one reads after a failure. The newest few sessions are kept.
    """
    base = Path(os.environ.get("GOFER9P_GUEST_WORKDIR", "/tmp/gofer9p-guest"))
    base.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("run-"))
    for p in old[:-3]:
        shutil.rmtree(p, ignore_errors=True)
    d = base / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    d.mkdir()
    return d


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _prepare(combo: Combo, workdir: Path) -> tuple[list[guestvm.Mount], Path, Path, Path | None]:
    """Make fresh exports; return the guest mounts and the rw, ro (and gofer root) paths."""
    server = SERVERS[combo.server]
    ro = workdir / "export-ro"
    rw = workdir / "export-rw"
    for d in (ro, rw):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    if combo.many:
        # the 10k-entry directory the guest lists (see t_readdir_10k in workload.sh)
        many = rw / "many"
        many.mkdir()
        for i in range(1, 10001):
            (many / f"f{i:05d}").touch()
    # getattr_ns: times with nanoseconds set on the host, read back in the guest
    (rw / "host_ns.txt").write_bytes(b"ns\n")
    os.utime(rw / "host_ns.txt", ns=(1600000000_123456789, 1614834367_987654321))
    for name, data in RO_FILES.items():
        (ro / name).parent.mkdir(parents=True, exist_ok=True)
        (ro / name).write_bytes(data)
    if server.has_root:
        bundle = workdir / "bundle"
        if bundle.exists():
            shutil.rmtree(bundle)
        rootfs = write_bundle(bundle, ro, rw)
        mounts = [
            guestvm.Mount(rootfs, "/mnt/root"),
            guestvm.Mount(ro, "/mnt/ro", readonly=True),
            guestvm.Mount(rw, "/mnt/rw"),
        ]
        return mounts, rw, ro, rootfs
    mounts = [
        guestvm.Mount(rw, "/mnt/rw", aname=server.aname(rw)),
        guestvm.Mount(ro, "/mnt/ro", readonly=True, aname=server.aname(ro)),
    ]
    return mounts, rw, ro, None


def _guest_files(
    combo: Combo, mounts: list[guestvm.Mount], has_root: bool, extra: dict[str, str]
) -> dict[str, bytes]:
    check_timeout = int(_env_float("GOFER9P_GUEST_CHECK_TIMEOUT", 180))
    env = {
        "CACHE": combo.cache,
        "MSIZE": "262144",
        "EXTRA_OPTS": SERVERS[combo.server].mount_options(),
        "RW": "/mnt/rw",
        "RO": "/mnt/ro",
        "ROOT": "/mnt/root" if has_root else "",
        "BIG": "1" if combo.big else "0",
        "MANY": "1" if combo.many else "0",
        "CHECK_TIMEOUT": str(check_timeout),
        "DEVNODES": "1" if SERVERS[combo.server].device_nodes else "0",
        "ONLY": os.environ.get("GOFER9P_GUEST_ONLY", ""),
        **extra,
    }
    env_text = "".join(f"{k}='{v}'\n" for k, v in env.items())
    conf = "".join(
        f"{i} {m.mountpoint} {'ro' if m.readonly else 'rw'} {m.aname or '-'}\n"
        for i, m in enumerate(mounts)
    )
    return {
        "workload.sh": (HERE / "workload.sh").read_bytes(),
        "etc/guest.env": env_text.encode(),
        "etc/mounts.conf": conf.encode(),
    }


def run_boot(
    combo: Combo,
    name: str,
    *,
    server: Server | None = None,
    env: dict[str, str] | None = None,
    populate: Callable[[Path], None] | None = None,
    start: guestvm.ServerStarter | None = None,
    timeout: float | None = None,
) -> Boot:
    """Boot the guest once for ``combo`` in the work dir ``name`` and return the finished run
    (skips when the tier or the server cannot run here).  ``server`` replaces the combo's
    (e.g. with extra flags), ``env`` adds to the guest's environment, ``populate`` fills the
    read-write export before boot, ``start`` wraps the server's start (to watch its processes),
    ``timeout`` replaces GOFER9P_GUEST_TIMEOUT."""
    reason = guestvm.unavailable_reason()
    if reason:
        pytest.skip(f"guest tier unavailable: {reason}")
    server = server or SERVERS[combo.server]
    reason = server.unavailable()
    if reason:
        pytest.skip(f"{combo.server}: {reason}")
    kernel = guestvm.find_kernel()
    assert kernel is not None
    workdir = _session_dir() / name
    mounts, rw, ro, root = _prepare(combo, workdir)
    if populate is not None:
        populate(rw)
    initrd = workdir / "initrd.gz"
    guestvm.build_initramfs(
        initrd,
        kernel,
        (HERE / "init.sh").read_text(),
        _guest_files(combo, mounts, server.has_root, env or {}),
        tools_dir=_session_dir().parent / "tools",
    )
    if timeout is None:
        timeout = _env_float("GOFER9P_GUEST_TIMEOUT", 420)
    t0 = time.monotonic()
    run = guestvm.run_guest(workdir, kernel, initrd, mounts, start or server.start, timeout=timeout)
    wl = run.values().get("workload_seconds", "?")
    _TIMINGS[name] = f"{time.monotonic() - t0:.1f}s wall (guest workload {wl}s)" + (
        " TIMED OUT" if run.timed_out else ""
    )
    return Boot(combo, run, workdir, rw, ro, root)


@pytest.fixture(scope="session", params=COMBOS, ids=[c.id for c in COMBOS])
def boot(request: pytest.FixtureRequest) -> Iterator[Boot]:
    """Boot the guest once for this combo and hand the finished run to every test of it."""
    combo: Combo = request.param
    b = run_boot(combo, combo.id)
    yield b
    # Keep logs and small files for a post-mortem; drop the bulky parts.
    (b.rw / "big.bin").unlink(missing_ok=True)
    shutil.rmtree(b.rw / "many", ignore_errors=True)
