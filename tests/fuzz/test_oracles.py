"""Each fuzz oracle shown to fire: a defect is planted, the harness finds, minimizes and replays it.

The defects live in :mod:`gofer9p.testing.plant` (never imported by the release code): a buffer
kept per request (memory oracle), an fd kept per Tlopen (fd oracle), a Treadlink that follows the link on the host (canary oracle of
the host-side agent), a syscall off the seccomp whitelist in the confined daemon (SIGSYS), an
exception in a handler (log oracle, crash buckets, in-process target), a handler that stalls the
event loop (latency oracle).  Each test also replays the saved finding against the same server
without the defect, where it must pass: ``replay`` says pass/fail, it does not just resend bytes.

The server processes here are real (``gofer9p serve``, the confined daemon); each test takes
under a minute on the 2-core CI machine (3 minutes for the module at load 2).  Every run here is bounded by a count
(examples, frames, cases), not by time, and each planted defect is reached within it whatever
the timing: what a test asserts must not depend on how loaded the machine is (a time budget
failed on a loaded CI machine more than once).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz import frames, pressure, race, stateful  # noqa: E402
from fuzz.common import Report, replay  # noqa: E402
from fuzz.targets import DaemonTarget, InprocTarget, ServeTarget  # noqa: E402
from fuzz.wire import Transcript  # noqa: E402

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the confined daemon needs root")


def _bucket_files(crash_dir: Path, prefix: str) -> list[Path]:
    return sorted(crash_dir.glob(f"{prefix}*.json"))


def _pressure_finding(
    tmp_path: Path, *, plant: str, scenario: str, size: int, bucket: str, says: str
) -> dict[str, Any]:
    """Run one pressure case of ``size`` against a server with ``plant``: it must be found
    (a leak whose message ``says``...), saved in ``bucket``, minimized (a smaller case), and
    replayed: failing with the defect, passing on a server without it.  Returns the .json."""
    report = Report(fuzzer="pressure", target="serve", seed=5)
    with ServeTarget(plant=plant) as t:
        pressure.run(
            t, report, seed=5, time_budget=None, max_cases=1, crash_dir=tmp_path,
            scenario=scenario, size=size,
        )
        assert report.leaks, report.summary()
        assert says in report.leaks[0]["message"]
        (meta_path,) = _bucket_files(tmp_path, f"pressure-{bucket}")
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        assert meta["case"]["n"] < size, "the finding was not minimized"
        assert meta["original_case"]["n"] == size
        t.restart()
        again = pressure.replay_case(meta_path, t)
        assert any(says in p for p in again), again
    with ServeTarget() as clean:
        assert pressure.replay_case(meta_path, clean) == []
    return meta


def test_memory_oracle_finds_a_buffer_kept_per_request(tmp_path: Path) -> None:
    meta = _pressure_finding(
        tmp_path, plant="leak", scenario="mix", size=4000,
        bucket="leak-mix-server-memory", says="server memory grew",
    )
    measured = meta["measured"]
    assert measured["growth_kb"] > measured["bound_kb"]


def test_fd_oracle_finds_an_fd_kept_per_open(tmp_path: Path) -> None:
    """A Tlopen that leaves a host fd behind: the server's fd count does not settle back after
    the case; minimized by halving the case on a restarted server while it still leaks."""
    _pressure_finding(
        tmp_path, plant="fdleak", scenario="fids", size=16,
        bucket="leak-fids-server-holds", says="fds after the case's connections closed",
    )


def test_latency_oracle_finds_a_stalled_event_loop(tmp_path: Path) -> None:
    """A handler that blocks the event loop: another connection's round trips miss their
    deadline; the case is minimized, and its replay judges by the run's deadline (saved with
    it): failing with the defect, passing without."""
    says = "another connection of the same server"
    report = Report(fuzzer="pressure", target="serve", seed=6)
    with ServeTarget(plant="stall") as t:
        pressure.run(
            t, report, seed=6, time_budget=None, max_cases=1, crash_dir=tmp_path,
            scenario="mix", size=300, latency=1.0,
        )
        hangs = [h["message"] for h in report.hangs]
        assert any(says in h for h in hangs), report.summary()
        (meta_path,) = _bucket_files(tmp_path, "pressure-hang-mix")
        meta = json.loads(meta_path.read_text())
        assert meta["latency_s"] == 1.0
        assert meta["case"]["n"] < 300, "the finding was not minimized"
        t.restart()
        assert any(says in p for p in pressure.replay_case(meta_path, t)), "replay missed it"
    with ServeTarget() as clean:
        assert pressure.replay_case(meta_path, clean) == []


def test_canary_oracle_finds_a_read_that_follows_a_symlink(tmp_path: Path) -> None:
    """The first case finds it, whatever the timing: every case starts from the agent's
    layout (links to the canary) and each client's survey reads through every link before
    the agent starts; so the case is found, minimized and replayed on the first try."""
    report = Report(fuzzer="race", target="serve", seed=7)
    with ServeTarget(plant="follow") as t:
        race.run(t, report, seed=7, time_budget=None, max_cases=1, crash_dir=tmp_path)
        msgs = [c["message"] for c in report.crashes]
        assert any("outside the export was touched" in m and "OPEN" in m for m in msgs), msgs
        (meta_path,) = _bucket_files(tmp_path, "race-crash-outside-the-export")
        meta = json.loads(meta_path.read_text())
        assert meta["case"]["ops"] < meta["case"]["original_ops"], "not minimized"
        assert race.replay_case(meta_path, t, tries=1), "replay did not reproduce it"
    with ServeTarget() as clean:
        assert race.replay_case(meta_path, clean, tries=1) == []


@root_only
def test_seccomp_oracle_finds_a_syscall_off_the_whitelist(tmp_path: Path) -> None:
    report = Report(fuzzer="frames", target="daemon", seed=2)
    with DaemonTarget(plant="syscall") as t:
        # A frame budget, no time budget: the type sweep reaches Tstatfs whatever the load.
        # Minimizing took 15 replays (each starts a daemon, ~1 s idle): 300 s lets it converge
        # on a loaded machine rather than be cut short.
        frames.run(t, report, seed=2, time_budget=None, max_frames=150, crash_dir=tmp_path,
                   shrink_s=300)
        assert any("SIGSYS" in c["message"] for c in report.crashes), report.summary()
        (path,) = sorted(tmp_path.glob("frames-crash-SIGSYS-TSTATFS.bin"))
        t_min = Transcript.from_bytes(path.read_bytes())
        assert t_min.frames_sent() <= 3, "not minimized: Tversion + Tstatfs is enough"
        problems = replay(path, t)
        assert any("SIGSYS" in p for p in problems), problems
    with DaemonTarget() as clean:
        assert replay(path, clean) == []


def test_log_oracle_in_process_crash_is_bucketed_and_the_fuzzer_survives(tmp_path: Path) -> None:
    report = Report(fuzzer="frames", target="inproc", seed=3)
    with InprocTarget(plant="crash") as t:
        frames.run(t, report, seed=3, time_budget=None, max_frames=600, crash_dir=tmp_path,
                   shrink_s=300)
    buckets = report.details.get("findings_by_bucket", {})
    assert "crash-ZeroDivisionError-plant.bad_statfs" in buckets, buckets
    # one bug, one file, however many times it was hit
    assert len(list(tmp_path.glob("frames-crash-ZeroDivisionError-*.bin"))) == 1
    path = tmp_path / "frames-crash-ZeroDivisionError-plant.bad_statfs.bin"
    assert Transcript.from_bytes(path.read_bytes()).frames_sent() <= 3
    with InprocTarget(plant="crash") as t:
        assert any("ZeroDivisionError" in p for p in replay(path, t))
    with InprocTarget() as clean:
        assert replay(path, clean) == []


def test_stateful_finding_is_replayed_with_the_model(tmp_path: Path) -> None:
    """A model-checked finding keeps hypothesis's program; replay re-runs it, checks and all."""
    report = Report(fuzzer="stateful", target="inproc", seed=4)
    with InprocTarget(plant="crash") as t:
        # an example budget, no time budget (120 s was not always enough under load): the
        # seeded examples reach Tstatfs and shrinking ends by itself (29 s idle)
        stateful.run(
            t, report, seed=4, time_budget=None, max_examples=200, steps=20, crash_dir=tmp_path,
            database=tmp_path / "db", max_failures=1,
        )
        assert report.crashes, report.summary()
        metas = [json.loads(p.read_text()) for p in tmp_path.glob("stateful-*.json")]
        with_blob = [m for m in metas if m.get("blob")]
        assert with_blob, [m.get("note") for m in metas]
        assert stateful.replay_program(with_blob[0], t)
    with InprocTarget() as clean:
        assert stateful.replay_program(with_blob[0], clean) == []
    assert any((tmp_path / "db").rglob("*")), "the failing example is kept in the database"


