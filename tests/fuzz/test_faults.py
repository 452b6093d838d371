"""The fault-injecting target (``--target fault``, gofer9p.testing.faults): its schedule
is a function of the request, the harness's own connections see no fault, and the frame,
race and pressure fuzzers run clean against it (the bugs it found are fixed, with their
own tests in tests/unit/test_fault_paths.py)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz import frames, pressure, race  # noqa: E402
from fuzz.common import Report  # noqa: E402
from fuzz.targets import FaultTarget, Link, make_target  # noqa: E402
from fuzz.wire import Closed, Failure, RawConn, Transcript  # noqa: E402
from gofer9p.protocol import constants as C  # noqa: E402
from gofer9p.protocol import messages as M  # noqa: E402


def _session(conn: RawConn) -> list[str]:
    """A few requests; each reply's type (and errno) as text."""
    out: list[str] = []
    for m in (
        M.Tversion(tag=0, msize=65536, version=C.VERSION_9P2000L),
        M.Tattach(tag=0, fid=0, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0),
        M.Twalk(tag=0, fid=0, newfid=1, wnames=[]),
        M.Tlcreate(tag=0, fid=1, name=b"f", flags=2, mode=0o644, gid=0),
        M.Twrite(tag=0, fid=1, offset=0, data=b"x" * 100),
        M.Tgetattr(tag=0, fid=1, request_mask=0x3FFF),
        M.Tclunk(tag=0, fid=1),
    ):
        try:
            r = conn.rpc(m)
        except Closed:
            return [*out, "closed"]  # an injected socket error ended the connection
        out.append(f"{type(r).__name__}{getattr(r, 'ecode', '')}")
    return out


def test_faults_are_a_function_of_the_request_and_spare_the_harness() -> None:
    """The same frames fail the same calls on two connections (a finding replays); a quiet
    connection (liveness, the latency probe) sees none; the spec names the schedule."""
    with FaultTarget(seed=7, rate=0.15) as t:
        assert t.spec == "fault:7:0.15"
        runs = []
        for _ in range(2):
            link = t.open()
            assert link.faults
            runs.append(_session(RawConn(link.sock, Transcript(), faults=True)))
            link.sock.close()
            link.finish(5)
            t.reset_export()
        assert runs[0] == runs[1]
        assert any(r.startswith("Rlerror") for r in runs[0]), runs[0]
        quiet = t.open_quiet()
        assert not quiet.faults
        assert not any(r.startswith("Rlerror") for r in _session(RawConn(quiet.sock, Transcript())))
        quiet.sock.close()
        quiet.finish(5)
        assert sum(t.injected().values()) > 0
        assert t.problems() == []


def test_make_target_fault_specs() -> None:
    t = make_target("fault", seed=7)
    assert isinstance(t, FaultTarget) and t.spec == "fault:7:0.03"
    t = make_target("fault:9:0.25", seed=7)
    assert isinstance(t, FaultTarget) and t.spec == "fault:9:0.25"
    with pytest.raises(ValueError):
        make_target("fault:1:2:3")


@pytest.mark.skipif(os.geteuid() != 0, reason="the mount points need root")
def test_fault_target_mounts_a_256th_device_and_cleans_up() -> None:
    t = FaultTarget(seed=1)
    with t:
        assert [p.name for p in t.mounts] == list(FaultTarget.MOUNTED)
        assert all(os.path.ismount(p) for p in t.mounts)
        ro = [p.name for p in t.mounts if os.statvfs(p).f_flag & os.ST_RDONLY]
        assert ro == list(FaultTarget.READ_ONLY)
        tmp = t.export.parent if t.export is not None else None
    assert tmp is not None and not tmp.exists()


def test_fuzzers_run_clean_against_the_fault_target(tmp_path: Path) -> None:
    """A count-bounded run of each fuzzer the fault target is for: every reply valid, no
    crash, hang or fd left behind, with faults injected all along."""
    with FaultTarget(seed=11, rate=0.05) as t:
        report = Report(fuzzer="frames", target=t.spec, seed=11)
        frames.run(t, report, seed=11, time_budget=None, max_frames=1500, crash_dir=tmp_path)
        assert report.ok, report.summary()
        assert report.fd_growth is not None and report.fd_growth <= 0, report.summary()
        report = Report(fuzzer="race", target=t.spec, seed=12)
        race.run(t, report, seed=12, time_budget=None, max_cases=2, crash_dir=tmp_path)
        assert report.ok, report.summary()
        report = Report(fuzzer="pressure", target=t.spec, seed=13)
        pressure.run(t, report, seed=13, time_budget=None, max_cases=3, crash_dir=tmp_path)
        assert report.ok, report.summary()
        assert sum(t.injected().values()) > 100, t.injected()


@pytest.mark.parametrize("faults", [True, False])
def test_pressure_setup_request_on_a_closed_connection(faults: bool) -> None:
    """A set-up request of the pressure fuzzer whose connection the server ended (here
    before the request: EPIPE, as after an injected ECONNRESET or EPIPE on the server's
    socket) is a valid end where faults are injected (Closed: the case ends, no finding)
    and a finding elsewhere; never an exception out of the fuzzer (the fault target's
    pressure run raised ConnectionResetError from a set-up request that the schedule
    failed)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        link = Link(ours)
        link.faults = faults
        s = pressure._Sender(link, Transcript(), pressure.Outcome(), None, 0)
        theirs.close()
        tversion = M.Tversion(tag=C.NOTAG, msize=8192, version=C.VERSION_9P2000L)
        with pytest.raises(Failure) as e:
            s.rpc(tversion)
        assert isinstance(e.value, Closed) == faults, e.value
        assert faults or e.value.kind == "invariant"


def test_pressure_runs_clean_when_a_fault_ends_its_set_up() -> None:
    """The schedule (seed 115) ends the first case's connection during its set-up (seed 117):
    the case ends there, the run goes on, nothing is reported."""
    with FaultTarget(seed=115, rate=0.05) as t:
        report = Report(fuzzer="pressure", target=t.spec, seed=117)
        pressure.run(t, report, seed=117, time_budget=None, max_cases=1, crash_dir=None)
        assert report.ok, report.summary()