def test_read_only_attach_point_in_the_model(tmp_path: Path) -> None:
    """With --attach ro the model expects every mutating request to fail, the host unchanged;
    a server that let one through would be a model mismatch."""
    report = Report(fuzzer="stateful", target="inproc", seed=8)
    with InprocTarget(readonly=True) as t:
        stateful.run(t, report, seed=8, time_budget=None, max_examples=40, steps=20,
                     crash_dir=tmp_path, shrink=False)
    assert report.ok, report.summary()
    rules = report.details["rule_counts"]
    assert rules.get("lcreate", 0) and rules.get("mkdir", 0) and rules.get("setattr", 0), rules


@root_only
def test_panic_on_write_daemon_in_the_model(tmp_path: Path) -> None:
    report = Report(fuzzer="stateful", target="daemon", seed=9)
    with DaemonTarget(panic_on_write=True) as t:
        stateful.run(t, report, seed=9, time_budget=None, max_examples=8, steps=10,
                     crash_dir=tmp_path, shrink=False)
        assert t.exit_counts.get(70), t.exit_counts  # sessions ended by the panic, as expected
    assert report.ok, report.summary()


def test_buckets_one_file_per_bug(tmp_path: Path) -> None:
    """Two findings of one bug (different numbers, paths, sizes) land in one file, which keeps
    the smaller reproducer and counts the hits."""
    from fuzz.common import bucket, save_failure
    from fuzz.wire import Failure

    a = "server holds 12 fds after the case's connections closed, 11 before; open: /tmp/x1/y"
    b = "server holds 40 fds after the case's connections closed, 9 before; open: /tmp/q/z"
    assert bucket("leak", a) == bucket("leak", b)
    tb = 'Traceback (most recent call last):\n  File "/r/gofer9p/attach/session.py", line 9, in _uid\nValueError: x'
    assert bucket("crash", tb) == "crash-ValueError-session._uid"
    big, small = Transcript(), Transcript()
    for t, n in ((big, 5), (small, 2)):
        t.add(b"N")
        for _ in range(n):
            t.add(b"S", b"\x07\x00\x00\x00\x64\xff\xff")
    report = Report(fuzzer="frames", target="inproc")
    p1 = save_failure(report, "frames", Failure("leak", a), big, crash_dir=tmp_path)
    p2 = save_failure(report, "frames", Failure("leak", b), small, crash_dir=tmp_path)
    assert p1 == p2 and p1 is not None
    assert Transcript.from_bytes(p1.read_bytes()).frames_sent() == 2
    assert json.loads(p1.with_suffix(".json").read_text())["hits"] == 2
    assert len(list(tmp_path.glob("*.bin"))) == 1


def test_decode_finding_is_bucketed_minimized_and_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode failure: bucketed by exception and function, minimized to the bytes that
    matter, saved raw; replay fails while the defect is there and passes without it."""
    from fuzz import atheris_decode

    real = atheris_decode.check_input

    def planted_decode(data: bytes) -> None:
        if b"\xde\xad" in data:
            raise IndexError("planted decode defect")
        real(data)

    monkeypatch.setattr(atheris_decode, "check_input", planted_decode)
    report = Report(fuzzer="decode", target="codec", seed=1)
    big = bytes(range(100)) + b"\xde\xad" + bytes(100)
    path = atheris_decode.save_crash(report, tmp_path, big)
    again = atheris_decode.save_crash(report, tmp_path, b"\x01" + big)
    assert path is not None and path == again, "one bug, one file"
    assert path.name == "decode-crash-IndexError-test_oracles.planted_decode.bin"
    assert path.read_bytes() == b"\xde\xad"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["hits"] == 2 and meta["minimized"] == "202 -> 2 bytes"
    assert atheris_decode.replay_input(path)
    monkeypatch.setattr(atheris_decode, "check_input", real)
    assert atheris_decode.replay_input(path) == []
